//! Shared helpers for the daemon's end-to-end tests: a real `paddockd` on a temporary state
//! directory and socket, a real `paddock-vmm`, and the freestanding test guests.
#![allow(dead_code)]

pub mod artifacts;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use paddock_api::http;
use paddock_api::{Client, Vm, VmState};
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Whether /dev/kvm can be opened; prints why a test skips when it cannot.
pub fn kvm_available(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("SKIP {test}: /dev/kvm is not available on this host");
    }
    ok
}

/// The test guest `name`, built once per test binary (as the VMM tests build them).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = root().join("target/testguest");
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--manifest-path"])
            .arg(root().join("crates/testguest/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .expect("run cargo for the test guests");
        assert!(
            out.status.success(),
            "building test guests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("release")
    });
    dir.join(name)
}

/// The paddock-vmm binary: `PADDOCK_VMM`, or built by cargo next to paddockd.
pub fn vmm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("PADDOCK_VMM") {
                return PathBuf::from(p);
            }
            let daemon = Path::new(env!("CARGO_BIN_EXE_paddockd"));
            let profile_dir = daemon.parent().unwrap();
            let target = profile_dir.parent().unwrap();
            let out = Command::new(env!("CARGO"))
                .args(["build", "-p", "paddock-vmm", "--bin", "paddock-vmm"])
                .arg("--manifest-path")
                .arg(root().join("Cargo.toml"))
                .arg("--target-dir")
                .arg(target)
                .output()
                .expect("run cargo for paddock-vmm");
            assert!(
                out.status.success(),
                "building paddock-vmm failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            profile_dir.join("paddock-vmm")
        })
        .clone()
}

/// Polls `cond` until it holds or `secs` pass; panics with `what` on timeout.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live, non-zombie process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|c| c != 'Z' && c != 'X')
}

/// A paddockd on its own temporary directories.
pub struct Daemon {
    child: Option<Child>,
    /// Root of the test's files.
    pub dir: tempfile::TempDir,
    /// The API socket.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts a daemon with the real paddock-vmm and the debug-exit port for test guests.
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("paddockd.sock");
        let mut d = Daemon {
            child: None,
            dir,
            socket,
        };
        d.spawn();
        d
    }

    /// State directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runtime directory.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_paddockd"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--vmm")
            .arg(vmm())
            .arg("--vmm-debug-exit")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start paddockd");
        self.child = Some(child);
        let socket = self.socket.clone();
        wait_until(60, "paddockd to answer", || {
            http::request(&socket, "GET", "/api/v1/vms", None, Duration::from_secs(5))
                .is_ok_and(|r| r.status == 200)
        });
    }

    /// Ends the daemon with `signal` (SIGTERM: a clean stop; SIGKILL: a crash) and waits.
    pub fn stop_with(&mut self, signal: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &c.id().to_string()])
                .status();
            c.wait().unwrap();
        }
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) {
        self.stop_with("TERM");
        self.spawn();
    }

    /// Starts the daemon again after the previous one ended.
    pub fn spawn_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    /// A typed client.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// A raw request: (status, body as JSON or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
        let r = http::request(&self.socket, method, path, body, Duration::from_secs(120))
            .expect("request to paddockd");
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// Defines a VM that boots test guest `guest`.
    pub fn define(&self, name: &str, guest_name: &str) -> Vm {
        let spec = spec_json(name, guest_name);
        self.client()
            .define_json(spec.to_string().as_bytes())
            .expect("define")
    }

    /// Waits until VM `name` reaches `state`.
    pub fn wait_state(&self, name: &str, state: VmState) -> Vm {
        let c = self.client();
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let vm = c.get(name).unwrap();
            if vm.state == state {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "VM {name} never became {state}: {last:?}"
            );
            last = Some(vm);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until VM `name`'s console contains `text`.
    pub fn wait_console(&self, name: &str, text: &str) {
        let c = self.client();
        wait_until(60, &format!("'{text}' on {name}'s console"), || {
            String::from_utf8_lossy(&c.console(name).unwrap()).contains(text)
        });
    }

    /// Every process whose command line mentions this test's directory (the VMMs).
    pub fn vmm_pids(&self) -> Vec<u32> {
        let me = self.dir.path().to_string_lossy().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let argv0 = cmd.split('\0').next().unwrap_or_default();
            if argv0.ends_with("/paddock-vmm") && cmd.contains(&me) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_with("KILL");
        // The VMMs run in their own sessions and outlive the daemon: end this test's.
        for pid in self.vmm_pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A spec for test guest `guest` (64 MiB, one vCPU).
pub fn spec_json(name: &str, guest_name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "memory": { "size_mib": 64 },
        "boot": { "kind": "kernel", "kernel": guest(guest_name) },
    })
}
