//! The TCP + TLS listener (`paddockd --listen ADDR:PORT`): the same router as the Unix
//! socket, over rustls (`tokio-rustls`), behind bearer-token authentication
//! ([`crate::auth`]). Plain TCP is never served: a connection that does not complete a TLS
//! handshake is closed without an answer.
//!
//! Without `--tls-cert`/`--tls-key`, a self-signed certificate is generated once (`rcgen`)
//! into `<state-dir>/tls/{cert,key}.pem` (key mode 0600) and reused on every start, so its
//! fingerprint stays the one clients pinned.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::peer::Peer;
use crate::supervisor::Supervisor;

/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and with which certificate to listen.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The address and port (port 0: any free port; the bound one is printed).
    pub addr: SocketAddr,
    /// A PEM certificate chain and its key; `None`: the generated self-signed pair.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// A certificate and key ready to serve.
struct Identity {
    config: Arc<ServerConfig>,
    fingerprint: String,
    cert: PathBuf,
}

/// The names a generated certificate is valid for: the listen address (unless it is the
/// unspecified address), `localhost`, the loopback addresses and the host name.
fn names(addr: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !addr.is_unspecified() {
        names.push(addr.to_string());
    }
    if let Ok(h) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_string());
        }
    }
    names.dedup();
    names
}

/// Writes `data` to `path` with `mode` through a temporary file, so a crash never leaves
/// half a key.
fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The generated pair under `<state-dir>/tls`, made on first use.
fn self_signed(state_dir: &Path, addr: IpAddr) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = state_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(names(addr))
        .context("building the self-signed certificate")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "paddockd");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let pair = rcgen::KeyPair::generate().context("generating a TLS key")?;
    let signed = params
        .self_signed(&pair)
        .context("signing the self-signed certificate")?;
    write_new(&key, pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert, signed.pem().as_bytes(), 0o644)?;
    eprintln!(
        "paddockd: generated a self-signed TLS certificate in {}",
        cert.display()
    );
    Ok((cert, key))
}

fn identity(listen: &Listen, state_dir: &Path) -> anyhow::Result<Identity> {
    let (cert, key) = match &listen.cert {
        Some(pair) => pair.clone(),
        None => self_signed(state_dir, listen.addr.ip())?,
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate {}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        bail!("{}: no PEM certificate in the file", cert.display());
    };
    let fingerprint = paddock_api::remote::fingerprint(leaf.as_ref());
    let key_der = PrivateKeyDer::from_pem_file(&key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
        cert,
    })
}

/// TLS connections whose handshake completed; handshakes run in their own tasks so a slow
/// or silent client never holds up the others.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop is gone; serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Callers over TCP have no uid; their token names them ([`crate::auth`]).
impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(_stream: IncomingStream<'_, TlsListener>) -> Self {
        Peer { uid: None }
    }
}

/// Binds `listen` and prints the address and the certificate's fingerprint.
pub async fn bind(listen: &Listen, state_dir: &Path) -> anyhow::Result<TlsListener> {
    let id = identity(listen, state_dir)?;
    let mut tcp = TcpListener::bind(listen.addr)
        .await
        .with_context(|| format!("binding {}", listen.addr))?;
    let local = tcp.local_addr()?;
    eprintln!(
        "paddockd: listening on https://{local} (TLS; certificate {}, SHA-256 fingerprint {})",
        id.cert.display(),
        id.fingerprint
    );
    let acceptor = TlsAcceptor::from(id.config);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while !tx.is_closed() {
            let (stream, peer) = Listener::accept(&mut tcp).await;
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                // Plain HTTP, a failed handshake or a silent client: closed, never answered.
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                {
                    let _ = tx.send((tls, peer)).await;
                }
            });
        }
    });
    Ok(TlsListener {
        accepted: rx,
        local,
    })
}

/// Serves the API on `listener` behind token authentication; without one, never returns.
pub async fn serve(listener: Option<TlsListener>, sup: Arc<Supervisor>) -> std::io::Result<()> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let app = crate::routes::router(sup.clone())
        .layer(axum::middleware::from_fn_with_state(
            sup,
            crate::auth::require_token,
        ))
        .into_make_service_with_connect_info::<Peer>();
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_made_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let listen = Listen {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: None,
        };
        let a = identity(&listen, dir.path()).unwrap();
        let b = identity(&listen, dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(names("0.0.0.0".parse().unwrap()).contains(&"localhost".to_string()));
        assert!(names("10.1.2.3".parse().unwrap()).contains(&"10.1.2.3".to_string()));
    }
}
