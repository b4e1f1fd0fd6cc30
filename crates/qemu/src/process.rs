//! A handle on one QEMU process: start, attach, status, pause/resume, stop, exit status.
//!
//! The handle holds a pidfd for the process, so it never signals or waits on a recycled pid,
//! and waiting for exit is a `poll` on that fd, not a sleep loop. Dropping the handle leaves
//! QEMU running (the daemon re-attaches after a restart); call [`QemuVm::stop`] or
//! [`QemuVm::kill`] to end it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use paddock_spec::VmSpec;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{
    pidfd_open, pidfd_send_signal, waitpid, Pid, PidfdFlags, Signal, WaitOptions,
};

use crate::host::Host;
use crate::launch::{self, mentions, LaunchOptions};
use crate::qmp::{QmpClient, QmpError, QmpEvent, StatusInfo};
use crate::{check, Error};

/// How long a QEMU whose QMP socket closed during start gets to finish exiting.
const EXIT_AFTER_CLOSED_QMP: Duration = Duration::from_secs(2);
/// How long `quit` and SIGKILL each get to end the process.
const END_WAIT: Duration = Duration::from_secs(10);
/// Bytes of QEMU's log quoted in a start-up error.
const LOG_TAIL: u64 = 2048;

/// Whether the process lives, and if so what QEMU says about the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    /// QEMU runs; the VM's run state (running, paused, ...).
    Alive(StatusInfo),
    /// QEMU has exited; its status when this handle could learn it (a process this handle
    /// started, or a child of this process).
    Exited(Option<ExitStatus>),
}

/// How [`QemuVm::stop`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The guest powered off after the ACPI power button.
    PoweredOff,
    /// QEMU quit on QMP `quit` (the guest ignored the button, or was paused).
    Quit,
    /// QEMU was killed with SIGKILL.
    Killed,
    /// The process had already exited.
    AlreadyExited,
}

/// One QEMU process and its QMP connection.
#[derive(Debug)]
pub struct QemuVm {
    pid: Pid,
    pidfd: OwnedFd,
    child: Option<Child>,
    qmp: Option<QmpClient>,
    socket: PathBuf,
    qmp_timeout: Duration,
    exited: Option<Option<ExitStatus>>,
}

