//! `paddock token` on the daemon's socket, and `paddock --host` over TCP + TLS with a token,
//! trusting the daemon's self-signed certificate by `--ca-cert` or by `--fingerprint`.

mod common;

use common::{paddockd, text};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A daemon with a TLS listener; ends it when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    url: String,
    fingerprint: String,
    cert: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &Path) -> Daemon {
    let socket = dir.join("d.sock");
    let mut child = Command::new(paddockd())
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args([
            "--vmm",
            "/nonexistent/paddock-vmm",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut d = Daemon {
        child,
        socket,
        url: String::new(),
        fingerprint: String::new(),
        cert: dir.join("state/tls/cert.pem"),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("paddockd never said it listens on TLS");
        if let Some(rest) = line.strip_prefix("paddockd: listening on https://") {
            d.url = format!("https://{}", rest.split_whitespace().next().unwrap());
            let fp = rest.rsplit("fingerprint ").next().unwrap();
            d.fingerprint = fp.trim_end_matches(')').to_string();
            return d;
        }
    }
}

/// `paddock ARGS` with no remote settings from the environment.
fn paddock(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paddock"));
    c.args(args).env("PADDOCK_SOCKET", &d.socket);
    for v in [
        "PADDOCK_HOST",
        "PADDOCK_TOKEN",
        "PADDOCK_CA_CERT",
        "PADDOCK_FINGERPRINT",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run paddock")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

#[test]
fn tokens_are_created_listed_and_revoked_and_secrets_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path());
    let created = json(&paddock(
        &d,
        &["token", "create", "ci", "--expires-in-days", "30", "--json"],
        &[],
    ));
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("pdk_"));
    assert_eq!(created["name"], "ci");
    assert!(created["expires_at"].is_string());

    // The table form prints the secret on stdout alone.
    let o = paddock(&d, &["token", "create", "ops"], &[]);
    assert!(o.status.success());
    assert!(text(&o.stdout).trim().starts_with("pdk_"));
    assert!(text(&o.stderr).contains("only this once"));

    let list = paddock(&d, &["token", "list", "--json"], &[]);
    let listed = json(&list);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!text(&list.stdout).contains("pdk_"));
    let table = paddock(&d, &["token", "list"], &[]);
    assert!(text(&table.stdout).starts_with("NAME"));
    assert!(text(&table.stdout).contains("ci"));

    let dup = paddock(&d, &["token", "create", "ci", "--json"], &[]);
    assert_eq!(dup.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&dup.stdout).unwrap();
    assert_eq!(v["status"], 409);

    assert_eq!(
        json(&paddock(&d, &["token", "revoke", "ops", "--json"], &[]))["revoked"],
        "ops"
    );
    let o = paddock(&d, &["token", "revoke", "ops"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("paddock token list"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn vm_commands_run_over_tls_with_a_ca_cert_or_a_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path());
    let secret = json(&paddock(&d, &["token", "create", "ci", "--json"], &[]))["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let spec = dir.path().join("web.json");
    std::fs::write(
        &spec,
        r#"{"name":"web","memory":{"size_mib":64},"boot":{"kind":"kernel","kernel":"/k"}}"#,
    )
    .unwrap();
    let cert = d.cert.to_str().unwrap();

    // --ca-cert and --token as flags.
    let o = paddock(
        &d,
        &[
            "--host",
            &d.url,
            "--ca-cert",
            cert,
            "--token",
            &secret,
            "vm",
            "define",
            "-f",
            spec.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(json(&o)["name"], "web");
    // --fingerprint, with the token from the environment.
    let o = paddock(
        &d,
        &["vm", "list", "--json", "--fingerprint", &d.fingerprint],
        &[("PADDOCK_HOST", &d.url), ("PADDOCK_TOKEN", &secret)],
    );
    assert_eq!(json(&o)[0]["name"], "web");
    // All from the environment.
    let o = paddock(
        &d,
        &["vm", "list", "--json"],
        &[
            ("PADDOCK_HOST", &d.url),
            ("PADDOCK_TOKEN", &secret),
            ("PADDOCK_CA_CERT", cert),
        ],
    );
    assert_eq!(json(&o).as_array().unwrap().len(), 1);

    // The audit log, read on the socket, names the token.
    let log: serde_json::Value = {
        let c = paddock_api::Client::new(&d.socket);
        serde_json::to_value(c.audit().unwrap()).unwrap()
    };
    let define = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "define")
        .unwrap();
    assert_eq!(define["who"], "token:ci");
}

#[test]
fn remote_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path());
    let secret = json(&paddock(&d, &["token", "create", "ci", "--json"], &[]))["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let cert = d.cert.to_str().unwrap();

    // A wrong pin: the real fingerprint and how to pin it.
    let wrong = "00".repeat(32);
    let o = paddock(
        &d,
        &[
            "--host",
            &d.url,
            "--fingerprint",
            &wrong,
            "--token",
            &secret,
            "vm",
            "list",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(&d.fingerprint) && err.contains("--fingerprint"),
        "{err}"
    );
    let o = paddock(
        &d,
        &[
            "--host",
            &d.url,
            "--fingerprint",
            &wrong,
            "vm",
            "list",
            "--json",
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains(&d.fingerprint));

    // No token: 401 and how to create one.
    let o = paddock(
        &d,
        &["--host", &d.url, "--ca-cert", cert, "vm", "list"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("paddock token create"),
        "{}",
        text(&o.stderr)
    );

    // The WebSockets (events, interactive console) are local only: said, not silently
    // answered by the local socket.
    for cmd in [&["events"][..], &["vm", "console", "x"][..]] {
        let mut args = vec!["--host", &d.url, "--ca-cert", cert, "--token", &secret];
        args.extend_from_slice(cmd);
        let o = paddock(&d, &args, &[]);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}");
        assert!(
            text(&o.stderr).contains("Unix socket only"),
            "{cmd:?}: {}",
            text(&o.stderr)
        );
    }

    // A revoked token: 401.
    assert!(paddock(&d, &["token", "revoke", "ci"], &[])
        .status
        .success());
    let o = paddock(
        &d,
        &[
            "--host",
            &d.url,
            "--ca-cert",
            cert,
            "--token",
            &secret,
            "vm",
            "list",
            "--json",
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], 401);

    // Not https, or no port.
    for host in ["http://127.0.0.1:1", "https://127.0.0.1"] {
        let o = paddock(&d, &["--host", host, "vm", "list"], &[]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o.stderr).contains("https://HOST:PORT"),
            "{}",
            text(&o.stderr)
        );
    }
}
