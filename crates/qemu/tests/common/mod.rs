//! Shared helpers for the QEMU driver's tests: guest artifacts, skips, guards, waits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use paddock_qemu::QemuVm;

/// The Debian kernel and busybox initramfs from `scripts/guest-artifacts.sh`.
pub struct Artifacts {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether `program` runs here.
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// QEMU and qemu-img, or `false` with the reason printed.
pub fn qemu_available(test: &str) -> bool {
    for p in ["qemu-system-x86_64", "qemu-img"] {
        if !runs(p, "--version") {
            eprintln!(
                "SKIP {test}: {p} is not installed (scripts/setup.sh with PADDOCK_QEMU_SYSTEM=1)"
            );
            return false;
        }
    }
    true
}

/// The guest artifacts, built once per test binary; `None` with the reason printed.
pub fn artifacts(test: &str) -> Option<&'static Artifacts> {
    static BUILT: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = root().join("scripts/guest-artifacts.sh");
        let o = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !o.status.success() {
            return Err(format!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let path = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(PathBuf::from)
                .ok_or_else(|| format!("no {key} line in:\n{text}"))
        };
        Ok(Artifacts {
            kernel: path("kernel=")?,
            initramfs: path("initramfs=")?,
        })
    });
    match built {
        Ok(a) => Some(a),
        Err(why) if std::env::var("PADDOCK_REQUIRE_GUEST_ARTIFACTS").as_deref() != Ok("1") => {
            eprintln!("SKIP {test}: no guest artifacts: {why}");
            None
        }
        Err(why) => panic!("{test}: {why}"),
    }
}

/// A QEMU that is killed when the test ends, however it ends.
pub struct VmGuard(pub Option<QemuVm>);

impl VmGuard {
    pub fn vm(&mut self) -> &mut QemuVm {
        self.0.as_mut().expect("VM handle")
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Some(vm) = self.0.as_mut() {
            let _ = vm.kill();
        }
    }
}

/// A network namespace with one TAP device, removed on drop.
pub struct Netns {
    pub name: String,
    pub tap: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl Netns {
    /// A namespace named after the test and this process, holding TAP `tap0` (up).
    pub fn create(tag: &str) -> Result<Netns, String> {
        let name = format!("pdq-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name,
            tap: "tap0".into(),
        };
        ip(&[
            "-n", &ns.name, "tuntap", "add", "dev", &ns.tap, "mode", "tap",
        ])?;
        ip(&["-n", &ns.name, "link", "set", &ns.tap, "up"])?;
        Ok(ns)
    }

    /// A counter from the TAP's statistics (`rx_packets`, ...), read inside the namespace.
    pub fn tap_counter(&self, counter: &str) -> u64 {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat"])
            .arg(format!("/sys/class/net/{}/statistics/{counter}", self.tap))
            .output()
            .expect("ip netns exec cat");
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Waits (bounded) until `cond` holds, checking every 50 ms; the last value on timeout.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the guest's ready line in the console log and returns the whole log.
pub fn wait_ready(console: &Path, vm: &mut QemuVm) -> String {
    wait_for("the guest's ready line", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains("paddock-initramfs: ready") {
            return Some(text);
        }
        assert!(
            !vm.has_exited(),
            "QEMU exited before the ready line: {:?}\n{text}",
            vm.exit_status()
        );
        None
    })
}

/// The value of `key=` on the console line starting with `prefix`.
pub fn field<'a>(log: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    let line = log.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}
