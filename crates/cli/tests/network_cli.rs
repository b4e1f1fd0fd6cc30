//! `paddock network` against a real paddockd run inside a network namespace of the test's
//! own (so the bridge it makes lives and dies there): tables, `--json`, errors with their
//! field, delete.

mod common;

use common::{paddockd, text};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A network namespace with a paddockd in it; both go on drop.
struct NsDaemon {
    ns: String,
    child: Child,
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn start(dir: &Path) -> Option<(NsDaemon, PathBuf)> {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let ns = format!("pdtest-cli-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    let made = root
        && Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIP paddock network CLI test: needs root and iproute2 (ip netns add)");
        return None;
    }
    let socket = dir.join("d.sock");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(paddockd())
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
    let d = NsDaemon { ns, child };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "paddockd did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((d, socket))
}

/// Runs `paddock network ARGS` against the daemon on `socket`.
fn paddock(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("network")
        .args(args)
        .env("PADDOCK_SOCKET", socket)
        .output()
        .expect("run paddock")
}

#[test]
fn networks_are_defined_listed_shown_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let Some((d, sock)) = start(dir.path()) else {
        return;
    };

    let o = paddock(&sock, &["define", "lan", "--ipv4", "10.77.0.1/24"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("bridge:   pd-lan") && out.contains("ipv4:     10.77.0.1/24"),
        "{out}"
    );
    let link = Command::new("ip")
        .args(["-n", &d.ns, "link", "show", "dev", "pd-lan"])
        .output()
        .unwrap();
    assert!(link.status.success(), "the bridge exists in the namespace");

    let out = text(&paddock(&sock, &["list"]).stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("BRIDGE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("lan") && lines[1].contains("10.77.0.1/24"),
        "{out}"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&paddock(&sock, &["list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["name"], "lan");
    let show: serde_json::Value =
        serde_json::from_slice(&paddock(&sock, &["show", "lan", "--json"]).stdout).unwrap();
    assert_eq!(
        (show["bridge"].as_str(), show["nat"].as_bool()),
        (Some("pd-lan"), Some(false))
    );

    // Refusals: exit 1, the field and status in JSON, a hint in text.
    let o = paddock(&sock, &["define", "bad", "--ipv4", "10.1.1.0/24", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (e["status"].as_u64(), e["field"].as_str()),
        (Some(422), Some("ipv4")),
        "{e}"
    );
    let o = paddock(&sock, &["define", "x", "--dhcp", "nonsense"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses a bad range");

    let o = paddock(&sock, &["delete", "lan"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "deleted lan");
    let o = paddock(&sock, &["show", "lan"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("no network named 'lan'") && err.contains("paddock network list"),
        "{err}"
    );
}
