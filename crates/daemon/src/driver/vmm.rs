//! The `paddock-vmm` driver: one `paddock-vmm --config vm.json --api-socket api.sock`
//! process per VM, driven over its control API (`crates/vmm/api/openapi.json`).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use paddock_api::http;
use paddock_spec::{Accel, BootSpec, VmSpec};
use serde_json::Value;

use super::process::{self, spawn_detached, Process};
use super::{
    DiskCounters, Driver, DriverError, RunState, Status, StopOutcome, Unsupported, VmPaths,
};

/// Timeout of one control-API round trip.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the VMM gets to end after a stop request before SIGKILL.
const HARD_STOP_WAIT: Duration = Duration::from_secs(10);

/// Finds the `paddock-vmm` binary: `explicit` (`--vmm`), then `PADDOCK_VMM`, then next to
/// this program, then `PATH`.
pub fn find_vmm(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PADDOCK_VMM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("paddock-vmm")))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("paddock-vmm"))
            .find(|p| p.is_file())
    })
}

/// The `paddock-vmm` driver.
#[derive(Debug, Clone)]
pub struct PaddockVmm {
    binary: Option<PathBuf>,
    debug_exit: bool,
}

impl PaddockVmm {
    /// A driver that runs `binary` (None: not found; starts fail with a hint). With
    /// `debug_exit`, VMMs get the debug-exit port so test guests can end themselves.
    pub fn new(binary: Option<PathBuf>, debug_exit: bool) -> Self {
        PaddockVmm { binary, debug_exit }
    }

    fn control(&self, p: &Process, method: &str, path: &str) -> Result<Value, DriverError> {
        let op = path.rsplit('/').next().unwrap_or(path).to_string();
        let body = (method == "PUT").then_some(&b"{}"[..]);
        let resp = http::request(&p.control, method, path, body, CONTROL_TIMEOUT).map_err(|e| {
            DriverError::Control {
                op: op.clone(),
                message: format!("control socket {}: {e}", p.control.display()),
            }
        })?;
        let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if resp.status != 200 {
            let msg = v["error"].as_str().unwrap_or("no reason given");
            return Err(DriverError::Control {
                op,
                message: format!("paddock-vmm answered {}: {msg}", resp.status),
            });
        }
        Ok(v)
    }

    /// The VMM config: the spec with the serial console sent to the console socket and log.
    fn vmm_config(paths: &VmPaths, spec: &VmSpec) -> VmSpec {
        let mut cfg = spec.clone();
        cfg.serial = paths.console_serial();
        cfg
    }
}

fn unsupported(feature: &str, reason: &str) -> Unsupported {
    Unsupported {
        feature: feature.into(),
        reason: format!("{reason} (the paddock-vmm driver cannot run this spec)"),
    }
}

fn absolute(field: String, p: &Path) -> Result<(), Unsupported> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(Unsupported {
            feature: field,
            reason: format!("'{}' is relative: give an absolute path (the daemon has its own working directory)", p.display()),
        })
    }
}

