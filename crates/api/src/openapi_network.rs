//! The OpenAPI paths and schemas of managed networks, merged into
//! [`document`](crate::openapi::document).

use serde_json::{json, Map, Value};

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn body(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn network_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Network" })
}

/// `/api/v1/networks` and `/api/v1/networks/{name}`.
pub fn paths() -> Map<String, Value> {
    let name = json!([{
        "name": "name", "in": "path", "required": true,
        "description": "The network's name.", "schema": { "type": "string" }
    }]);
    let mut p = Map::new();
    p.insert("/api/v1/networks".into(), json!({
        "get": {
            "operationId": "listNetworks", "summary": "Every network, by name.",
            "responses": { "200": body("Networks.", json!({ "type": "array", "items": network_ref() })) }
        },
        "post": {
            "operationId": "defineNetwork",
            "summary": "Defines a network and creates its bridge, NAT table and dnsmasq at once.",
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/NetworkSpec" } } } },
            "responses": {
                "201": body("The network.", network_ref()),
                "400": error("The body is not a NetworkSpec."),
                "409": error("The name or the bridge is taken."),
                "413": error("The body is over 1 MiB."),
                "422": error("A field does not validate; `field` names it."),
                "500": error("The host refused (netlink, nft, dnsmasq); nothing was left behind."),
            }
        }
    }));
    p.insert("/api/v1/networks/{name}".into(), json!({
        "get": {
            "operationId": "getNetwork", "summary": "One network.", "parameters": name,
            "responses": { "200": body("The network.", network_ref()), "404": error("No network has that name.") }
        },
        "delete": {
            "operationId": "deleteNetwork",
            "summary": "Deletes a network with its bridge, NAT table and dnsmasq.", "parameters": name,
            "responses": {
                "204": { "description": "Deleted." },
                "404": error("No network has that name."),
                "409": error("A defined VM has a NIC on it: delete the VM or its NIC first."),
            }
        }
    }));
    p
}

/// The `NetworkSpec`, `Network` and `DhcpRange` schemas.
pub fn schemas() -> Map<String, Value> {
    let dhcp = json!({ "type": "object", "additionalProperties": false, "required": ["start", "end"], "properties": {
        "start": { "type": "string", "format": "ipv4" }, "end": { "type": "string", "format": "ipv4" } } });
    let mut m = Map::new();
    m.insert("DhcpRange".into(), dhcp);
    m.insert("NetworkSpec".into(), json!({
        "type": "object", "additionalProperties": false, "required": ["name"], "properties": {
            "name": { "type": "string", "pattern": "^[a-z][a-z0-9-]{0,31}$" },
            "bridge": { "type": "string", "maxLength": 15, "description": "Default pd-<name>." },
            "ipv4": { "type": "string", "example": "10.77.0.1/24", "description": "The host's address on the bridge." },
            "nat": { "type": "boolean", "default": false, "description": "Masquerade the subnet (needs ipv4)." },
            "dhcp": { "$ref": "#/components/schemas/DhcpRange" } } }));
    m.insert("Network".into(), json!({
        "type": "object", "required": ["name", "bridge", "nat", "created_at", "vms"], "properties": {
            "name": { "type": "string" },
            "bridge": { "type": "string" },
            "ipv4": { "type": "string" },
            "nat": { "type": "boolean" },
            "dhcp": { "$ref": "#/components/schemas/DhcpRange" },
            "created_at": { "type": "string", "format": "date-time" },
            "vms": { "type": "array", "items": { "type": "string" }, "description": "VMs with a NIC on it." } } }));
    m
}
