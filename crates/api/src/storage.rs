//! Storage resources: directory pools, the volumes in them, and the tasks that run long
//! volume operations (import, clone). See `docs/DAEMON.md`, "Storage pools, volumes and
//! tasks".

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A directory pool: volumes are files in one host directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Name, unique on the host.
    pub name: String,
    /// The directory (absolute).
    pub path: PathBuf,
    /// Size of the file system that holds the directory, in bytes.
    pub capacity: u64,
    /// Bytes the pool's volumes occupy on disk (the sum of their allocations).
    pub allocation: u64,
    /// Bytes still free on the file system for an unprivileged writer.
    pub available: u64,
    /// Volumes in the pool.
    pub volumes: usize,
    /// When it was defined (RFC 3339, UTC).
    pub created_at: String,
}

/// `POST /api/v1/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    /// The pool's name.
    pub name: String,
    /// Its directory: absolute; created when absent.
    pub path: PathBuf,
}

/// A volume: one image file in a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The pool it lives in.
    pub pool: String,
    /// Name, unique in the pool (also the file name).
    pub name: String,
    /// The image file.
    pub path: PathBuf,
    /// Image format (`raw`, `qcow2`, ...).
    pub format: String,
    /// Size the guest sees, in bytes.
    pub capacity: u64,
    /// Bytes the file occupies on disk.
    pub allocation: u64,
    /// The volume this one is a linked clone of (its qcow2 backing file), in the same pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<String>,
    /// The task still writing the volume (an import or a full clone); the volume cannot be
    /// used until it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Uuid>,
    /// When it was made (RFC 3339, UTC).
    pub created_at: String,
}

/// `POST /api/v1/pools/{pool}/volumes`: a new, empty volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    /// The volume's name.
    pub name: String,
    /// Size in bytes (a number), or a size with a suffix (`"10G"`, `"512M"`).
    pub capacity: Size,
    /// Image format: `qcow2` (default), `raw`, `vmdk`, `vpc`, `vhdx` or `vdi`.
    #[serde(default = "default_format")]
    pub format: String,
}

fn default_format() -> String {
    "qcow2".into()
}

/// A byte count given as a number or as text with a `K`/`M`/`G`/`T` suffix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// Text such as `"10G"`.
    Text(String),
}

impl Size {
    /// The size in bytes, or why the text is not a size.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

/// Parses `"1024"`, `"64K"`, `"512M"`, `"10G"`, `"1T"` (binary units; an optional `iB`/`B`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 10G or 1048576"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// `POST /api/v1/pools/{pool}/volumes/import`: copy or convert a host image into a new
/// volume, as a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeImport {
    /// The new volume's name.
    pub name: String,
    /// The image to read (absolute path; opened read-only, backing files refused).
    pub source: PathBuf,
    /// The source's format; probed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The volume's format; the source's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert_to: Option<String>,
}

/// `POST /api/v1/pools/{pool}/volumes/clone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeClone {
    /// The new volume's name.
    pub name: String,
    /// The volume to clone, in the same pool.
    pub from: String,
    /// A qcow2 linked clone whose backing file is `from` (default, instant); `false` makes a
    /// full copy in `from`'s format, as a task.
    #[serde(default = "yes")]
    pub linked: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/v1/pools/{pool}/volumes/{volume}/resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    /// The new virtual size.
    pub capacity: Size,
    /// Allow a smaller size (data past the new end is lost).
    #[serde(default)]
    pub shrink: bool,
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Copy a host image into a volume in its own format.
    Import,
    /// Convert a host image into a volume of another format.
    Convert,
    /// Copy a volume into a new one (a full clone).
    Clone,
}

impl TaskKind {
    /// The kind as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Import => "import",
            TaskKind::Convert => "convert",
            TaskKind::Clone => "clone",
        }
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Working.
    Running,
    /// Done; the target exists.
    Succeeded,
    /// Ended with an error (see `error`); its partial output was removed.
    Failed,
    /// Cancelled; its partial output was removed.
    Cancelled,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 4] = [
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The state as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        self != TaskState::Running
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a task state"))
    }
}

impl FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [TaskKind::Import, TaskKind::Convert, TaskKind::Clone]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a task kind"))
    }
}

/// A long operation the daemon runs in the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Identifier.
    pub id: Uuid,
    /// What it does.
    pub kind: TaskKind,
    /// What it makes: `pool/volume`.
    pub target: String,
    /// Where it stands.
    pub state: TaskState,
    /// Percent done (bytes of virtual disk processed over the total), 0 to 100.
    pub progress: u8,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it began (RFC 3339, UTC).
    pub created_at: String,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// The answer to a request that started a task (HTTP 202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAccepted {
    /// The task; follow it with `GET /api/v1/tasks/{id}` or the `task` events.
    pub task: Task,
}

/// The answer to a clone: the volume at once (linked) or the task that copies it (full).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CloneOutcome {
    /// A full copy runs as this task (HTTP 202).
    Task(TaskAccepted),
    /// The linked clone (HTTP 201).
    Volume(Volume),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
        let s: Size = serde_json::from_str("\"2M\"").unwrap();
        assert_eq!(s.bytes().unwrap(), 2 << 20);
        let s: Size = serde_json::from_str("4096").unwrap();
        assert_eq!(s.bytes().unwrap(), 4096);
    }

    #[test]
    fn task_states_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        assert_eq!("clone".parse::<TaskKind>().unwrap(), TaskKind::Clone);
    }
}
