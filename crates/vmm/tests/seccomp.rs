//! Seccomp under real KVM: every thread kind runs under its filter, a forbidden syscall in
//! any of them kills the process with SIGSYS, `--seccomp off` lets it through, and the guests
//! run with the filters on (the default, so every other guest test runs with them too).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

use common::*;

/// Died of SIGSYS, directly or as reported by `timeout` (which re-raises the child's signal,
/// or exits 128 + signal).
fn died_of_sigsys(o: &Output) -> bool {
    o.status.signal() == Some(libc::SIGSYS) || o.status.code() == Some(128 + libc::SIGSYS)
}

fn selftest(kind: &str, guest_name: &str, extra: &[&str]) -> Output {
    let g = guest(guest_name);
    let mut args = vec![
        "--kernel",
        g.to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--seccomp-selftest",
        kind,
    ];
    args.extend_from_slice(extra);
    vmm(&args)
}

#[test]
fn a_forbidden_syscall_in_any_thread_kind_kills_the_vmm_with_sigsys() {
    if !kvm_available("a_forbidden_syscall_in_any_thread_kind_kills_the_vmm_with_sigsys") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().unwrap();
    for (kind, guest_name, extra) in [
        ("main", "hello", vec![]),
        ("vcpu", "hello", vec![]),
        ("api", "hello", vec!["--api-socket", sock]),
        // Workers start when the rng guest sets DRIVER_OK.
        ("worker", "rng", vec!["--rng"]),
    ] {
        let o = selftest(kind, guest_name, &extra);
        assert!(
            died_of_sigsys(&o),
            "{kind}: status {:?}\n{}{}",
            o.status,
            out(&o),
            err(&o)
        );
        assert!(
            err(&o).contains(&format!("the {kind} thread calls socket(AF_INET)")),
            "{kind}: {}",
            err(&o)
        );
        assert!(!err(&o).contains("was allowed"), "{kind}: {}", err(&o));
        // Opening a file (as glibc's malloc does lazily) is refused with EACCES, not killed.
        assert!(
            err(&o).contains(&format!(
                "the {kind} thread's open was refused: {}",
                libc::EACCES
            )),
            "{kind}: {}",
            err(&o)
        );
    }
}

#[test]
fn with_seccomp_off_the_same_syscall_is_allowed() {
    if !kvm_available("with_seccomp_off_the_same_syscall_is_allowed") {
        return;
    }
    for kind in ["main", "vcpu"] {
        let o = selftest(kind, "hello", &["--seccomp", "off"]);
        assert_eq!(o.status.code(), Some(0), "{kind}: {}", err(&o));
        assert!(
            err(&o).contains("socket(AF_INET) was allowed"),
            "{}",
            err(&o)
        );
        assert!(out(&o).contains("Hello from the Paddock test guest"));
    }
}

/// The `Seccomp:` mode (0 off, 2 filter) of every thread of `pid`, by thread name.
fn thread_modes(pid: u32) -> Vec<(String, u32)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap();
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // KVM's own kernel worker threads (e.g. "kvm-nx-lpage-recovery") show up in the
        // process's task list but are not ours to filter.
        if !name.starts_with("kvm-") {
            v.push((name.trim().to_string(), mode));
        }
    }
    v.sort();
    v
}

#[test]
fn every_thread_runs_under_a_filter_by_default_and_none_with_seccomp_off() {
    if !kvm_available("every_thread_runs_under_a_filter_by_default_and_none_with_seccomp_off") {
        return;
    }
    for (flag, want) in [("on", 2), ("off", 0)] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let mut child = Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_paddock-vmm"))
            .args([
                "--kernel",
                guest("wait").to_str().unwrap(),
                "--memory",
                "64M",
            ])
            .args(["--cpus", "2", "--seccomp", flag])
            .args(["--api-socket", sock.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("wait guest ready") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "VMM ended early");
        }
        // `timeout` is the child; the VMM is its only child.
        let children =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
                .unwrap();
        let vmm: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
        // The main thread installs its filter right after starting the others; wait for it
        // by polling /proc (a condition, bounded), not by sleeping.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let modes = loop {
            let m = thread_modes(vmm);
            // Threads name themselves once running: wait for every expected name too.
            let named = ["paddock-vmm", "vcpu0", "vcpu1", "api"]
                .iter()
                .all(|n| m.iter().any(|(name, _)| name == n));
            if (named && m.iter().all(|(_, mode)| *mode == want))
                || std::time::Instant::now() > deadline
            {
                break m;
            }
        };
        let _ = child.kill();
        let _ = Command::new("kill").arg(vmm.to_string()).status();
        let _ = child.wait();
        let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
        for n in ["paddock-vmm", "vcpu0", "vcpu1", "api"] {
            assert!(names.contains(&n), "{flag}: threads {modes:?}");
        }
        assert!(
            modes.iter().all(|(_, m)| *m == want),
            "--seccomp {flag}: {modes:?}"
        );
    }
}
