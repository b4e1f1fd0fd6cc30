//! Requests on one VM are serialised: concurrent start and stop see each other's result,
//! never a half-done VM.

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use paddock_api::client::Action;
use paddock_api::{StopRequest, VmState};

#[test]
fn concurrent_start_and_stop_on_one_vm_are_serialised() {
    if !kvm_available("concurrent_start_and_stop_on_one_vm_are_serialised") {
        return;
    }
    let d = Daemon::start();
    d.define("s", "wait");
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(4));
        let run = |action: Action| {
            let c = d.client();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let stop = (action == Action::Stop).then_some(StopRequest {
                    timeout_secs: Some(0),
                });
                c.action("s", action, stop)
            })
        };
        let starts = [run(Action::Start), run(Action::Start)];
        let stop = run(Action::Stop);
        barrier.wait();
        let starts: Vec<_> = starts.into_iter().map(|t| t.join().unwrap()).collect();
        let stop = stop.join().unwrap();
        // Exactly one start wins; the other sees a started VM (409) or, when the stop ran
        // in between, starts it again.
        let ok_starts = starts.iter().filter(|r| r.is_ok()).count();
        for r in &starts {
            if let Err(e) = r {
                assert_eq!(e.status(), Some(409), "round {round}: {e}");
            }
        }
        let vm = d.client().get("s").unwrap();
        match &stop {
            Ok(v) => {
                assert_eq!(v.state, VmState::Stopped);
                assert!(
                    ok_starts >= 1,
                    "round {round}: a stop succeeded before any start"
                );
                let expect = if ok_starts == 2 {
                    VmState::Running
                } else {
                    VmState::Stopped
                };
                assert_eq!(vm.state, expect, "round {round}: {starts:?} {stop:?}");
            }
            Err(e) => {
                assert_eq!(e.status(), Some(409), "round {round}: {e}");
                assert_eq!(ok_starts, 1, "round {round}: {starts:?}");
                assert_eq!(vm.state, VmState::Running);
            }
        }
        // Every request finished: no VM is left in a transitional state.
        assert!(matches!(vm.state, VmState::Running | VmState::Stopped));
        if vm.state == VmState::Running {
            d.client()
                .action(
                    "s",
                    Action::Stop,
                    Some(StopRequest {
                        timeout_secs: Some(0),
                    }),
                )
                .unwrap();
        }
        assert_eq!(d.vmm_pids().iter().filter(|p| alive(**p)).count(), 0);
    }
}
