//! The OpenAPI paths and schemas of API tokens (remote access), merged into
//! [`crate::openapi::document`].

use serde_json::{json, Map, Value};

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// `/api/v1/tokens` and `/api/v1/tokens/{name}`.
pub(crate) fn paths() -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("/api/v1/tokens".into(), json!({
        "get": {
            "operationId": "listTokens", "summary": "Every API token, by name; never their secrets.",
            "responses": { "200": { "description": "The tokens.", "content": { "application/json": {
                "schema": { "type": "array", "items": schema("Token") } } } } }
        },
        "post": {
            "operationId": "createToken",
            "summary": "Creates an API token for TCP + TLS access; the answer holds its secret, shown this once. Only on the Unix socket.",
            "requestBody": { "required": true, "content": { "application/json": { "schema": schema("TokenRequest") } } },
            "responses": {
                "201": { "description": "The token and its secret.", "content": { "application/json": { "schema": schema("NewToken") } } },
                "400": error("Not JSON, or not a TokenRequest."),
                "403": error("Asked over TCP: tokens are created on the host's Unix socket."),
                "409": error("A token with that name exists."),
                "422": error("The name or expires_in_days is out of range; `field` names it."),
            }
        }
    }));
    p.insert("/api/v1/tokens/{name}".into(), json!({
        "delete": {
            "operationId": "revokeToken", "summary": "Revokes a token: requests carrying it get 401 from now on.",
            "parameters": [{ "name": "name", "in": "path", "required": true,
                "description": "The token's name.", "schema": { "type": "string" } }],
            "responses": { "204": { "description": "Revoked." }, "404": error("No token has that name.") }
        }
    }));
    p
}

/// `TokenRequest`, `Token` and `NewToken`.
pub(crate) fn schemas() -> Map<String, Value> {
    let token = json!({
        "name": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" },
        "created_at": { "type": "string", "format": "date-time" },
        "last_used": { "type": "string", "format": "date-time", "description": "When it last authenticated a request." },
        "expires_at": { "type": "string", "format": "date-time", "description": "Absent: it never expires." }
    });
    let mut new_token = token.clone();
    new_token["secret"] = json!({ "type": "string", "example": "pdk_3q2+7w...",
        "description": "`pdk_` and 32 random bytes in unpadded base64url; send as `Authorization: Bearer <secret>`. Not stored; shown once." });
    let schemas = json!({
        "TokenRequest": { "type": "object", "additionalProperties": false, "required": ["name"], "properties": {
            "name": token["name"].clone(),
            "expires_in_days": { "type": "integer", "minimum": 1, "maximum": 3650, "description": "Absent: it never expires." } } },
        "Token": { "type": "object", "required": ["name", "created_at"], "properties": token },
        "NewToken": { "type": "object", "required": ["name", "created_at", "secret"], "properties": new_token },
    });
    match schemas {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
