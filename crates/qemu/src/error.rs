//! The driver's errors.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::qmp::QmpError;

/// What went wrong running a VM under QEMU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec does not validate.
    #[error("Invalid spec: {0}")]
    Spec(#[from] paddock_spec::SpecError),
    /// The spec asks for something this driver or host cannot do.
    #[error("The QEMU driver cannot run {feature}: {reason}")]
    Unsupported {
        /// The feature, named as in the spec (`disks[0]: vmdk streamOptimized read-write`).
        feature: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A file the VM needs cannot be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("Cannot start {}: {source}", program.display())]
    Spawn {
        /// The program run.
        program: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// QEMU exited before its QMP socket answered.
    #[error("QEMU exited during start-up ({status}): {log}")]
    StartFailed {
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its log.
        log: String,
    },
    /// QEMU's QMP socket did not answer in time.
    #[error("QEMU's QMP socket {} did not answer within {after:?}", socket.display())]
    NotReady {
        /// The socket.
        socket: PathBuf,
        /// The deadline that passed.
        after: Duration,
    },
    /// A process to attach to is not the QEMU expected.
    #[error("Cannot attach to process {pid}: {reason}")]
    Attach {
        /// The process id.
        pid: i32,
        /// Why.
        reason: String,
    },
    /// The VM did not stop even after SIGKILL.
    #[error("QEMU process {pid} did not exit within {after:?} of SIGKILL")]
    Unkillable {
        /// The process id.
        pid: i32,
        /// How long was waited.
        after: Duration,
    },
    /// The process is gone; the operation needs a running QEMU.
    #[error("QEMU process {pid} has exited")]
    Exited {
        /// The process id.
        pid: i32,
    },
    /// Talking QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
}
