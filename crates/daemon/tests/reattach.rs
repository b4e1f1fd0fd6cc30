//! Daemon restarts: a running VM keeps running while paddockd is gone, the next paddockd
//! re-attaches and reports the true state, and a VM that ended meanwhile is reported
//! stopped.

mod common;

use std::time::Duration;

use common::*;
use paddock_api::client::Action;
use paddock_api::{http, StopRequest, VmState};

#[test]
fn a_running_vm_survives_a_daemon_crash_and_is_re_attached() {
    if !kvm_available("a_running_vm_survives_a_daemon_crash_and_is_re_attached") {
        return;
    }
    let mut d = Daemon::start();
    d.define("r1", "wait");
    d.define("r2", "wait");
    let c = d.client();
    let pid1 = c.action("r1", Action::Start, None).unwrap().pid.unwrap();
    let pid2 = c.action("r2", Action::Start, None).unwrap().pid.unwrap();
    c.action("r2", Action::Pause, None).unwrap();
    d.wait_console("r1", "wait guest ready");

    d.stop_with("KILL");
    assert!(alive(pid1) && alive(pid2), "VMMs must outlive the daemon");
    d.spawn_again();

    let c = d.client();
    let r1 = c.get("r1").unwrap();
    let r2 = c.get("r2").unwrap();
    assert_eq!((r1.state, r1.pid), (VmState::Running, Some(pid1)));
    assert_eq!((r2.state, r2.pid), (VmState::Paused, Some(pid2)), "{r2:?}");
    assert!(r1.message.unwrap().contains("re-attached"));

    // The re-attached VMs obey the new daemon.
    assert_eq!(
        c.action("r2", Action::Resume, None).unwrap().state,
        VmState::Running
    );
    let stop = Some(StopRequest {
        timeout_secs: Some(0),
    });
    assert_eq!(
        c.action("r1", Action::Stop, stop).unwrap().state,
        VmState::Stopped
    );
    wait_until(30, "r1's VMM to end", || !alive(pid1));

    // A clean daemon stop leaves r2 running too, and it is found again.
    d.restart();
    let r2 = d.client().get("r2").unwrap();
    assert_eq!((r2.state, r2.pid), (VmState::Running, Some(pid2)));
    let audit = d.client().audit().unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "attach" && a.target == "r2" && a.uid.is_none()));
}

#[test]
fn a_vm_that_exits_while_the_daemon_is_down_is_reported_stopped() {
    if !kvm_available("a_vm_that_exits_while_the_daemon_is_down_is_reported_stopped") {
        return;
    }
    let mut d = Daemon::start();
    let vm = d.define("gone", "wait");
    let pid = d
        .client()
        .action("gone", Action::Start, None)
        .unwrap()
        .pid
        .unwrap();
    d.stop_with("TERM");
    assert!(alive(pid));
    // Stop the VM behind the daemon's back, through the VMM's own control socket.
    let api = d
        .run_dir()
        .join("vms")
        .join(vm.id.to_string())
        .join("api.sock");
    let r = http::request(
        &api,
        "PUT",
        "/api/v1/vm/stop",
        Some(b"{}"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    wait_until(30, "the VMM to end", || !alive(pid));

    d.spawn_again();
    let vm = d.client().get("gone").unwrap();
    assert_eq!(vm.state, VmState::Stopped, "{vm:?}");
    assert_eq!(vm.pid, None);
    assert!(vm
        .message
        .unwrap()
        .contains("while paddockd was not running"));
    // And it starts again.
    let again = d.client().action("gone", Action::Start, None).unwrap();
    assert_eq!(again.state, VmState::Running);
}
