//! The `qemu-system-x86_64` command line for a spec.
//!
//! Devices, block nodes and backends are given as JSON (`-device {...}`, `-blockdev {...}`,
//! `-netdev {...}`, `-object {...}`), so paths need no escaping; the few `key=value` options
//! left (`-chardev`, `-qmp`) double their commas. Every disk names its format (QEMU never
//! probes), every device has an id (`disk0`, `nic0`) that QMP replies refer to.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use paddock_spec::{BootSpec, Firmware, MacAddr, SerialSpec, VmSpec};
use serde_json::{json, Value};

use crate::check::{qemu_format, utf8};
use crate::host::{AccelChoice, Host};
use crate::Error;

/// Where and how the QEMU process runs; the spec says what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// The QEMU binary (`qemu-system-x86_64`, looked up in `PATH`).
    pub qemu: PathBuf,
    /// A directory for the QMP socket (`qmp.sock`) and QEMU's own log (`qemu.log`).
    pub run_dir: PathBuf,
    /// A copy of the serial console for the `stdio`, `socket` and `pty` modes (QEMU's
    /// chardev `logfile`); the `file` mode writes the spec's file only.
    pub console_log: Option<PathBuf>,
    /// Run QEMU inside this network namespace (`ip netns exec NAME`), where its TAP devices
    /// live.
    pub netns: Option<String>,
    /// How long [`QemuVm::start`](crate::QemuVm::start) waits for QMP to answer.
    pub start_timeout: Duration,
    /// Deadline for each QMP command.
    pub qmp_timeout: Duration,
}

impl LaunchOptions {
    /// Defaults with `run_dir` as the run directory.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        LaunchOptions {
            qemu: PathBuf::from("qemu-system-x86_64"),
            run_dir: run_dir.into(),
            console_log: None,
            netns: None,
            start_timeout: Duration::from_secs(15),
            qmp_timeout: Duration::from_secs(10),
        }
    }

    /// The QMP socket QEMU listens on.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    /// QEMU's standard error (its own messages).
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("qemu.log")
    }
}

/// A QEMU command line: the program, its arguments, and what it runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// Programs the QEMU binary runs under, in order (`setsid`, `ip netns exec NAME`).
    pub wrapper: Vec<String>,
    /// The QEMU binary.
    pub program: PathBuf,
    /// QEMU's arguments.
    pub args: Vec<String>,
    /// Whether the serial console is the caller's standard input and output.
    pub stdio_console: bool,
}

impl QemuCommand {
    /// A `Command` for it. Each wrapper `exec`s the next (none forks), so the child's pid is
    /// QEMU's; `setsid` gives QEMU its own session so it outlives the caller.
    pub fn to_command(&self) -> Command {
        let mut all: Vec<OsString> = self.wrapper.iter().map(OsString::from).collect();
        all.push(self.program.clone().into_os_string());
        let mut cmd = Command::new(&all[0]);
        cmd.args(&all[1..]).args(&self.args);
        cmd
    }
}

/// `value` for a `key=value` option: commas doubled.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// A MAC for NIC `index` of VM `name` when the spec gives none: QEMU's locally
/// administered `52:54:00` prefix and three bytes hashed from the name and index, so it stays
/// the same across restarts and differs between VMs.
pub fn default_mac(name: &str, index: usize) -> MacAddr {
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes().chain((index as u32).to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, b[1], b[2], b[3]])
}

