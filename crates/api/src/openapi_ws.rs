//! The WebSocket side of the OpenAPI document: `GET /api/v1/vms/{name}/console` and
//! `GET /api/v1/events` also answer a WebSocket handshake (`Upgrade: websocket`), and a
//! socket console's `log` in the spec.

use serde_json::{json, Value};

/// The optional `Upgrade` header that switches a GET to a WebSocket.
fn upgrade_header() -> Value {
    json!({
        "name": "Upgrade", "in": "header", "required": false,
        "description": "`websocket` (with the other RFC 6455 handshake headers) switches to a WebSocket.",
        "schema": { "type": "string", "enum": ["websocket"] }
    })
}

/// Adds the WebSocket handshakes to `doc`'s console and events operations.
pub(crate) fn extend(doc: &mut Value) {
    let console = &mut doc["paths"]["/api/v1/vms/{name}/console"]["get"];
    if let Some(params) = console["parameters"].as_array_mut() {
        params.push(upgrade_header());
    }
    console["description"] = json!(
        "Without `Upgrade: websocket`: the log. With it: the live serial console; binary frames \
         carry input to COM1 and output from it (text frames are taken as input too). One client \
         per VM. A close frame follows when the VM stops."
    );
    console["responses"]["101"] =
        json!({ "description": "Switched to a WebSocket on the VM's serial console." });
    console["responses"]["409"] = json!({
        "description": "WebSocket only: the VM has no process, another client is attached, or its VMM has no console socket (started by an older paddockd).",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    });
    let events = &mut doc["paths"]["/api/v1/events"]["get"];
    events["parameters"] = json!([upgrade_header()]);
    events["description"] = json!(
        "Without `Upgrade: websocket`: Server-Sent Events. With it: a WebSocket with one text \
         frame per Event (JSON; its `kind` says lifecycle or audit)."
    );
    events["responses"]["101"] = json!({ "description": "Switched to a WebSocket of events." });
    let serial = &mut doc["components"]["schemas"]["VmSpec"]["properties"]["serial"];
    serial["description"] =
        json!("Ignored by paddockd, which sends COM1 to the VM's console socket and log.");
    serial["properties"]["log"] = json!({
        "type": "string",
        "description": "mode=socket: a file that also gets all output, appended."
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_gets_document_the_handshake() {
        let doc = crate::openapi::document();
        for path in ["/api/v1/vms/{name}/console", "/api/v1/events"] {
            let get = &doc["paths"][path]["get"];
            assert!(get["responses"]["101"].is_object(), "{path}");
            assert!(get["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "Upgrade"));
        }
        assert!(doc["paths"]["/api/v1/vms/{name}/console"]["get"]["responses"]["409"].is_object());
    }
}
