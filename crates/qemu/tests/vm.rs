//! The QEMU driver against real QEMU: the Debian kernel and busybox initramfs under TCG (or
//! KVM where the host runs Linux guests), with a qcow2 disk and a NIC on a TAP device in a
//! network namespace the test creates.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{artifacts, field, qemu_available, wait_for, wait_ready, Netns, VmGuard};
use paddock_qemu::qmp::RunState;
use paddock_qemu::{Error, LaunchOptions, ProcessState, QemuVm, StopOutcome};
use paddock_spec::VmSpec;

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn kernel_spec(name: &str, console: &Path, cmdline: &str) -> Option<VmSpec> {
    let a = artifacts(name)?;
    Some(
        serde_json::from_value(serde_json::json!({
            "name": name, "cpus": {"count": 2}, "memory": {"size_mib": 256},
            "boot": {"kind": "kernel", "kernel": a.kernel, "initramfs": a.initramfs,
                     "cmdline": cmdline},
            "serial": {"mode": "file", "path": console},
            "rng": true,
        }))
        .unwrap(),
    )
}

fn running(vm: &mut QemuVm) -> (bool, RunState) {
    match vm.status().unwrap() {
        ProcessState::Alive(s) => (s.running, s.status),
        ProcessState::Exited(st) => panic!("QEMU exited: {st:?}"),
    }
}

/// Field 6 of /proc/PID/stat: the session id.
fn session_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(3).unwrap().parse().unwrap()
}

#[test]
fn linux_guest_sees_its_disk_and_nic_pauses_resumes_reattaches_and_powers_off() {
    let name = "lifecycle";
    if !qemu_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let Some(mut spec) = kernel_spec(name, &console, "console=ttyS0 panic=-1") else {
        return;
    };
    let disk = dir.path().join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"]);
    spec.disks.push(paddock_spec::DiskSpec {
        volume: None,
        path: disk,
        format: "qcow2".into(),
        readonly: false,
        serial: Some("pdq-disk0".into()),
    });
    let mut opts = LaunchOptions::new(dir.path().join("run"));
    let netns = match Netns::create("life") {
        Ok(ns) => {
            spec.nics.push(paddock_spec::NicSpec {
                tap: Some(ns.tap.clone()),
                network: None,
                mac: Some("52:54:00:12:34:56".parse().unwrap()),
            });
            opts.netns = Some(ns.name.clone());
            Some(ns)
        }
        Err(why) => {
            eprintln!("{name}: no NIC in this run, cannot make a network namespace: {why}");
            None
        }
    };

    let mut guard = VmGuard(Some(QemuVm::start(&spec, &opts).unwrap()));
    let vm = guard.vm();
    let pid = vm.pid();
    assert_eq!(session_of(pid), pid, "QEMU leads its own session");
    let log = wait_ready(&console, vm);

    // What the guest saw.
    let ready = "paddock-initramfs: ready";
    assert_eq!(field(&log, ready, "disks"), Some("vda"), "{log}");
    assert_eq!(field(&log, ready, "cpus"), Some("2"), "{log}");
    let disk_line = "paddock-initramfs: disk vda";
    assert_eq!(field(&log, disk_line, "serial"), Some("pdq-disk0"), "{log}");
    assert_eq!(field(&log, disk_line, "ro"), Some("0"), "{log}");
    assert_eq!(field(&log, disk_line, "sectors"), Some("131072"), "{log}");
    if let Some(ns) = &netns {
        assert_eq!(field(&log, ready, "net"), Some("eth0"), "{log}");
        assert_eq!(
            field(&log, "paddock-initramfs: nic eth0", "mac"),
            Some("52:54:00:12:34:56"),
            "{log}"
        );
        // The guest brought eth0 up (IPv6 sends solicitations): frames reach the host TAP.
        wait_for(
            "frames from the guest on the TAP",
            Duration::from_secs(30),
            || (ns.tap_counter("rx_packets") > 0).then_some(()),
        );
    }

    // QMP: version, vCPU threads inside QEMU, disk counters.
    let q = vm.qmp().unwrap();
    assert_eq!(
        q.query_version().unwrap().qemu.major,
        q.greeting().version.qemu.major
    );
    let cpus = q.query_cpus_fast().unwrap();
    assert_eq!(cpus.len(), 2);
    for c in &cpus {
        assert!(
            Path::new(&format!("/proc/{pid}/task/{}", c.thread_id)).exists(),
            "vCPU {} thread {} is QEMU's",
            c.cpu_index,
            c.thread_id
        );
    }
    let stats = q.query_blockstats().unwrap();
    let d0 = stats
        .iter()
        .find(|s| s.device_id.as_deref() == Some("disk0"))
        .unwrap_or_else(|| panic!("no disk0 in {stats:?}"));
    assert!(
        d0.rd_bytes > 0 && d0.rd_operations > 0,
        "the guest read its partition table: {d0:?}"
    );

    // Pause and resume.
    assert_eq!(running(vm), (true, RunState::Running));
    vm.pause().unwrap();
    assert_eq!(running(vm), (false, RunState::Paused));
    vm.resume().unwrap();
    assert_eq!(running(vm), (true, RunState::Running));
    let events: Vec<String> = vm.take_events().into_iter().map(|e| e.name).collect();
    assert!(
        events.iter().any(|e| e == "STOP") && events.iter().any(|e| e == "RESUME"),
        "{events:?}"
    );

    // A new handle attaches by pid and socket (the daemon after a restart).
    let (pid2, socket) = guard.0.take().unwrap().detach();
    assert_eq!(pid2, pid);
    guard.0 = Some(QemuVm::attach(pid, &socket, Duration::from_secs(10)).unwrap());
    let vm = guard.vm();
    assert_eq!(running(vm), (true, RunState::Running));

    // Graceful stop: the guest handles the power button.
    assert_eq!(
        vm.stop(Duration::from_secs(60)).unwrap(),
        StopOutcome::PoweredOff
    );
    // Still this process's child, so even the attached handle learns the status.
    assert!(vm.exit_status().expect("status").success());
    assert!(matches!(vm.status().unwrap(), ProcessState::Exited(_)));
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(log.contains("paddock-initramfs: power button"), "{log}");
    assert!(matches!(vm.pause(), Err(Error::Exited { .. })));
}

