//! The storage operations behind the API. Each one checks everything before it changes
//! anything, so a refused request leaves pools, volumes and files as they were. They block
//! (file-system and disk-engine work); the routes run them on tokio's blocking pool.

use paddock_api::storage::{
    CloneOutcome, Pool, PoolRequest, Task, TaskAccepted, TaskKind, Volume, VolumeClone,
    VolumeCreate, VolumeImport, VolumeResize,
};
use paddock_disk::{ConvertOptions, CreateOptions, Format, OpenOptions};

use super::store::{PoolRow, VolumeRow};
use super::{
    check_abs, check_name, disk, no_pool, no_volume, pool_view, usage_lock, users_of, volume_path,
    volume_view, Storage,
};
use crate::error::OpError;
use crate::supervisor::now;

impl Storage {
    pub(crate) fn pool_row(&self, name: &str) -> Result<PoolRow, OpError> {
        self.db().pool(name)?.ok_or_else(|| no_pool(name))
    }

    fn volume_row(&self, pool: &str, name: &str) -> Result<VolumeRow, OpError> {
        self.db()
            .volume(pool, name)?
            .ok_or_else(|| no_volume(pool, name))
    }

    /// Every pool.
    pub fn list_pools(&self) -> Result<Vec<Pool>, OpError> {
        let db = self.db();
        db.pools()?.iter().map(|p| pool_view(&db, p)).collect()
    }

    /// One pool.
    pub fn get_pool(&self, name: &str) -> Result<Pool, OpError> {
        pool_view(&self.db(), &self.pool_row(name)?)
    }

    /// Defines a directory pool, making the directory when absent.
    pub fn define_pool(&self, req: PoolRequest) -> Result<Pool, OpError> {
        check_name(&req.name, "name")?;
        check_abs(&req.path, "path")?;
        let _g = usage_lock();
        let db = self.db();
        let taken = |what: String| Err(OpError::Conflict(what));
        if db.pool(&req.name)?.is_some() {
            return taken(format!(
                "a pool named '{}' exists; pick another name, or delete it first",
                req.name
            ));
        }
        if let Some(p) = db.pool_on(&req.path.to_string_lossy())? {
            return taken(format!(
                "pool '{}' already uses {}",
                p.name,
                req.path.display()
            ));
        }
        let existed = req.path.exists();
        if !existed {
            std::fs::create_dir_all(&req.path).map_err(|e| OpError::Invalid {
                field: "path".into(),
                message: format!("cannot create {}: {e}", req.path.display()),
            })?;
        } else if !req.path.is_dir() {
            return Err(OpError::Invalid {
                field: "path".into(),
                message: format!("{} exists and is not a directory", req.path.display()),
            });
        }
        let row = PoolRow {
            name: req.name.clone(),
            path: req.path.clone(),
            created_at: now(),
        };
        if !db.insert_pool(&row)? {
            if !existed {
                let _ = std::fs::remove_dir(&req.path);
            }
            return taken(format!("a pool named '{}' exists", req.name));
        }
        pool_view(&db, &row)
    }

    /// Forgets an empty pool; its directory stays.
    pub fn delete_pool(&self, name: &str) -> Result<(), OpError> {
        let _g = usage_lock();
        let p = self.pool_row(name)?;
        let vols = self.db().volumes(Some(name))?;
        if let Some(v) = vols.first() {
            return Err(OpError::Conflict(format!(
                "pool '{name}' has {} volume(s), e.g. '{}'; delete them first (`paddock volume delete {name} {}`)",
                vols.len(),
                v.name,
                v.name
            )));
        }
        self.db().delete_pool(&p.name)?;
        Ok(())
    }

    /// The volumes of a pool.
    pub fn list_volumes(&self, pool: &str) -> Result<Vec<Volume>, OpError> {
        let p = self.pool_row(pool)?;
        Ok(self
            .db()
            .volumes(Some(pool))?
            .iter()
            .map(|v| volume_view(&p, v))
            .collect())
    }

    /// One volume.
    pub fn get_volume(&self, pool: &str, name: &str) -> Result<Volume, OpError> {
        let p = self.pool_row(pool)?;
        Ok(volume_view(&p, &self.volume_row(pool, name)?))
    }

