//! Paddock's QEMU driver: runs one VM per `qemu-system-x86_64` process and drives it over
//! QMP, with a plain synchronous API that the daemon wraps.
//!
//! - [`qmp`]: a QMP client on a Unix socket (greeting, capabilities, commands with ids,
//!   queued events, deadlines, typed helpers).
//! - [`check`]: refuses a [`VmSpec`](paddock_spec::VmSpec) this driver or host cannot run,
//!   naming the feature, and picks the accelerator ([`host`]).
//! - [`launch`]: the QEMU command line for a spec.
//! - [`QemuVm`]: a process handle: start (waits for QMP), status, pause and resume,
//!   graceful stop with escalation, attach to a running QEMU by pid and socket, exit status.
#![forbid(unsafe_code)]

pub mod check;
mod error;
pub mod host;
pub mod launch;
mod process;
pub mod qmp;
mod vmdk;

pub use check::check;
pub use error::Error;
pub use host::{AccelChoice, Host};
pub use launch::{LaunchOptions, QemuCommand};
pub use process::{ProcessState, QemuVm, StopOutcome};
