//! The internal snapshot table: parsed at open for `info` and for `check` (snapshot L1
//! tables hold references too). Snapshots are listed, not created or applied.

use super::header::MAX_L1_BYTES;
use crate::error::{Error, IoContext, Result};
use crate::image::SnapshotInfo;
use crate::storage::Storage;

/// Most snapshots an image may list (as QEMU).
const MAX_SNAPSHOTS: u32 = 65536;
/// Largest snapshot table read.
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Largest extra-data field of one entry (as QEMU).
const MAX_EXTRA: u32 = 1024;

/// One snapshot table entry.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) l1_table_offset: u64,
    pub(crate) l1_size: u32,
    pub(crate) info: SnapshotInfo,
    /// Bytes the entry occupies in the table (padded).
    pub(crate) entry_len: u64,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Reads `count` entries at `offset`.
pub(crate) fn read_table(
    st: &dyn Storage,
    offset: u64,
    count: u32,
    cluster_size: u64,
) -> Result<Vec<Snapshot>> {
    if count > MAX_SNAPSHOTS {
        return Err(Error::limit(format!(
            "{count} snapshots is above the limit of {MAX_SNAPSHOTS}"
        )));
    }
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    let mut at = offset;
    for n in 0..count {
        let mut fixed = [0u8; 40];
        st.read_exact_at(&mut fixed, at)
            .ctx(|| format!("reading snapshot {n} at offset {at:#x}"))?;
        let l1_table_offset = be64(&fixed, 0);
        let l1_size = be32(&fixed, 8);
        let id_len = u64::from(be16(&fixed, 12));
        let name_len = u64::from(be16(&fixed, 14));
        let date_sec = be32(&fixed, 16);
        let vm_state_size = be32(&fixed, 32);
        let extra_len = be32(&fixed, 36);
        if extra_len > MAX_EXTRA {
            return Err(Error::corrupt(format!(
                "snapshot {n} has {extra_len} bytes of extra data (limit {MAX_EXTRA})"
            )));
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(Error::limit(format!(
                "snapshot {n} L1 table of {l1_size} entries is above the 32 MiB limit"
            )));
        }
        if l1_size > 0
            && (l1_table_offset % cluster_size != 0
                || l1_table_offset == 0
                || l1_table_offset > (1 << 56))
        {
            return Err(Error::corrupt(format!(
                "snapshot {n} L1 table offset {l1_table_offset:#x} is not cluster aligned"
            )));
        }
        let var_len = u64::from(extra_len) + id_len + name_len;
        let mut var = vec![0u8; var_len as usize];
        st.read_exact_at(&mut var, at + 40)
            .ctx(|| format!("reading snapshot {n} at offset {at:#x}"))?;
        let extra = &var[..extra_len as usize];
        let mut vm_state = u64::from(vm_state_size);
        if extra.len() >= 8 {
            vm_state = be64(extra, 0);
        }
        let disk_size = (extra.len() >= 16).then(|| be64(extra, 8));
        let id_at = extra_len as usize;
        let id = String::from_utf8_lossy(&var[id_at..id_at + id_len as usize]).into_owned();
        let name = String::from_utf8_lossy(&var[id_at + id_len as usize..]).into_owned();
        let entry_len = (40 + var_len).div_ceil(8) * 8;
        out.push(Snapshot {
            l1_table_offset,
            l1_size,
            info: SnapshotInfo {
                id,
                name,
                vm_state_size: vm_state,
                date_sec: u64::from(date_sec),
                disk_size,
            },
            entry_len,
        });
        at += entry_len;
        if at - offset > MAX_TABLE_BYTES {
            return Err(Error::limit("snapshot table is above the 64 MiB limit"));
        }
    }
    Ok(out)
}
