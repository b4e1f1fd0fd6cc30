//! Storage: directory pools, the volumes in them (image files made and measured through the
//! disk engine), and the resolution of a VM disk's `"volume": "pool/volume"` reference to a
//! path and format. Long copies run as [`crate::tasks`]. See `docs/DAEMON.md`, "Storage
//! pools, volumes and tasks".

pub mod disk;
pub mod metrics;
pub mod ops;
pub mod routes;
pub mod store;
pub mod vm_volumes;

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use paddock_api::storage::{Pool, Volume};
use paddock_spec::VmSpec;

pub use routes::routes;

use crate::error::OpError;
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::tasks::Tasks;
use store::{PoolRow, StorageStore, VolumeRow};

/// The storage service: the supervisor (store, audit, events) and the task manager.
pub struct Storage {
    /// The supervisor, for the store, the VMs, the audit log and events.
    pub sup: Arc<Supervisor>,
    /// Running tasks.
    pub tasks: Arc<Tasks>,
}

impl Storage {
    /// The storage service over `sup`.
    pub fn new(sup: Arc<Supervisor>) -> Self {
        Storage {
            tasks: Arc::new(Tasks::new(sup.clone())),
            sup,
        }
    }

    /// The storage tables.
    pub fn db(&self) -> StorageStore<'_> {
        StorageStore(self.sup.store())
    }
}

static USAGE: Mutex<()> = Mutex::new(());

/// Held while VM definitions resolve volume references and while volumes are deleted or
/// resized, so a VM cannot start using a volume that is being removed.
pub fn usage_lock() -> MutexGuard<'static, ()> {
    USAGE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a pool or volume name: 1 to 64 letters, digits, `-`, `_`, `.`, not starting with
/// `.` (so never `.` or `..`, and never a path).
pub fn check_name(name: &str, field: &str) -> Result<(), OpError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid {
            field: field.into(),
            message: format!(
                "'{name}' is not a name: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
            ),
        })
    }
}

/// Checks that `path` is absolute and plain (no `.` or `..` components).
pub fn check_abs(path: &Path, field: &str) -> Result<(), OpError> {
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if path.is_absolute() && plain {
        Ok(())
    } else {
        Err(OpError::Invalid {
            field: field.into(),
            message: format!(
                "'{}' must be an absolute path without '.' or '..'",
                path.display()
            ),
        })
    }
}

/// No pool has `name`.
pub fn no_pool(name: &str) -> OpError {
    OpError::NotFound(format!(
        "no pool named '{name}'; `paddock pool list` shows the pools"
    ))
}

/// No volume `name` in `pool`.
pub fn no_volume(pool: &str, name: &str) -> OpError {
    OpError::NotFound(format!(
        "no volume named '{name}' in pool '{pool}'; `paddock volume list {pool}` shows them"
    ))
}

/// The file of volume `name` in `pool`.
pub fn volume_path(pool: &PoolRow, name: &str) -> PathBuf {
    pool.path.join(name)
}

/// The API view of a pool, with its space measured now.
pub fn pool_view(db: &StorageStore<'_>, p: &PoolRow) -> Result<Pool, OpError> {
    let vols = db.volumes(Some(&p.name))?;
    let allocation = vols
        .iter()
        .map(|v| disk::allocated(&volume_path(p, &v.name)))
        .sum();
    let (capacity, available) = disk::space(&p.path);
    Ok(Pool {
        name: p.name.clone(),
        path: p.path.clone(),
        capacity,
        allocation,
        available,
        volumes: vols.len(),
        created_at: p.created_at.clone(),
    })
}

/// The API view of a volume, measured now.
pub fn volume_view(pool: &PoolRow, v: &VolumeRow) -> Volume {
    let path = volume_path(pool, &v.name);
    let (capacity, allocation) = match v.format.parse() {
        Ok(f) if v.task.is_none() => disk::measure(&path, f),
        _ => (0, disk::allocated(&path)),
    };
    Volume {
        pool: v.pool.clone(),
        name: v.name.clone(),
        path,
        format: v.format.clone(),
        capacity,
        allocation,
        backing: v.backing.clone(),
        task: v.task,
        created_at: v.created_at.clone(),
    }
}

/// The VMs whose spec uses volume `name` of `pool` (by reference or by its path).
pub fn users_of(store: &Store, pool: &PoolRow, name: &str) -> Result<Vec<String>, OpError> {
    let reference = format!("{}/{name}", pool.name);
    let path = volume_path(pool, name);
    Ok(store
        .list()?
        .into_iter()
        .filter(|vm| {
            vm.spec
                .disks
                .iter()
                .any(|d| d.volume.as_deref() == Some(&reference) || d.path == path)
        })
        .map(|vm| vm.name)
        .collect())
}

/// Resolves every disk's volume reference to the volume's path and format, keeping the
/// reference; 422 naming `disks[i].volume` for an unknown pool or volume or one that a task
/// is still writing. Call with [`usage_lock`] held until the VM is stored.
pub fn resolve_spec(store: &Store, mut spec: VmSpec) -> Result<VmSpec, OpError> {
    let db = StorageStore(store);
    for (i, d) in spec.disks.iter_mut().enumerate() {
        let Some(reference) = d.volume.clone() else {
            continue;
        };
        let field = format!("disks[{i}].volume");
        let bad = |message: String| OpError::Invalid {
            field: field.clone(),
            message,
        };
        let (pool, name) = reference
            .split_once('/')
            .ok_or_else(|| bad(format!("'{reference}' is not \"pool/volume\"")))?;
        let p = db
            .pool(pool)?
            .ok_or_else(|| bad(format!("no pool named '{pool}'")))?;
        let v = db
            .volume(pool, name)?
            .ok_or_else(|| bad(format!("no volume named '{name}' in pool '{pool}'")))?;
        if let Some(t) = v.task {
            return Err(bad(format!(
                "volume '{reference}' is still being written by task {t}; wait for it (`paddock task wait {t}`)"
            )));
        }
        d.path = volume_path(&p, name);
        d.format = v.format;
    }
    Ok(spec)
}
