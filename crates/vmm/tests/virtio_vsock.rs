//! virtio-vsock under real KVM: the `vsock` guest connects to host port 1234 (our listener at
//! `PATH_1234` echoes its line), then accepts a host-initiated connection made through `PATH`
//! with `CONNECT 5001` and echoes a line back.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};

use common::*;

#[test]
fn vsock_guest_streams_both_ways_through_unix_sockets() {
    if !kvm_available("vsock_guest_streams_both_ways_through_unix_sockets") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let service = UnixListener::bind(dir.path().join("vsock.sock_1234")).unwrap();
    let child = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_paddock-vmm"))
        .args(["--kernel", guest("vsock").to_str().unwrap()])
        .args(["--memory", "64M", "--debug-exit"])
        .args(["--cmdline", "vsock.listen=5001"])
        .args(["--vsock", &format!("cid=7,socket={}", path.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paddock-vmm");

    // Guest to host: echo one line.
    let (conn, _) = service.accept().expect("the guest connects to port 1234");
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    assert_eq!(line, "hello from the vsock guest\n");
    (&conn).write_all(line.as_bytes()).unwrap();

    // Host to guest: the VMM is up (the guest reached us), so PATH is bound.
    let client = UnixStream::connect(&path).expect("connect to the vsock socket");
    (&client).write_all(b"CONNECT 5001\n").unwrap();
    let mut reader = BufReader::new(&client);
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    if !ok.starts_with("OK ") {
        let o = child.wait_with_output().unwrap();
        panic!("{ok:?} instead of OK\n{}{}", out(&o), err(&o));
    }
    let host_port: u32 = ok[3..].trim().parse().unwrap();
    (&client).write_all(b"ping from the host\n").unwrap();
    let mut echo = String::new();
    reader.read_line(&mut echo).unwrap();
    assert_eq!(echo, "ping from the host\n");
    drop(reader);
    drop(client);

    let o = child.wait_with_output().unwrap();
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("vsock 00:01.0: cid=7"), "{text}");
    assert!(text.contains("vsock: echo ok (27 bytes)"), "{text}");
    assert!(text.contains("vsock: closed"), "{text}");
    assert!(
        text.contains(&format!(
            "vsock: accepted host port {host_port} on port 5001"
        )),
        "{text}"
    );
    assert!(
        text.contains("vsock: echoed 19 bytes to the host"),
        "{text}"
    );
    assert!(text.contains("vsock ok"), "{text}");
}

#[test]
fn a_refused_port_is_reported_to_the_guest() {
    if !kvm_available("a_refused_port_is_reported_to_the_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    // Nobody listens on PATH_1234: the guest's request is reset.
    let o = vmm(&[
        "--kernel",
        guest("vsock").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--vsock",
        &format!("cid=3,socket={}", path.display()),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("op=3 from port 1234"), "{}", out(&o));
    assert!(
        out(&o).contains("connection to host port 1234 refused"),
        "{}",
        out(&o)
    );
}
