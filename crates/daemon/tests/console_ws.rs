//! The interactive console and the event stream over WebSocket, with a real paddockd and
//! paddock-vmm under KVM: the echo guest answers input typed over the WebSocket, the log keeps
//! it, a second client is refused while one is attached, a VM without a process has no
//! console, and the events WebSocket carries lifecycle events.

mod common;

use std::time::Duration;

use common::*;
use paddock_api::client::Action;
use paddock_api::client_console::{Message, Socket};
use paddock_api::{Event, VmState};

/// Reads binary frames until their text contains `text` (carriage returns dropped); returns
/// it all.
fn read_until(ws: &mut Socket, text: &str) -> String {
    let mut got = String::new();
    while !got.contains(text) {
        match ws.read().expect("read the console") {
            Message::Binary(b) => got.push_str(&String::from_utf8_lossy(&b).replace('\r', "")),
            Message::Close(f) => panic!("closed before {text:?} ({f:?}): {got:?}"),
            _ => {}
        }
    }
    got
}

/// Reads until the daemon closes the WebSocket; returns the close reason.
fn read_close(ws: &mut Socket) -> String {
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| f.reason.to_string()).unwrap_or_default(),
            Ok(_) => {}
            Err(e) => panic!("the console ended without a close frame: {e}"),
        }
    }
}

fn timed(ws: Socket) -> Socket {
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    ws
}

#[test]
fn the_console_websocket_echoes_logs_and_has_one_client() {
    if !kvm_available("the_console_websocket_echoes_logs_and_has_one_client") {
        return;
    }
    let d = Daemon::start();
    let c = d.client();
    d.define("echo", "echo");
    // No process, no console.
    let err = c.console_ws("echo").unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("start it first"), "{err}");

    c.action("echo", Action::Start, None).unwrap();
    let mut ws = timed(c.console_ws("echo").unwrap());
    // What the guest printed before anyone attached is kept for the first client.
    read_until(&mut ws, "echo guest ready\n");
    ws.send(Message::Binary("abc".into())).unwrap();
    read_until(&mut ws, "ABC");
    // The log has it too.
    d.wait_console("echo", "ABC");

    // One client at a time: a second is refused and changes nothing.
    let err = c.console_ws("echo").unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    ws.send(Message::Binary("d".into())).unwrap();
    read_until(&mut ws, "D");

    // Once the first detaches, the console is free again.
    ws.close(None).unwrap();
    read_close(&mut ws);
    let mut again = None;
    wait_until(30, "the console to be free after a detach", || {
        again = c.console_ws("echo").ok();
        again.is_some()
    });
    let mut ws = timed(again.unwrap());
    ws.send(Message::Binary("xq".into())).unwrap();
    read_until(&mut ws, "X\necho guest bye\n");
    // The guest ends: the daemon closes the console.
    assert!(read_close(&mut ws).contains("VM stopped"));
    d.wait_state("echo", VmState::Stopped);
    let err = c.console_ws("echo").unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");

    // Attaches are audited, refused ones with the error.
    let audit = c.audit().unwrap();
    let consoles: Vec<_> = audit.iter().filter(|e| e.action == "console").collect();
    let count = |what: &str| consoles.iter().filter(|e| e.result.contains(what)).count();
    let ok = consoles.iter().filter(|e| e.result == "ok").count();
    assert_eq!(ok, 2, "{consoles:?}");
    assert_eq!(count("start it first"), 2, "{consoles:?}");
    // At least the one above; the wait for a free console may have met more.
    assert!(count("in use") >= 1, "{consoles:?}");
    assert!(consoles
        .iter()
        .all(|e| e.target == "echo" && e.uid.is_some()));
    // The plain GET still answers the log.
    let log = String::from_utf8_lossy(&c.console("echo").unwrap()).replace('\r', "");
    assert!(
        log.contains("echo guest ready\nABCDX\necho guest bye\n"),
        "{log}"
    );
}

#[test]
fn the_events_websocket_carries_lifecycle_events() {
    if !kvm_available("the_events_websocket_carries_lifecycle_events") {
        return;
    }
    let d = Daemon::start();
    let c = d.client();
    let mut ws = timed(c.events_ws().unwrap());
    d.define("ev", "wait");
    c.action("ev", Action::Start, None).unwrap();
    let running =
        |e: &Event| matches!(e, Event::Lifecycle { vm, to: VmState::Running, .. } if vm == "ev");
    let audited =
        |e: &Event| matches!(e, Event::Audit(a) if a.action == "start" && a.target == "ev");
    let mut seen: Vec<Event> = Vec::new();
    while !(seen.iter().any(running) && seen.iter().any(audited)) {
        let Message::Text(t) = ws.read().expect("read the events") else {
            continue;
        };
        seen.push(serde_json::from_str(&t).expect("an Event as JSON"));
    }
    // In order: the start moved the VM through `starting` first.
    let starting = seen
        .iter()
        .position(|e| {
            matches!(e, Event::Lifecycle { vm, from: VmState::Defined, to: VmState::Starting, .. }
                if vm == "ev")
        })
        .expect("defined -> starting");
    assert!(
        starting < seen.iter().position(running).unwrap(),
        "{seen:?}"
    );
}
