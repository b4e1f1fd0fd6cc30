//! The QMP client against a scripted fake server on a socketpair.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};

use super::{QmpClient, QmpError, RunState};

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2"}, "capabilities": ["oob"]}}"#;
const LONG: Duration = Duration::from_secs(10);

/// The server side: reads requests and writes raw lines.
struct Fake {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Fake {
    fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad request {line:?}: {e}"))
    }
    /// Reads a request for `command` and returns its id.
    fn expect(&mut self, command: &str) -> Value {
        let req = self.recv();
        assert_eq!(req["execute"], command, "{req}");
        req["id"].clone()
    }
    fn reply(&mut self, id: &Value, ret: Value) {
        self.send(&json!({ "return": ret, "id": id }).to_string());
    }
    /// Greeting and capability negotiation.
    fn handshake(&mut self) {
        self.send(GREETING);
        let id = self.expect("qmp_capabilities");
        self.reply(&id, json!({}));
    }
}

/// A client connected to a fake server running `script` in a thread.
fn fake(script: impl FnOnce(&mut Fake) + Send + 'static) -> (UnixStream, JoinHandle<()>) {
    let (client, server) = UnixStream::pair().unwrap();
    let handle = thread::spawn(move || {
        let mut f = Fake {
            reader: BufReader::new(server.try_clone().unwrap()),
            writer: server,
        };
        script(&mut f);
    });
    (client, handle)
}

