//! The OpenAPI 3 document of the daemon's API, built in code next to the types it
//! describes (a committed copy lives in `crates/api/openapi.json`; a test fails when it is
//! stale). It is written by hand rather than derived with `utoipa` so that `VmSpec` (in
//! `paddock-spec`, which depends on serde only) needs no schema derive.

use serde_json::{json, Map, Value};

use crate::types::VmState;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn name_param() -> Value {
    json!([{
        "name": "name", "in": "path", "required": true,
        "description": "The VM's name.",
        "schema": { "type": "string" }
    }])
}

/// An operation on one VM that answers the VM afterwards.
fn action(op: &str, summary: &str, conflict: &str, stop_body: bool) -> Value {
    let mut o = json!({
        "operationId": op,
        "summary": summary,
        "parameters": name_param(),
        "responses": {
            "200": json_response("The VM afterwards.", schema_ref("Vm")),
            "404": error_response("No VM has that name."),
            "409": error_response(conflict),
            "500": error_response("The driver failed; the message says how, and the VM's state says where it stands."),
        }
    });
    if stop_body {
        o["requestBody"] = json!({
            "required": false,
            "description": "Empty, or how long to wait for the guest.",
            "content": { "application/json": { "schema": schema_ref("StopRequest") } }
        });
        o["responses"]["400"] = error_response("The body is not a StopRequest.");
        o["responses"]["413"] = error_response("The body is over 1 MiB.");
    }
    o
}

fn paths() -> Value {
    let vm = "/api/v1/vms/{name}";
    let mut p = Map::new();
    p.insert("/openapi.json".into(), json!({ "get": {
        "operationId": "getOpenApi", "summary": "This document.",
        "responses": { "200": json_response("The OpenAPI document.", json!({ "type": "object" })) }
    }}));
    p.insert("/metrics".into(), json!({ "get": {
        "operationId": "getMetrics",
        "summary": "Prometheus text exposition: per VM its state, vCPUs, memory and disk counters; per host VMs by state.",
        "responses": { "200": { "description": "Metrics.", "content": { "text/plain; version=0.0.4": { "schema": { "type": "string" } } } } }
    }}));
    p.insert("/api/v1/vms".into(), json!({
        "get": {
            "operationId": "listVms", "summary": "Every VM, by name: full records, or with `view=summary` summaries without specs (a quarter of the size, for tables of many VMs).",
            "parameters": [{
                "name": "view", "in": "query", "required": false,
                "schema": { "type": "string", "enum": ["full", "summary"], "default": "full" }
            }],
            "responses": {
                "200": json_response("The VMs: `Vm` records, or `VmSummary` records with `view=summary`.", json!({ "type": "array", "items": { "oneOf": [schema_ref("Vm"), schema_ref("VmSummary")] } })),
                "422": error_response("`view` is neither full nor summary."),
            }
        },
        "post": {
            "operationId": "defineVm", "summary": "Defines a VM from a spec; it starts in state `defined`.",
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "description": "A VmSpec, plus an optional top-level `driver` that picks the hypervisor.",
                "allOf": [schema_ref("VmSpec"), { "type": "object", "properties": {
                    "driver": { "type": "string", "enum": ["paddock-vmm", "qemu"], "default": "paddock-vmm" }
                } }]
            } } } },
            "responses": {
                "201": json_response("The new VM.", schema_ref("Vm")),
                "400": error_response("Not JSON, or not a VmSpec (unknown or missing field, wrong type)."),
                "409": error_response("A VM with that name exists."),
                "413": error_response("The body is over 1 MiB."),
                "422": error_response("The spec does not validate, the driver is unknown, or the driver cannot run it; `field` names the field."),
            }
        }
    }));
    p.insert(vm.into(), json!({
        "get": {
            "operationId": "getVm", "summary": "One VM.", "parameters": name_param(),
            "responses": { "200": json_response("The VM.", schema_ref("Vm")), "404": error_response("No VM has that name.") }
        },
        "delete": {
            "operationId": "deleteVm", "summary": "Deletes a VM that has no process, with its files under the state directory, and with `volumes=delete` the pool volumes its disks name.",
            "parameters": name_param().as_array().cloned().unwrap_or_default().into_iter().chain([json!({
                "name": "volumes", "in": "query", "required": false,
                "schema": { "type": "string", "enum": ["keep", "delete"], "default": "keep" },
                "description": "`delete` also deletes the volumes the VM's disks name; refused (nothing deleted) when another VM uses one, one backs a linked clone or a task writes one."
            })]).collect::<Vec<_>>(),
            "responses": {
                "204": { "description": "Deleted." },
                "404": error_response("No VM has that name."),
                "409": error_response("The VM has a process (stop it first), or a volume cannot go with it."),
                "422": error_response("`volumes` is neither keep nor delete."),
            }
        }
    }));
    for (name, op, summary, conflict, body) in [
        ("start", "startVm", "Starts the VM's VMM and waits until its control socket answers.", "Not defined, stopped or crashed.", false),
        ("stop", "stopVm", "ACPI power button, up to `timeout_secs` for the guest, then a hard stop, then SIGKILL.", "Not running or paused.", true),
        ("restart", "restartVm", "Stop (as `stop`), then start.", "Not running or paused.", true),
        ("pause", "pauseVm", "Parks the vCPUs.", "Not running.", false),
        ("resume", "resumeVm", "Releases the vCPUs.", "Not paused.", false),
    ] {
        p.insert(format!("{vm}/{name}"), json!({ "post": action(op, summary, conflict, body) }));
    }
    p.insert(format!("{vm}/console"), json!({ "get": {
        "operationId": "getConsole", "summary": "The serial console output so far (COM1, appended across starts).",
        "parameters": name_param(),
        "responses": {
            "200": { "description": "The console log.", "content": { "text/plain": { "schema": { "type": "string" } } } },
            "404": error_response("No VM has that name."),
        }
    }}));
    p.insert("/api/v1/audit".into(), json!({ "get": {
        "operationId": "getAudit", "summary": "The audit log, oldest first.",
        "responses": { "200": json_response("Entries.", json!({ "type": "array", "items": schema_ref("AuditEntry") })) }
    }}));
    p.insert("/api/v1/events".into(), json!({ "get": {
        "operationId": "getEvents",
        "summary": "Server-Sent Events: `event: lifecycle`, `event: audit` or `event: task`, `data:` one Event as JSON.",
        "responses": { "200": { "description": "An endless event stream.", "content": { "text/event-stream": { "schema": schema_ref("Event") } } } }
    }}));
    p.extend(crate::openapi_tokens::paths());
    Value::Object(p)
}