#[test]
fn the_poweroff_parameter_ends_the_vm_by_itself() {
    let name = "poweroff";
    if !qemu_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let Some(mut spec) = kernel_spec(name, &console, "console=ttyS0 panic=-1 paddock.poweroff=1")
    else {
        return;
    };
    spec.cpus.count = 1;
    let opts = LaunchOptions::new(dir.path().join("run"));
    let mut guard = VmGuard(Some(QemuVm::start(&spec, &opts).unwrap()));
    let vm = guard.vm();
    assert!(
        vm.wait_exit(Duration::from_secs(90)),
        "the guest powers off"
    );
    assert!(vm.exit_status().unwrap().success());
    let log = std::fs::read_to_string(&console).unwrap();
    let ready = "paddock-initramfs: ready";
    assert_eq!(field(&log, ready, "disks"), Some(""), "{log}");
    assert_eq!(field(&log, ready, "net"), Some(""), "{log}");
    assert!(matches!(
        vm.status().unwrap(),
        ProcessState::Exited(Some(_))
    ));
    assert_eq!(vm.stop(Duration::ZERO).unwrap(), StopOutcome::AlreadyExited);
}

#[test]
fn a_paused_firmware_vm_is_quit_not_waited_for() {
    let name = "firmware-quit";
    if !qemu_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // SeaBIOS with no disk: nothing that would handle the power button.
    let spec: VmSpec = serde_json::from_value(serde_json::json!({
        "name": name, "memory": {"size_mib": 64},
        "boot": {"kind": "firmware", "firmware": "bios"}, "serial": {"mode": "off"},
    }))
    .unwrap();
    let opts = LaunchOptions::new(dir.path().join("run"));
    let mut guard = VmGuard(Some(QemuVm::start(&spec, &opts).unwrap()));
    let vm = guard.vm();
    vm.pause().unwrap();
    vm.qmp()
        .unwrap()
        .wait_event("STOP", Duration::from_secs(10))
        .unwrap();
    // A paused guest cannot see the button: straight to quit, however long the grace.
    assert_eq!(
        vm.stop(Duration::from_secs(3600)).unwrap(),
        StopOutcome::Quit
    );
    assert!(vm.exit_status().unwrap().success());
}

