//! The TCP + TLS transport to a remote `paddockd` (`paddockd --listen`): a blocking rustls
//! client that trusts the system's roots, a given CA certificate, or one pinned certificate
//! (its SHA-256 fingerprint, for a daemon's self-signed certificate), and sends a bearer
//! token with every request.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::http::{self, HttpError, Response};

/// Why a remote daemon could not be reached or trusted.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `--host` is not `https://HOST:PORT`.
    #[error(
        "--host '{0}': give the daemon as https://HOST:PORT (paddockd serves TCP only over TLS)"
    )]
    BadUrl(String),
    /// `--fingerprint` is not a SHA-256 fingerprint.
    #[error(
        "--fingerprint '{0}': give the 64 hex digits paddockd prints at start (colons optional)"
    )]
    BadFingerprint(String),
    /// The bearer token cannot go in a header.
    #[error(
        "the token has characters a token never has; copy it as `paddock token create` printed it"
    )]
    BadToken,
    /// The CA certificate file is unusable.
    #[error("CA certificate {path}: {message}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No trust anchors are available.
    #[error("no system CA certificates were found; pass --ca-cert PEM or --fingerprint SHA256")]
    NoRoots,
    /// Nothing answers at the address.
    #[error("cannot reach paddockd at {host}: {source}; is it started with --listen {host}?")]
    Unreachable {
        /// HOST:PORT.
        host: String,
        /// Why the connection failed.
        #[source]
        source: io::Error,
    },
    /// The daemon's certificate is not trusted.
    #[error(
        "the certificate of {host} is not trusted ({reason}); its SHA-256 fingerprint is \
         {fingerprint}. If that is the fingerprint paddockd printed at start (or \
         `openssl x509 -in <state-dir>/tls/cert.pem -noout -fingerprint -sha256` shows on the \
         host), pin it with --fingerprint {fingerprint} (or PADDOCK_FINGERPRINT), or pass the \
         certificate with --ca-cert"
    )]
    Untrusted {
        /// HOST:PORT.
        host: String,
        /// The certificate's fingerprint.
        fingerprint: String,
        /// rustls's reason.
        reason: String,
    },
    /// The TLS session or the HTTP exchange failed.
    #[error("talking to paddockd at {host}: {message}")]
    Exchange {
        /// HOST:PORT.
        host: String,
        /// What went wrong.
        message: String,
    },
}

/// Which certificates the client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's CA certificates (`rustls-native-certs`).
    System,
    /// The CA certificates in a PEM file (a daemon's self-signed `cert.pem` works too).
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (64 hex digits, colons allowed);
    /// the name in it is not checked.
    Fingerprint(String),
}

/// A remote daemon and how to talk to it.
pub struct Remote {
    url: String,
    host: String,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    authorization: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

/// Never shows the token.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("token", &self.authorization.as_ref().map(|_| "(redacted)"))
            .finish_non_exhaustive()
    }
}

