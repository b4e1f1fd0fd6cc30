//! The VHDX metadata log: finding the active sequence, turning it into a replay plan, applying
//! the plan to a writable file or overlaying it in memory for a read-only open, and writing
//! log entries.
//!
//! The log is a circular buffer of 4 KiB sectors. An entry is a 64-byte header followed by
//! 32-byte descriptors (126 in the first sector, 128 in each further descriptor sector), then
//! one data sector per data descriptor. A CRC-32C covers the whole entry. The active sequence
//! is the run of valid entries with consecutive sequence numbers whose head has the highest
//! sequence number; replay goes from the entry the head's `tail` names up to the head.

use std::collections::BTreeMap;
use std::io;

use uuid::Uuid;

use super::format::{checksum, MAX_TABLE_BYTES};
use super::format::{guid_at, le32, le64, put32, put64, put_guid, seal, Header, MAX_FILE_OFFSET};
use crate::error::{Error, IoContext, Result};
use crate::storage::Storage;

const SECTOR: u64 = 4096;
const ENTRY_HEADER_DESCRIPTORS: usize = 126;
const SECTOR_DESCRIPTORS: usize = 128;

/// One update recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LogOp {
    /// Write these 4 KiB at this file offset.
    Data(u64, Vec<u8>),
    /// Zero this many bytes at this file offset.
    Zero(u64, u64),
}

/// What replaying the active log sequence does to the file.
#[derive(Debug, Clone, Default)]
pub(super) struct ReplayPlan {
    /// The updates, oldest first.
    pub ops: Vec<LogOp>,
    /// The file must be at least this long after replay.
    pub last_file_offset: u64,
    /// Entries in the active sequence.
    pub entries: usize,
}

struct Entry {
    at: u64,
    len: u64,
    seq: u64,
    tail: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    ops: Vec<LogOp>,
}

/// Reads the log the header names and returns what replay must do (an empty plan when no
/// valid entry exists). `file_len` is the current file size.
pub(super) fn read_log(
    storage: &dyn Storage,
    header: &Header,
    file_len: u64,
) -> Result<ReplayPlan> {
    let log_len = u64::from(header.log_length);
    if log_len > MAX_TABLE_BYTES {
        return Err(Error::limit(format!(
            "log length {log_len} exceeds the {} MiB metadata limit",
            MAX_TABLE_BYTES >> 20
        )));
    }
    if header.log_end() > file_len {
        return Err(Error::corrupt(format!(
            "log at 0x{:x} length {log_len} lies past the end of the file ({file_len} bytes): \
             file is truncated",
            header.log_offset
        )));
    }
    let mut log = vec![0u8; log_len as usize];
    storage
        .read_exact_at(&mut log, header.log_offset)
        .ctx(|| format!("reading log at 0x{:x}", header.log_offset))?;
    let sectors = log_len / SECTOR;
    let mut covered = vec![false; sectors as usize];
    let mut best: Option<Vec<Entry>> = None;
    for s in 0..sectors {
        if covered[s as usize] {
            continue;
        }
        let Some(first) = parse_entry(&log, s * SECTOR, header.log_guid, header) else {
            continue;
        };
        // Follow the sequence; each entry covers fresh sectors, so this ends within
        // `sectors` steps.
        let mut seq = vec![first];
        let mut used = 0u64;
        loop {
            let last = &seq[seq.len() - 1];
            used += last.len / SECTOR;
            for k in 0..last.len / SECTOR {
                covered[((last.at / SECTOR + k) % sectors) as usize] = true;
            }
            if used >= sectors {
                break;
            }
            let next_at = (last.at + last.len) % log_len;
            match parse_entry(&log, next_at, header.log_guid, header) {
                Some(e) if Some(e.seq) == last.seq.checked_add(1) => seq.push(e),
                _ => break,
            }
        }
        let head_seq = seq[seq.len() - 1].seq;
        if best
            .as_ref()
            .is_none_or(|b: &Vec<Entry>| b[b.len() - 1].seq < head_seq)
        {
            best = Some(seq);
        }
    }
    let Some(seq) = best else {
        return Ok(ReplayPlan::default());
    };
    let head = &seq[seq.len() - 1];
    let Some(start) = seq.iter().position(|e| e.at == head.tail) else {
        return Err(Error::corrupt(format!(
            "log head entry {} names tail 0x{:x}, which is not in its sequence",
            head.seq, head.tail
        )));
    };
    if head.flushed_file_offset > file_len {
        return Err(Error::corrupt(format!(
            "log expects a file of at least {} bytes but it has {file_len}: file is truncated",
            head.flushed_file_offset
        )));
    }
    let mut plan = ReplayPlan {
        last_file_offset: head.last_file_offset,
        entries: seq.len() - start,
        ops: Vec::new(),
    };
    for e in seq.into_iter().skip(start) {
        plan.ops.extend(e.ops);
    }
    Ok(plan)
}

