//! The networks' rows in the state store (table `networks`, added by migration 2) and the
//! queries over VM specs that networks need (MACs in use, VMs on a network).

use paddock_api::network::{DhcpRange, Network};
use rusqlite::{params, OptionalExtension, Row};

use crate::store::{Store, StoreError};

/// Migration 2: the `networks` table.
pub const MIGRATION: &str = "CREATE TABLE networks (
        name TEXT PRIMARY KEY,
        bridge TEXT NOT NULL UNIQUE,
        ipv4 TEXT,
        nat INTEGER NOT NULL,
        dhcp_start TEXT,
        dhcp_end TEXT,
        created_at TEXT NOT NULL
    );";

const COLUMNS: &str = "name, bridge, ipv4, nat, dhcp_start, dhcp_end, created_at";

/// Why a network cannot be inserted.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// The name or the bridge is taken.
    #[error("a network named '{0}' or with its bridge exists")]
    Taken(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn decode(row: &Row<'_>) -> rusqlite::Result<Network> {
    let start: Option<String> = row.get(4)?;
    let end: Option<String> = row.get(5)?;
    let dhcp = match (start, end) {
        (Some(s), Some(e)) => match (s.parse(), e.parse()) {
            (Ok(start), Ok(end)) => Some(DhcpRange { start, end }),
            _ => None,
        },
        _ => None,
    };
    Ok(Network {
        name: row.get(0)?,
        bridge: row.get(1)?,
        ipv4: row.get(2)?,
        nat: row.get::<_, i64>(3)? != 0,
        dhcp,
        created_at: row.get(6)?,
        vms: Vec::new(),
    })
}

impl Store {
    /// Adds a network; its name and bridge must be free.
    pub fn insert_network(&self, n: &Network) -> Result<(), InsertError> {
        let r = self.conn().execute(
            &format!("INSERT INTO networks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                n.name,
                n.bridge,
                n.ipv4,
                i64::from(n.nat),
                n.dhcp.map(|d| d.start.to_string()),
                n.dhcp.map(|d| d.end.to_string()),
                n.created_at
            ],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(InsertError::Taken(n.name.clone()))
            }
            r => r.map(drop).map_err(|e| InsertError::Store(e.into())),
        }
    }

    /// Every network, by name, each with the VMs on it.
    pub fn networks(&self) -> Result<Vec<Network>, StoreError> {
        let mut nets = {
            let conn = self.conn();
            let mut stmt =
                conn.prepare(&format!("SELECT {COLUMNS} FROM networks ORDER BY name"))?;
            let rows = stmt.query_map([], decode)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        for n in &mut nets {
            n.vms = self.vms_on_network(&n.name)?;
        }
        Ok(nets)
    }

    /// The network called `name`, with the VMs on it.
    pub fn network(&self, name: &str) -> Result<Option<Network>, StoreError> {
        let n = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM networks WHERE name = ?1"),
                params![name],
                decode,
            )
            .optional()?;
        match n {
            Some(mut n) => {
                n.vms = self.vms_on_network(name)?;
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    /// Whether a network uses bridge `bridge`.
    pub fn bridge_taken(&self, bridge: &str) -> Result<bool, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM networks WHERE bridge = ?1",
            params![bridge],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Removes a network's row.
    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM networks WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// The VMs (by name) with a NIC on network `name`.
    pub fn vms_on_network(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT vms.name FROM vms, json_each(vms.spec, '$.nics') AS n
             WHERE json_extract(n.value, '$.network') = ?1 ORDER BY vms.name",
        )?;
        let rows = stmt.query_map(params![name], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The VM (by name) whose spec has a NIC with MAC `mac` (as `aa:bb:..`, any case).
    pub fn mac_owner(&self, mac: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT vms.name FROM vms, json_each(vms.spec, '$.nics') AS n
                 WHERE lower(json_extract(n.value, '$.mac')) = lower(?1) LIMIT 1",
                params![mac],
                |r| r.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_round_trip_and_see_their_vms_and_macs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        let n = Network {
            name: "lan".into(),
            bridge: "pd-lan".into(),
            ipv4: Some("10.77.0.1/24".into()),
            nat: true,
            dhcp: Some(DhcpRange {
                start: "10.77.0.10".parse().unwrap(),
                end: "10.77.0.20".parse().unwrap(),
            }),
            created_at: "t".into(),
            vms: vec![],
        };
        s.insert_network(&n).unwrap();
        assert!(matches!(s.insert_network(&n), Err(InsertError::Taken(_))));
        let mut other = n.clone();
        other.name = "other".into();
        assert!(
            matches!(s.insert_network(&other), Err(InsertError::Taken(_))),
            "same bridge"
        );
        assert!(s.bridge_taken("pd-lan").unwrap());
        let vm: paddock_api::Vm = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::new_v4(), "name": "web", "state": "defined", "driver": "paddock-vmm",
            "created_at": "t", "updated_at": "t",
            "spec": {"name": "web", "memory": {"size_mib": 64}, "boot": {"kind": "kernel", "kernel": "/k"},
                     "nics": [{"network": "lan", "mac": "02:50:44:0a:0b:0c"}]}
        }))
        .unwrap();
        s.insert(&vm).unwrap();
        assert_eq!(
            s.network("lan").unwrap().unwrap().vms,
            vec!["web".to_string()]
        );
        assert_eq!(
            s.networks().unwrap()[0],
            Network {
                vms: vec!["web".into()],
                ..n
            }
        );
        assert_eq!(
            s.mac_owner("02:50:44:0A:0B:0C").unwrap().as_deref(),
            Some("web")
        );
        assert_eq!(s.mac_owner("02:50:44:0a:0b:0d").unwrap(), None);
        s.delete_network("lan").unwrap();
        assert!(s.network("lan").unwrap().is_none());
    }
}
