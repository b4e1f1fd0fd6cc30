//! Processes a driver supervises: spawning in a new session, pidfds (so a recycled pid is
//! never signalled), waiting for exit with or without being the parent, `/proc` checks.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{
    pidfd_open, pidfd_send_signal, waitpid, Pid, PidfdFlags, Signal, WaitOptions,
};

/// A VMM process a driver started or attached to.
#[derive(Debug)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// A pidfd for it: readable once it has exited; signals through it reach only it.
    pub pidfd: OwnedFd,
    /// Its control socket.
    pub control: PathBuf,
    /// Whether this daemon is its parent (then its exit status can be read).
    pub child: bool,
}

impl Process {
    /// Waits up to `timeout` for the process to exit; true if it has.
    pub fn wait_exit(&self, timeout: Duration) -> io::Result<bool> {
        wait_readable(&self.pidfd, timeout)
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&self) -> bool {
        self.wait_exit(Duration::ZERO).unwrap_or(false)
    }

    /// Sends SIGKILL.
    pub fn kill(&self) -> io::Result<()> {
        match pidfd_send_signal(&self.pidfd, Signal::KILL) {
            // Already gone (a zombie or reaped): nothing to kill.
            Err(rustix::io::Errno::SRCH) => Ok(()),
            r => r.map_err(io::Error::from),
        }
    }

    /// Collects the exit status of an exited child: the exit code, or 128 + signal.
    /// `None` when this daemon is not the parent (the status is then unknowable) or the
    /// process has not exited.
    pub fn reap(&self) -> Option<i32> {
        if !self.child {
            return None;
        }
        let pid = Pid::from_raw(self.pid as i32)?;
        match waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, status))) => status
                .exit_status()
                .or_else(|| status.terminating_signal().map(|s| 128 + s)),
            _ => None,
        }
    }
}

fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let ts = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    loop {
        match poll(&mut fds, Some(&ts)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Spawns `cmd` in a new session (so it outlives the daemon and no terminal signal reaches
/// it) and opens a pidfd for it.
pub fn spawn_detached(mut cmd: Command, control: PathBuf) -> io::Result<Process> {
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // which is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(io::Error::from));
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    // std does not reap on drop; the exit watcher reaps through `Process::reap`.
    drop(child);
    let pidfd = open_pidfd(pid)?;
    Ok(Process {
        pid,
        pidfd,
        control,
        child: true,
    })
}

/// Opens a pidfd for `pid`.
pub fn open_pidfd(pid: u32) -> io::Result<OwnedFd> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pid"))?;
    Ok(pidfd_open(p, PidfdFlags::empty())?)
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// The process's argument vector.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `args` holds `flag` followed by `value`.
pub fn has_arg(args: &[String], flag: &str, value: &Path) -> bool {
    args.windows(2)
        .any(|w| w[0] == flag && Path::new(&w[1]) == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_child_is_watched_killed_and_reaped() {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let p = spawn_detached(cmd, PathBuf::new()).unwrap();
        assert!(is_alive(p.pid));
        let args = cmdline(p.pid).unwrap();
        assert_eq!(args, ["sleep", "1000"]);
        assert!(!p.has_exited());
        p.kill().unwrap();
        assert!(p.wait_exit(Duration::from_secs(30)).unwrap());
        assert_eq!(p.reap(), Some(128 + 9));
        assert!(!is_alive(p.pid));
    }

    #[test]
    fn argument_pairs_are_matched_exactly() {
        let args: Vec<String> = ["vmm", "--config", "/a/vm.json"].map(String::from).into();
        assert!(has_arg(&args, "--config", Path::new("/a/vm.json")));
        assert!(!has_arg(&args, "--config", Path::new("/b/vm.json")));
    }
}
