//! Helpers shared by the CLI's integration tests: running `paddock`, building and starting a
//! real `paddockd` on a temporary state directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `paddock ARGS` against the daemon on `socket`.
pub fn paddock(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(args)
        .env("PADDOCK_SOCKET", socket)
        .output()
        .expect("run paddock")
}

/// Bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs `paddock ... --json`, expects success, answers the JSON.
pub fn json(socket: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = paddock(socket, &a);
    assert!(
        o.status.success(),
        "paddock {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o.stdout)))
}

/// paddockd, built into the same target directory as this test's `paddock`.
pub fn paddockd() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_paddock"));
    let profile = bin.parent().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "paddockd",
            "--bin",
            "paddockd",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(profile.parent().unwrap())
        .output()
        .expect("run cargo for paddockd");
    assert!(out.status.success(), "{}", text(&out.stderr));
    profile.join("paddockd")
}

/// A paddockd child process, killed when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts paddockd on a state directory under `dir` (no VMM: VMs can be defined, not
/// started); answers it and its socket.
pub fn start_daemon(dir: &Path) -> (Daemon, PathBuf) {
    let socket = dir.join("d.sock");
    let child = Command::new(paddockd())
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--vmm")
        .arg("/nonexistent/paddock-vmm")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "paddockd did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Daemon(child), socket)
}
