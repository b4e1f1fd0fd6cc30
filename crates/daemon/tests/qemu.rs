//! The QEMU driver end to end: a real paddockd runs the Debian kernel and the busybox
//! initramfs (`scripts/guest-artifacts.sh`) under QEMU (TCG where KVM cannot run Linux
//! guests), with a qcow2 disk; console, pause, resume, re-attach (with the live console over
//! WebSocket) and an ACPI power-off.

mod common;

use std::process::Command;

use common::artifacts::{guest_artifacts, runs, KillOnDrop};
use common::*;
use paddock_api::client::Action;
use paddock_api::client_console::Message;
use paddock_api::{StopRequest, VmState};

#[test]
fn linux_under_qemu_boots_pauses_resumes_and_powers_off() {
    let test = "linux_under_qemu_boots_pauses_resumes_and_powers_off";
    for program in ["qemu-system-x86_64", "qemu-img"] {
        if !runs(program) {
            eprintln!("SKIP {test}: {program} is not installed");
            return;
        }
    }
    let (kernel, initramfs) = match guest_artifacts() {
        Ok(paths) => paths,
        Err(why) => {
            eprintln!("SKIP {test}: no guest artifacts: {why}");
            return;
        }
    };
    let mut d = Daemon::start();
    let disk = d.dir.path().join("data.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success(), "qemu-img create failed");

    let spec = serde_json::json!({
        "driver": "qemu",
        "name": "linux",
        "accel": "auto",
        "cpus": { "count": 1 },
        "memory": { "size_mib": 256 },
        "boot": {
            "kind": "kernel",
            "kernel": kernel,
            "initramfs": initramfs,
            "cmdline": "console=ttyS0",
        },
        "disks": [{ "path": disk, "format": "qcow2" }],
    });
    let vm = d
        .client()
        .define_json(spec.to_string().as_bytes())
        .expect("define");
    assert_eq!(vm.driver, "qemu");
    assert_eq!(vm.state, VmState::Defined);

    let c = d.client();
    let vm = c.action("linux", Action::Start, None).unwrap();
    let mut guard = KillOnDrop(vm.pid);
    assert_eq!(vm.state, VmState::Running, "{vm:?}");
    let pid = vm.pid.expect("a running VM has a pid");
    assert!(alive(pid));

    let console = || String::from_utf8_lossy(&c.console("linux").unwrap()).into_owned();
    wait_until(45, "the initramfs ready line on the console", || {
        console().contains("paddock-initramfs: ready")
    });
    let text = console();
    let ready = text
        .lines()
        .find(|l| l.contains("paddock-initramfs: ready"))
        .unwrap();
    assert!(ready.contains("disks=vda"), "{ready}");

    let vm = c.action("linux", Action::Pause, None).unwrap();
    assert_eq!(vm.state, VmState::Paused);
    assert_eq!(c.get("linux").unwrap().state, VmState::Paused);
    let vm = c.action("linux", Action::Resume, None).unwrap();
    assert_eq!(vm.state, VmState::Running);

    // A new daemon re-attaches to the running QEMU by pid and QMP socket.
    drop(c);
    d.restart();
    let c = d.client();
    let vm = c.get("linux").unwrap();
    assert_eq!(vm.state, VmState::Running, "{vm:?}");
    assert_eq!(vm.pid, Some(pid));
    assert!(vm.message.unwrap_or_default().contains("re-attached"));

    // The console socket belongs to QEMU, so the re-attached VM still has a live console:
    // the guest kernel's tty echoes what is typed (nothing reads it in the initramfs).
    let mut ws = c.console_ws("linux").expect("the console WebSocket");
    ws.get_ref()
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    ws.send(Message::Binary("paddock-ws-probe\n".into()))
        .unwrap();
    let mut echoed = String::new();
    while !echoed.contains("paddock-ws-probe") {
        match ws.read().expect("the guest's echo") {
            Message::Binary(b) => echoed.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("unexpected {other:?} after {echoed:?}"),
        }
    }
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    wait_until(30, "the echo in the console log", || {
        console_after_restart(&c).contains("paddock-ws-probe")
    });

    // The initramfs powers off on the ACPI power button.
    let stop = StopRequest {
        timeout_secs: Some(30),
    };
    let vm = c.action("linux", Action::Stop, Some(stop)).unwrap();
    assert_eq!(vm.state, VmState::Stopped, "{vm:?}");
    assert_eq!(vm.pid, None);
    let message = vm.message.unwrap_or_default();
    assert!(message.contains("powered off"), "{message}");
    wait_until(30, "QEMU to exit", || !alive(pid));
    guard.0 = None;
    assert_eq!(c.get("linux").unwrap().state, VmState::Stopped);
}

#[test]
fn the_qemu_driver_is_named_in_refusals() {
    if !runs("qemu-system-x86_64") {
        eprintln!("SKIP the_qemu_driver_is_named_in_refusals: qemu-system-x86_64 is not installed");
        return;
    }
    let d = Daemon::start();
    let spec = serde_json::json!({
        "driver": "qemu",
        "name": "nokernel",
        "memory": { "size_mib": 64 },
        "boot": { "kind": "kernel", "kernel": "/nonexistent/bzImage" },
    });
    let (status, body) = d.call("POST", "/api/v1/vms", Some(spec.to_string().as_bytes()));
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("/nonexistent/bzImage"), "{body}");

    let spec = serde_json::json!({
        "driver": "xen",
        "name": "x",
        "memory": { "size_mib": 64 },
        "boot": { "kind": "kernel", "kernel": "/k" },
    });
    let (status, body) = d.call("POST", "/api/v1/vms", Some(spec.to_string().as_bytes()));
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("qemu"), "{body}");
}

fn console_after_restart(c: &paddock_api::Client) -> String {
    String::from_utf8_lossy(&c.console("linux").unwrap()).into_owned()
}