fn spec_schemas() -> Value {
    json!({
        "VmSpec": {
            "type": "object", "additionalProperties": false,
            "description": "paddock_spec::VmSpec. Unknown fields are refused.",
            "required": ["name", "memory", "boot"],
            "properties": {
                "name": { "type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$" },
                "cpus": { "type": "object", "additionalProperties": false, "required": ["count"], "properties": {
                    "count": { "type": "integer", "minimum": 1, "maximum": paddock_spec::MAX_VCPUS },
                    "threads_per_core": { "type": "integer", "enum": [1, 2], "default": 1 } } },
                "memory": { "type": "object", "additionalProperties": false, "required": ["size_mib"], "properties": {
                    "size_mib": { "type": "integer", "minimum": paddock_spec::MIN_MEMORY_MIB, "maximum": paddock_spec::MAX_MEMORY_MIB },
                    "shared": { "type": "boolean", "default": false } } },
                "boot": { "oneOf": [
                    { "type": "object", "additionalProperties": false, "required": ["kind", "kernel"], "properties": {
                        "kind": { "type": "string", "enum": ["kernel"] }, "kernel": { "type": "string" },
                        "initramfs": { "type": "string" }, "cmdline": { "type": "string", "maxLength": 4095 } } },
                    { "type": "object", "additionalProperties": false, "required": ["kind", "firmware"], "properties": {
                        "kind": { "type": "string", "enum": ["firmware"] },
                        "firmware": { "type": "string", "enum": ["bios", "uefi"] } } } ] },
                "disks": { "type": "array", "items": { "type": "object", "additionalProperties": false, "description": "Either path and format, or volume.", "properties": {
                    "path": { "type": "string" },
                    "volume": { "type": "string", "example": "pool/volume", "description": "A paddockd storage volume; resolved to path and format at definition." },
                    "format": { "type": "string", "enum": ["raw", "qcow2", "vmdk", "vpc", "vhd", "vhdx", "vdi"] },
                    "readonly": { "type": "boolean" }, "serial": { "type": "string", "maxLength": 20 } } } },
                "nics": { "type": "array", "items": { "type": "object", "additionalProperties": false, "properties": {
                    "tap": { "type": "string" }, "network": { "type": "string" }, "mac": { "type": "string", "example": "52:54:00:12:34:56" } } } },
                "serial": { "type": "object", "required": ["mode"], "description": "Ignored by paddockd, which sends COM1 to the VM's console log.",
                    "properties": { "mode": { "type": "string", "enum": ["off", "stdio", "file", "socket", "pty"] }, "path": { "type": "string" } } },
                "rng": { "type": "boolean" },
                "vsock": { "type": "object", "additionalProperties": false, "required": ["cid", "socket"], "properties": {
                    "cid": { "type": "integer", "minimum": 3 }, "socket": { "type": "string" } } },
                "accel": { "type": "string", "enum": ["auto", "kvm", "tcg"] }
            }
        }
    })
}

