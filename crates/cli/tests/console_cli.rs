//! `paddock vm console` and `paddock events` against a real paddockd and paddock-vmm under
//! KVM, with the echo test guest: piped standard input reaches the guest and its answer is
//! printed; the event stream shows the start.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\r', "")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// paddockd and paddock-vmm, built into the same target directory as this test's `paddock`.
fn binaries() -> PathBuf {
    let profile = Path::new(env!("CARGO_BIN_EXE_paddock")).parent().unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["build", "-p", "paddockd", "-p", "paddock-vmm", "--bins"])
        .arg("--manifest-path")
        .arg(root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(profile.parent().unwrap())
        .output()
        .expect("run cargo for paddockd and paddock-vmm");
    assert!(out.status.success(), "{}", text(&out.stderr));
    profile.to_path_buf()
}

/// The echo test guest (built as the VMM tests build them).
fn echo_guest() -> PathBuf {
    let target = root().join("target/testguest");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--manifest-path"])
        .arg(root().join("crates/testguest/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo for the test guests");
    assert!(out.status.success(), "{}", text(&out.stderr));
    target.join("release/echo").canonicalize().unwrap()
}

/// A daemon and every VMM it started, ended when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // VMMs run in their own sessions; end this test's.
        let me = self.dir.to_string_lossy().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = text(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default());
            if cmd
                .split('\0')
                .next()
                .unwrap_or("")
                .ends_with("/paddock-vmm")
                && cmd.contains(&me)
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn paddock(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_paddock"))
        .args(args)
        .env("PADDOCK_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run paddock");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn piped_console_input_reaches_the_guest_and_events_follow_the_start() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIP piped_console_input_reaches_the_guest: /dev/kvm is not available");
        return;
    }
    let bin = binaries();
    let guest = echo_guest();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let child = Command::new(bin.join("paddockd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--vmm")
        .arg(bin.join("paddock-vmm"))
        .arg("--vmm-debug-exit")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon {
        child,
        dir: dir.path().to_path_buf(),
    };
    wait_until("paddockd", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let spec = dir.path().join("echo.json");
    let body = serde_json::json!({
        "name": "echo", "memory": {"size_mib": 64},
        "boot": {"kind": "kernel", "kernel": guest},
    });
    std::fs::write(&spec, body.to_string()).unwrap();
    let o = paddock(
        &socket,
        &["vm", "define", "-f", spec.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));

    // The event stream, followed from before the start.
    let mut events = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_paddock"))
        .args(["events", "--json"])
        .env("PADDOCK_SOCKET", &socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(events.stdout.take().unwrap());
    let o = paddock(&socket, &["vm", "console", "echo"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("start it first"),
        "{}",
        text(&o.stderr)
    );

    let o = paddock(&socket, &["vm", "start", "echo"], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut started = false;
    while !started {
        let mut line = String::new();
        assert_ne!(lines.read_line(&mut line).unwrap(), 0, "events ended");
        let ev: serde_json::Value = serde_json::from_str(&line).expect("one JSON event a line");
        started = ev["kind"] == "lifecycle" && ev["vm"] == "echo" && ev["to"] == "running";
    }
    // `timeout` passes SIGTERM on to paddock.
    let _ = Command::new("kill")
        .args(["-TERM", &events.id().to_string()])
        .status();
    let _ = events.wait();

    wait_until("the echo guest's ready line", || {
        text(&paddock(&socket, &["vm", "console", "echo", "--log"], None).stdout)
            .contains("echo guest ready")
    });
    // Piped input goes to the guest; the session lasts until the guest ends (at `q`).
    let o = paddock(&socket, &["vm", "console", "echo"], Some(b"abcq"));
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out} {}", text(&o.stderr));
    assert!(out.contains("ABC\necho guest bye\n"), "{out}");
    let o = paddock(&socket, &["vm", "console", "echo", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["console"].as_str().unwrap().contains("ABC"), "{v}");
}