#[test]
fn greeting_is_read_and_capabilities_negotiated() {
    let (stream, server) = fake(|f| {
        f.handshake();
        let id = f.expect("query-version");
        f.reply(
            &id,
            json!({"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}),
        );
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    assert_eq!(c.greeting().version.qemu.major, 10);
    assert_eq!(c.greeting().capabilities, vec!["oob".to_string()]);
    let v = c.query_version().unwrap();
    assert_eq!((v.qemu.major, v.qemu.minor, v.qemu.micro), (10, 0, 2));
    server.join().unwrap();
}

#[test]
fn events_before_a_reply_are_queued_in_order() {
    let (stream, server) = fake(|f| {
        f.handshake();
        let id = f.expect("stop");
        f.send(r#"{"timestamp": {"seconds": 5, "microseconds": 7}, "event": "STOP"}"#);
        f.reply(&id, json!({}));
        let id = f.expect("query-status");
        // A reply split across writes, with an event in the same write as its head.
        f.writer
            .write_all(b"{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 6, \"microseconds\": 0}}\n{\"return\": {\"status\": \"pau")
            .unwrap();
        f.send(&format!(r#"sed", "running": false}}, "id": {id}}}"#));
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    c.stop().unwrap();
    let st = c.query_status().unwrap();
    assert_eq!(st.status, RunState::Paused);
    assert!(!st.running);
    let events = c.take_events();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["STOP", "RESUME"]);
    assert_eq!(events[0].timestamp, (5, 7));
    assert!(c.take_events().is_empty(), "events are taken once");
    server.join().unwrap();
}

#[test]
fn an_error_reply_names_the_command_and_class() {
    let (stream, server) = fake(|f| {
        f.handshake();
        let id = f.expect("cont");
        f.send(
            &json!({"error": {"class": "GenericError", "desc": "Resetting the VM"}, "id": id})
                .to_string(),
        );
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    match c.cont().unwrap_err() {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "cont");
            assert_eq!(class, "GenericError");
            assert_eq!(desc, "Resetting the VM");
        }
        e => panic!("wrong error {e:?}"),
    }
    server.join().unwrap();
}

#[test]
fn a_late_reply_after_a_timeout_is_discarded() {
    let (stream, server) = fake(|f| {
        f.handshake();
        // The first command gets no answer until the client has given up and sent another.
        let first = f.expect("query-status");
        let second = f.expect("query-status");
        f.reply(&first, json!({"status": "paused", "running": false}));
        f.reply(&second, json!({"status": "running", "running": true}));
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    c.set_timeout(Duration::from_millis(100));
    match c.query_status().unwrap_err() {
        QmpError::Timeout { what, .. } => assert_eq!(what, "reply to query-status"),
        e => panic!("wrong error {e:?}"),
    }
    c.set_timeout(LONG);
    assert_eq!(c.query_status().unwrap().status, RunState::Running);
    server.join().unwrap();
}

#[test]
fn wait_event_takes_the_named_event_and_keeps_the_others() {
    let (stream, server) = fake(|f| {
        f.handshake();
        f.send(r#"{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 0}}"#);
        f.send(r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 2, "microseconds": 0}}"#);
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    let ev = c.wait_event("SHUTDOWN", LONG).unwrap();
    assert_eq!(ev.guest_initiated(), Some(true));
    assert_eq!(ev.reason(), Some("guest-shutdown"));
    let rest = c.take_events();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].name, "POWERDOWN");
    server.join().unwrap();
    // The server is gone: waiting for more reports the close, not a timeout.
    assert!(matches!(
        c.wait_event("RESET", LONG),
        Err(QmpError::Closed { .. })
    ));
}

#[test]
fn poll_events_returns_on_the_first_event_or_the_deadline() {
    let (stream, server) = fake(|f| {
        f.handshake();
        let id = f.expect("query-status");
        f.send(r#"{"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}, "timestamp": {"seconds": 3, "microseconds": 0}}"#);
        f.reply(&id, json!({"status": "running", "running": true}));
        // Keep the socket open until the client is done.
        let _ = f.recv_eof();
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    assert_eq!(c.poll_events(Duration::from_millis(20)).unwrap(), 0);
    c.query_status().unwrap();
    assert_eq!(c.poll_events(Duration::from_millis(20)).unwrap(), 1);
    drop(c);
    server.join().unwrap();
}

impl Fake {
    /// Reads until the client hangs up.
    fn recv_eof(&mut self) -> std::io::Result<()> {
        let mut sink = String::new();
        while self.reader.read_line(&mut sink)? > 0 {}
        Ok(())
    }
}

#[test]
fn quit_counts_a_close_without_reply_as_done() {
    let (stream, server) = fake(|f| {
        f.handshake();
        f.expect("quit");
        // Close without a reply, as QEMU may when it exits first.
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    c.quit().unwrap();
    server.join().unwrap();
}

#[test]
fn a_close_during_the_greeting_is_reported() {
    let (stream, server) = fake(|_| {});
    server.join().unwrap();
    assert!(matches!(
        QmpClient::from_stream(stream, LONG),
        Err(QmpError::Closed { .. })
    ));
}

#[test]
fn a_server_that_is_not_qmp_is_refused() {
    let (stream, server) = fake(|f| f.send(r#"{"hello": "world"}"#));
    let err = QmpClient::from_stream(stream, LONG).unwrap_err();
    assert!(
        matches!(&err, QmpError::Protocol { message, .. } if message.contains("greeting")),
        "{err:?}"
    );
    server.join().unwrap();
    let (stream, server) = fake(|f| f.send("not json"));
    let err = QmpClient::from_stream(stream, LONG).unwrap_err();
    assert!(matches!(&err, QmpError::Protocol { .. }), "{err:?}");
    server.join().unwrap();
}

#[test]
fn blockstats_and_cpus_decode_from_qemu_replies() {
    let (stream, server) = fake(|f| {
        f.handshake();
        let id = f.expect("query-blockstats");
        // Shape of QEMU 10's reply for a -blockdev disk behind virtio-blk-pci id=disk0.
        f.reply(
            &id,
            json!([{
                "device": "", "node-name": "disk0",
                "qdev": "/machine/peripheral/disk0/virtio-backend",
                "stats": {"rd_bytes": 4096, "wr_bytes": 512, "rd_operations": 3,
                          "wr_operations": 1, "flush_operations": 2, "account_invalid": true,
                          "timed_stats": []},
                "parent": {"node-name": "disk0-file", "stats": {"rd_bytes": 1}}
            }, {
                "device": "ide0-hd0", "stats": {"rd_bytes": 7}
            }]),
        );
        let id = f.expect("query-cpus-fast");
        f.reply(
            &id,
            json!([{"thread-id": 19236, "props": {"core-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}]),
        );
    });
    let mut c = QmpClient::from_stream(stream, LONG).unwrap();
    let stats = c.query_blockstats().unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].device_id.as_deref(), Some("disk0"));
    assert_eq!(stats[0].node_name.as_deref(), Some("disk0"));
    assert_eq!(
        (
            stats[0].rd_bytes,
            stats[0].wr_bytes,
            stats[0].rd_operations,
            stats[0].wr_operations,
            stats[0].flush_operations
        ),
        (4096, 512, 3, 1, 2)
    );
    assert_eq!(stats[1].device_id.as_deref(), Some("ide0-hd0"));
    assert_eq!(stats[1].rd_bytes, 7);
    let cpus = c.query_cpus_fast().unwrap();
    assert_eq!(cpus.len(), 1);
    assert_eq!((cpus[0].cpu_index, cpus[0].thread_id), (0, 19236));
    server.join().unwrap();
}
