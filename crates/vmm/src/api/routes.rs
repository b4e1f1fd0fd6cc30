//! The control API's routes and their handlers. [`ROUTES`] is the table the server answers;
//! `crates/vmm/api/openapi.json` documents exactly these (a test holds them together).

use std::time::Duration;

use serde_json::{json, Value};

use super::http::{Request, Response};
use super::state::VmHandle;
use crate::vcpu::StateError;

/// Every (method, path) the server answers.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/vm"),
    ("GET", "/api/v1/vm/counters"),
    ("PUT", "/api/v1/vm/pause"),
    ("PUT", "/api/v1/vm/resume"),
    ("PUT", "/api/v1/vm/power-button"),
    ("PUT", "/api/v1/vm/stop"),
];

/// How long a pause waits for every vCPU to leave the guest.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a PUT body: empty, or an empty JSON object (no operation takes parameters yet).
fn check_body(body: &[u8]) -> Result<(), Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(body) {
        Err(e) => Err(Response::error(400, format!("the body is not JSON: {e}"))),
        Ok(Value::Object(m)) => match m.keys().next() {
            Some(k) => Err(Response::error(400, format!("unknown field '{k}'"))),
            None => Ok(()),
        },
        Ok(_) => Err(Response::error(400, "the body must be a JSON object")),
    }
}

fn state_error(e: StateError) -> Response {
    match e {
        StateError::Illegal(_) => Response::error(409, e.to_string()),
        StateError::Timeout { .. } => Response::error(503, e.to_string()),
    }
}

fn vm_info(vm: &VmHandle) -> Value {
    json!({
        "state": vm.state(),
        "vcpus": vm.info.vcpus,
        "memory_bytes": vm.info.memory_bytes,
        "boot_entry": vm.info.boot_entry,
        "uptime_ms": vm.started.elapsed().as_millis() as u64,
        "devices": vm.info.devices,
    })
}

fn counters(vm: &VmHandle) -> Value {
    let vcpus: Vec<Value> = vm
        .vcpus
        .counters()
        .iter()
        .enumerate()
        .map(|(id, c)| json!({ "id": id, "exits": c.snapshot() }))
        .collect();
    let devices: Vec<Value> = vm
        .counters
        .iter()
        .map(|d| json!({ "name": d.name, "counters": d.source.counters() }))
        .collect();
    json!({ "vcpus": vcpus, "devices": devices })
}

fn state_reply(vm: &VmHandle) -> Response {
    Response::json(&json!({ "state": vm.state() }))
}

/// Answers one request.
pub fn handle(req: &Request, vm: &VmHandle) -> Response {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p)| *p == req.path)
        .map(|(m, _)| *m)
        .collect();
    if allowed.is_empty() {
        return Response::error(404, format!("no resource at {}", req.path));
    }
    if !allowed.contains(&req.method.as_str()) {
        let mut r = Response::error(405, format!("{} does not accept {}", req.path, req.method));
        r.allow = Some(allowed.join(", "));
        return r;
    }
    if req.method == "PUT" {
        if let Err(r) = check_body(&req.body) {
            return r;
        }
    }
    let shutting_down = || Response::error(409, "the VM is shutting down");
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/api/v1/vm") => Response::json(&vm_info(vm)),
        ("GET", "/api/v1/vm/counters") => Response::json(&counters(vm)),
        ("PUT", "/api/v1/vm/pause") => {
            if vm.exit.status().is_some() {
                return shutting_down();
            }
            match vm.vcpus.pause(PAUSE_TIMEOUT) {
                Ok(()) => state_reply(vm),
                Err(e) => state_error(e),
            }
        }
        ("PUT", "/api/v1/vm/resume") => {
            if vm.exit.status().is_some() {
                return shutting_down();
            }
            match vm.vcpus.resume() {
                Ok(()) => state_reply(vm),
                Err(e) => state_error(e),
            }
        }
        ("PUT", "/api/v1/vm/power-button") => {
            if vm.exit.status().is_some() {
                return shutting_down();
            }
            vm.acpi
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .press_power_button();
            state_reply(vm)
        }
        ("PUT", "/api/v1/vm/stop") => {
            if vm.exit.status().is_some() {
                return shutting_down();
            }
            vm.exit.request(0, "stopped by API");
            state_reply(vm)
        }
        _ => Response::error(500, "route without a handler"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_bodies_must_be_empty_or_an_empty_object() {
        assert!(check_body(b"").is_ok());
        assert!(check_body(b" {} ").is_ok());
        assert_eq!(check_body(b"{").unwrap_err().status, 400);
        assert_eq!(check_body(b"[]").unwrap_err().status, 400);
        let r = check_body(br#"{"force":true}"#).unwrap_err();
        assert!(r.body.contains("force"), "{}", r.body);
    }
}
