//! Typed QMP replies and events.

use serde::Deserialize;
use serde_json::Value;

/// QEMU's version, from the greeting or `query-version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct QemuVersion {
    /// Upstream version numbers.
    pub qemu: VersionTriple,
    /// Distribution package string (`Debian 1:10.0.2+ds-2...`), possibly empty.
    #[serde(default)]
    pub package: String,
}

/// `major.minor.micro`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

/// QEMU's run state (`query-status`'s `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// vCPUs run.
    Running,
    /// Paused by `stop` (or `-S`).
    Paused,
    /// Not started yet (`-S` before `cont`).
    Prelaunch,
    /// The guest shut down and QEMU was told not to exit (`-no-shutdown`).
    Shutdown,
    /// Stopped on a guest panic.
    GuestPanicked,
    /// Stopped on an internal error.
    InternalError,
    /// Stopped on a disk I/O error.
    IoError,
    /// Suspended to RAM by the guest.
    Suspended,
    /// Any other state QEMU names.
    Other(String),
}

impl RunState {
    /// The state QEMU names `name`.
    pub fn from_name(name: &str) -> RunState {
        match name {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "prelaunch" => RunState::Prelaunch,
            "shutdown" => RunState::Shutdown,
            "guest-panicked" => RunState::GuestPanicked,
            "internal-error" => RunState::InternalError,
            "io-error" => RunState::IoError,
            "suspended" => RunState::Suspended,
            other => RunState::Other(other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for RunState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(RunState::from_name(&s))
    }
}

/// `query-status`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether vCPUs run.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

/// One vCPU from `query-cpus-fast`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfo {
    /// vCPU index.
    pub cpu_index: u32,
    /// Host thread id running the vCPU (per-vCPU CPU time lives in /proc/PID/task/TID).
    pub thread_id: i64,
    /// QOM path of the CPU object.
    pub qom_path: String,
    /// Target architecture (`x86_64`).
    #[serde(default)]
    pub target: String,
}

/// I/O counters of one disk from `query-blockstats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// The front-end device's id (`disk0`), from its QOM path, when it has one.
    pub device_id: Option<String>,
    /// The node name of the top block node (`disk0`).
    pub node_name: Option<String>,
    /// Bytes read by the guest.
    pub rd_bytes: u64,
    /// Bytes written by the guest.
    pub wr_bytes: u64,
    /// Read requests.
    pub rd_operations: u64,
    /// Write requests.
    pub wr_operations: u64,
    /// Flush requests.
    pub flush_operations: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawBlockStats {
    #[serde(default)]
    device: String,
    #[serde(default, rename = "node-name")]
    node_name: Option<String>,
    #[serde(default)]
    qdev: Option<String>,
    stats: RawCounters,
}

#[derive(Debug, Deserialize)]
struct RawCounters {
    #[serde(default)]
    rd_bytes: u64,
    #[serde(default)]
    wr_bytes: u64,
    #[serde(default)]
    rd_operations: u64,
    #[serde(default)]
    wr_operations: u64,
    #[serde(default)]
    flush_operations: u64,
}

impl From<RawBlockStats> for BlockStats {
    fn from(r: RawBlockStats) -> Self {
        // `/machine/peripheral/<id>/virtio-backend`: the id is the device's; a legacy
        // `-drive` names the backend in `device` instead.
        let device_id = r
            .qdev
            .as_deref()
            .and_then(|q| q.strip_prefix("/machine/peripheral/"))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_string)
            .or_else(|| (!r.device.is_empty()).then(|| r.device.clone()));
        BlockStats {
            device_id,
            node_name: r.node_name,
            rd_bytes: r.stats.rd_bytes,
            wr_bytes: r.stats.wr_bytes,
            rd_operations: r.stats.rd_operations,
            wr_operations: r.stats.wr_operations,
            flush_operations: r.stats.flush_operations,
        }
    }
}

/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, `POWERDOWN`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name.
    pub name: String,
    /// Event data (`Value::Null` when the event has none).
    pub data: Value,
    /// When QEMU emitted it: seconds and microseconds since the Unix epoch.
    pub timestamp: (u64, u64),
}

impl QmpEvent {
    /// The event in a QMP message, if it is one.
    pub fn from_message(msg: &Value) -> Option<QmpEvent> {
        let name = msg.get("event")?.as_str()?.to_string();
        let ts = msg.get("timestamp");
        let part = |k: &str| {
            ts.and_then(|t| t.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Some(QmpEvent {
            name,
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            timestamp: (part("seconds"), part("microseconds")),
        })
    }

    /// For `SHUTDOWN`: whether the guest asked for it (`data.guest`).
    pub fn guest_initiated(&self) -> Option<bool> {
        self.data.get("guest").and_then(Value::as_bool)
    }

    /// For `SHUTDOWN` and `RESET`: QEMU's reason (`guest-shutdown`, `host-qmp-quit`, ...).
    pub fn reason(&self) -> Option<&str> {
        self.data.get("reason").and_then(Value::as_str)
    }
}