/// The whole document.
pub fn document() -> Value {
    let states: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
    let mut schemas = json!({
        "Error": { "type": "object", "required": ["error"], "properties": {
            "error": { "type": "string", "description": "What went wrong and what to do." },
            "field": { "type": "string", "description": "The request field at fault.", "example": "memory.size_mib" } } },
        "VmState": { "type": "string", "enum": states },
        "VmSummary": { "type": "object", "required": ["id", "name", "state", "driver", "cpus", "memory_mib"], "properties": {
            "id": { "type": "string", "format": "uuid" },
            "name": { "type": "string" },
            "state": schema_ref("VmState"),
            "driver": { "type": "string", "example": "paddock-vmm" },
            "cpus": { "type": "integer", "minimum": 1 },
            "memory_mib": { "type": "integer", "minimum": 1 },
            "pid": { "type": "integer" }
        }, "additionalProperties": false },
        "Vm": { "type": "object", "required": ["id", "name", "spec", "state", "driver", "created_at", "updated_at"], "properties": {
            "id": { "type": "string", "format": "uuid" },
            "name": { "type": "string" },
            "spec": schema_ref("VmSpec"),
            "state": schema_ref("VmState"),
            "driver": { "type": "string", "example": "paddock-vmm" },
            "created_at": { "type": "string", "format": "date-time" },
            "updated_at": { "type": "string", "format": "date-time" },
            "pid": { "type": "integer", "description": "The VMM's process id while it has one." },
            "exit_status": { "type": "integer", "description": "Exit status of the last process when known; a signal n is 128 + n." },
            "message": { "type": "string" } } },
        "StopRequest": { "type": "object", "additionalProperties": false, "properties": {
            "timeout_secs": { "type": "integer", "minimum": 0, "default": 30,
                "description": "Seconds to wait for the guest after the power button; 0 skips it." } } },
        "AuditEntry": { "type": "object", "required": ["seq", "time", "action", "target", "result"], "properties": {
            "seq": { "type": "integer" },
            "time": { "type": "string", "format": "date-time" },
            "uid": { "type": "integer", "description": "Caller's Unix uid (SO_PEERCRED); absent for the daemon's own changes." },
            "who": { "type": "string", "example": "token:ci", "description": "`uid:N` on the Unix socket, `token:<name>` over TCP + TLS; absent for the daemon's own changes." },
            "action": { "type": "string", "example": "start" },
            "target": { "type": "string" },
            "result": { "type": "string", "description": "`ok` or the error answered." } } },
        "Event": { "type": "object", "required": ["kind"], "description": "kind=lifecycle: time, vm, from, to, message; kind=audit: an AuditEntry's fields; kind=task: task.",
            "properties": {
                "kind": { "type": "string", "enum": ["lifecycle", "audit", "task"] },
                "task": schema_ref("Task"),
                "time": { "type": "string", "format": "date-time" },
                "vm": { "type": "string" },
                "from": schema_ref("VmState"),
                "to": schema_ref("VmState"),
                "message": { "type": "string" } } },
    });
    if let (Some(m), Value::Object(spec)) = (schemas.as_object_mut(), spec_schemas()) {
        m.extend(spec);
        m.extend(crate::openapi_storage::schemas());
        m.extend(crate::openapi_network::schemas());
        m.extend(crate::openapi_tokens::schemas());
    }
    let mut paths = paths();
    if let Some(p) = paths.as_object_mut() {
        p.extend(crate::openapi_storage::paths());
        p.extend(crate::openapi_network::paths());
    }
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "paddockd API",
            "version": "1",
            "description": "HTTP/1.1 with JSON bodies on paddockd's Unix socket (default /run/paddock/paddockd.sock). Errors are {\"error\": \"...\", \"field\": \"...\"}. Request bodies are limited to 1 MiB."
        },
        "servers": [{ "url": "http://localhost", "description": "Unix socket (paddockd --socket PATH)" }],
        "paths": paths,
        "components": { "schemas": schemas }
    });
    crate::openapi_ws::extend(&mut doc);
    doc
}

/// Every (method, path) the document lists, methods upper case, sorted.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for method in item.keys() {
                    ops.push((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    ops.sort();
    ops
}

/// The document as the committed file holds it: pretty JSON and a final newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
