//! DHCP: one `dnsmasq` per network with a range, bound to the network's bridge only, with
//! DNS off (`--port=0`) and no configuration file but its flags. It daemonizes and outlives
//! paddockd like the VMMs do; its pid file says where it is.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paddock_api::network::Network;
use rustix::process::{kill_process, Pid, Signal};

use super::spec::host_net;
use crate::driver::process::{cmdline, is_alive};

/// The files of network `name`'s dnsmasq: `<state-dir>/networks/<name>/`.
#[derive(Debug, Clone)]
pub struct Files {
    /// The folder.
    pub dir: PathBuf,
}

impl Files {
    /// The files of network `name` under `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> Files {
        Files {
            dir: state_dir.join("networks").join(name),
        }
    }

    /// The pid file.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }

    /// The lease file.
    pub fn leases(&self) -> PathBuf {
        self.dir.join("dnsmasq.leases")
    }

    /// dnsmasq's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }
}

/// The `dnsmasq` program: `PADDOCK_DNSMASQ`, else `dnsmasq` on `PATH`.
fn program() -> String {
    std::env::var("PADDOCK_DNSMASQ")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "dnsmasq".into())
}

/// The arguments for `net` (which has a DHCP range and an address).
pub fn args(net: &Network, files: &Files) -> Option<Vec<String>> {
    let d = net.dhcp?;
    let addr = host_net(net)?;
    Some(vec![
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--bind-interfaces".into(),
        format!("--interface={}", net.bridge),
        format!("--dhcp-range={},{},{},1h", d.start, d.end, addr.mask()),
        "--dhcp-authoritative".into(),
        format!("--pid-file={}", files.pid().display()),
        format!("--dhcp-leasefile={}", files.leases().display()),
        format!("--log-facility={}", files.log().display()),
    ])
}

/// The pid of the network's dnsmasq when it runs: the pid file's, alive, and its command
/// line naming this pid file.
pub fn running(files: &Files) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(files.pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let flag = format!("--pid-file={}", files.pid().display());
    (is_alive(pid) && cmdline(pid).is_some_and(|a| a.contains(&flag))).then_some(pid)
}

/// Starts the network's dnsmasq unless it runs; returns once it serves (dnsmasq's parent
/// exits after the daemon is set up, with its error when it is not).
pub fn ensure(net: &Network, files: &Files) -> io::Result<()> {
    let Some(args) = args(net, files) else {
        return Ok(());
    };
    if running(files).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&files.dir)?;
    let out = Command::new(program())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run dnsmasq ({e}); install it (Debian: dnsmasq-base)"),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "dnsmasq for {} failed: {}",
            net.bridge,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Stops the network's dnsmasq (SIGTERM, then SIGKILL after 5 s) and removes its files.
pub fn stop(files: &Files) -> io::Result<()> {
    if let Some(pid) = running(files) {
        let p = i32::try_from(pid).ok().and_then(Pid::from_raw);
        if let Some(p) = p {
            let _ = kill_process(p, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if is_alive(pid) {
                let _ = kill_process(p, Signal::KILL);
            }
        }
    }
    match std::fs::remove_dir_all(&files.dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
