//! Drivers: how the daemon runs a VM. One trait, one process per VM; `paddock-vmm` and
//! QEMU (over QMP) implement it.
//!
//! Every method blocks (process spawns, socket round trips, waiting for exit); the
//! supervisor calls them on tokio's blocking pool.

pub mod process;
pub mod qemu;
pub mod vmm;

use std::path::PathBuf;
use std::time::Duration;

use paddock_spec::VmSpec;

pub use process::Process;

/// Where a VM's files live.
#[derive(Debug, Clone)]
pub struct VmPaths {
    /// Persistent files: the VMM's config, the console log, the VMM's own log
    /// (`<state-dir>/vms/<id>`).
    pub dir: PathBuf,
    /// Runtime files: the control socket (`<run-dir>/vms/<id>`).
    pub run: PathBuf,
}

impl VmPaths {
    /// The serial console log.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The VMM's standard output and error.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    /// The serial console's socket, served by the VMM (`<run-dir>/vms/<id>/console.sock`).
    pub fn console_socket(&self) -> PathBuf {
        self.run.join("console.sock")
    }

    /// Where every driver sends COM1: the console socket, with all output also appended to
    /// the console log.
    pub fn console_serial(&self) -> paddock_spec::SerialSpec {
        paddock_spec::SerialSpec::Socket {
            path: self.console_socket(),
            log: Some(self.console()),
        }
    }
}

/// A spec feature the driver cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feature}: {reason}")]
pub struct Unsupported {
    /// The spec field (`nics`, `boot.kind`).
    pub feature: String,
    /// Why, and what to do instead.
    pub reason: String,
}

/// A driver operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The spec asks for something this driver cannot do.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The VMM could not be started.
    #[error("cannot start {what}: {message}")]
    Spawn {
        /// The program.
        what: String,
        /// Why.
        message: String,
    },
    /// The VMM's control socket refused or failed a request.
    #[error("{op}: {message}")]
    Control {
        /// The operation (`pause`).
        op: String,
        /// The VMM's answer or the transport error.
        message: String,
    },
    /// The process is not the VM's VMM (gone, a zombie, or another program with its pid).
    #[error("pid {pid}: {why}")]
    NotAttachable {
        /// The pid tried.
        pid: u32,
        /// Why not.
        why: String,
    },
    /// Another I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the VMM says about its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// vCPUs run.
    Running,
    /// vCPUs are parked.
    Paused,
    /// The VM is ending.
    ShuttingDown,
}

/// The VMM's view of a running VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Run state.
    pub state: RunState,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Per-disk counters (name, counter name, value), when the VMM keeps them.
    pub disks: Vec<DiskCounters>,
}

/// One disk's I/O counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskCounters {
    /// Device name (`virtio-blk0`).
    pub name: String,
    /// Bytes read by the guest.
    pub read_bytes: u64,
    /// Bytes written by the guest.
    pub write_bytes: u64,
    /// Read requests.
    pub read_requests: u64,
    /// Write requests.
    pub write_requests: u64,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The guest powered off after the ACPI power button.
    PoweredOff,
    /// The VMM stopped the VM on request (the guest ignored the button or had no time).
    HardStopped,
    /// The process was killed.
    Killed,
}

impl StopOutcome {
    /// A note for the VM's record.
    pub fn describe(self) -> &'static str {
        match self {
            StopOutcome::PoweredOff => "the guest powered off after the ACPI power button",
            StopOutcome::HardStopped => "stopped by the VMM (the guest did not power off in time)",
            StopOutcome::Killed => "the VMM did not stop on request and was killed",
        }
    }
}

/// A hypervisor backend.
pub trait Driver: Send + Sync {
    /// The name recorded with each VM (`paddock-vmm`).
    fn name(&self) -> &'static str;

    /// Whether this driver can run `spec`; the error names the first feature it cannot.
    fn check(&self, spec: &VmSpec) -> Result<(), Unsupported>;

    /// Starts the VM's process in its own session and returns at once; the VM is ready when
    /// [`Driver::status`] answers.
    fn start(&self, paths: &VmPaths, spec: &VmSpec) -> Result<Process, DriverError>;

    /// Stops the VM: the ACPI power button and up to `graceful` for the guest (skipped when
    /// zero), then a stop request to the VMM, then SIGKILL. Returns once the process exited.
    fn stop(&self, process: &Process, graceful: Duration) -> Result<StopOutcome, DriverError>;

    /// Kills the process now.
    fn kill(&self, process: &Process) -> Result<(), DriverError>;

    /// Parks the vCPUs.
    fn pause(&self, process: &Process) -> Result<(), DriverError>;

    /// Releases the vCPUs.
    fn resume(&self, process: &Process) -> Result<(), DriverError>;

    /// Asks the VMM how the VM is (fails while it is still starting, or gone).
    fn status(&self, process: &Process) -> Result<Status, DriverError>;

    /// Whether a VMM that was just started answers on its control socket: the cheapest
    /// question that proves it (by default a full [`Driver::status`]).
    fn ready(&self, process: &Process) -> Result<(), DriverError> {
        self.status(process).map(drop)
    }

    /// Re-attaches to a VMM a previous daemon started: `pid` must be alive, be this VM's
    /// VMM (its command line names the VM's config), and answer on its control socket.
    fn attach(&self, pid: u32, paths: &VmPaths) -> Result<Process, DriverError>;
}
