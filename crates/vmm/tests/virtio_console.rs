//! virtio-console under real KVM: the `console` guest writes a line that the test reads from
//! the console file; with `stdio`, host input on stdin reaches the guest and comes back.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn console_guest_writes_a_line_to_the_console_file() {
    if !kvm_available("console_guest_writes_a_line_to_the_console_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console.log");
    let o = vmm(&[
        "--kernel",
        guest("console").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--console",
        &format!("file={}", file.display()),
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("max_nr_ports=1"), "{text}");
    assert!(text.contains("console ok"), "{text}");
    let log = std::fs::read_to_string(&file).unwrap();
    assert_eq!(log, "Hello from the virtio console guest\n");
}

#[test]
fn console_stdio_carries_input_to_the_guest() {
    if !kvm_available("console_stdio_carries_input_to_the_guest") {
        return;
    }
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_paddock-vmm"))
        .args(["--kernel", guest("console").to_str().unwrap()])
        .args(["--memory", "64M", "--debug-exit", "--serial", "off"])
        .args(["--console", "stdio", "--cmdline", "console.echo=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed on the host\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert_eq!(
        text,
        "Hello from the virtio console guest\nconsole got: typed on the host\n"
    );
}

#[test]
fn without_a_console_the_guest_finds_none() {
    if !kvm_available("without_a_console_the_guest_finds_none") {
        return;
    }
    let o = vmm(&[
        "--kernel",
        guest("console").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("no virtio-console device"), "{}", out(&o));
}