impl QemuVm {
    /// Checks `spec` against this host, starts QEMU in its own session and waits (up to
    /// `opts.start_timeout`) for its QMP socket to answer. QEMU's messages go to
    /// `opts.log_path()`.
    pub fn start(spec: &VmSpec, opts: &LaunchOptions) -> Result<QemuVm, Error> {
        let host = Host::detect();
        let accel = check(spec, &host)?;
        let command = launch::build(spec, opts, accel, &host)?;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(&opts.run_dir).map_err(io_err(&opts.run_dir))?;
        let socket = opts.qmp_socket();
        match fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(&socket)(e));
            }
            _ => {}
        }
        let log_path = opts.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = command.to_command();
        if command.stdio_console {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            let out = log.try_clone().map_err(io_err(&log_path))?;
            cmd.stdin(Stdio::null()).stdout(out);
        }
        cmd.stderr(log);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: PathBuf::from(&command.wrapper[0]),
            source,
        })?;
        let pid = Pid::from_child(&child);
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|e| Error::Spawn {
            program: command.program.clone(),
            source: e.into(),
        })?;
        let mut vm = QemuVm {
            pid,
            pidfd,
            child: Some(child),
            qmp: None,
            socket,
            qmp_timeout: opts.qmp_timeout,
            exited: None,
        };
        let deadline = Instant::now() + opts.start_timeout;
        // 1 ms, then 2 ms between tries: QEMU listens within tens of milliseconds, a failed
        // connect costs microseconds, and a longer step would be added to every start (the
        // wait ends at once if QEMU exits instead).
        let mut pause = Duration::from_millis(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Best effort: a QEMU that never answered is not left behind.
                let _ = vm.kill();
                return Err(Error::NotReady {
                    socket: vm.socket.clone(),
                    after: opts.start_timeout,
                });
            }
            match QmpClient::connect(&vm.socket, left.min(vm.qmp_timeout)) {
                Ok(client) => {
                    vm.qmp = Some(client);
                    return Ok(vm);
                }
                // Not listening yet: wait a little, or until the process exits.
                Err(QmpError::Io { .. }) => {
                    if vm.wait_exit(left.min(pause)) {
                        let status = vm.exit_status().unwrap_or(ExitStatus::from_raw(0));
                        return Err(Error::StartFailed {
                            status,
                            log: log_tail(&log_path, log_start),
                        });
                    }
                    pause = Duration::from_millis(2);
                }
                Err(e) => {
                    // QMP closing during the handshake is QEMU giving up on its command line
                    // (a bad disk, say): wait for the exit it is making (the pidfd says when)
                    // so the caller gets QEMU's own words rather than a closed socket.
                    if vm.wait_exit(left.min(EXIT_AFTER_CLOSED_QMP)) {
                        let status = vm.exit_status().unwrap_or(ExitStatus::from_raw(0));
                        return Err(Error::StartFailed {
                            status,
                            log: log_tail(&log_path, log_start),
                        });
                    }
                    let _ = vm.kill();
                    return Err(e.into());
                }
            }
        }
    }

    /// Attaches to a QEMU this or another process started, by its pid and QMP socket (the
    /// daemon after a restart). The process must be a `qemu-system-*` whose command line
    /// names `socket`; it keeps running whatever this handle does, unless told to stop.
    pub fn attach(pid: i32, socket: &Path, qmp_timeout: Duration) -> Result<QemuVm, Error> {
        let attach_err = |reason: String| Error::Attach { pid, reason };
        let p = Pid::from_raw(pid).ok_or_else(|| attach_err("not a process id".into()))?;
        // The pidfd first: if the pid is recycled after this, the checks below see the
        // new process and refuse it.
        let pidfd = pidfd_open(p, PidfdFlags::empty()).map_err(|e| match e {
            Errno::SRCH => attach_err("no such process".into()),
            e => attach_err(format!("pidfd_open: {e}")),
        })?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| attach_err(format!("/proc/{pid}/cmdline: {e}")))?;
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let name = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if !name.starts_with(b"qemu-system") {
            return Err(attach_err(format!(
                "it runs {}, not qemu-system-*",
                String::from_utf8_lossy(argv0)
            )));
        }
        if !mentions(&cmdline, socket) {
            return Err(attach_err(format!(
                "its command line does not name the QMP socket {}",
                socket.display()
            )));
        }
        let qmp = QmpClient::connect(socket, qmp_timeout)?;
        Ok(QemuVm {
            pid: p,
            pidfd,
            child: None,
            qmp: Some(qmp),
            socket: socket.to_path_buf(),
            qmp_timeout,
            exited: None,
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.socket
    }

    /// The QMP connection, reconnecting if it was lost.
    pub fn qmp(&mut self) -> Result<&mut QmpClient, Error> {
        if self.wait_exit(Duration::ZERO) {
            return Err(Error::Exited { pid: self.pid() });
        }
        if self.qmp.is_none() {
            self.qmp = Some(QmpClient::connect(&self.socket, self.qmp_timeout)?);
        }
        Ok(self.qmp.as_mut().expect("just set"))
    }

    /// Events QMP has queued so far (SHUTDOWN, STOP, RESUME, POWERDOWN, ...).
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.qmp
            .as_mut()
            .map(QmpClient::take_events)
            .unwrap_or_default()
    }

    /// Whether QEMU lives and, if so, the VM's run state.
    pub fn status(&mut self) -> Result<ProcessState, Error> {
        if self.wait_exit(Duration::ZERO) {
            return Ok(ProcessState::Exited(self.exit_status()));
        }
        let result = self.qmp()?.query_status();
        match result {
            Ok(s) => Ok(ProcessState::Alive(s)),
            Err(e) => {
                self.qmp = None;
                // A closed socket usually means QEMU is on its way out.
                if matches!(e, QmpError::Closed { .. }) && self.wait_exit(self.qmp_timeout) {
                    Ok(ProcessState::Exited(self.exit_status()))
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// Pauses every vCPU (QMP `stop`).
    pub fn pause(&mut self) -> Result<(), Error> {
        Ok(self.qmp()?.stop()?)
    }

    /// Resumes a paused VM (QMP `cont`).
    pub fn resume(&mut self) -> Result<(), Error> {
        Ok(self.qmp()?.cont()?)
    }

    /// Ends the VM gracefully: presses the ACPI power button and waits up to `grace` for
    /// the guest to power off (skipped when the VM is not running: a paused guest cannot
    /// see the button), then QMP `quit`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Result<StopOutcome, Error> {
        if self.wait_exit(Duration::ZERO) {
            return Ok(StopOutcome::AlreadyExited);
        }
        let running = matches!(self.status(), Ok(ProcessState::Alive(s)) if s.running);
        if running
            && self.qmp().and_then(|q| Ok(q.system_powerdown()?)).is_ok()
            && self.wait_exit(grace)
        {
            return Ok(StopOutcome::PoweredOff);
        }
        if self.wait_exit(Duration::ZERO) {
            return Ok(StopOutcome::PoweredOff);
        }
        if self.qmp().and_then(|q| Ok(q.quit()?)).is_ok() && self.wait_exit(END_WAIT) {
            return Ok(StopOutcome::Quit);
        }
        self.kill()?;
        Ok(StopOutcome::Killed)
    }

    /// Kills QEMU with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) -> Result<(), Error> {
        if self.wait_exit(Duration::ZERO) {
            return Ok(());
        }
        match pidfd_send_signal(&self.pidfd, Signal::KILL) {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => {
                return Err(Error::Io {
                    path: PathBuf::from(format!("/proc/{}", self.pid())),
                    source: e.into(),
                })
            }
        }
        if self.wait_exit(END_WAIT) {
            Ok(())
        } else {
            Err(Error::Unkillable {
                pid: self.pid(),
                after: END_WAIT,
            })
        }
    }

    /// Waits up to `timeout` for QEMU to exit; true once it has (reaped when it is this
    /// process's child, so its status is known).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        if self.exited.is_some() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return false,
                Ok(_) => break,
                Err(Errno::INTR) if !left.is_zero() => continue,
                // Cannot poll: fall back to asking the kernel about the pid.
                Err(_) => return false,
            }
        }
        self.qmp = None;
        let status = match self.child.as_mut() {
            Some(child) => child.wait().ok(),
            // Not started here: reapable only if it is a child of this process.
            None => match waitpid(Some(self.pid), WaitOptions::NOHANG) {
                Ok(Some((_, st))) => Some(ExitStatus::from_raw(st.as_raw())),
                _ => None,
            },
        };
        self.exited = Some(status);
        true
    }

    /// Whether QEMU has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.wait_exit(Duration::ZERO)
    }

    /// QEMU's exit status, once it has exited and when this handle could learn it.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exited.flatten()
    }

    /// Lets go of the process without stopping it: closes the QMP connection (QEMU serves
    /// one client at a time) and returns the pid and socket for a later
    /// [`QemuVm::attach`].
    pub fn detach(mut self) -> (i32, PathBuf) {
        self.qmp = None;
        (self.pid(), self.socket.clone())
    }
}

/// What QEMU wrote to its log since `from`, at most the last `LOG_TAIL` bytes.
fn log_tail(path: &Path, from: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = from.max(len.saturating_sub(LOG_TAIL));
        f.seek(SeekFrom::Start(start))?;
        let mut text = String::new();
        f.take(LOG_TAIL).read_to_string(&mut text)?;
        Ok(text.trim().to_string())
    };
    match read() {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => format!("{} is empty", path.display()),
        Err(e) => format!("{}: {e}", path.display()),
    }
}
