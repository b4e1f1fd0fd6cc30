//! Where `paddock` finds the daemon: its Unix socket, or with `--host` a remote paddockd
//! over TCP + TLS with a bearer token, trusting the system's roots, `--ca-cert`, or the
//! certificate pinned with `--fingerprint`.

use std::path::{Path, PathBuf};

use clap::Args;
use paddock_api::{Client, ClientError, Remote, Trust};

/// Options that point every daemon command at a remote paddockd.
#[derive(Args, Debug, Default)]
pub struct RemoteArgs {
    /// A remote paddockd (`paddockd --listen`) instead of the local socket.
    #[arg(
        long,
        global = true,
        env = "PADDOCK_HOST",
        value_name = "https://HOST:PORT"
    )]
    host: Option<String>,
    /// The API token for --host (`paddock token create` on the daemon's host prints it).
    #[arg(
        long,
        global = true,
        env = "PADDOCK_TOKEN",
        hide_env_values = true,
        value_name = "pdk_..."
    )]
    token: Option<String>,
    /// Trust the CA certificate(s) in this PEM file for --host (a daemon's self-signed
    /// cert.pem works too); default: the system's CA certificates.
    #[arg(long, global = true, env = "PADDOCK_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (paddockd prints it at
    /// start), for a daemon's self-signed certificate.
    #[arg(
        long,
        global = true,
        env = "PADDOCK_FINGERPRINT",
        value_name = "SHA256",
        conflicts_with = "ca_cert"
    )]
    fingerprint: Option<String>,
}

/// `Some` unless absent or empty (an empty environment variable counts as unset).
fn given<T: AsRef<std::ffi::OsStr>>(v: &Option<T>) -> Option<&T> {
    v.as_ref().filter(|s| !s.as_ref().is_empty())
}

impl RemoteArgs {
    /// Runs a daemon command: a client for `socket` (or `--host`), then `f`, reporting a
    /// failure the way every daemon command does (text, or JSON with `json`).
    pub fn run(
        &self,
        socket: &Path,
        json: bool,
        f: impl FnOnce(&Client) -> Result<(), ClientError>,
    ) -> std::process::ExitCode {
        match self.client(socket).and_then(|c| f(&c)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => crate::output::client_failure(&e, json),
        }
    }

    /// The client: over TCP + TLS with `--host`, else on `socket`.
    pub fn client(&self, socket: &Path) -> Result<Client, ClientError> {
        let Some(host) = given(&self.host) else {
            return Ok(Client::new(socket));
        };
        let trust = match (given(&self.fingerprint), given(&self.ca_cert)) {
            (Some(f), _) => Trust::Fingerprint(f.clone()),
            (None, Some(ca)) => Trust::CaFile(ca.clone()),
            (None, None) => Trust::System,
        };
        let token = given(&self.token).map(String::as_str);
        Ok(Client::remote(Remote::new(host, trust, token)?))
    }
}
