//! The storage part of the OpenAPI document: pools, volumes and tasks. Merged into
//! [`crate::openapi::document`].

use serde_json::{json, Map, Value};

fn err(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": r(name) } } })
}

fn param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": { "type": "string" } })
}

fn pool_param() -> Value {
    param("pool", "The pool's name.")
}

fn volume_params() -> Value {
    json!([pool_param(), param("volume", "The volume's name.")])
}

fn task_response() -> Value {
    ok(
        "The task started; follow it with GET /api/v1/tasks/{id} or `task` events.",
        r("TaskAccepted"),
    )
}

/// The storage paths.
pub fn paths() -> Map<String, Value> {
    let bad = "Not JSON, an unknown field or a wrong type.";
    let mut p = Map::new();
    p.insert("/api/v1/pools".into(), json!({
        "get": { "operationId": "listPools", "summary": "Every pool, by name, with its space.",
            "responses": { "200": ok("The pools.", json!({ "type": "array", "items": r("Pool") })) } },
        "post": { "operationId": "definePool",
            "summary": "Defines a directory pool; the directory is created when absent.",
            "requestBody": body("PoolRequest"),
            "responses": {
                "201": ok("The pool.", r("Pool")),
                "400": err(bad),
                "409": err("A pool with that name, or on that directory, exists."),
                "422": err("A bad name, or a path that is not absolute or not a directory; `field` names it."),
            } }
    }));
    p.insert(
        "/api/v1/pools/{pool}".into(),
        json!({
            "get": { "operationId": "getPool", "summary": "One pool.", "parameters": [pool_param()],
                "responses": { "200": ok("The pool.", r("Pool")), "404": err("No such pool.") } },
            "delete": { "operationId": "deletePool",
                "summary": "Forgets an empty pool; its directory and any foreign files stay.",
                "parameters": [pool_param()],
                "responses": { "204": { "description": "Deleted." }, "404": err("No such pool."),
                    "409": err("The pool has volumes (one is named): delete them first.") } }
        }),
    );
    p.insert("/api/v1/pools/{pool}/volumes".into(), json!({
        "get": { "operationId": "listVolumes", "summary": "The pool's volumes, by name.",
            "parameters": [pool_param()],
            "responses": { "200": ok("The volumes.", json!({ "type": "array", "items": r("Volume") })),
                "404": err("No such pool.") } },
        "post": { "operationId": "createVolume", "summary": "Creates an empty volume.",
            "parameters": [pool_param()], "requestBody": body("VolumeCreate"),
            "responses": { "201": ok("The volume.", r("Volume")), "400": err(bad),
                "404": err("No such pool."), "409": err("The name is taken."),
                "422": err("A bad name, size or format; `field` names it.") } }
    }));
    p.insert("/api/v1/pools/{pool}/volumes/import".into(), json!({
        "post": { "operationId": "importVolume",
            "summary": "Copies or converts a host image into a new volume, as a task.",
            "parameters": [pool_param()], "requestBody": body("VolumeImport"),
            "responses": { "202": task_response(), "400": err(bad), "404": err("No such pool."),
                "409": err("The name is taken."),
                "422": err("A bad name or format, or a source that is not an absolute path to a readable image without a backing file.") } }
    }));
    p.insert("/api/v1/pools/{pool}/volumes/clone".into(), json!({
        "post": { "operationId": "cloneVolume",
            "summary": "A linked qcow2 clone (201, backed by the source through a relative path), or a full copy as a task (202).",
            "parameters": [pool_param()], "requestBody": body("VolumeClone"),
            "responses": { "201": ok("The linked clone.", r("Volume")), "202": task_response(),
                "400": err(bad), "404": err("No such pool or source volume."),
                "409": err("The name is taken, or the source is still being written."),
                "422": err("A bad name.") } }
    }));
    p.insert("/api/v1/pools/{pool}/volumes/{volume}".into(), json!({
        "get": { "operationId": "getVolume", "summary": "One volume.", "parameters": volume_params(),
            "responses": { "200": ok("The volume.", r("Volume")), "404": err("No such pool or volume.") } },
        "delete": { "operationId": "deleteVolume", "summary": "Deletes a volume and its file.",
            "parameters": volume_params(),
            "responses": { "204": { "description": "Deleted." }, "404": err("No such pool or volume."),
                "409": err("A VM uses it, a linked clone is backed by it, or a task writes it (named).") } }
    }));
    p.insert("/api/v1/pools/{pool}/volumes/{volume}/resize".into(), json!({
        "post": { "operationId": "resizeVolume", "summary": "Changes the virtual size; smaller only with `shrink`.",
            "parameters": volume_params(), "requestBody": body("VolumeResize"),
            "responses": { "200": ok("The volume.", r("Volume")), "400": err(bad),
                "404": err("No such pool or volume."), "409": err("A VM uses it (named), or a task writes it."),
                "422": err("A bad size, a shrink without `shrink`, or a format that cannot be resized.") } }
    }));
    p.insert("/api/v1/tasks".into(), json!({
        "get": { "operationId": "listTasks", "summary": "Every task, newest first.",
            "responses": { "200": ok("The tasks.", json!({ "type": "array", "items": r("Task") })) } }
    }));
    let id = param("id", "The task's id.");
    p.insert(
        "/api/v1/tasks/{id}".into(),
        json!({
            "get": { "operationId": "getTask", "summary": "One task.", "parameters": [id.clone()],
                "responses": { "200": ok("The task.", r("Task")), "404": err("No such task.") } }
        }),
    );
    p.insert("/api/v1/tasks/{id}/cancel".into(), json!({
        "post": { "operationId": "cancelTask",
            "summary": "Stops a running task, removes its partial volume, and answers the task once it has stopped.",
            "parameters": [id],
            "responses": { "200": ok("The task, cancelled.", r("Task")), "404": err("No such task."),
                "409": err("The task has already ended.") } }
    }));
    p
}

