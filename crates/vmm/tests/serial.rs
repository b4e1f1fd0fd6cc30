//! COM1 on a Unix socket and on a pty under real KVM: a client reads the hello guest's output
//! (`wait=on` holds the boot for it), and input typed into the socket or the pty reaches the
//! guest's UART.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStderr, Command, Stdio};

use common::*;

fn spawn(args: &[&str]) -> Child {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_paddock-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paddock-vmm")
}

/// Reads stderr lines until one contains `marker`; returns the rest of that line.
fn stderr_line(stderr: &mut BufReader<ChildStderr>, marker: &str) -> String {
    loop {
        let mut line = String::new();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "the VMM ended before printing {marker:?}"
        );
        if let Some(i) = line.find(marker) {
            return line[i + marker.len()..].trim().to_string();
        }
    }
}

/// Reads from `r` until `text` has been seen (ignoring the guest's carriage returns);
/// returns everything read.
fn read_until(r: &mut impl Read, text: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got)
        .replace('\r', "")
        .contains(text)
    {
        let n = r.read(&mut buf).unwrap();
        assert_ne!(
            n,
            0,
            "ended before {text:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).replace('\r', "")
}

#[test]
fn a_socket_client_reads_the_hello_guest() {
    if !kvm_available("a_socket_client_reads_the_hello_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("com1.sock");
    let mut child = spawn(&[
        "--kernel",
        guest("hello").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--serial",
        &format!("socket={},wait=on", path.display()),
    ]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    assert_eq!(
        stderr_line(&mut stderr, "serial socket listening on "),
        path.display().to_string()
    );
    let mut client = UnixStream::connect(&path).unwrap();
    // The VMM ends after the guest: the client reads everything up to the end.
    let mut text = String::new();
    client.read_to_string(&mut text).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    let text = text.replace('\r', "");
    assert!(
        text.starts_with("Hello from the Paddock test guest\n"),
        "{text}"
    );
    assert!(text.contains("ram=63 MiB"), "{text}");
}

#[test]
fn socket_input_reaches_the_guest_uart() {
    if !kvm_available("socket_input_reaches_the_guest_uart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("com1.sock");
    let console = dir.path().join("console.log");
    let mut child = spawn(&[
        "--kernel",
        guest("console").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--cmdline",
        "serial.echo=1",
        "--console",
        &format!("file={}", console.display()),
        "--serial",
        &format!("socket={}", path.display()),
    ]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr_line(&mut stderr, "serial socket listening on ");
    let mut client = UnixStream::connect(&path).unwrap();
    // Output from before the client came is kept for it.
    read_until(&mut client, "serial: type a line\n");
    client.write_all(b"over the socket\n").unwrap();
    let text = read_until(&mut client, "console ok\n");
    assert!(text.contains("serial got: over the socket\n"), "{text}");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{text}");
}

#[test]
fn pty_carries_output_and_input() {
    if !kvm_available("pty_carries_output_and_input") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let mut child = spawn(&[
        "--kernel",
        guest("console").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--cmdline",
        "serial.echo=1",
        "--console",
        &format!("file={}", console.display()),
        "--serial",
        "pty",
    ]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let pty = stderr_line(&mut stderr, "serial pty at ");
    assert!(pty.starts_with("/dev/pts/"), "{pty}");
    let mut term = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty)
        .unwrap();
    read_until(&mut term, "serial: type a line\n");
    term.write_all(b"over the pty\n").unwrap();
    let text = read_until(&mut term, "console ok\n");
    assert!(text.contains("serial got: over the pty\n"), "{text}");
    assert_eq!(child.wait().unwrap().code(), Some(0), "{text}");
}

#[test]
fn serial_options_are_checked() {
    for bad in ["socket=", "socket=/tmp/x,wait=maybe", "tcp=1"] {
        let o = vmm(&["--kernel", "/nonexistent", "--serial", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(err(&o).contains("--serial"), "{bad}: {}", err(&o));
    }
}