    /// 409 when `name` is taken in `pool`, as a volume or as a foreign file.
    fn check_free(&self, pool: &PoolRow, name: &str) -> Result<(), OpError> {
        if self.db().volume(&pool.name, name)?.is_some() {
            return Err(OpError::Conflict(format!(
                "a volume named '{name}' exists in pool '{}'; pick another name, or delete it first",
                pool.name
            )));
        }
        let path = volume_path(pool, name);
        if path.symlink_metadata().is_ok() {
            return Err(OpError::Conflict(format!(
                "{} exists but is not a volume of pool '{}'; move it away or pick another name",
                path.display(),
                pool.name
            )));
        }
        Ok(())
    }

    fn new_row(pool: &PoolRow, name: &str, fmt: Format, backing: Option<String>) -> VolumeRow {
        VolumeRow {
            pool: pool.name.clone(),
            name: name.into(),
            format: fmt.name().into(),
            backing,
            task: None,
            created_at: now(),
        }
    }

    /// Creates an empty volume.
    pub fn create_volume(&self, pool: &str, req: VolumeCreate) -> Result<Volume, OpError> {
        let p = self.pool_row(pool)?;
        check_name(&req.name, "name")?;
        let fmt = disk::format(&req.format, "format")?;
        let size = req.capacity.bytes().map_err(|message| OpError::Invalid {
            field: "capacity".into(),
            message,
        })?;
        let _g = usage_lock();
        self.check_free(&p, &req.name)?;
        let path = volume_path(&p, &req.name);
        disk::create(&path, fmt, size)?;
        let row = Self::new_row(&p, &req.name, fmt, None);
        if !self.db().insert_volume(&row)? {
            disk::remove_image(&path);
            return Err(OpError::Conflict(format!(
                "a volume named '{}' exists",
                req.name
            )));
        }
        Ok(volume_view(&p, &row))
    }

    /// Starts copying (or converting) a host image into a new volume.
    pub fn import_volume(&self, pool: &str, req: VolumeImport) -> Result<TaskAccepted, OpError> {
        let p = self.pool_row(pool)?;
        check_name(&req.name, "name")?;
        check_abs(&req.source, "source")?;
        let bad_source = |message: String| OpError::Invalid {
            field: "source".into(),
            message,
        };
        if !req.source.is_file() {
            return Err(bad_source(format!(
                "{} is not a readable regular file",
                req.source.display()
            )));
        }
        let src_fmt = req
            .format
            .as_deref()
            .map(|f| disk::format(f, "format"))
            .transpose()?;
        let opts = OpenOptions {
            open_backing: false,
            allow_backing: false,
            ..OpenOptions::read(src_fmt)
        };
        let src = paddock_disk::open(&req.source, &opts).map_err(|e| {
            bad_source(format!(
                "{e} (images with a backing file are refused: import a flattened copy)"
            ))
        })?;
        let fmt = match &req.convert_to {
            Some(f) => disk::format(f, "convert_to")?,
            None => src.format(),
        };
        let kind = if fmt == src.format() {
            TaskKind::Import
        } else {
            TaskKind::Convert
        };
        let _g = usage_lock();
        self.check_free(&p, &req.name)?;
        let path = volume_path(&p, &req.name);
        let dst = paddock_disk::create(&path, fmt, &CreateOptions::sized(src.virtual_size()))
            .map_err(|e| OpError::Invalid {
                field: "convert_to".into(),
                message: format!("cannot make a {fmt} volume of this size: {e}"),
            })?;
        let work = Box::new(move |progress: &paddock_disk::Progress| {
            paddock_disk::convert(
                src.as_ref(),
                dst.as_ref(),
                &ConvertOptions::default(),
                progress,
            )
            .map(drop)
            .map_err(|e| e.to_string())
        });
        self.start_task(kind, Self::new_row(&p, &req.name, fmt, None), path, work)
    }

    fn start_task(
        &self,
        kind: TaskKind,
        row: VolumeRow,
        path: std::path::PathBuf,
        work: crate::tasks::Work,
    ) -> Result<TaskAccepted, OpError> {
        let task: Task = match self.tasks.start(kind, row, path.clone(), work) {
            Ok(t) => t,
            Err(e) => {
                disk::remove_image(&path);
                return Err(e);
            }
        };
        Ok(TaskAccepted { task })
    }

