//! `GET /api/v1/events` streams lifecycle and audit events as Server-Sent Events;
//! `GET /metrics` is valid Prometheus text exposition with per-VM and per-host series.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use paddock_api::client::Action;
use paddock_api::{Event, StopRequest, VmState};

/// Reads SSE events until `done` says enough; returns them.
fn read_events(
    reader: &mut BufReader<UnixStream>,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut kind = String::new();
    let mut line = String::new();
    while !done(&events) {
        line.clear();
        let n = reader.read_line(&mut line).expect("read the event stream");
        assert!(n > 0, "the event stream ended");
        let l = line.trim_end();
        if let Some(k) = l.strip_prefix("event: ") {
            kind = k.to_string();
        } else if let Some(data) = l.strip_prefix("data: ") {
            let ev: Event = serde_json::from_str(data).expect("an Event as data");
            assert_eq!(ev.kind(), kind, "the SSE event name is the event's kind");
            events.push(ev);
        }
    }
    events
}

#[test]
fn lifecycle_and_audit_events_stream_in_order() {
    if !kvm_available("lifecycle_and_audit_events_stream_in_order") {
        return;
    }
    let d = Daemon::start();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The stream is open once its headers are in; events after this point are ours.
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
    }
    d.define("e", "wait");
    let c = d.client();
    c.action("e", Action::Start, None).unwrap();
    c.action(
        "e",
        Action::Stop,
        Some(StopRequest {
            timeout_secs: Some(0),
        }),
    )
    .unwrap();
    let events = read_events(&mut r, |evs| {
        evs.iter()
            .any(|e| matches!(e, Event::Audit(a) if a.action == "stop"))
    });
    let transitions: Vec<(VmState, VmState)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Lifecycle { vm, from, to, .. } if vm == "e" => Some((*from, *to)),
            _ => None,
        })
        .collect();
    use VmState::*;
    assert_eq!(
        transitions,
        [
            (Defined, Starting),
            (Starting, Running),
            (Running, Stopping),
            (Stopping, Stopped)
        ]
    );
    let audits: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Audit(a) => Some(a.action.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(audits, ["define", "start", "stop"]);
}

#[test]
fn metrics_parse_as_prometheus_text() {
    if !kvm_available("metrics_parse_as_prometheus_text") {
        return;
    }
    let d = Daemon::start();
    d.define("m1", "wait");
    let mut spec = spec_json("m2", "wait");
    spec["cpus"] = serde_json::json!({ "count": 2 });
    d.client().define_json(spec.to_string().as_bytes()).unwrap();
    d.client().action("m1", Action::Start, None).unwrap();

    let text = String::from_utf8(d.client().raw("GET", "/metrics", None).unwrap()).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        }
    };
    assert_eq!(value("paddock_vms", &[("state", "running")]), 1.0);
    assert_eq!(value("paddock_vms", &[("state", "defined")]), 1.0);
    assert_eq!(value("paddock_vms", &[("state", "crashed")]), 0.0);
    assert_eq!(
        value("paddock_vm_state", &[("vm", "m1"), ("state", "running")]),
        1.0
    );
    assert_eq!(
        value("paddock_vm_state", &[("vm", "m1"), ("state", "defined")]),
        0.0
    );
    assert_eq!(
        value("paddock_vm_state", &[("vm", "m2"), ("state", "defined")]),
        1.0
    );
    assert_eq!(value("paddock_vm_vcpus", &[("vm", "m1")]), 1.0);
    assert_eq!(value("paddock_vm_vcpus", &[("vm", "m2")]), 2.0);
    assert_eq!(
        value("paddock_vm_memory_bytes", &[("vm", "m1")]),
        (64u64 << 20) as f64
    );
    assert!(scrape.docs.contains_key("paddock_vm_disk_read_bytes_total"));
    // From /proc: the running VM's process, nothing for the defined one; the host's totals
    // and what running VMs were given.
    assert!(value("paddock_vm_rss_bytes", &[("vm", "m1")]) > 0.0);
    assert!(value("paddock_vm_process_cpu_seconds_total", &[("vm", "m1")]) >= 0.0);
    // The wait guest spins in its vCPU thread: its CPU time shows up there within ticks.
    wait_until(30, "vCPU time of the spinning guest", || {
        let text = String::from_utf8(d.client().raw("GET", "/metrics", None).unwrap()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("paddock_vm_vcpu_seconds_total{vm=\"m1\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    });
    assert!(!scrape
        .samples
        .iter()
        .any(|s| s.metric == "paddock_vm_rss_bytes" && s.labels.get("vm") == Some("m2")));
    assert!(value("paddock_host_cpus", &[]) >= 1.0);
    assert!(value("paddock_host_memory_bytes", &[]) > 0.0);
    assert_eq!(value("paddock_host_allocated_vcpus", &[]), 1.0);
    assert_eq!(
        value("paddock_host_allocated_memory_bytes", &[]),
        value("paddock_vm_memory_bytes", &[("vm", "m1")])
    );
}
