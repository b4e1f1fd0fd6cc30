//! `paddock-vmm`: boots one VM on KVM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use paddock_vmm::api::spec::{self, VmDescription};
use paddock_vmm::boot::{BootConfig, EntryChoice};
use paddock_vmm::devices::legacy::serial::SerialConfig;
use paddock_vmm::devices::virtio::block::DiskConfig;
use paddock_vmm::devices::virtio::console::ConsoleConfig;
use paddock_vmm::devices::virtio::net::NetConfig;
use paddock_vmm::devices::virtio::vsock::VsockConfig;
use paddock_vmm::net::HostDevices;
use paddock_vmm::seccomp::ThreadKind;
use paddock_vmm::vm::{self, RunOptions, VmConfig};

/// Boots a VM on KVM: Linux direct boot (bzImage or ELF, 64-bit or PVH entry).
///
/// The VM comes from either the flags below or `--config vm.json` (a Paddock VM spec), not
/// both.
#[derive(Parser, Debug)]
#[command(name = "paddock-vmm", version, about)]
struct Args {
    /// The VM as a Paddock VM spec (JSON); excludes the flags that describe the VM.
    #[arg(long, value_name = "FILE", conflicts_with_all = VM_FLAGS)]
    config: Option<PathBuf>,
    /// Kernel image (bzImage, or ELF vmlinux / test guest).
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initial RAM filesystem.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    cpus: u8,
    /// Guest memory (K, M, G suffixes).
    #[arg(long, default_value = "512M", value_parser = parse_memory)]
    memory: u64,
    /// Serial console (COM1): stdio, off, file=PATH, socket=PATH[,wait=on][,log=FILE] (the VMM
    /// listens; one client at a time, a new connection replaces the current one; log=FILE
    /// appends all output to FILE) or pty (its path is printed on stderr).
    #[arg(long, default_value = "stdio", value_parser = SerialConfig::parse)]
    serial: SerialConfig,
    /// Entry point: auto (PVH when the ELF has the note), linux64 or pvh.
    #[arg(long, default_value = "auto", value_parser = ["auto", "linux64", "pvh"])]
    boot_entry: String,
    /// Provide the debug-exit port 0xf4 (a guest write ends the VM with that status). A test
    /// device, not part of the VM spec, so it combines with --config.
    #[arg(long)]
    debug_exit: bool,
    /// A virtio-blk disk (repeatable; PCI slots 00:01.0, 00:02.0, ... in order):
    /// path=FILE[,format=raw|qcow2|vmdk|vpc|vhdx|vdi][,readonly=on|off][,serial=ID].
    /// The format defaults to raw and is never probed.
    #[arg(long = "disk", value_name = "OPTIONS", value_parser = DiskConfig::parse)]
    disks: Vec<DiskConfig>,
    /// Add a virtio-rng device (after the disks).
    #[arg(long)]
    rng: bool,
    /// Serve the control API (HTTP/1.1 + JSON, see crates/vmm/api/openapi.json) on this Unix
    /// socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Seccomp filters per thread: on (default) or off. Off is for debugging only.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    seccomp: String,
    /// Test hook: the first thread of this kind (main, api, vcpu, worker) makes a syscall its
    /// filter forbids, which must kill the process.
    #[arg(long, hide = true, value_parser = ThreadKind::parse)]
    seccomp_selftest: Option<ThreadKind>,
    /// Let a helper process destroy the VM after this one exits (saves the kernel's 15-30 ms
    /// VM teardown under nested KVM). The helper is reparented when the VMM exits: use it only
    /// where the reaper (init, or a subreaper such as the daemon) reaps orphans.
    #[arg(long)]
    async_teardown: bool,
    /// A virtio-net device on a TAP interface (repeatable): tap=NAME[,mac=52:54:00:xx:xx:xx].
    #[arg(long = "net", value_name = "OPTIONS", value_parser = NetConfig::parse)]
    nets: Vec<NetConfig>,
    /// A virtio-vsock device: cid=N,socket=PATH (guest connections to port P go to PATH_P).
    #[arg(long, value_name = "OPTIONS", value_parser = VsockConfig::parse)]
    vsock: Option<VsockConfig>,
    /// A virtio console: file=PATH, stdio or off.
    #[arg(long, default_value = "off", value_parser = ConsoleConfig::parse)]
    console: ConsoleConfig,
}

/// The flags that describe the VM and so conflict with --config.
const VM_FLAGS: [&str; 11] = [
    "kernel",
    "initramfs",
    "cmdline",
    "cpus",
    "memory",
    "serial",
    "boot_entry",
    "disks",
    "rng",
    "nets",
    "vsock",
];

fn parse_memory(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 512M"))?;
    let bytes = n
        .checked_shl(shift)
        .filter(|b| b >> shift == n)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if bytes < 16 << 20 || bytes % 4096 != 0 {
        return Err(format!(
            "'{s}': memory must be at least 16M and a multiple of 4K"
        ));
    }
    Ok(bytes)
}

/// The VM as the flags describe it.
fn describe_flags(args: &Args) -> Result<VmDescription, String> {
    let entry = match args.boot_entry.as_str() {
        "linux64" => EntryChoice::Linux64,
        "pvh" => EntryChoice::Pvh,
        _ => EntryChoice::Auto,
    };
    Ok(VmDescription {
        boot: BootConfig {
            kernel: args.kernel.clone().unwrap_or_default(),
            initramfs: args.initramfs.clone(),
            cmdline: args.cmdline.clone(),
            entry,
        },
        cpus: args.cpus,
        memory: args.memory,
        serial: args.serial.clone(),
        disks: args.disks.clone(),
        rng: args.rng,
        nets: args.nets.clone(),
        vsock: args.vsock.clone(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let desc = match &args.config {
        Some(path) => spec::load(path).map_err(|e| format!("--config {e}")),
        None => describe_flags(&args),
    };
    let desc = match desc {
        Ok(d) => d,
        Err(e) => {
            eprintln!("paddock-vmm: {e}");
            return ExitCode::from(2);
        }
    };
    let (serial_out, serial_in) = match desc.serial.open() {
        Ok(io) => io,
        Err(e) => {
            let what = match &args.config {
                Some(c) => format!("--config {}: serial", c.display()),
                None => "--serial".to_string(),
            };
            eprintln!("paddock-vmm: {what}: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = VmConfig {
        boot: desc.boot,
        cpus: desc.cpus,
        memory: desc.memory,
        serial_out,
        debug_exit: args.debug_exit,
        dirty_log: false,
        disks: desc.disks,
        rng: desc.rng,
        host: HostDevices {
            nets: desc.nets,
            vsock: desc.vsock,
            console: args.console,
        },
        serial_in,
    };
    let opts = RunOptions {
        api_socket: args.api_socket,
        seccomp: args.seccomp == "on",
        seccomp_selftest: args.seccomp_selftest,
        async_teardown: args.async_teardown,
    };
    let code = match vm::run_with(cfg, opts) {
        Ok(status) => {
            eprintln!("paddock-vmm: {}", status.reason);
            ExitCode::from(status.code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("paddock-vmm: {e}");
            ExitCode::from(1)
        }
    };
    paddock_vmm::teardown::finish();
    code
}