fn sector_at(log: &[u8], at: u64, k: u64) -> &[u8] {
    let s = ((at + k * SECTOR) % log.len() as u64) as usize;
    &log[s..s + SECTOR as usize]
}

/// Parses and fully validates the entry at `at`; `None` when it is not a valid entry.
fn parse_entry(log: &[u8], at: u64, guid: Uuid, header: &Header) -> Option<Entry> {
    let log_len = log.len() as u64;
    let first = sector_at(log, at, 0);
    if &first[..4] != b"loge" {
        return None;
    }
    let len = u64::from(le32(first, 8));
    let tail = u64::from(le32(first, 12));
    let seq = le64(first, 16);
    let count = le32(first, 24) as usize;
    if len == 0 || len % SECTOR != 0 || len > log_len || tail % SECTOR != 0 || tail >= log_len {
        return None;
    }
    if seq == 0 || guid_at(first, 32) != guid {
        return None;
    }
    let flushed = le64(first, 48);
    let last = le64(first, 56);
    if flushed > MAX_FILE_OFFSET || last > MAX_FILE_OFFSET {
        return None;
    }
    let desc_sectors = if count <= ENTRY_HEADER_DESCRIPTORS {
        1
    } else {
        1 + (count - ENTRY_HEADER_DESCRIPTORS).div_ceil(SECTOR_DESCRIPTORS) as u64
    };
    if desc_sectors > len / SECTOR {
        return None;
    }
    // Checksum over the whole entry, gathered across the wrap.
    let mut bytes = Vec::with_capacity(len as usize);
    for k in 0..len / SECTOR {
        bytes.extend_from_slice(sector_at(log, at, k));
    }
    if le32(&bytes, 4) != checksum(&bytes, 4) {
        return None;
    }
    let mut ops = Vec::with_capacity(count);
    let mut data_sector = desc_sectors;
    for i in 0..count {
        let pos = if i < ENTRY_HEADER_DESCRIPTORS {
            64 + i * 32
        } else {
            let j = i - ENTRY_HEADER_DESCRIPTORS;
            (1 + j / SECTOR_DESCRIPTORS) * SECTOR as usize + (j % SECTOR_DESCRIPTORS) * 32
        };
        let d = &bytes[pos..pos + 32];
        if le64(d, 24) != seq {
            return None;
        }
        let file_offset = le64(d, 16);
        match &d[..4] {
            b"zero" => {
                let zero_len = le64(d, 8);
                if !target_ok(file_offset, zero_len, header) {
                    return None;
                }
                ops.push(LogOp::Zero(file_offset, zero_len));
            }
            b"desc" => {
                if data_sector >= len / SECTOR || !target_ok(file_offset, SECTOR, header) {
                    return None;
                }
                let s =
                    &bytes[(data_sector * SECTOR) as usize..((data_sector + 1) * SECTOR) as usize];
                if &s[..4] != b"data"
                    || le32(s, 4) != (seq >> 32) as u32
                    || le32(s, 4092) != seq as u32
                {
                    return None;
                }
                let mut sector = Vec::with_capacity(SECTOR as usize);
                sector.extend_from_slice(&d[8..16]);
                sector.extend_from_slice(&s[8..4092]);
                sector.extend_from_slice(&d[4..8]);
                ops.push(LogOp::Data(file_offset, sector));
                data_sector += 1;
            }
            _ => return None,
        }
    }
    Some(Entry {
        at,
        len,
        seq,
        tail,
        flushed_file_offset: flushed,
        last_file_offset: last,
        ops,
    })
}

