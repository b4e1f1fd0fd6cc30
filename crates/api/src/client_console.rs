//! WebSocket sessions with `paddockd` over its Unix socket (blocking `tungstenite`): a VM's
//! interactive serial console and the event stream.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::WebSocket;

use crate::client::segment;
use crate::{Client, ClientError, ErrorBody};

pub use tungstenite::{Error as WsError, Message};

/// How long the daemon gets to answer the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebSocket to the daemon.
pub type Socket = WebSocket<UnixStream>;

impl Client {
    /// Attaches to VM `name`'s serial console: binary frames both ways (input to COM1,
    /// output from it). 409 when the VM has no process or another client is attached.
    pub fn console_ws(&self, name: &str) -> Result<Socket, ClientError> {
        self.websocket(&format!("/api/v1/vms/{}/console", segment(name)))
    }

    /// Follows the daemon's events: one text frame of [`Event`](crate::Event) JSON each.
    pub fn events_ws(&self) -> Result<Socket, ClientError> {
        self.websocket("/api/v1/events")
    }

    /// Opens a WebSocket on `path`; a refused handshake is the daemon's error.
    fn websocket(&self, path: &str) -> Result<Socket, ClientError> {
        let protocol = |message: String| ClientError::Protocol {
            socket: self.socket().to_path_buf(),
            message,
        };
        if self.remote.is_some() {
            return Err(protocol(format!(
                "{path}: the console and event WebSockets are served on the daemon's Unix \
                 socket only for now; run paddock on the daemon's host (`paddock vm console \
                 --log` reads the console log over --host)"
            )));
        }
        let stream =
            UnixStream::connect(self.socket()).map_err(|source| ClientError::Unreachable {
                socket: self.socket().to_path_buf(),
                source,
            })?;
        let io = |e: std::io::Error| protocol(format!("{path}: {e}"));
        // A daemon that does not answer the handshake is an error, not a hang; the session
        // itself waits as long as it needs.
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(io)?;
        let request = format!("ws://localhost{path}")
            .into_client_request()
            .map_err(|e| protocol(format!("{path}: {e}")))?;
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => {
                ws.get_ref().set_read_timeout(None).map_err(io)?;
                ws.get_ref().set_write_timeout(None).map_err(io)?;
                Ok(ws)
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                let body =
                    serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| ErrorBody {
                        error: format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
                        field: None,
                    });
                Err(ClientError::Api { status, body })
            }
            Err(e) => Err(protocol(format!("GET {path} (WebSocket): {e}"))),
        }
    }
}
