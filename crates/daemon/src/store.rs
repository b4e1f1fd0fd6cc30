//! The state store: one SQLite file under the state directory, with numbered schema
//! migrations (`PRAGMA user_version`), the VM records and the audit log.

use std::path::Path;
use std::sync::Mutex;

use paddock_api::{AuditEntry, Vm, VmSummary};
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

/// Migrations in order; entry `n` brings the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        driver TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        pid INTEGER,
        exit_status INTEGER,
        message TEXT
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        uid INTEGER,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        result TEXT NOT NULL
    );",
    crate::storage::store::MIGRATION,
    crate::network::store::MIGRATION,
    crate::token_store::MIGRATION,
];

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row does not decode (a damaged or newer database).
    #[error("state store: VM {id}: {message}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// What does not decode.
        message: String,
    },
    /// The database is from a newer paddockd.
    #[error("state store schema version {found} is newer than this paddockd knows ({known}); run a newer paddockd")]
    TooNew {
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// The name is taken.
    #[error("a VM named '{0}' exists")]
    NameTaken(String),
}

/// The store.
pub struct Store {
    conn: Mutex<Connection>,
}

/// A row as SQLite holds it, before the text columns are parsed.
struct RawVm {
    id: String,
    name: String,
    spec: String,
    state: String,
    driver: String,
    created_at: String,
    updated_at: String,
    pid: Option<u32>,
    exit_status: Option<i32>,
    message: Option<String>,
}

fn decode(row: &Row<'_>) -> rusqlite::Result<RawVm> {
    Ok(RawVm {
        id: row.get(0)?,
        name: row.get(1)?,
        spec: row.get(2)?,
        state: row.get(3)?,
        driver: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
        pid: row.get(7)?,
        exit_status: row.get(8)?,
        message: row.get(9)?,
    })
}

fn finish(raw: RawVm) -> Result<Vm, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        id: raw.id.clone(),
        message,
    };
    Ok(Vm {
        id: Uuid::parse_str(&raw.id).map_err(|e| corrupt(format!("id: {e}")))?,
        state: raw.state.parse().map_err(corrupt)?,
        spec: serde_json::from_str(&raw.spec).map_err(|e| corrupt(format!("spec: {e}")))?,
        name: raw.name,
        driver: raw.driver,
        created_at: raw.created_at,
        updated_at: raw.updated_at,
        pid: raw.pid,
        exit_status: raw.exit_status,
        message: raw.message,
    })
}

