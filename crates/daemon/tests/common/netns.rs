//! A network namespace per test and a `paddockd` run inside it (`ip netns exec`), so the
//! bridges, TAPs, nftables tables and dnsmasq it makes live there and vanish with it: the
//! namespace is deleted, with every process still in it (daemon, VMMs, QEMU, dnsmasq), even
//! when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use paddock_api::http;
use paddock_api::{Client, Vm, VmState};
use serde_json::{json, Value};

use super::{guest, vmm, wait_until};

/// Whether `program` is on `PATH`.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether this host can run namespace tests (root, /dev/net/tun, `ip`, `nft`, `dnsmasq` and
/// the programs in `extra`); prints why not.
pub fn can_run(test: &str, extra: &[&str]) -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let missing: Vec<&str> = ["ip", "nft", "dnsmasq"]
        .iter()
        .chain(extra)
        .copied()
        .filter(|p| !have(p))
        .collect();
    if !root || !missing.is_empty() || !Path::new("/dev/net/tun").exists() {
        eprintln!(
            "SKIP {test}: needs root, /dev/net/tun and {missing:?} (scripts/setup.sh installs them)"
        );
        return false;
    }
    true
}

/// Runs `args` and answers its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run a command")
}

/// Runs `args`, which must succeed; answers its standard output.
pub fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace, deleted on drop with every process still in it.
pub struct Netns(pub String);

impl Netns {
    /// A fresh namespace `pdtest-TAG-PID`.
    pub fn create(tag: &str) -> Netns {
        let name = format!("pdtest-{tag}-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        ok(&["ip", "netns", "add", &name]);
        Netns(name)
    }

    /// `ip -n NS -d -j link show dev NAME`, or None when there is no such link.
    pub fn link(&self, name: &str) -> Option<Value> {
        let o = run(&["ip", "-n", &self.0, "-d", "-j", "link", "show", "dev", name]);
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.as_array()?.first().cloned()
    }

    /// `ip -n NS -j addr show dev NAME`.
    pub fn addr(&self, name: &str) -> Value {
        let out = ok(&["ip", "-n", &self.0, "-j", "addr", "show", "dev", name]);
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    }

    /// Whether `nft list table inet TABLE` succeeds in the namespace.
    pub fn has_table(&self, table: &str) -> bool {
        run(&[
            "ip", "netns", "exec", &self.0, "nft", "list", "table", "inet", table,
        ])
        .status
        .success()
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        run(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let pids = run(&["ip", "netns", "pids", &self.0]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run(&["kill", "-KILL", pid]);
        }
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

/// The TAP paddockd names for NIC `index` of `vm`.
pub fn tap_of(vm: &Vm, index: usize) -> String {
    format!("pdt{}{index:x}", &vm.id.simple().to_string()[..11])
}

/// A paddockd running inside a namespace, on its own temporary directories.
pub struct NsDaemon {
    child: Option<Child>,
    ns: String,
    /// Root of the test's files.
    pub dir: tempfile::TempDir,
}

impl NsDaemon {
    /// Starts a daemon in `ns` with the real paddock-vmm and the debug-exit port.
    pub fn start(ns: &Netns) -> NsDaemon {
        let mut d = NsDaemon {
            child: None,
            ns: ns.0.clone(),
            dir: tempfile::tempdir().unwrap(),
        };
        d.spawn();
        d
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("paddockd.sock")
    }

    /// State directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(env!("CARGO_BIN_EXE_paddockd"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.dir.path().join("run"))
            .arg("--vmm")
            .arg(vmm())
            .arg("--vmm-debug-exit")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start paddockd in the namespace");
        self.child = Some(child);
        let socket = self.socket();
        wait_until(60, "paddockd to answer", || {
            http::request(&socket, "GET", "/api/v1/vms", None, Duration::from_secs(5))
                .is_ok_and(|r| r.status == 200)
        });
    }

    /// A clean stop (SIGTERM) and a fresh start on the same directories and namespace.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = run(&["kill", "-TERM", &c.id().to_string()]);
            c.wait().unwrap();
        }
        self.spawn();
    }

    /// A typed client.
    pub fn client(&self) -> Client {
        Client::new(self.socket())
    }

    /// A raw request with a JSON body: (status, body as JSON or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        self.call_raw(method, path, body.as_deref())
    }

    /// A raw request with any body: (status, body as JSON or Null).
    pub fn call_raw(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
        let r = http::request(&self.socket(), method, path, body, Duration::from_secs(120))
            .expect("request to paddockd");
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// Defines a VM that boots test guest `guest_name` with `nics`.
    pub fn define_vm(&self, name: &str, guest_name: &str, nics: Value) -> Vm {
        let spec = json!({
            "name": name,
            "memory": { "size_mib": 64 },
            "boot": { "kind": "kernel", "kernel": guest(guest_name) },
            "nics": nics,
        });
        self.client()
            .define_json(spec.to_string().as_bytes())
            .expect("define a VM")
    }

    /// Waits until VM `name` is in one of `states`.
    pub fn wait_state(&self, name: &str, states: &[VmState]) -> Vm {
        let c = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let vm = c.get(name).unwrap();
            if states.contains(&vm.state) {
                return vm;
            }
            assert!(Instant::now() < deadline, "VM {name} stayed {:?}", vm);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// VM `name`'s console log as text.
    pub fn console(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.client().console(name).unwrap()).into_owned()
    }

    /// Waits up to `secs` until VM `name`'s console contains `text`; answers the console.
    pub fn wait_console(&self, name: &str, text: &str, secs: u64) -> String {
        wait_until(secs, &format!("'{text}' on {name}'s console"), || {
            self.console(name).contains(text)
        });
        self.console(name)
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
