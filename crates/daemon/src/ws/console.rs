//! The interactive serial console: `GET /api/v1/vms/{name}/console` with `Upgrade: websocket`
//! bridges binary WebSocket frames to and from the VM's console socket
//! (`<run-dir>/vms/<id>/console.sock`, served by the VMM, which also appends everything to
//! `console.log`). One client per VM: while one is attached, another gets 409. Text frames
//! are accepted as input too. When the VMM closes the socket (the VM stopped) the client gets
//! a close frame.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use uuid::Uuid;

use crate::error::OpError;
use crate::peer::Peer;
use crate::supervisor::Supervisor;

/// How long a closing handshake may take.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// VMs with a console client attached (ids are unique across daemons in one process).
static ATTACHED: Mutex<BTreeSet<Uuid>> = Mutex::new(BTreeSet::new());

/// A VM's console, held by one client until dropped.
struct Slot(Uuid);

impl Slot {
    /// Takes VM `id`'s console, unless a client holds it.
    fn claim(id: Uuid) -> Option<Slot> {
        let mut set = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(id).then(|| Slot(id))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut set = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.0);
    }
}

/// `GET /api/v1/vms/{name}/console`: the log, or with `Upgrade: websocket` the live console.
pub async fn console(
    State(sup): State<Arc<Supervisor>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, OpError> {
    if !super::wants_websocket(&headers) {
        return crate::routes::console(State(sup), Path(name)).await;
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let attached = attach(&sup, &name).await;
    sup.audit(peer.uid, "console", &name, &attached);
    let (slot, stream) = attached?;
    Ok(upgrade.on_upgrade(move |ws| async move {
        bridge(ws, stream).await;
        drop(slot);
    }))
}

/// Checks that `name` has a console to attach to, takes it, and connects to its socket.
async fn attach(sup: &Supervisor, name: &str) -> Result<(Slot, UnixStream), OpError> {
    let vm = sup.get(name)?;
    if !vm.state.has_process() {
        return Err(OpError::Conflict(format!(
            "VM '{name}' is {} and has no console; start it first (`paddock vm console {name} \
             --log` prints the log)",
            vm.state
        )));
    }
    let slot = Slot::claim(vm.id).ok_or_else(|| {
        OpError::Conflict(format!(
            "VM '{name}''s console is in use by another client; detach it first"
        ))
    })?;
    let path = sup.paths(vm.id).console_socket();
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        OpError::Conflict(format!(
            "VM '{name}''s console socket {} does not answer ({e}); a VM started by an older \
             paddockd has none: restart it",
            path.display()
        ))
    })?;
    Ok((slot, stream))
}

/// Copies WebSocket input to the console and console output to the WebSocket until either
/// side ends.
async fn bridge(mut ws: WebSocket, stream: UnixStream) {
    let (mut from_vm, mut to_vm) = stream.into_split();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            msg = ws.recv() => {
                let input = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => axum::body::Bytes::from(t),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) => {
                        // Reading on sends the close reply queued for the client.
                        let _ = tokio::time::timeout(CLOSE_WAIT, ws.recv()).await;
                        return;
                    }
                    Some(Err(_)) | None => return,
                };
                if to_vm.write_all(&input).await.is_err() {
                    break;
                }
            }
            n = from_vm.read(&mut buf) => match n {
                Ok(n) if n > 0 => {
                    let out = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if ws.send(Message::Binary(out)).await.is_err() {
                        return;
                    }
                }
                _ => break,
            },
        }
    }
    // The VMM closed the console: the VM has stopped.
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "the console closed: the VM stopped".into(),
        })))
        .await;
}
