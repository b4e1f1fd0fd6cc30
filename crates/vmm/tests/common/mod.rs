//! Shared helpers for VMM integration tests: building the test guests, running the VMM.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Builds the test guests once per test binary and returns the path of guest `name`.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = root();
        let target = root.join("target/testguest");
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--manifest-path"])
            .arg(root.join("crates/testguest/Cargo.toml"))
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

/// Whether this host can run KVM guests; prints why a test skips when it cannot.
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

/// Runs paddock-vmm with `args` and a 60 s safety timeout.
pub fn vmm(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_paddock-vmm"))
        .args(args)
        .output()
        .expect("run paddock-vmm")
}

/// Stdout as text.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).replace('\r', "")
}

/// Stderr as text.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