const COLUMNS: &str =
    "id, name, spec, state, driver, created_at, updated_at, pid, exit_status, message";

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Durability comes from the audit log: every change a request makes ends with its audit
        // entry, which `audit` commits with `synchronous=FULL`; in WAL mode that fsync covers
        // the earlier, unsynced commits too, so nothing is answered before it is on disk, at
        // one fsync per request. The daemon's own runtime records (state, pid) commit unsynced:
        // they survive a daemon crash, and what a power loss takes back the restarted daemon
        // re-learns from the processes, which the power loss ended.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a VM; its name must be free.
    pub fn insert(&self, vm: &Vm) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&vm.spec).unwrap_or_default();
        let r = self.conn().execute(
            &format!(
                "INSERT INTO vms ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                vm.id.to_string(),
                vm.name,
                spec,
                vm.state.as_str(),
                vm.driver,
                vm.created_at,
                vm.updated_at,
                vm.pid,
                vm.exit_status,
                vm.message
            ],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::NameTaken(vm.name.clone()))
            }
            r => r.map(drop).map_err(Into::into),
        }
    }

    /// Writes the mutable fields of `vm` (state, times, pid, exit status, message).
    pub fn update(&self, vm: &Vm) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE vms SET state = ?2, updated_at = ?3, pid = ?4, exit_status = ?5, message = ?6
             WHERE id = ?1",
            params![
                vm.id.to_string(),
                vm.state.as_str(),
                vm.updated_at,
                vm.pid,
                vm.exit_status,
                vm.message
            ],
        )?;
        Ok(())
    }

    /// Removes a VM.
    pub fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM vms WHERE id = ?1", params![id.to_string()])?;
        Ok(())
    }

    /// The VM called `name`.
    pub fn by_name(&self, name: &str) -> Result<Option<Vm>, StoreError> {
        self.one("name", name)
    }

    /// The VM with `id`.
    pub fn by_id(&self, id: Uuid) -> Result<Option<Vm>, StoreError> {
        self.one("id", &id.to_string())
    }

    fn one(&self, column: &str, value: &str) -> Result<Option<Vm>, StoreError> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM vms WHERE {column} = ?1"),
                params![value],
                decode,
            )
            .optional()?;
        row.map(finish).transpose()
    }

    /// Every VM, by name.
    pub fn list(&self) -> Result<Vec<Vm>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM vms ORDER BY name"))?;
        let rows = stmt.query_map([], decode)?;
        rows.map(|r| finish(r?)).collect()
    }

    /// Every VM as a summary, by name: the spec's sizes are read by SQLite (`json_extract`),
    /// so no spec is decoded.
    pub fn summaries(&self) -> Result<Vec<VmSummary>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, state, driver, pid,
                    json_extract(spec, '$.cpus.count'), json_extract(spec, '$.memory.size_mib')
             FROM vms ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<u32>>(4)?,
                r.get::<_, Option<u32>>(5)?,
                r.get::<_, Option<u64>>(6)?,
            ))
        })?;
        rows.map(|r| {
            let (id, name, state, driver, pid, cpus, memory_mib) = r?;
            let corrupt = |message: String| StoreError::Corrupt {
                id: id.clone(),
                message,
            };
            Ok(VmSummary {
                id: Uuid::parse_str(&id).map_err(|e| corrupt(format!("id: {e}")))?,
                state: state.parse().map_err(corrupt)?,
                name,
                driver,
                // A spec without a count takes the default of one vCPU.
                cpus: cpus.unwrap_or(1),
                memory_mib: memory_mib.ok_or_else(|| corrupt("spec: no memory size".into()))?,
                pid,
            })
        })
        .collect()
    }

    /// Appends to the audit log.
    pub fn audit(
        &self,
        time: &str,
        uid: Option<u32>,
        action: &str,
        target: &str,
        result: &str,
    ) -> Result<AuditEntry, StoreError> {
        let who = crate::auth::who(uid);
        let conn = self.conn();
        conn.pragma_update(None, "synchronous", "FULL")?;
        let r = conn.execute(
            "INSERT INTO audit (time, uid, action, target, result, who) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![time, uid, action, target, result, who],
        );
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        r?;
        Ok(AuditEntry {
            seq: conn.last_insert_rowid(),
            time: time.into(),
            uid,
            who,
            action: action.into(),
            target: target.into(),
            result: result.into(),
        })
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, time, uid, action, target, result, who FROM audit ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            let uid: Option<u32> = r.get(2)?;
            Ok(AuditEntry {
                seq: r.get(0)?,
                time: r.get(1)?,
                uid,
                who: r
                    .get::<_, Option<String>>(6)?
                    .or_else(|| uid.map(|u| format!("uid:{u}"))),
                action: r.get(3)?,
                target: r.get(4)?,
                result: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", n as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_api::VmState;

    fn vm(name: &str) -> Vm {
        Vm {
            id: Uuid::new_v4(),
            name: name.into(),
            spec: serde_json::from_str(&format!(
                r#"{{"name":"{name}","memory":{{"size_mib":64}},"boot":{{"kind":"kernel","kernel":"/k"}}}}"#
            ))
            .unwrap(),
            state: VmState::Defined,
            driver: "paddock-vmm".into(),
            created_at: "2025-01-01T00:00:00.000Z".into(),
            updated_at: "2025-01-01T00:00:00.000Z".into(),
            pid: None,
            exit_status: None,
            message: None,
        }
    }

    #[test]
    fn records_survive_reopening_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut a = vm("a");
        {
            let s = Store::open(&path).unwrap();
            s.insert(&a).unwrap();
            assert!(matches!(s.insert(&vm("a")), Err(StoreError::NameTaken(_))));
            a.state = VmState::Running;
            a.pid = Some(42);
            s.update(&a).unwrap();
            s.audit("t", Some(0), "start", "a", "ok").unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.by_name("a").unwrap().unwrap(), a);
        assert_eq!(s.by_id(a.id).unwrap().unwrap(), a);
        assert_eq!(s.list().unwrap(), vec![a.clone()]);
        assert_eq!(s.audit_log().unwrap()[0].action, "start");
        s.delete(a.id).unwrap();
        assert!(s.by_name("a").unwrap().is_none());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
