//! `paddock vm` against a real paddockd (built by cargo next to `paddock`): tables and
//! `--json`, errors that say what to do, `--socket` and `PADDOCK_SOCKET`.

mod common;

use common::{start_daemon, text};

use std::path::Path;
use std::process::{Command, Output};

fn paddock(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("vm")
        .args(args)
        .env("PADDOCK_SOCKET", socket)
        .output()
        .expect("run paddock")
}

#[test]
fn an_absent_daemon_is_reported_with_the_socket_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let o = paddock(&socket, &["list"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains(&*socket.to_string_lossy()), "{err}");
    assert!(err.contains("systemctl start paddockd"), "{err}");
    // --socket wins over the environment.
    let o = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["vm", "list", "--socket", "/nonexistent/other.sock"])
        .env("PADDOCK_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(text(&o.stderr).contains("/nonexistent/other.sock"));
}

#[test]
fn define_list_show_and_delete_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, socket) = start_daemon(dir.path());
    let spec = dir.path().join("web.json");
    std::fs::write(
        &spec,
        r#"{"name":"web","cpus":{"count":2},"memory":{"size_mib":256},
            "boot":{"kind":"kernel","kernel":"/boot/vmlinuz"}}"#,
    )
    .unwrap();
    let o = paddock(&socket, &["define", "-f", spec.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("state: defined"));

    let o = paddock(&socket, &["list"]);
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATE"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("web") && lines[1].contains("defined") && lines[1].contains("256 MiB"),
        "{out}"
    );

    let o = paddock(&socket, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "web");
    assert_eq!(v[0]["spec"]["cpus"]["count"], 2);
    let o = paddock(&socket, &["show", "web", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "defined");

    // Errors say what to do, in text and in JSON.
    let o = paddock(&socket, &["pause", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("start it first"),
        "{}",
        text(&o.stderr)
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name":"x","memory":{"size_mib":1},"boot":{"kind":"kernel","kernel":"/k"}}"#,
    )
    .unwrap();
    let o = paddock(&socket, &["define", "-f", bad.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["status"].as_u64(), v["field"].as_str()),
        (Some(422), Some("memory.size_mib"))
    );
    let o = paddock(&socket, &["start", "web"]);
    assert!(text(&o.stderr).contains("--vmm"), "{}", text(&o.stderr));
    // A start that made no process leaves the VM as it was.
    let o = paddock(&socket, &["show", "web"]);
    assert!(
        text(&o.stdout).contains("state: defined"),
        "{}",
        text(&o.stdout)
    );

    let o = paddock(&socket, &["delete", "web"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = paddock(&socket, &["show", "web"]);
    assert!(text(&o.stderr).contains("no VM named 'web'"));
}
