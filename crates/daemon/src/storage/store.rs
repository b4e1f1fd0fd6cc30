//! The storage tables (pools, volumes, tasks) in the daemon's SQLite store, on the store's
//! one connection.

use std::path::PathBuf;

use paddock_api::storage::{Task, TaskKind, TaskState};
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// The schema migration that adds the storage tables (appended to the store's list).
pub const MIGRATION: &str = "CREATE TABLE pools (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE volumes (
        pool TEXT NOT NULL REFERENCES pools(name),
        name TEXT NOT NULL,
        format TEXT NOT NULL,
        backing TEXT,
        task TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (pool, name)
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        progress INTEGER NOT NULL,
        error TEXT,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        output TEXT
    );";

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    /// Name.
    pub name: String,
    /// Directory.
    pub path: PathBuf,
    /// Definition time.
    pub created_at: String,
}

/// A volume as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// Its pool.
    pub pool: String,
    /// Name (and file name in the pool's directory).
    pub name: String,
    /// Image format name.
    pub format: String,
    /// The volume in the same pool it is a linked clone of.
    pub backing: Option<String>,
    /// The task writing it.
    pub task: Option<Uuid>,
    /// Creation time.
    pub created_at: String,
}

/// Whether `e` is a uniqueness violation.
pub fn is_taken(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn pool_row(r: &Row<'_>) -> rusqlite::Result<PoolRow> {
    Ok(PoolRow {
        name: r.get(0)?,
        path: PathBuf::from(r.get::<_, String>(1)?),
        created_at: r.get(2)?,
    })
}

fn volume_row(r: &Row<'_>) -> rusqlite::Result<VolumeRow> {
    let task: Option<String> = r.get(4)?;
    Ok(VolumeRow {
        pool: r.get(0)?,
        name: r.get(1)?,
        format: r.get(2)?,
        backing: r.get(3)?,
        task: task.and_then(|t| Uuid::parse_str(&t).ok()),
        created_at: r.get(5)?,
    })
}

const VOLUME_COLUMNS: &str = "pool, name, format, backing, task, created_at";
const TASK_COLUMNS: &str = "id, kind, target, state, progress, error, created_at, finished_at";

fn task_row(r: &Row<'_>) -> rusqlite::Result<Result<Task, StoreError>> {
    let id: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let state: String = r.get(3)?;
    let corrupt = |message: String| StoreError::Corrupt {
        id: id.clone(),
        message,
    };
    let progress: i64 = r.get(4)?;
    Ok((|| {
        Ok(Task {
            id: Uuid::parse_str(&id).map_err(|e| corrupt(format!("id: {e}")))?,
            kind: kind.parse::<TaskKind>().map_err(corrupt)?,
            target: r.get(2)?,
            state: state.parse::<TaskState>().map_err(corrupt)?,
            progress: progress.clamp(0, 100) as u8,
            error: r.get(5)?,
            created_at: r.get(6)?,
            finished_at: r.get(7)?,
        })
    })())
}

/// Storage queries on the daemon's store.
pub struct StorageStore<'a>(pub &'a Store);

