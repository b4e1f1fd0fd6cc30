//! REST resource types. Every type here is what the daemon writes and the client reads; the
//! OpenAPI document in [`crate::openapi`] describes the same shapes.

use std::fmt;
use std::str::FromStr;

use paddock_spec::VmSpec;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a VM is in its life. See `docs/DAEMON.md` for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Known to the daemon, never started.
    Defined,
    /// Its process is starting; the control socket has not answered yet.
    Starting,
    /// Its process runs the guest.
    Running,
    /// Its vCPUs are parked; memory and devices are kept.
    Paused,
    /// A stop is in progress (power button, then a hard stop, then SIGKILL).
    Stopping,
    /// Its process ended normally (exit status 0 or a stop by the daemon).
    Stopped,
    /// Its process ended on its own with a failure (non-zero status or a signal).
    Crashed,
}

impl VmState {
    /// Every state, in lifecycle order.
    pub const ALL: [VmState; 7] = [
        VmState::Defined,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Crashed,
    ];

    /// The state's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Defined => "defined",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Crashed => "crashed",
        }
    }

    /// Whether a VMM process belongs to the VM in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        VmState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a VM state"))
    }
}

/// A VM as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Stable identifier, given at definition.
    pub id: Uuid,
    /// Name, unique on the host (the spec's name).
    pub name: String,
    /// The spec the VM was defined with.
    pub spec: VmSpec,
    /// Current state.
    pub state: VmState,
    /// The driver that runs it (`paddock-vmm`).
    pub driver: String,
    /// When it was defined (RFC 3339, UTC).
    pub created_at: String,
    /// When its record last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// Process id of its VMM while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Exit status of its last process, when known (a signal `n` is reported as `128 + n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// A note on the last transition (why it crashed, how it was stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A VM in a list, without its spec (`GET /api/v1/vms?view=summary`): what a table of VMs
/// shows, at a quarter of the full record's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSummary {
    /// Stable identifier.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Current state.
    pub state: VmState,
    /// The driver that runs it.
    pub driver: String,
    /// vCPUs in its spec.
    pub cpus: u32,
    /// Guest memory in MiB in its spec.
    pub memory_mib: u64,
    /// Process id of its VMM while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
    /// The request field at fault (`memory.size_mib`), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Optional body of `stop` and `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds to wait for the guest to power off after the ACPI power button before the
    /// VMM is stopped hard (default 30; 0 skips the power button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// One line of the audit log: a change someone asked for, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log (increasing).
    pub seq: i64,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Unix user id of the caller (from SO_PEERCRED); absent for the daemon's own changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Who asked: `uid:N` on the Unix socket, `token:<name>` over TCP + TLS; absent for
    /// the daemon's own changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// What was asked (`define`, `start`, `stop`, ...; `exit` for the daemon noticing an exit).
    pub action: String,
    /// The VM's name.
    pub target: String,
    /// `ok`, or the error answered.
    pub result: String,
}

/// A Server-Sent Event on `GET /api/v1/events` (the `data:` line's JSON; the SSE `event:`
/// field carries [`Event::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Event {
    /// A VM changed state.
    Lifecycle {
        /// When (RFC 3339, UTC).
        time: String,
        /// The VM's name.
        vm: String,
        /// The state it left.
        from: VmState,
        /// The state it entered.
        to: VmState,
        /// Why, when there is more to say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// An audit-log entry was written.
    Audit(AuditEntry),
    /// A task started, made progress or ended.
    Task {
        /// The task as it stands.
        task: crate::storage::Task,
    },
}

impl Event {
    /// The SSE event name: `lifecycle`, `audit` or `task`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Lifecycle { .. } => "lifecycle",
            Event::Audit(_) => "audit",
            Event::Task { .. } => "task",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_by_name() {
        for s in VmState::ALL {
            assert_eq!(s.as_str().parse::<VmState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("bogus".parse::<VmState>().is_err());
    }

    #[test]
    fn events_are_tagged_by_kind() {
        let e = Event::Lifecycle {
            time: "t".into(),
            vm: "a".into(),
            from: VmState::Defined,
            to: VmState::Starting,
            message: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "lifecycle");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }
}