fn counter(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

impl Driver for PaddockVmm {
    fn name(&self) -> &'static str {
        "paddock-vmm"
    }

    fn check(&self, spec: &VmSpec) -> Result<(), Unsupported> {
        match &spec.boot {
            BootSpec::Firmware { .. } => {
                return Err(unsupported(
                    "boot.kind",
                    "firmware boot needs the QEMU driver; paddock-vmm boots kernels directly",
                ))
            }
            BootSpec::Kernel {
                kernel, initramfs, ..
            } => {
                absolute("boot.kernel".into(), kernel)?;
                if let Some(i) = initramfs {
                    absolute("boot.initramfs".into(), i)?;
                }
            }
        }
        for (i, d) in spec.disks.iter().enumerate() {
            absolute(format!("disks[{i}].path"), &d.path)?;
        }
        if spec.cpus.threads_per_core != 1 {
            return Err(unsupported(
                "cpus.threads_per_core",
                "paddock-vmm presents one thread per core",
            ));
        }
        if spec.memory.shared {
            return Err(unsupported("memory.shared", "guest memory is private"));
        }
        if spec.accel == Accel::Tcg {
            return Err(unsupported("accel", "paddock-vmm runs on KVM only"));
        }
        if spec.vsock.is_some() {
            return Err(unsupported("vsock", "no virtio-vsock device yet"));
        }
        Ok(())
    }

    fn start(&self, paths: &VmPaths, spec: &VmSpec) -> Result<Process, DriverError> {
        let binary = self.binary.clone().ok_or_else(|| DriverError::Spawn {
            what: "paddock-vmm".into(),
            message: "not found: give paddockd --vmm PATH, set PADDOCK_VMM, install it next \
                      to paddockd or on PATH"
                .into(),
        })?;
        fs::create_dir_all(&paths.dir)?;
        fs::create_dir_all(&paths.run)?;
        let config = paths.dir.join("vm.json");
        let text = serde_json::to_vec_pretty(&Self::vmm_config(paths, spec))
            .map_err(std::io::Error::other)?;
        fs::write(&config, text)?;
        let socket = paths.run.join("api.sock");
        match fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.vmm_log())?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(&config)
            .arg("--api-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&paths.dir);
        if self.debug_exit {
            cmd.arg("--debug-exit");
        }
        spawn_detached(cmd, socket).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "; give paddockd --vmm PATH or set PADDOCK_VMM"
            } else {
                ""
            };
            DriverError::Spawn {
                what: binary.display().to_string(),
                message: format!("{e}{hint}"),
            }
        })
    }

    fn stop(&self, p: &Process, graceful: Duration) -> Result<StopOutcome, DriverError> {
        let paused = matches!(
            self.status(p),
            Ok(Status {
                state: RunState::Paused,
                ..
            })
        );
        // A paused guest cannot see the button: skip straight to the hard stop.
        if !graceful.is_zero()
            && !paused
            && self.control(p, "PUT", "/api/v1/vm/power-button").is_ok()
            && p.wait_exit(graceful)?
        {
            return Ok(StopOutcome::PoweredOff);
        }
        if p.has_exited() {
            return Ok(StopOutcome::PoweredOff);
        }
        if self.control(p, "PUT", "/api/v1/vm/stop").is_ok() && p.wait_exit(HARD_STOP_WAIT)? {
            return Ok(StopOutcome::HardStopped);
        }
        p.kill()?;
        if !p.wait_exit(HARD_STOP_WAIT)? {
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
        self.control(p, "PUT", "/api/v1/vm/pause").map(drop)
    }

    fn resume(&self, p: &Process) -> Result<(), DriverError> {
        self.control(p, "PUT", "/api/v1/vm/resume").map(drop)
    }

    /// One `GET /api/v1/vm` (no counters).
    fn ready(&self, p: &Process) -> Result<(), DriverError> {
        self.control(p, "GET", "/api/v1/vm").map(drop)
    }

    fn status(&self, p: &Process) -> Result<Status, DriverError> {
        let vm = self.control(p, "GET", "/api/v1/vm")?;
        let state = match vm["state"].as_str() {
            Some("running") => RunState::Running,
            Some("paused") => RunState::Paused,
            _ => RunState::ShuttingDown,
        };
        let counters = self
            .control(p, "GET", "/api/v1/vm/counters")
            .unwrap_or(Value::Null);
        let disks = counters["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["name"].as_str().is_some_and(|n| n.contains("blk")))
            .map(|d| {
                let c = &d["counters"];
                DiskCounters {
                    name: d["name"].as_str().unwrap_or_default().to_string(),
                    read_bytes: counter(c, "read_bytes"),
                    write_bytes: counter(c, "write_bytes"),
                    read_requests: counter(c, "read_requests"),
                    write_requests: counter(c, "write_requests"),
                }
            })
            .collect();
        Ok(Status {
            state,
            vcpus: vm["vcpus"].as_u64().unwrap_or(0) as u32,
            memory_bytes: vm["memory_bytes"].as_u64().unwrap_or(0),
            disks,
        })
    }

    fn attach(&self, pid: u32, paths: &VmPaths) -> Result<Process, DriverError> {
        let not = |why: &str| DriverError::NotAttachable {
            pid,
            why: why.to_string(),
        };
        let config = paths.dir.join("vm.json");
        let is_ours = || {
            process::is_alive(pid)
                && process::cmdline(pid)
                    .is_some_and(|args| process::has_arg(&args, "--config", &config))
        };
        if !is_ours() {
            return Err(not("no longer runs this VM's paddock-vmm"));
        }
        let pidfd = process::open_pidfd(pid).map_err(|e| not(&e.to_string()))?;
        // Checked again with the pidfd held: the pid cannot be recycled from here on.
        if !is_ours() {
            return Err(not("no longer runs this VM's paddock-vmm"));
        }
        let p = Process {
            pid,
            pidfd,
            control: paths.run.join("api.sock"),
            child: false,
        };
        self.status(&p)
            .map_err(|e| not(&format!("its control socket does not answer: {e}")))?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_spec::SerialSpec;

    fn spec(extra: &str) -> VmSpec {
        serde_json::from_str(&format!(
            r#"{{"name":"t","memory":{{"size_mib":64}},"boot":{{"kind":"kernel","kernel":"/k"}}{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn unsupported_features_are_named() {
        let d = PaddockVmm::new(None, false);
        assert!(d.check(&spec("")).is_ok());
        for (extra, feature) in [
            (r#","accel":"tcg""#, "accel"),
            (
                r#","cpus":{"count":2,"threads_per_core":2}"#,
                "cpus.threads_per_core",
            ),
            (
                r#","disks":[{"path":"rel.raw","format":"raw"}]"#,
                "disks[0].path",
            ),
        ] {
            assert_eq!(
                d.check(&spec(extra)).unwrap_err().feature,
                feature,
                "{extra}"
            );
        }
    }

    #[test]
    fn the_vmm_config_sends_com1_to_the_console_socket_and_log() {
        let paths = VmPaths {
            dir: "/s/vms/x".into(),
            run: "/r/vms/x".into(),
        };
        let cfg = PaddockVmm::vmm_config(&paths, &spec(r#","serial":{"mode":"stdio"}"#));
        assert_eq!(
            cfg.serial,
            SerialSpec::Socket {
                path: "/r/vms/x/console.sock".into(),
                log: Some("/s/vms/x/console.log".into())
            }
        );
    }

    #[test]
    fn starting_without_a_binary_says_how_to_find_one() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths {
            dir: dir.path().join("d"),
            run: dir.path().join("r"),
        };
        let err = PaddockVmm::new(None, false)
            .start(&paths, &spec(""))
            .unwrap_err();
        assert!(err.to_string().contains("--vmm"), "{err}");
    }
}
