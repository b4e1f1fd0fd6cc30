//! The QEMU driver: one `qemu-system-x86_64` process per VM, started by paddock-qemu and
//! driven over QMP (`<run-dir>/vms/<id>/qmp.sock`).
//!
//! Each operation opens its own short QMP connection (QEMU serves one client at a time),
//! so nothing is held between requests and a restarted daemon re-attaches by pid and
//! socket. Waiting for exit uses the daemon's pidfd, never QMP, so the supervisor alone
//! reaps the process and learns its exit status.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use paddock_qemu::qmp::{QmpClient, RunState as QemuRunState};
use paddock_qemu::{Host, LaunchOptions, QemuVm};
use paddock_spec::VmSpec;

use super::process::{self, Process};
use super::{
    DiskCounters, Driver, DriverError, RunState, Status, StopOutcome, Unsupported, VmPaths,
};

/// Deadline of one QMP command (and of the greeting).
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long QEMU gets to end after QMP `quit` before SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(10);

/// The QEMU driver.
#[derive(Debug)]
pub struct Qemu {
    binary: PathBuf,
    /// Serialises QMP round trips, so concurrent requests queue here instead of on
    /// QEMU's single-client monitor.
    qmp_lock: Mutex<()>,
}

impl Qemu {
    /// A driver that runs `binary` (`qemu-system-x86_64`, looked up in `PATH`).
    pub fn new(binary: PathBuf) -> Self {
        Qemu {
            binary,
            qmp_lock: Mutex::new(()),
        }
    }

    /// Runs `f` on a fresh QMP connection to `p`.
    fn qmp<T>(
        &self,
        p: &Process,
        op: &str,
        f: impl FnOnce(&mut QmpClient) -> Result<T, paddock_qemu::qmp::QmpError>,
    ) -> Result<T, DriverError> {
        let _guard = self.qmp_lock.lock().unwrap_or_else(|e| e.into_inner());
        let err = |e: paddock_qemu::qmp::QmpError| DriverError::Control {
            op: op.to_string(),
            message: e.to_string(),
        };
        let mut client = QmpClient::connect(&p.control, QMP_TIMEOUT).map_err(err)?;
        f(&mut client).map_err(err)
    }

    /// The spec QEMU runs: the serial console sent to the console socket and log.
    fn qemu_spec(paths: &VmPaths, spec: &VmSpec) -> VmSpec {
        let mut s = spec.clone();
        s.serial = paths.console_serial();
        s
    }

    fn options(&self, paths: &VmPaths) -> LaunchOptions {
        let mut opts = LaunchOptions::new(&paths.run);
        opts.qemu = self.binary.clone();
        opts.qmp_timeout = QMP_TIMEOUT;
        opts
    }
}

/// paddock-qemu's refusal as the daemon's, naming the feature.
fn refusal(e: paddock_qemu::Error) -> Unsupported {
    match e {
        paddock_qemu::Error::Unsupported { feature, reason } => Unsupported {
            feature,
            reason: format!("{reason} (the QEMU driver cannot run this spec)"),
        },
        paddock_qemu::Error::Io { path, source } => Unsupported {
            feature: path.display().to_string(),
            reason: format!("cannot open it: {source}"),
        },
        other => Unsupported {
            feature: "spec".into(),
            reason: other.to_string(),
        },
    }
}

