//! The control API under real KVM with the `wait` guest: the OpenAPI document matches the
//! routes, pause/resume/stop/power-button change the VM, counters move, errors are JSON 4xx,
//! and 1,000 `GET /api/v1/vm` all succeed (p50/p99 printed for the benchmark).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::*;
use serde_json::Value;

/// A running VMM with the wait guest and an API socket.
struct Vm {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vm {
    fn start(extra: &[&str]) -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut child = Command::new("timeout")
            .arg("120")
            .arg(env!("CARGO_BIN_EXE_paddock-vmm"))
            .args(["--kernel", guest("wait").to_str().unwrap()])
            .args(["--memory", "64M", "--api-socket", socket.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start paddock-vmm");
        // The socket is bound before the vCPUs start; the ready line says the guest runs.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).unwrap();
            assert!(n > 0, "the VMM ended before the guest was ready");
            if line.contains("wait guest ready") {
                break;
            }
        }
        Vm {
            child,
            socket,
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client(UnixStream::connect(&self.socket).expect("connect to the API socket"))
    }

    /// Waits for the process and returns (status, stderr).
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP connection.
struct Client(UnixStream);

/// Status, headers (lower-case names) and JSON body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Client {
    fn raw(&mut self, bytes: &[u8]) -> Reply {
        self.0.write_all(bytes).unwrap();
        self.read_reply()
    }

    fn call(&mut self, method: &str, path: &str, body: &str) -> Reply {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.raw(req.as_bytes())
    }

    fn read_reply(&mut self) -> Reply {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.0.read(&mut b).unwrap();
            assert_eq!(n, 1, "connection closed mid-response: {head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .expect("Content-Length")
            .1
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&body).expect("a JSON body"),
        }
    }
}

fn openapi() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("api/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            set.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    set
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_the_server_answers() {
    let doc = openapi();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented = documented_routes(&doc);
    let served: BTreeSet<(String, String)> = paddock_vmm::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served, "openapi.json and api::ROUTES differ");
    if !kvm_available("the_openapi_document_lists_exactly_the_routes_the_server_answers") {
        return;
    }
    // Live: every documented route is answered (neither 404 nor 405), every other method
    // on a documented path is 405. Stop goes last.
    let vm = Vm::start(&[]);
    let mut c = vm.client();
    assert_eq!(c.call("GET", "/api/v1/nothing", "").status, 404);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    let mut probes = Vec::new();
    for path in &paths {
        for m in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            probes.push((m.to_string(), path.to_string()));
        }
    }
    // Wrong methods first, then the documented routes, with stop (which ends the VM) last.
    probes.sort_by_key(|(m, p)| {
        (
            documented.contains(&(m.clone(), p.clone())),
            p.ends_with("/stop"),
        )
    });
    for (m, path) in &probes {
        let r = c.call(m, path, "");
        if documented.contains(&(m.clone(), path.clone())) {
            assert!(
                ![404, 405].contains(&r.status),
                "{m} {path}: {} {}",
                r.status,
                r.body
            );
            let codes = &doc["paths"][path][m.to_ascii_lowercase()]["responses"];
            assert!(
                codes.get(r.status.to_string()).is_some(),
                "{m} {path} answered {}, which the document does not list",
                r.status
            );
        } else {
            assert_eq!(r.status, 405, "{m} {path}: {}", r.body);
        }
    }
    let (status, err) = vm.wait();
    assert_eq!(status.code(), Some(0), "{err}");
}

fn exits(c: &mut Client, vcpu: usize) -> Value {
    let r = c.call("GET", "/api/v1/vm/counters", "");
    assert_eq!(r.status, 200);
    r.body["vcpus"][vcpu]["exits"].clone()
}