/// The storage schemas.
pub fn schemas() -> Map<String, Value> {
    let formats = json!(["raw", "qcow2", "vmdk", "vpc", "vhd", "vhdx", "vdi"]);
    let size = json!({ "oneOf": [ { "type": "integer", "minimum": 1 },
        { "type": "string", "example": "10G", "description": "With a K, M, G or T suffix (binary)." } ] });
    let name = json!({ "type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$" });
    let states: Vec<&str> = crate::storage::TaskState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let v = json!({
        "Pool": { "type": "object", "required": ["name", "path", "capacity", "allocation", "available", "volumes", "created_at"],
            "properties": {
                "name": { "type": "string" }, "path": { "type": "string" },
                "capacity": { "type": "integer", "description": "Bytes of the file system holding the directory (statvfs)." },
                "allocation": { "type": "integer", "description": "Bytes the pool's volumes occupy on disk." },
                "available": { "type": "integer", "description": "Bytes free for an unprivileged writer (statvfs)." },
                "volumes": { "type": "integer" },
                "created_at": { "type": "string", "format": "date-time" } } },
        "PoolRequest": { "type": "object", "additionalProperties": false, "required": ["name", "path"],
            "properties": { "name": name, "path": { "type": "string", "description": "Absolute; created when absent." } } },
        "Volume": { "type": "object", "required": ["pool", "name", "path", "format", "capacity", "allocation", "created_at"],
            "properties": {
                "pool": { "type": "string" }, "name": { "type": "string" }, "path": { "type": "string" },
                "format": { "type": "string", "enum": formats },
                "capacity": { "type": "integer", "description": "Virtual size in bytes." },
                "allocation": { "type": "integer", "description": "Bytes the file occupies on disk." },
                "backing": { "type": "string", "description": "The volume a linked clone is backed by." },
                "task": { "type": "string", "format": "uuid", "description": "The task still writing it." },
                "created_at": { "type": "string", "format": "date-time" } } },
        "VolumeCreate": { "type": "object", "additionalProperties": false, "required": ["name", "capacity"],
            "properties": { "name": name, "capacity": size, "format": { "type": "string", "enum": formats, "default": "qcow2" } } },
        "VolumeImport": { "type": "object", "additionalProperties": false, "required": ["name", "source"],
            "properties": { "name": name, "source": { "type": "string", "description": "Absolute path of a host image." },
                "format": { "type": "string", "enum": formats, "description": "The source's format; probed when absent." },
                "convert_to": { "type": "string", "enum": formats, "description": "The volume's format; the source's when absent." } } },
        "VolumeClone": { "type": "object", "additionalProperties": false, "required": ["name", "from"],
            "properties": { "name": name, "from": { "type": "string" },
                "linked": { "type": "boolean", "default": true, "description": "false: a full copy, as a task." } } },
        "VolumeResize": { "type": "object", "additionalProperties": false, "required": ["capacity"],
            "properties": { "capacity": size, "shrink": { "type": "boolean", "default": false } } },
        "TaskState": { "type": "string", "enum": states },
        "Task": { "type": "object", "required": ["id", "kind", "target", "state", "progress", "created_at"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "kind": { "type": "string", "enum": ["import", "convert", "clone"] },
                "target": { "type": "string", "example": "pool/volume" },
                "state": r("TaskState"),
                "progress": { "type": "integer", "minimum": 0, "maximum": 100 },
                "error": { "type": "string" },
                "created_at": { "type": "string", "format": "date-time" },
                "finished_at": { "type": "string", "format": "date-time" } } },
        "TaskAccepted": { "type": "object", "required": ["task"], "properties": { "task": r("Task") } },
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