impl Driver for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn check(&self, spec: &VmSpec) -> Result<(), Unsupported> {
        // NICs on a managed network get their TAP from the daemon at start.
        let spec = crate::network::placeholder_taps(spec);
        paddock_qemu::check(&spec, &Host::detect())
            .map(drop)
            .map_err(refusal)
    }

    fn start(&self, paths: &VmPaths, spec: &VmSpec) -> Result<Process, DriverError> {
        std::fs::create_dir_all(&paths.dir)?;
        std::fs::create_dir_all(&paths.run)?;
        let opts = self.options(paths);
        let vm = {
            let _guard = self.qmp_lock.lock().unwrap_or_else(|e| e.into_inner());
            QemuVm::start(&Self::qemu_spec(paths, spec), &opts).map_err(|e| match e {
                paddock_qemu::Error::Unsupported { .. } => DriverError::Unsupported(refusal(e)),
                e => DriverError::Spawn {
                    what: self.binary.display().to_string(),
                    message: e.to_string(),
                },
            })?
        };
        // The handle lets go of QMP and of the child (dropping a `Child` neither kills nor
        // reaps it): the supervisor's watcher reaps it through the pidfd opened here. The
        // pid cannot be recycled meanwhile, as this daemon has not reaped it.
        let (pid, socket) = vm.detach();
        let pid = pid as u32;
        Ok(Process {
            pid,
            pidfd: process::open_pidfd(pid)?,
            control: socket,
            child: true,
        })
    }

    fn stop(&self, p: &Process, graceful: Duration) -> Result<StopOutcome, DriverError> {
        let running = matches!(self.status(p), Ok(s) if s.state == RunState::Running);
        // A paused guest cannot see the button: skip straight to `quit`.
        if !graceful.is_zero()
            && running
            && self
                .qmp(p, "power-button", |q| q.system_powerdown())
                .is_ok()
            && p.wait_exit(graceful)?
        {
            return Ok(StopOutcome::PoweredOff);
        }
        if p.has_exited() {
            return Ok(StopOutcome::PoweredOff);
        }
        if self.qmp(p, "quit", |q| q.quit()).is_ok() && p.wait_exit(QUIT_WAIT)? {
            return Ok(StopOutcome::HardStopped);
        }
        p.kill()?;
        if !p.wait_exit(QUIT_WAIT)? {
            return Err(DriverError::Control {
                op: "kill".into(),
                message: format!("pid {} survived SIGKILL", p.pid),
            });
        }
        Ok(StopOutcome::Killed)
    }

    fn kill(&self, p: &Process) -> Result<(), DriverError> {
        Ok(p.kill()?)
    }

    fn pause(&self, p: &Process) -> Result<(), DriverError> {
        self.qmp(p, "pause", |q| q.stop())
    }

    fn resume(&self, p: &Process) -> Result<(), DriverError> {
        self.qmp(p, "resume", |q| q.cont())
    }

    /// `start` returns only once QEMU answered on QMP (greeting and capabilities), so a
    /// process that is still there is ready.
    fn ready(&self, p: &Process) -> Result<(), DriverError> {
        if p.has_exited() {
            return Err(DriverError::Control {
                op: "ready".into(),
                message: "QEMU exited right after answering".into(),
            });
        }
        Ok(())
    }

    fn status(&self, p: &Process) -> Result<Status, DriverError> {
        let (st, cpus, mem, blocks) = self.qmp(p, "status", |q| {
            let st = q.query_status()?;
            let cpus = q.query_cpus_fast().map(|c| c.len()).unwrap_or(0);
            let mem = q
                .execute("query-memory-size-summary", None)
                .map(|v| v["base-memory"].as_u64().unwrap_or(0))
                .unwrap_or(0);
            let blocks = q.query_blockstats().unwrap_or_default();
            Ok((st, cpus, mem, blocks))
        })?;
        let state = match st.status {
            QemuRunState::Running => RunState::Running,
            QemuRunState::Paused | QemuRunState::Prelaunch | QemuRunState::Suspended => {
                RunState::Paused
            }
            _ if st.running => RunState::Running,
            _ => RunState::ShuttingDown,
        };
        let disks = blocks
            .into_iter()
            .map(|b| DiskCounters {
                name: b.device_id.or(b.node_name).unwrap_or_default(),
                read_bytes: b.rd_bytes,
                write_bytes: b.wr_bytes,
                read_requests: b.rd_operations,
                write_requests: b.wr_operations,
            })
            .collect();
        Ok(Status {
            state,
            vcpus: cpus as u32,
            memory_bytes: mem,
            disks,
        })
    }

    fn attach(&self, pid: u32, paths: &VmPaths) -> Result<Process, DriverError> {
        let not = |why: String| DriverError::NotAttachable { pid, why };
        let socket = LaunchOptions::new(&paths.run).qmp_socket();
        if !process::is_alive(pid) {
            return Err(not("no longer runs".into()));
        }
        let pidfd = process::open_pidfd(pid).map_err(|e| not(e.to_string()))?;
        // With the pidfd held the pid cannot be recycled: check it is this VM's QEMU (its
        // command line names the VM's QMP socket) and that QMP answers.
        let vm = {
            let _guard = self.qmp_lock.lock().unwrap_or_else(|e| e.into_inner());
            QemuVm::attach(pid as i32, &socket, QMP_TIMEOUT).map_err(|e| not(e.to_string()))?
        };
        let (_, control) = vm.detach();
        Ok(Process {
            pid,
            pidfd,
            control,
            child: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> VmSpec {
        serde_json::from_str(&format!(
            r#"{{"name":"t","memory":{{"size_mib":64}},"boot":{{"kind":"kernel","kernel":"/nonexistent/k"}}{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn refusals_name_the_feature() {
        let d = Qemu::new("qemu-system-x86_64".into());
        let err = d.check(&spec("")).unwrap_err();
        assert_eq!(err.feature, "/nonexistent/k", "{err}");
    }

    #[test]
    fn the_console_goes_to_the_console_socket_and_log() {
        let paths = VmPaths {
            dir: "/s/vms/x".into(),
            run: "/r/vms/x".into(),
        };
        let s = Qemu::qemu_spec(&paths, &spec(r#","serial":{"mode":"stdio"}"#));
        assert_eq!(s.serial, paths.console_serial());
        // The command line QEMU gets: a listening socket chardev that appends to the log.
        let d = Qemu::new("qemu-system-x86_64".into());
        let host = paddock_qemu::Host {
            kvm: Ok(()),
            pvm: false,
            vhost_vsock: false,
            ovmf: None,
        };
        let cmd = paddock_qemu::launch::build(
            &s,
            &d.options(&paths),
            paddock_qemu::AccelChoice::Tcg,
            &host,
        )
        .unwrap();
        assert_eq!(
            paddock_qemu::launch::arg_after(&cmd.args, "-chardev"),
            [
                "socket,id=serial0,path=/r/vms/x/console.sock,server=on,wait=off,\
              logfile=/s/vms/x/console.log,logappend=on"
            ]
        );
    }
}
