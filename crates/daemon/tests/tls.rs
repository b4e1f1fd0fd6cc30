//! Remote access: `paddockd --listen 127.0.0.1:0` serves the API over TLS behind bearer
//! tokens, with a self-signed certificate generated once and reused; the Unix socket is
//! unchanged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use paddock_api::remote::{fingerprint_of_pem, Remote, RemoteError, Trust};
use paddock_api::tokens::TokenRequest;
use paddock_api::{Client, ClientError};

/// A paddockd with a Unix socket and a TLS listener on a free loopback port.
struct Daemon {
    child: Child,
    dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    url: String,
    /// The fingerprint it printed.
    fingerprint: String,
    /// Everything it printed on stderr up to the listening line.
    log: String,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paddockd"))
            .arg("--socket")
            .arg(dir.join("d.sock"))
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
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start paddockd");
        let stderr = child.stderr.take().unwrap();
        // Owned from here, so a failed start still ends the process.
        let mut d = Daemon {
            child,
            dir: dir.to_path_buf(),
            url: String::new(),
            fingerprint: String::new(),
            log: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("paddockd never said it listens on TLS:\n{}", d.log));
            d.log.push_str(&line);
            d.log.push('\n');
            if let Some(rest) = line.strip_prefix("paddockd: listening on https://") {
                let addr = rest.split_whitespace().next().unwrap();
                let fingerprint = rest.rsplit("fingerprint ").next().unwrap();
                d.fingerprint = fingerprint.trim_end_matches(')').to_string();
                d.url = format!("https://{addr}");
                return d;
            }
        }
    }

    fn socket(&self) -> Client {
        Client::new(self.dir.join("d.sock"))
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("state/tls/cert.pem")
    }

    /// A remote client trusting the generated certificate as a CA.
    fn remote(&self, token: Option<&str>) -> Client {
        Client::remote(Remote::new(&self.url, Trust::CaFile(self.cert()), token).unwrap())
    }

    fn create(&self, name: &str, days: Option<u32>) -> String {
        self.socket()
            .create_token(&TokenRequest {
                name: name.into(),
                expires_in_days: days,
            })
            .expect("create a token on the socket")
            .secret
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(r: Result<impl Sized, ClientError>) -> Option<u16> {
    r.err().and_then(|e| e.status())
}

#[test]
fn the_self_signed_certificate_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(dir.path());
    assert!(first
        .log
        .contains("generated a self-signed TLS certificate"));
    assert_eq!(
        fingerprint_of_pem(&first.cert()).unwrap(),
        first.fingerprint
    );
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("state/tls/key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let fp = first.fingerprint.clone();
    drop(first);
    let second = Daemon::start(dir.path());
    assert!(!second.log.contains("generated"), "{}", second.log);
    assert_eq!(second.fingerprint, fp);
    // Pinned by fingerprint, the client needs no CA file.
    let secret = second.create("pin", None);
    let pinned = Remote::new(
        &second.url,
        Trust::Fingerprint(fp.to_lowercase()),
        Some(&secret),
    );
    assert!(Client::remote(pinned.unwrap()).list().unwrap().is_empty());
}

#[test]
fn every_tcp_request_needs_a_live_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    // No token, or a made-up one: 401 saying how to get one; nothing is served, not even
    // the metrics or the document.
    let err = d.remote(None).list().unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("paddock token create"), "{err}");
    for path in ["/metrics", "/openapi.json", "/api/v1/tokens", "/nope"] {
        assert_eq!(
            status(d.remote(None).raw("GET", path, None)),
            Some(401),
            "{path}"
        );
    }
    assert_eq!(status(d.remote(Some("pdk_madeup")).list()), Some(401));

    let secret = d.create("ci", None);
    assert!(secret.starts_with("pdk_"));
    let ci = d.remote(Some(&secret));
    assert!(ci.list().unwrap().is_empty());
    let metrics = ci.raw("GET", "/metrics", None).unwrap();
    assert!(String::from_utf8_lossy(&metrics).contains("paddock_vms"));

    // The list shows the use and never a secret; the database holds no secret either.
    let tokens = ci.tokens().unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].last_used.is_some());
    let listed = d.socket().raw("GET", "/api/v1/tokens", None).unwrap();
    assert!(!String::from_utf8_lossy(&listed).contains(&secret));
    assert!(!String::from_utf8_lossy(&listed).contains("pdk_"));
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let hay = String::from_utf8_lossy(&bytes);
            assert!(
                !hay.contains(&secret[4..]),
                "{} holds the secret",
                path.display()
            );
        }
    }

    // Tokens are minted on the host only.
    let err = ci
        .create_token(&TokenRequest {
            name: "more".into(),
            expires_in_days: None,
        })
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(d
        .socket()
        .tokens()
        .unwrap()
        .iter()
        .all(|t| t.name != "more"));

    // Revoked: 401 from then on.
    d.socket().revoke_token("ci").unwrap();
    let err = ci.list().unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("revoked"), "{err}");
    assert_eq!(status(d.socket().revoke_token("ci")), Some(404));
}