/// Builds the command line for `spec` (already passed through [`check`](crate::check)) with
/// accelerator `accel`.
pub fn build(
    spec: &VmSpec,
    opts: &LaunchOptions,
    accel: AccelChoice,
    host: &Host,
) -> Result<QemuCommand, Error> {
    if let Some(field) = spec.unresolved_volume() {
        return Err(paddock_spec::SpecError::new(field, paddock_spec::UNRESOLVED_VOLUME).into());
    }
    let mut a: Vec<String> = Vec::new();
    let mut push = |list: &[&str]| a.extend(list.iter().map(|s| s.to_string()));
    push(&["-name", &format!("guest={},debug-threads=on", spec.name)]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-msg", "timestamp=on"]);
    // No new privileges, no fork/exec, no obsolete syscalls once QEMU is set up.
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    let mut machine = String::from("q35");
    if spec.memory.shared {
        machine.push_str(",memory-backend=pc.ram");
        let backend = json!({
            "qom-type": "memory-backend-memfd", "id": "pc.ram",
            "size": spec.memory.size_mib << 20, "share": true,
        });
        push(&["-object", &backend.to_string()]);
    }
    push(&["-machine", &machine]);
    push(&["-accel", accel.name()]);
    push(&[
        "-cpu",
        match accel {
            AccelChoice::Kvm => "host",
            AccelChoice::Tcg => "max",
        },
    ]);
    push(&["-m", &format!("{}M", spec.memory.size_mib)]);
    let threads = spec.cpus.threads_per_core;
    push(&[
        "-smp",
        &format!(
            "{},sockets=1,cores={},threads={threads}",
            spec.cpus.count,
            spec.cpus.count / threads
        ),
    ]);
    match &spec.boot {
        BootSpec::Kernel {
            kernel,
            initramfs,
            cmdline,
        } => {
            push(&["-kernel", utf8("boot.kernel", kernel)?]);
            if let Some(initrd) = initramfs {
                push(&["-initrd", utf8("boot.initramfs", initrd)?]);
            }
            if !cmdline.is_empty() {
                push(&["-append", cmdline]);
            }
        }
        // SeaBIOS is QEMU's default firmware.
        BootSpec::Firmware {
            firmware: Firmware::Bios,
        } => {}
        BootSpec::Firmware {
            firmware: Firmware::Uefi,
        } => {
            let ovmf = host.ovmf.as_deref().ok_or_else(|| Error::Unsupported {
                feature: "boot.firmware uefi".into(),
                reason: "no OVMF image is installed".into(),
            })?;
            push(&["-bios", utf8("boot.firmware", ovmf)?]);
        }
    }
    for (i, d) in spec.disks.iter().enumerate() {
        let path = utf8(&format!("disks[{i}].path"), &d.path)?;
        let format = qemu_format(&d.format).ok_or_else(|| Error::Unsupported {
            feature: format!("disks[{i}].format {}", d.format),
            reason: "QEMU has no driver of that name".into(),
        })?;
        let file = json!({
            "driver": "file", "node-name": format!("disk{i}-file"), "filename": path,
            "read-only": d.readonly,
        });
        let fmt = json!({
            "driver": format, "node-name": format!("disk{i}"), "file": format!("disk{i}-file"),
            "read-only": d.readonly,
        });
        let mut dev = json!({
            "driver": "virtio-blk-pci", "id": format!("disk{i}"), "drive": format!("disk{i}"),
        });
        if let Some(serial) = &d.serial {
            dev["serial"] = Value::from(serial.as_str());
        }
        push(&["-blockdev", &file.to_string()]);
        push(&["-blockdev", &fmt.to_string()]);
        push(&["-device", &dev.to_string()]);
    }
    for (i, n) in spec.nics.iter().enumerate() {
        let tap = n.tap.as_deref().ok_or_else(|| Error::Unsupported {
            feature: format!("nics[{i}].network"),
            reason: "the QEMU driver needs a TAP device".into(),
        })?;
        let mac = n.mac.unwrap_or_else(|| default_mac(&spec.name, i));
        let netdev = json!({
            "type": "tap", "id": format!("net{i}"), "ifname": tap,
            "script": "no", "downscript": "no",
        });
        let dev = json!({
            "driver": "virtio-net-pci", "id": format!("nic{i}"), "netdev": format!("net{i}"),
            "mac": mac.to_string(),
        });
        push(&["-netdev", &netdev.to_string()]);
        push(&["-device", &dev.to_string()]);
    }
    if spec.rng {
        push(&["-device", r#"{"driver":"virtio-rng-pci","id":"rng0"}"#]);
    }
    if let Some(v) = &spec.vsock {
        let dev = json!({"driver": "vhost-vsock-pci", "id": "vsock0", "guest-cid": v.cid});
        push(&["-device", &dev.to_string()]);
    }
    // The spec's own socket log wins over the launcher's copy; both are appended to.
    let spec_log = match &spec.serial {
        SerialSpec::Socket { log: Some(p), .. } => Some(("serial.log", p)),
        _ => None,
    };
    let log = match spec_log.or(opts.console_log.as_ref().map(|p| ("console_log", p))) {
        Some((field, p)) => format!(",logfile={},logappend=on", opt(utf8(field, p)?)),
        None => String::new(),
    };
    let chardev = match &spec.serial {
        SerialSpec::Off => None,
        SerialSpec::Stdio => Some(format!("stdio,id=serial0,signal=off{log}")),
        SerialSpec::File { path } => Some(format!(
            "file,id=serial0,path={}",
            opt(utf8("serial.path", path)?)
        )),
        SerialSpec::Socket { path, .. } => Some(format!(
            "socket,id=serial0,path={},server=on,wait=off{log}",
            opt(utf8("serial.path", path)?)
        )),
        SerialSpec::Pty => Some(format!("pty,id=serial0{log}")),
    };
    if let Some(c) = chardev {
        push(&["-chardev", &c, "-serial", "chardev:serial0"]);
    }
    let qmp = opts.qmp_socket();
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt(utf8("run_dir", &qmp)?)),
    ]);
    let mut wrapper = vec!["setsid".to_string()];
    if let Some(ns) = &opts.netns {
        wrapper.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    Ok(QemuCommand {
        wrapper,
        program: opts.qemu.clone(),
        args: a,
        stdio_console: spec.serial == SerialSpec::Stdio,
    })
}

/// The value following `flag` in `args`, for tests and diagnostics.
pub fn arg_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// Whether `haystack` (a process's command line) names `path` as a `key=value` option
/// value would (commas doubled): the QMP socket check on attach.
pub(crate) fn mentions(haystack: &[u8], path: &Path) -> bool {
    let needle = opt(&path.to_string_lossy()).into_bytes();
    haystack
        .windows(needle.len().max(1))
        .any(|w| w == needle.as_slice())
}

#[cfg(test)]
#[path = "launch_tests.rs"]
mod tests;