/// A logged update may not touch the file identifier, the headers or the log itself.
fn target_ok(offset: u64, len: u64, header: &Header) -> bool {
    let Some(end) = offset.checked_add(len) else {
        return false;
    };
    offset % SECTOR == 0
        && len % SECTOR == 0
        && offset >= 192 * 1024
        && end <= MAX_FILE_OFFSET
        && (end <= header.log_offset || offset >= header.log_end())
}

/// Applies `plan` to writable storage (the caller syncs and rewrites the headers after).
pub(super) fn apply(storage: &dyn Storage, plan: &ReplayPlan) -> Result<()> {
    for op in &plan.ops {
        match op {
            LogOp::Data(at, data) => storage
                .write_all_at(data, *at)
                .ctx(|| format!("replaying log data to 0x{at:x}"))?,
            LogOp::Zero(at, len) => {
                let file_len = storage.len().ctx(|| "reading file size".into())?;
                let end = (*at + *len).min(file_len);
                if end > *at {
                    storage
                        .punch_hole(*at, end - *at)
                        .ctx(|| format!("replaying log zeroes to 0x{at:x}"))?;
                }
            }
        }
    }
    let file_len = storage.len().ctx(|| "reading file size".into())?;
    if plan.last_file_offset > file_len {
        storage
            .set_len(plan.last_file_offset)
            .ctx(|| "extending file after log replay".into())?;
    }
    Ok(())
}

/// Read-only storage that shows the file as it will be after log replay, without writing.
#[derive(Debug)]
pub(super) struct ReplayedStorage {
    inner: Box<dyn Storage>,
    zeros: Vec<(u64, u64)>,
    sectors: BTreeMap<u64, Vec<u8>>,
    len: u64,
}

impl ReplayedStorage {
    /// Overlays `plan` over `inner`.
    pub fn new(inner: Box<dyn Storage>, plan: &ReplayPlan) -> io::Result<Self> {
        let mut zeros = Vec::new();
        let mut sectors = BTreeMap::new();
        for op in &plan.ops {
            match op {
                LogOp::Data(at, data) => {
                    sectors.insert(*at, data.clone());
                }
                LogOp::Zero(at, len) => {
                    let stale: Vec<u64> = sectors.range(*at..*at + *len).map(|(k, _)| *k).collect();
                    for k in stale {
                        sectors.remove(&k);
                    }
                    zeros.push((*at, *len));
                }
            }
        }
        let len = inner.len()?.max(plan.last_file_offset);
        Ok(ReplayedStorage {
            inner,
            zeros,
            sectors,
            len,
        })
    }
}

impl Storage for ReplayedStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        let buf = &mut buf[..n];
        self.inner.read_zero_padded(buf, offset)?;
        let end = offset + n as u64;
        for &(at, len) in &self.zeros {
            let (s, e) = (at.max(offset), (at + len).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize].fill(0);
            }
        }
        let first = offset.saturating_sub(SECTOR - 1);
        for (&at, data) in self.sectors.range(first..end) {
            let (s, e) = (at.max(offset), (at + SECTOR).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&data[(s - at) as usize..(e - at) as usize]);
            }
        }
        Ok(n)
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "opened read-only",
        ))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "opened read-only",
        ))
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        true
    }

    fn path(&self) -> Option<&std::path::Path> {
        self.inner.path()
    }
}

