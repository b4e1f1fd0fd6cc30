//! A typed blocking client for `paddockd` over its Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use paddock_spec::VmSpec;
use serde::de::DeserializeOwned;

use crate::http::{self, HttpError};
use crate::types::{AuditEntry, ErrorBody, StopRequest, Vm};

/// How long one request may take: a stop waits for the guest (30 s by default) and then
/// for the VMM, so this is generous.
const TIMEOUT: Duration = Duration::from_secs(180);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error(
        "cannot reach paddockd at {socket}: {source}; is the daemon running? Start it with \
         `systemctl start paddockd` or `paddockd --socket {socket}`, or point --socket / \
         PADDOCK_SOCKET at the socket it listens on"
    )]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{}", describe(.body))]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's explanation.
        body: ErrorBody,
    },
    /// A remote daemon (over TCP + TLS) could not be reached or trusted.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// The exchange itself failed (a broken connection, an answer that is not the API's).
    #[error("talking to paddockd at {socket}: {message}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
}

fn describe(body: &ErrorBody) -> String {
    match &body.field {
        Some(f) if !body.error.contains(f.as_str()) => format!("{f}: {}", body.error),
        _ => body.error.clone(),
    }
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The operations on one VM that take no body but an optional [`StopRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start its VMM.
    Start,
    /// Power it off (ACPI power button, then a hard stop, then SIGKILL).
    Stop,
    /// Stop, then start.
    Restart,
    /// Park its vCPUs.
    Pause,
    /// Release its vCPUs.
    Resume,
}

impl Action {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// A client for the daemon on one socket.
#[derive(Debug, Clone)]
pub struct Client {
    /// The socket; for a remote daemon, its URL.
    pub(crate) socket: PathBuf,
    /// The remote daemon, when the client talks TCP + TLS instead of the socket.
    pub(crate) remote: Option<std::sync::Arc<crate::remote::Remote>>,
}

/// Percent-encodes a path segment (names are plain, but user input may not be).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            remote: None,
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request; answers 2xx as the body, anything else as [`ClientError::Api`].
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        if let Some(remote) = &self.remote {
            return self.answer(remote.request(method, path, body, TIMEOUT)?);
        }
        let resp =
            http::request(&self.socket, method, path, body, TIMEOUT).map_err(|e| match e {
                HttpError::Connect(source) => ClientError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                },
                other => ClientError::Protocol {
                    socket: self.socket.clone(),
                    message: other.to_string(),
                },
            })?;
        self.answer(resp)
    }

    /// A 2xx answer's body, or the daemon's error.
    fn answer(&self, resp: http::Response) -> Result<Vec<u8>, ClientError> {
        if (200..300).contains(&resp.status) {
            return Ok(resp.body);
        }
        let body = serde_json::from_slice::<ErrorBody>(&resp.body).unwrap_or_else(|_| ErrorBody {
            error: format!(
                "HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body).trim()
            ),
            field: None,
        });
        Err(ClientError::Api {
            status: resp.status,
            body,
        })
    }

    pub(crate) fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let bytes = self.raw(method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            message: format!("{method} {path}: unexpected answer: {e}"),
        })
    }

    /// Every VM, by name.
    pub fn list(&self) -> Result<Vec<Vm>, ClientError> {
        self.json("GET", "/api/v1/vms", None)
    }

    /// Every VM as a summary (no spec): what a table shows, cheaper for many VMs.
    pub fn list_summaries(&self) -> Result<Vec<crate::VmSummary>, ClientError> {
        self.json("GET", "/api/v1/vms?view=summary", None)
    }

    /// One VM.
    pub fn get(&self, name: &str) -> Result<Vm, ClientError> {
        self.json("GET", &format!("/api/v1/vms/{}", segment(name)), None)
    }

    /// Defines a VM from a spec.
    pub fn define(&self, spec: &VmSpec) -> Result<Vm, ClientError> {
        let body = serde_json::to_vec(spec).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            message: e.to_string(),
        })?;
        self.define_json(&body)
    }

    /// Defines a VM from a spec given as JSON text, so the daemon judges it as written.
    pub fn define_json(&self, spec: &[u8]) -> Result<Vm, ClientError> {
        self.json("POST", "/api/v1/vms", Some(spec))
    }

    /// Deletes a stopped or defined VM (its files under the state directory go too).
    pub fn delete(&self, name: &str) -> Result<(), ClientError> {
        self.raw("DELETE", &format!("/api/v1/vms/{}", segment(name)), None)
            .map(drop)
    }

    /// Deletes a stopped or defined VM and, with `volumes`, the pool volumes its disks name
    /// (refused, deleting nothing, when another VM uses one or one backs a linked clone).
    pub fn delete_vm(&self, name: &str, volumes: bool) -> Result<(), ClientError> {
        let q = if volumes { "?volumes=delete" } else { "" };
        self.raw("DELETE", &format!("/api/v1/vms/{}{q}", segment(name)), None)
            .map(drop)
    }

    /// Runs a lifecycle action and returns the VM afterwards.
    pub fn action(
        &self,
        name: &str,
        action: Action,
        stop: Option<StopRequest>,
    ) -> Result<Vm, ClientError> {
        let body = stop.map(|s| serde_json::to_vec(&s).unwrap_or_default());
        self.json(
            "POST",
            &format!("/api/v1/vms/{}/{}", segment(name), action.as_str()),
            body.as_deref(),
        )
    }

    /// The VM's serial console output so far.
    pub fn console(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        self.raw(
            "GET",
            &format!("/api/v1/vms/{}/console", segment(name)),
            None,
        )
    }

    /// The audit log, oldest first.
    pub fn audit(&self) -> Result<Vec<AuditEntry>, ClientError> {
        self.json("GET", "/api/v1/audit", None)
    }

    /// The daemon's OpenAPI document.
    pub fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json("GET", "/openapi.json", None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("web-1.a_b"), "web-1.a_b");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn an_absent_socket_says_how_to_start_the_daemon() {
        let dir = std::env::temp_dir().join(format!("paddock-api-test-{}", std::process::id()));
        let err = Client::new(dir.join("none.sock")).list().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("none.sock") && text.contains("paddockd --socket"),
            "{text}"
        );
    }
}