#[test]
fn a_disk_declared_in_the_wrong_format_fails_the_start_with_qemus_words() {
    let name = "wrong-format";
    if !qemu_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    qemu_img(&["create", "-q", "-f", "raw", raw.to_str().unwrap(), "1M"]);
    // Declared qcow2: QEMU must not probe it into working.
    let spec: VmSpec = serde_json::from_value(serde_json::json!({
        "name": name, "memory": {"size_mib": 64},
        "boot": {"kind": "firmware", "firmware": "bios"}, "serial": {"mode": "off"},
        "disks": [{"path": raw, "format": "qcow2"}],
    }))
    .unwrap();
    let opts = LaunchOptions::new(dir.path().join("run"));
    match QemuVm::start(&spec, &opts) {
        Err(Error::StartFailed { status, log }) => {
            assert!(!status.success());
            assert!(log.contains("qcow2"), "{log}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
}

#[test]
fn a_stream_optimized_vmdk_is_refused_read_write_and_taken_readonly() {
    let name = "vmdk-stream";
    if !qemu_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vmdk = dir.path().join("so.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        vmdk.to_str().unwrap(),
        "16M",
    ]);
    let mut spec: VmSpec = serde_json::from_value(serde_json::json!({
        "name": name, "memory": {"size_mib": 64},
        "boot": {"kind": "firmware", "firmware": "bios"}, "serial": {"mode": "off"},
        "disks": [{"path": vmdk, "format": "vmdk"}],
    }))
    .unwrap();
    let host = paddock_qemu::Host::detect();
    match paddock_qemu::check(&spec, &host) {
        Err(Error::Unsupported { feature, .. }) => {
            assert_eq!(feature, "disks[0]: vmdk streamOptimized read-write")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    spec.disks[0].readonly = true;
    paddock_qemu::check(&spec, &host).unwrap();
}

#[test]
fn attach_refuses_a_process_that_is_not_qemu() {
    let me = std::process::id() as i32;
    match QemuVm::attach(me, Path::new("/tmp/none.sock"), Duration::from_secs(1)) {
        Err(Error::Attach { pid, reason }) => {
            assert_eq!(pid, me);
            assert!(reason.contains("not qemu-system"), "{reason}");
        }
        other => panic!("expected an attach error, got {other:?}"),
    }
}

#[test]
fn a_running_guest_that_ignores_the_button_is_quit_after_the_grace() {
    let name = "button-ignored";
    if !qemu_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // SeaBIOS with no disk runs no OS, so nothing answers the power button.
    let spec: VmSpec = serde_json::from_value(serde_json::json!({
        "name": name, "memory": {"size_mib": 64},
        "boot": {"kind": "firmware", "firmware": "bios"}, "serial": {"mode": "off"},
    }))
    .unwrap();
    let opts = LaunchOptions::new(dir.path().join("run"));
    let mut guard = VmGuard(Some(QemuVm::start(&spec, &opts).unwrap()));
    let vm = guard.vm();
    assert_eq!(running(vm), (true, RunState::Running));
    assert_eq!(vm.stop(Duration::from_secs(1)).unwrap(), StopOutcome::Quit);
    assert!(vm.exit_status().unwrap().success());
}
