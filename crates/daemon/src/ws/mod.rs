//! WebSocket endpoints. The plain `GET`s of `/api/v1/vms/{name}/console` (the console log)
//! and `/api/v1/events` (Server-Sent Events) answer a WebSocket handshake on the same path:
//! [`console`] bridges binary frames to and from the VM's serial console socket, [`events`]
//! sends each event as a text frame of JSON.

pub mod console;
pub mod events;

use axum::http::{header, HeaderMap};

/// Whether the request asks to switch to WebSocket (`Upgrade: websocket`).
fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_a_websocket_upgrade_counts() {
        let mut h = HeaderMap::new();
        assert!(!wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c, WebSocket"));
        assert!(wants_websocket(&h));
    }
}