    /// Clones a volume: linked (qcow2 over the base, relative backing path) or a full copy
    /// as a task.
    pub fn clone_volume(&self, pool: &str, req: VolumeClone) -> Result<CloneOutcome, OpError> {
        let p = self.pool_row(pool)?;
        check_name(&req.name, "name")?;
        let base = self.volume_row(pool, &req.from)?;
        if let Some(t) = base.task {
            return Err(OpError::Conflict(format!(
                "volume '{}' is still being written by task {t}; wait for it",
                req.from
            )));
        }
        let base_fmt = disk::format(&base.format, "from")?;
        let _g = usage_lock();
        self.check_free(&p, &req.name)?;
        let path = volume_path(&p, &req.name);
        if req.linked {
            disk::linked_clone(&path, &base.name, base_fmt)?;
            let row = Self::new_row(&p, &req.name, Format::Qcow2, Some(base.name.clone()));
            if !self.db().insert_volume(&row)? {
                disk::remove_image(&path);
                return Err(OpError::Conflict(format!(
                    "a volume named '{}' exists",
                    req.name
                )));
            }
            return Ok(CloneOutcome::Volume(volume_view(&p, &row)));
        }
        let src = disk::open_chain(&volume_path(&p, &base.name), base_fmt, &p.path)
            .map_err(|e| OpError::Internal(format!("opening volume '{}': {e}", base.name)))?;
        let dst = paddock_disk::create(&path, base_fmt, &CreateOptions::sized(src.virtual_size()))
            .map_err(|e| OpError::Internal(format!("creating {}: {e}", path.display())))?;
        let work = Box::new(move |progress: &paddock_disk::Progress| {
            paddock_disk::convert(
                src.as_ref(),
                dst.as_ref(),
                &ConvertOptions::default(),
                progress,
            )
            .map(drop)
            .map_err(|e| e.to_string())
        });
        let row = Self::new_row(&p, &req.name, base_fmt, None);
        self.start_task(TaskKind::Clone, row, path, work)
            .map(CloneOutcome::Task)
    }

    /// 409 when a task writes the volume or a VM uses it.
    fn check_unused(&self, p: &PoolRow, v: &VolumeRow, what: &str) -> Result<(), OpError> {
        if let Some(t) = v.task {
            return Err(OpError::Conflict(format!(
                "task {t} is writing volume '{}'; cancel it (`paddock task cancel {t}`) or wait",
                v.name
            )));
        }
        if let Some(vm) = users_of(self.sup.store(), p, &v.name)?.first() {
            return Err(OpError::Conflict(format!(
                "volume '{}/{}' is used by VM '{vm}'; delete the VM (or give it another disk) before you {what} it",
                p.name, v.name
            )));
        }
        Ok(())
    }

    /// The first linked clone backed by `v`.
    pub(crate) fn clone_of(&self, v: &VolumeRow) -> Result<Option<String>, OpError> {
        Ok(self
            .db()
            .volumes(Some(&v.pool))?
            .into_iter()
            .find(|c| c.backing.as_deref() == Some(&v.name))
            .map(|c| c.name))
    }

    /// Changes a volume's virtual size.
    pub fn resize_volume(
        &self,
        pool: &str,
        name: &str,
        req: VolumeResize,
    ) -> Result<Volume, OpError> {
        let p = self.pool_row(pool)?;
        let size = req.capacity.bytes().map_err(|message| OpError::Invalid {
            field: "capacity".into(),
            message,
        })?;
        let _g = usage_lock();
        let v = self.volume_row(pool, name)?;
        self.check_unused(&p, &v, "resize")?;
        if req.shrink {
            if let Some(c) = self.clone_of(&v)? {
                return Err(OpError::Conflict(format!(
                    "linked clone '{c}' is backed by volume '{name}'; shrinking it would change what the clone reads"
                )));
            }
        }
        let fmt = disk::format(&v.format, "format")?;
        disk::resize(&volume_path(&p, name), fmt, size, req.shrink)?;
        Ok(volume_view(&p, &v))
    }

    /// Deletes a volume and its file.
    pub fn delete_volume(&self, pool: &str, name: &str) -> Result<(), OpError> {
        let p = self.pool_row(pool)?;
        let _g = usage_lock();
        let v = self.volume_row(pool, name)?;
        self.check_unused(&p, &v, "delete")?;
        if let Some(c) = self.clone_of(&v)? {
            return Err(OpError::Conflict(format!(
                "linked clone '{c}' is backed by volume '{name}'; delete the clone first"
            )));
        }
        self.db().delete_volume(pool, name)?;
        disk::remove_image(&volume_path(&p, name));
        Ok(())
    }
}