/// `AB:CD:...`: the SHA-256 of `der` as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a fingerprint given with or without colons, in either case.
fn parse_fingerprint(text: &str) -> Result<[u8; 32], RemoteError> {
    let bad = || RemoteError::BadFingerprint(text.to_string());
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Splits `https://HOST:PORT[/]` into `HOST:PORT` and the host name.
fn parse_url(url: &str) -> Result<(String, String), RemoteError> {
    let bad = || RemoteError::BadUrl(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') || hostport.contains('@') {
        return Err(bad());
    }
    let (name, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (name, port) = v6.split_once("]:").ok_or_else(bad)?;
        (name, port)
    } else {
        hostport.rsplit_once(':').ok_or_else(bad)?
    };
    if name.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((hostport.to_string(), name.to_string()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn roots(trust: &Trust) -> Result<RootCertStore, RemoteError> {
    let mut store = RootCertStore::empty();
    match trust {
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
        Trust::CaFile(path) => {
            let ca = |message: String| RemoteError::CaCert {
                path: path.clone(),
                message,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("no PEM certificate in the file".into()));
            }
            for c in certs {
                store.add(c).map_err(|e| ca(e.to_string()))?;
            }
        }
        Trust::Fingerprint(_) => {}
    }
    if store.is_empty() && !matches!(trust, Trust::Fingerprint(_)) {
        return Err(RemoteError::NoRoots);
    }
    Ok(store)
}

/// How the server's certificate is judged.
#[derive(Debug)]
enum Check {
    Pki(Arc<WebPkiServerVerifier>),
    Pin([u8; 32]),
}

/// Checks the server's certificate and remembers the fingerprint of one it refused, so the
/// error can say what to pin.
#[derive(Debug)]
struct Verifier {
    check: Check,
    provider: Arc<CryptoProvider>,
    seen: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = match &self.check {
            Check::Pki(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            Check::Pin(pin) => {
                if Sha256::digest(end_entity.as_ref()).as_slice() == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(
                        "its fingerprint is not the one pinned with --fingerprint".into(),
                    ))
                }
            }
        };
        if result.is_err() {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(fingerprint(end_entity.as_ref()));
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Remote {
    /// A remote daemon at `url` (`https://HOST:PORT`), trusted as `trust`, sending `token`
    /// (`pdk_...`) as a bearer token.
    pub fn new(url: &str, trust: Trust, token: Option<&str>) -> Result<Remote, RemoteError> {
        let (host, name) = parse_url(url)?;
        let server_name =
            ServerName::try_from(name).map_err(|_| RemoteError::BadUrl(url.to_string()))?;
        let provider = provider();
        let check = match &trust {
            Trust::Fingerprint(f) => Check::Pin(parse_fingerprint(f)?),
            other => Check::Pki(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(other)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| RemoteError::CaCert {
                    path: match other {
                        Trust::CaFile(p) => p.clone(),
                        _ => PathBuf::from("(system)"),
                    },
                    message: e.to_string(),
                })?,
            ),
        };
        let seen = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            check,
            provider: provider.clone(),
            seen: seen.clone(),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RemoteError::Exchange {
                host: host.clone(),
                message: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let authorization = match token {
            None => None,
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(format!("Bearer {t}"))
            }
            Some(_) => return Err(RemoteError::BadToken),
        };
        Ok(Remote {
            url: url.to_string(),
            host,
            server_name,
            config: Arc::new(config),
            authorization,
            seen,
        })
    }

    /// The URL given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request over a new TLS connection; waits at most `timeout` for each read
    /// and write.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, RemoteError> {
        let unreachable = |source| RemoteError::Unreachable {
            host: self.host.clone(),
            source,
        };
        let exchange = |message: String| RemoteError::Exchange {
            host: self.host.clone(),
            message,
        };
        let addrs = self.host.to_socket_addrs().map_err(unreachable)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut tcp = tcp.ok_or_else(|| unreachable(last))?;
        tcp.set_read_timeout(Some(timeout)).map_err(unreachable)?;
        tcp.set_write_timeout(Some(timeout)).map_err(unreachable)?;
        let mut conn = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| exchange(e.to_string()))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(match seen {
                    Some(fingerprint) => RemoteError::Untrusted {
                        host: self.host.clone(),
                        fingerprint,
                        reason: e.to_string(),
                    },
                    None => exchange(format!("TLS handshake: {e}")),
                });
            }
        }
        let stream = rustls::StreamOwned::new(conn, tcp);
        let mut headers = Vec::new();
        if let Some(a) = &self.authorization {
            headers.push(("Authorization", a.as_str()));
        }
        http::exchange(stream, &self.host, method, path, body, &headers).map_err(|e| match e {
            HttpError::Connect(source) => unreachable(source),
            other => exchange(other.to_string()),
        })
    }
}

/// Reads the first certificate of a PEM file and returns its fingerprint.
pub fn fingerprint_of_pem(path: &Path) -> io::Result<String> {
    let cert = CertificateDer::from_pem_file(path)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(fingerprint(cert.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_https_and_a_port() {
        assert_eq!(
            parse_url("https://h.example:8443").unwrap(),
            ("h.example:8443".into(), "h.example".into())
        );
        assert_eq!(
            parse_url("https://[::1]:9/").unwrap(),
            ("[::1]:9".into(), "::1".into())
        );
        for bad in [
            "http://h:1",
            "h:1",
            "https://h",
            "https://h:x",
            "https://h:1/api",
            "https://u@h:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let fp = fingerprint(b"x");
        assert_eq!(fp.len(), 32 * 3 - 1);
        let bytes = parse_fingerprint(&fp).unwrap();
        assert_eq!(
            parse_fingerprint(&fp.replace(':', "").to_lowercase()).unwrap(),
            bytes
        );
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn tokens_with_control_characters_are_refused() {
        let r = Remote::new(
            "https://127.0.0.1:1",
            Trust::Fingerprint("00".repeat(32)),
            Some("pdk_a\r\nX: y"),
        );
        assert!(matches!(r, Err(RemoteError::BadToken)));
        let r = Remote::new(
            "https://127.0.0.1:1",
            Trust::Fingerprint("00".repeat(32)),
            Some("pdk_secret"),
        )
        .unwrap();
        assert!(!format!("{r:?}").contains("pdk_secret"));
    }
}
