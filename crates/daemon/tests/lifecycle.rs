//! The lifecycle end to end, with a real paddockd and paddock-vmm under KVM: define, start,
//! read the console's ready line, pause, resume, stop; guests that end by themselves.

mod common;

use common::*;
use paddock_api::client::Action;
use paddock_api::{StopRequest, VmState};

#[test]
fn define_start_console_pause_resume_stop() {
    if !kvm_available("define_start_console_pause_resume_stop") {
        return;
    }
    let d = Daemon::start();
    let c = d.client();
    let vm = d.define("w1", "wait");
    assert_eq!(vm.state, VmState::Defined);
    assert_eq!(vm.driver, "paddock-vmm");

    let vm = c.action("w1", Action::Start, None).unwrap();
    assert_eq!(vm.state, VmState::Running);
    let pid = vm.pid.expect("a running VM has a pid");
    assert!(alive(pid));
    d.wait_console("w1", "wait guest ready");

    assert_eq!(
        c.action("w1", Action::Pause, None).unwrap().state,
        VmState::Paused
    );
    assert_eq!(c.get("w1").unwrap().state, VmState::Paused);
    assert_eq!(
        c.action("w1", Action::Resume, None).unwrap().state,
        VmState::Running
    );

    // The wait guest ignores the power button: a short grace, then the VMM's hard stop.
    let stop = StopRequest {
        timeout_secs: Some(1),
    };
    let vm = c.action("w1", Action::Stop, Some(stop)).unwrap();
    assert_eq!(vm.state, VmState::Stopped);
    assert_eq!(vm.pid, None);
    assert_eq!(vm.exit_status, Some(0), "{vm:?}");
    assert!(vm.message.unwrap().contains("stopped by the VMM"));
    wait_until(30, "the VMM process to go", || !alive(pid));

    // A stopped VM starts again; the console log keeps growing across starts.
    let vm = c.action("w1", Action::Restart, None);
    assert_eq!(vm.unwrap_err().status(), Some(409));
    c.action("w1", Action::Start, None).unwrap();
    c.action(
        "w1",
        Action::Stop,
        Some(StopRequest {
            timeout_secs: Some(0),
        }),
    )
    .unwrap();
    c.delete("w1").unwrap();
    assert!(c.list().unwrap().is_empty());

    let me = rustix_uid();
    let audit = c.audit().unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        ["define", "start", "pause", "resume", "stop", "restart", "start", "stop", "delete"]
    );
    assert!(audit.iter().all(|a| a.uid == Some(me) && a.target == "w1"));
    assert!(audit[5].result.contains("start it first"), "{:?}", audit[5]);
}

/// Our uid, as the daemon sees it through SO_PEERCRED.
fn rustix_uid() -> u32 {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_guest_that_ends_by_itself_is_recorded_stopped() {
    if !kvm_available("a_guest_that_ends_by_itself_is_recorded_stopped") {
        return;
    }
    let d = Daemon::start();
    d.define("h", "hello");
    let started = d.client().action("h", Action::Start, None).unwrap();
    assert!(matches!(started.state, VmState::Running | VmState::Stopped));
    let vm = d.wait_state("h", VmState::Stopped);
    assert_eq!(vm.exit_status, Some(0));
    assert_eq!(vm.pid, None);
    d.wait_console("h", "Hello from the Paddock test guest");
}

#[test]
fn a_guest_that_fails_is_recorded_crashed_with_its_status() {
    if !kvm_available("a_guest_that_fails_is_recorded_crashed_with_its_status") {
        return;
    }
    let d = Daemon::start();
    d.define("c", "crash");
    let _ = d.client().action("c", Action::Start, None);
    let vm = d.wait_state("c", VmState::Crashed);
    let status = vm.exit_status.expect("the exit status of a child is known");
    assert_ne!(status, 0);
    assert!(vm.message.unwrap().contains(&status.to_string()));
}

#[test]
fn list_summaries_match_the_full_records() {
    if !kvm_available("list_summaries_match_the_full_records") {
        return;
    }
    let d = Daemon::start();
    let c = d.client();
    d.define("w1", "wait");
    let pid = c.action("w1", Action::Start, None).unwrap().pid.unwrap();
    // The summary view says the same as the full records, without specs.
    d.define("w2", "wait");
    let full = c.list().unwrap();
    let summaries = c.list_summaries().unwrap();
    assert_eq!(summaries.len(), 2);
    for (f, s) in full.iter().zip(&summaries) {
        assert_eq!(
            (&f.name, f.id, f.state, &f.driver),
            (&s.name, s.id, s.state, &s.driver)
        );
        assert_eq!(
            (f.spec.cpus.count, f.spec.memory.size_mib, f.pid),
            (s.cpus, s.memory_mib, s.pid)
        );
    }
    assert_eq!(summaries[0].pid, Some(pid));
    let (status, e) = d.call("GET", "/api/v1/vms?view=tiny", None);
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["field"], "view");
    c.action(
        "w1",
        Action::Stop,
        Some(StopRequest {
            timeout_secs: Some(0),
        }),
    )
    .unwrap();
}