#[test]
fn an_expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let secret = d.create("short", Some(1));
    let client = d.remote(Some(&secret));
    assert!(client.list().is_ok());
    let expires = d.socket().tokens().unwrap()[0].expires_at.clone().unwrap();
    assert!(expires > d.socket().tokens().unwrap()[0].created_at);
    // A day cannot pass in a test: move the expiry into the past in the database.
    let db = rusqlite::Connection::open(dir.path().join("state/paddockd.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let n = db
        .execute(
            "UPDATE tokens SET expires_at = '2001-01-01T00:00:00.000Z' WHERE name = 'short'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let err = client.list().unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("expired"), "{err}");
    // Bad requests are refused with the field named, and change nothing.
    for (body, field) in [
        (r#"{"name":"a b"}"#, "name"),
        (r#"{"name":"x","expires_in_days":0}"#, "expires_in_days"),
    ] {
        let err = d
            .socket()
            .raw("POST", "/api/v1/tokens", Some(body.as_bytes()))
            .unwrap_err();
        assert_eq!(err.status(), Some(422), "{body}");
        assert!(
            matches!(&err, ClientError::Api { body, .. } if body.field.as_deref() == Some(field))
        );
    }
    assert_eq!(
        status(
            d.socket()
                .raw("POST", "/api/v1/tokens", Some(b"{\"nam\":1}"))
        ),
        Some(400)
    );
    assert_eq!(
        status(d.socket().create_token(&TokenRequest {
            name: "short".into(),
            expires_in_days: None
        })),
        Some(409)
    );
    assert_eq!(d.socket().tokens().unwrap().len(), 1);
}

#[test]
fn the_audit_log_names_the_token_or_the_uid() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let secret = d.create("ci", None);
    d.create("victim", None);
    let spec = br#"{"name":"web","memory":{"size_mib":64},"boot":{"kind":"kernel","kernel":"/k"}}"#;
    let ci = d.remote(Some(&secret));
    ci.define_json(spec).unwrap();
    ci.revoke_token("victim").unwrap();
    d.socket().delete("web").unwrap();
    let log = d.socket().audit().unwrap();
    let who = |action: &str, target: &str| {
        log.iter()
            .find(|e| e.action == action && e.target == target)
            .unwrap_or_else(|| panic!("no {action} {target} in {log:?}"))
            .who
            .clone()
    };
    let uid = format!("uid:{}", my_uid());
    assert_eq!(who("token-create", "ci"), Some(uid.clone()));
    assert_eq!(who("define", "web"), Some("token:ci".into()));
    assert_eq!(who("token-revoke", "victim"), Some("token:ci".into()));
    assert_eq!(who("delete", "web"), Some(uid));
    // The socket keeps answering without a token, as before.
    assert!(d.socket().list().unwrap().is_empty());
}

/// This process's uid, as SO_PEERCRED reports it to the daemon.
fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn untrusted_certificates_and_plain_http_get_no_api_answer() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    // A pin that does not match: the error names the real fingerprint and how to pin it.
    let wrong = Remote::new(&d.url, Trust::Fingerprint("AB".repeat(32)), Some("pdk_x")).unwrap();
    let err = Client::remote(wrong).list().unwrap_err();
    match &err {
        ClientError::Remote(RemoteError::Untrusted { fingerprint, .. }) => {
            assert_eq!(fingerprint, &d.fingerprint)
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
    assert!(err.to_string().contains("--fingerprint"), "{err}");
    // Another CA: refused the same way.
    let other = dir.path().join("other.pem");
    let pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    std::fs::write(&other, cert.pem()).unwrap();
    let r = Remote::new(&d.url, Trust::CaFile(other), None).unwrap();
    let err = Client::remote(r).list().unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote(RemoteError::Untrusted { fingerprint, .. }) if fingerprint == &d.fingerprint),
        "{err:?}"
    );

    // Plain HTTP to the TLS port: the connection closes without an HTTP answer.
    let addr = d.url.trim_start_matches("https://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /api/v1/vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("HTTP/1") && !text.contains('['), "{text:?}");
}
