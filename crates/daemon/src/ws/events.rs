//! `GET /api/v1/events` with `Upgrade: websocket`: every event as a text frame holding the
//! JSON of a `paddock_api::Event` (its `kind` field says `lifecycle` or `audit`), the same
//! events Server-Sent Events carry. A slow reader skips events rather than slowing the daemon.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use paddock_api::Event;
use tokio::sync::broadcast::{error::RecvError, Receiver};

use crate::supervisor::Supervisor;

/// `GET /api/v1/events`: Server-Sent Events, or with `Upgrade: websocket` a WebSocket.
pub async fn events(
    State(sup): State<Arc<Supervisor>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if !super::wants_websocket(&headers) {
        return crate::routes::events(State(sup)).await.into_response();
    }
    match upgrade {
        // Subscribed before the handshake answers, so no event after it is missed.
        Ok(u) => {
            let rx = sup.subscribe();
            u.on_upgrade(move |ws| send_events(ws, rx))
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// How long a closing handshake may take.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn send_events(mut ws: WebSocket, mut rx: Receiver<Event>) {
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let Ok(text) = serde_json::to_string(&ev) else { continue };
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            msg = ws.recv() => match msg {
                Some(Ok(Message::Close(_))) => {
                    // Reading on sends the close reply queued for the client.
                    let _ = tokio::time::timeout(CLOSE_WAIT, ws.recv()).await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