/// What one log entry records, for [`write_entry`].
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct NewEntry<'a> {
    /// Sequence number (non-zero).
    pub seq: u64,
    /// Offset of this entry within the log.
    pub at: u64,
    /// Offset within the log of the oldest entry still needed.
    pub tail: u64,
    /// 4 KiB sector writes: (file offset, data).
    pub data: &'a [(u64, &'a [u8])],
    /// Zeroed ranges: (file offset, length).
    pub zeros: &'a [(u64, u64)],
    /// File size known to be durable.
    pub flushed_file_offset: u64,
    /// File size after the entry is applied.
    pub last_file_offset: u64,
}

/// Writes one log entry into the log that `header` names and returns its length.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) fn write_entry(storage: &dyn Storage, header: &Header, e: &NewEntry<'_>) -> Result<u64> {
    let count = e.data.len() + e.zeros.len();
    let desc_sectors = if count <= ENTRY_HEADER_DESCRIPTORS {
        1
    } else {
        1 + (count - ENTRY_HEADER_DESCRIPTORS).div_ceil(SECTOR_DESCRIPTORS)
    };
    let len = (desc_sectors + e.data.len()) * SECTOR as usize;
    let log_len = u64::from(header.log_length);
    if len as u64 > log_len || e.at % SECTOR != 0 || e.at >= log_len {
        return Err(Error::invalid(format!(
            "log entry of {len} bytes at 0x{:x} does not fit the {log_len}-byte log",
            e.at
        )));
    }
    let mut b = vec![0u8; len];
    b[..4].copy_from_slice(b"loge");
    put32(&mut b, 8, len as u32);
    put32(&mut b, 12, e.tail as u32);
    put64(&mut b, 16, e.seq);
    put32(&mut b, 24, count as u32);
    put_guid(&mut b, 32, header.log_guid);
    put64(&mut b, 48, e.flushed_file_offset);
    put64(&mut b, 56, e.last_file_offset);
    let desc_pos = |i: usize| {
        if i < ENTRY_HEADER_DESCRIPTORS {
            64 + i * 32
        } else {
            let j = i - ENTRY_HEADER_DESCRIPTORS;
            (1 + j / SECTOR_DESCRIPTORS) * SECTOR as usize + (j % SECTOR_DESCRIPTORS) * 32
        }
    };
    for (i, &(at, zlen)) in e.zeros.iter().enumerate() {
        let p = desc_pos(i);
        b[p..p + 4].copy_from_slice(b"zero");
        put64(&mut b, p + 8, zlen);
        put64(&mut b, p + 16, at);
        put64(&mut b, p + 24, e.seq);
    }
    for (k, &(at, data)) in e.data.iter().enumerate() {
        if data.len() != SECTOR as usize {
            return Err(Error::invalid("log data writes must be 4 KiB"));
        }
        let p = desc_pos(e.zeros.len() + k);
        b[p..p + 4].copy_from_slice(b"desc");
        b[p + 4..p + 8].copy_from_slice(&data[4092..]);
        b[p + 8..p + 16].copy_from_slice(&data[..8]);
        put64(&mut b, p + 16, at);
        put64(&mut b, p + 24, e.seq);
        let s = (desc_sectors + k) * SECTOR as usize;
        b[s..s + 4].copy_from_slice(b"data");
        put32(&mut b, s + 4, (e.seq >> 32) as u32);
        b[s + 8..s + 4092].copy_from_slice(&data[8..4092]);
        put32(&mut b, s + 4092, e.seq as u32);
    }
    seal(&mut b, 4);
    for (k, sector) in b.chunks(SECTOR as usize).enumerate() {
        let at = header.log_offset + (e.at + k as u64 * SECTOR) % log_len;
        storage
            .write_all_at(sector, at)
            .ctx(|| format!("writing log entry at 0x{at:x}"))?;
    }
    Ok(len as u64)
}