#[test]
fn pause_resume_power_button_and_stop_drive_the_vm() {
    if !kvm_available("pause_resume_power_button_and_stop_drive_the_vm") {
        return;
    }
    let vm = Vm::start(&["--cpus", "2"]);
    let mut c = vm.client();
    let r = c.call("GET", "/api/v1/vm", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "running");
    assert_eq!(r.body["vcpus"], 2);
    assert_eq!(r.body["memory_bytes"], 64u64 << 20);
    assert!(["pvh", "linux64"].contains(&r.body["boot_entry"].as_str().unwrap()));
    assert!(r.body["uptime_ms"].is_u64());
    let names: Vec<&str> = r.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"com1") && names.contains(&"acpi-pm"),
        "{names:?}"
    );

    assert_eq!(c.call("PUT", "/api/v1/vm/resume", "").status, 409);
    let r = c.call("PUT", "/api/v1/vm/pause", "");
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("paused")));
    assert_eq!(c.call("GET", "/api/v1/vm", "").body["state"], "paused");
    assert_eq!(c.call("PUT", "/api/v1/vm/pause", "{}").status, 409);
    // Parked vCPUs make no exits: two reads agree, for both vCPUs (the AP waits for a SIPI
    // inside KVM_RUN and was kicked out of it too).
    for v in 0..2 {
        assert_eq!(
            exits(&mut c, v),
            exits(&mut c, v),
            "vCPU {v} ran while paused"
        );
    }
    let before = exits(&mut c, 0)["io_out"].as_u64().unwrap();
    let r = c.call("PUT", "/api/v1/vm/resume", "");
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("running")));
    // The guest's heartbeat port writes resume (bounded wait on a condition, not a sleep).
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while exits(&mut c, 0)["io_out"].as_u64().unwrap() == before {
        assert!(
            Instant::now() < deadline,
            "the guest did not run after resume"
        );
    }
    let r = c.call("PUT", "/api/v1/vm/power-button", "");
    assert_eq!(r.status, 200);
    // Stop while paused: parked vCPUs must end too.
    assert_eq!(c.call("PUT", "/api/v1/vm/pause", "").status, 200);
    let r = c.call("PUT", "/api/v1/vm/stop", "");
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (200, Some("shutting-down"))
    );
    let (status, err) = vm.wait();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("stopped by API"), "{err}");
}

#[test]
fn errors_are_json_with_4xx_statuses() {
    if !kvm_available("errors_are_json_with_4xx_statuses") {
        return;
    }
    let vm = Vm::start(&[]);
    let socket = vm.socket.clone();
    let mut c = vm.client();
    let r = c.call("GET", "/api/v1/nowhere", "");
    assert_eq!(r.status, 404);
    assert!(r.body["error"].is_string());
    let r = c.call("DELETE", "/api/v1/vm", "");
    assert_eq!(r.status, 405);
    assert!(r.headers.iter().any(|(k, v)| k == "allow" && v == "GET"));
    let r = c.call("PUT", "/api/v1/vm/pause", "{not json");
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"].as_str().unwrap().contains("JSON"),
        "{}",
        r.body
    );
    assert_eq!(c.call("PUT", "/api/v1/vm/pause", "[1]").status, 400);
    assert_eq!(
        c.call("PUT", "/api/v1/vm/pause", r#"{"now":1}"#).status,
        400
    );
    assert_eq!(c.call("GET", "/api/v1/vm", "").body["state"], "running");
    // Size limits: the server answers and closes the connection.
    let big = format!(
        "PUT /api/v1/vm/pause HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    assert_eq!(c.raw(big.as_bytes()).status, 413);
    let mut c = vm.client();
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
    assert_eq!(c.raw(long.as_bytes()).status, 431);
    let mut c = vm.client();
    assert_eq!(c.raw(b"NONSENSE\r\n\r\n").status, 400);
    let mut c = vm.client();
    assert_eq!(c.call("PUT", "/api/v1/vm/stop", "").status, 200);
    let (status, err) = vm.wait();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!socket.exists(), "the API socket is removed at exit");
}

#[test]
fn disk_counters_are_reported_per_device() {
    if !kvm_available("disk_counters_are_reported_per_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vm = Vm::start(&["--disk", &format!("path={}", disk.display())]);
    let mut c = vm.client();
    let info = c.call("GET", "/api/v1/vm", "").body;
    let blk = info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "virtio-blk0")
        .expect("virtio-blk0 listed")
        .clone();
    assert_eq!(blk["location"], "pci 00:01.0");
    let r = c.call("GET", "/api/v1/vm/counters", "");
    let dev = &r.body["devices"][0];
    assert_eq!(dev["name"], "virtio-blk0");
    for k in [
        "read_requests",
        "write_requests",
        "read_bytes",
        "write_bytes",
        "errors",
    ] {
        assert_eq!(
            dev["counters"][k], 0,
            "{k}: the wait guest does no disk I/O"
        );
    }
    assert_eq!(c.call("PUT", "/api/v1/vm/stop", "").status, 200);
    assert_eq!(vm.wait().0.code(), Some(0));
}

#[test]
fn a_thousand_get_vm_requests_all_succeed() {
    if !kvm_available("a_thousand_get_vm_requests_all_succeed") {
        return;
    }
    let vm = Vm::start(&[]);
    let mut c = vm.client();
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let r = c.call("GET", "/api/v1/vm", "");
        times.push(t.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.body["state"], "running");
    }
    times.sort();
    eprintln!(
        "BENCH api GET /api/v1/vm: n=1000 p50={:?} p99={:?} max={:?}",
        times[499], times[989], times[999]
    );
    assert_eq!(c.call("PUT", "/api/v1/vm/stop", "").status, 200);
    assert_eq!(vm.wait().0.code(), Some(0));
}
