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

/// The echo guest's VMM, with its stderr kept open (the VMM's last messages must not meet a
/// closed pipe).
struct Echo {
    child: Child,
    _stderr: BufReader<ChildStderr>,
}

/// Starts the echo guest with COM1 on a socket that also logs; returns the VMM, the socket
/// and the log.
fn spawn_echo(dir: &std::path::Path) -> (Echo, std::path::PathBuf, std::path::PathBuf) {
    let path = dir.join("com1.sock");
    let log = dir.join("console.log");
    let mut child = spawn(&[
        "--kernel",
        guest("echo").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--serial",
        &format!("socket={},log={}", path.display(), log.display()),
    ]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr_line(&mut stderr, "serial socket listening on ");
    let echo = Echo {
        child,
        _stderr: stderr,
    };
    (echo, path, log)
}

/// The log's text without carriage returns.
fn log_text(log: &std::path::Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .replace('\r', "")
}

/// Waits (bounded) until the log contains `text`.
fn wait_log(log: &std::path::Path, text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !log_text(log).contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "{text:?} never reached the log: {:?}",
            log_text(log)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_logged_socket_echoes_input_and_logs_everything() {
    if !kvm_available("a_logged_socket_echoes_input_and_logs_everything") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut echo, path, log) = spawn_echo(dir.path());
    // The log is written with no client connected.
    wait_log(&log, "echo guest ready\n");
    let mut client = UnixStream::connect(&path).unwrap();
    // The output from before the client came is also kept for it.
    read_until(&mut client, "echo guest ready\n");
    client.write_all(b"abc").unwrap();
    read_until(&mut client, "ABC");
    client.write_all(b"q").unwrap();
    let text = read_until(&mut client, "echo guest bye\n");
    assert_eq!(echo.child.wait().unwrap().code(), Some(0), "{text}");
    let logged = log_text(&log);
    assert!(
        logged.starts_with("echo guest ready\nABC\necho guest bye\n"),
        "{logged:?}"
    );
}

#[test]
fn a_new_socket_client_replaces_the_current_one() {
    if !kvm_available("a_new_socket_client_replaces_the_current_one") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut echo, path, log) = spawn_echo(dir.path());
    let mut first = UnixStream::connect(&path).unwrap();
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    read_until(&mut first, "echo guest ready\n");
    let mut second = UnixStream::connect(&path).unwrap();
    // The first client is disconnected: it reads the end of the stream.
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    second.write_all(b"xy").unwrap();
    read_until(&mut second, "XY");
    second.write_all(b"q").unwrap();
    read_until(&mut second, "echo guest bye\n");
    assert_eq!(echo.child.wait().unwrap().code(), Some(0));
    assert!(log_text(&log).contains("XY\necho guest bye\n"));
}