impl StorageStore<'_> {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.0.conn()
    }

    /// Adds a pool; `Ok(false)` when its name or directory is taken.
    pub fn insert_pool(&self, p: &PoolRow) -> Result<bool, StoreError> {
        let r = self.conn().execute(
            "INSERT INTO pools (name, path, created_at) VALUES (?1, ?2, ?3)",
            params![p.name, p.path.to_string_lossy(), p.created_at],
        );
        match r {
            Err(e) if is_taken(&e) => Ok(false),
            r => r.map(|_| true).map_err(Into::into),
        }
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Result<Option<PoolRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, path, created_at FROM pools WHERE name = ?1",
                params![name],
                pool_row,
            )
            .optional()?)
    }

    /// The pool on directory `path`, if any.
    pub fn pool_on(&self, path: &str) -> Result<Option<PoolRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, path, created_at FROM pools WHERE path = ?1",
                params![path],
                pool_row,
            )
            .optional()?)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Result<Vec<PoolRow>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT name, path, created_at FROM pools ORDER BY name")?;
        let rows = st.query_map([], pool_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes a pool record.
    pub fn delete_pool(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM pools WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// Adds a volume; `Ok(false)` when the name is taken in its pool.
    pub fn insert_volume(&self, v: &VolumeRow) -> Result<bool, StoreError> {
        let r = insert_volume_row(&self.conn(), v);
        match r {
            Err(e) if is_taken(&e) => Ok(false),
            r => r.map(|_| true).map_err(Into::into),
        }
    }

    /// The volume `name` in `pool`.
    pub fn volume(&self, pool: &str, name: &str) -> Result<Option<VolumeRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE pool = ?1 AND name = ?2"),
                params![pool, name],
                volume_row,
            )
            .optional()?)
    }

    /// The volumes of `pool` (every pool when `None`), by pool and name.
    pub fn volumes(&self, pool: Option<&str>) -> Result<Vec<VolumeRow>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE ?1 IS NULL OR pool = ?1 ORDER BY pool, name"
        ))?;
        let rows = st.query_map(params![pool], volume_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes a volume record.
    pub fn delete_volume(&self, pool: &str, name: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM volumes WHERE pool = ?1 AND name = ?2",
            params![pool, name],
        )?;
        Ok(())
    }

    /// Marks the volumes task `task` wrote as finished.
    pub fn release_volumes_of(&self, task: Uuid) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE volumes SET task = NULL WHERE task = ?1",
            params![task.to_string()],
        )?;
        Ok(())
    }

    /// Removes the volumes task `task` was writing.
    pub fn delete_volumes_of(&self, task: Uuid) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM volumes WHERE task = ?1",
            params![task.to_string()],
        )?;
        Ok(())
    }

    /// Adds a task and the volume it writes, together; `Ok(false)` (and nothing added) when
    /// the volume's name is taken.
    pub fn insert_task_with_volume(
        &self,
        t: &Task,
        output: &std::path::Path,
        v: &VolumeRow,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let r = insert_volume_row(&tx, v);
        match r {
            Err(e) if is_taken(&e) => return Ok(false),
            r => r?,
        };
        tx.execute(
            &format!("INSERT INTO tasks ({TASK_COLUMNS}, output) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                t.id.to_string(),
                t.kind.as_str(),
                t.target,
                t.state.as_str(),
                t.progress,
                t.error,
                t.created_at,
                t.finished_at,
                output.to_string_lossy()
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Writes a task's state, progress, error and end time.
    pub fn update_task(&self, t: &Task) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE tasks SET state = ?2, progress = ?3, error = ?4, finished_at = ?5 WHERE id = ?1",
            params![
                t.id.to_string(),
                t.state.as_str(),
                t.progress,
                t.error,
                t.finished_at
            ],
        )?;
        Ok(())
    }

    /// The task with `id`.
    pub fn task(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                params![id.to_string()],
                task_row,
            )
            .optional()?
            .transpose()
    }

    /// Every task, newest first.
    pub fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks ORDER BY created_at DESC, rowid DESC"
        ))?;
        let rows = st.query_map([], task_row)?;
        rows.map(|r| r?).collect()
    }

    /// Running tasks with the file each is writing.
    pub fn running_tasks(&self) -> Result<Vec<(Task, Option<PathBuf>)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS}, output FROM tasks WHERE state = 'running'"
        ))?;
        let rows = st.query_map([], |r| {
            let out: Option<String> = r.get(8)?;
            Ok((task_row(r)?, out.map(PathBuf::from)))
        })?;
        let mut v = Vec::new();
        for row in rows {
            let (t, out) = row?;
            v.push((t?, out));
        }
        Ok(v)
    }
}

/// `INSERT`s volume `v` on `conn` (a connection or a transaction).
fn insert_volume_row(conn: &rusqlite::Connection, v: &VolumeRow) -> rusqlite::Result<usize> {
    conn.execute(
        &format!("INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            v.pool,
            v.name,
            v.format,
            v.backing,
            v.task.map(|t| t.to_string()),
            v.created_at
        ],
    )
}
