//! In-memory metadata of an open qcow2 image: geometry, the active L1 table, the L2 cache,
//! entry decoding, and the metadata-overlap guard. Everything here runs under the image's
//! metadata lock; I/O goes through the `Storage` passed in.

use std::collections::{HashMap, HashSet};

use super::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::refcount::Refcounts;
use super::snapshot::Snapshot;
use crate::error::{Error, IoContext, Result};
use crate::storage::Storage;

/// Offset bits of L1 and standard L2 entries.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// "Refcount is exactly one" flag of L1/L2 entries.
pub(crate) const COPIED: u64 = 1 << 63;
/// Compressed-cluster flag of L2 entries.
pub(crate) const COMPRESSED: u64 = 1 << 62;
/// Zero flag of standard L2 entries (v3).
pub(crate) const ZERO: u64 = 1;

/// Bytes of L2 tables kept in the cache.
const L2_CACHE_BYTES: u64 = 8 << 20;

/// Image geometry, fixed at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub(crate) cb: u32,
    pub(crate) cs: u64,
    pub(crate) l2_entries: u64,
    pub(crate) ext: bool,
    pub(crate) rc_order: u32,
}

impl Geo {
    pub(crate) fn from_header(h: &Header) -> Geo {
        Geo {
            cb: h.cluster_bits,
            cs: h.cluster_size(),
            l2_entries: h.l2_entries(),
            ext: h.extended_l2(),
            rc_order: h.refcount_order,
        }
    }

    /// Bits of a compressed descriptor holding the host offset.
    pub(crate) fn csize_shift(&self) -> u32 {
        62 - (self.cb - 8)
    }

    /// Mask of the sector-count field of a compressed descriptor (after shifting).
    pub(crate) fn csize_mask(&self) -> u64 {
        (1 << (self.cb - 8)) - 1
    }

    /// Host byte range (start, len) of a compressed descriptor, sector-rounded as qemu counts.
    pub(crate) fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let shift = self.csize_shift();
        let off = entry & ((1u64 << shift) - 1);
        let nsec = ((entry >> shift) & self.csize_mask()) + 1;
        (off, nsec)
    }

    /// Encodes a compressed descriptor for `len` bytes at host offset `off`.
    pub(crate) fn compressed_entry(&self, off: u64, len: u64) -> u64 {
        let extra = ((off + len - 1) >> 9) - (off >> 9);
        COMPRESSED | (extra << self.csize_shift()) | off
    }

    pub(crate) fn subcluster_size(&self) -> u64 {
        self.cs / 32
    }
}

/// A decoded standard L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Unallocated,
    ZeroPlain,
    ZeroAlloc { host: u64, copied: bool },
    Normal { host: u64, copied: bool },
    Compressed(u64),
}

/// What a run of guest bytes maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunKind {
    Unallocated,
    Zero,
    /// Data at this host offset (for the start of the run).
    Data(u64),
    /// A compressed cluster with this L2 descriptor.
    Compressed(u64),
}

#[derive(Debug)]
struct CachedL2 {
    words: Vec<u64>,
    tick: u64,
}

/// Metadata of an open image.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) geo: Geo,
    pub(crate) header: Header,
    pub(crate) l1: Vec<u64>,
    pub(crate) rc: Refcounts,
    pub(crate) snapshots: Vec<Snapshot>,
    /// Host offsets of the active L2 tables (for the overlap guard).
    pub(crate) l2_set: HashSet<u64>,
    l2_cache: HashMap<u64, CachedL2>,
    tick: u64,
    /// The image was found (or marked) corrupt in this session: writes are refused.
    pub(crate) corrupt: bool,
    pub(crate) has_backing: bool,
}

impl Meta {
    pub(crate) fn new(
        header: Header,
        l1: Vec<u64>,
        rc: Refcounts,
        snapshots: Vec<Snapshot>,
    ) -> Meta {
        let geo = Geo::from_header(&header);
        let l2_set = l1
            .iter()
            .map(|e| e & OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        let has_backing = header.backing_file.is_some();
        let corrupt = header.incompatible & INCOMPAT_CORRUPT != 0;
        Meta {
            geo,
            header,
            l1,
            rc,
            snapshots,
            l2_set,
            l2_cache: HashMap::new(),
            tick: 0,
            corrupt,
            has_backing,
        }
    }

    /// Loads (or finds cached) the L2 table at `off`, validating its offset.
    pub(crate) fn l2(&mut self, st: &dyn Storage, off: u64) -> Result<&mut Vec<u64>> {
        self.tick += 1;
        let tick = self.tick;
        if !self.l2_cache.contains_key(&off) {
            if off % self.geo.cs != 0 {
                return Err(Error::corrupt(format!(
                    "L2 table offset {off:#x} is not cluster aligned"
                )));
            }
            if off == 0 {
                return Err(Error::corrupt("L2 table offset 0 overlaps the header"));
            }
            let mut raw = vec![0u8; self.geo.cs as usize];
            st.read_exact_at(&mut raw, off)
                .ctx(|| format!("reading L2 table at offset {off:#x}"))?;
            let words = raw
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                .collect();
            let cap = (L2_CACHE_BYTES / self.geo.cs).max(16) as usize;
            if self.l2_cache.len() >= cap {
                // Evict the older half (write-through cache: nothing to write back).
                let mut ticks: Vec<u64> = self.l2_cache.values().map(|t| t.tick).collect();
                ticks.sort_unstable();
                let cut = ticks[ticks.len() / 2];
                self.l2_cache.retain(|_, t| t.tick > cut);
            }
            self.l2_cache.insert(off, CachedL2 { words, tick });
        }
        let t = self
            .l2_cache
            .get_mut(&off)
            .ok_or_else(|| Error::corrupt("L2 cache"))?;
        t.tick = tick;
        Ok(&mut t.words)
    }

    /// Puts a table we just wrote into the cache.
    pub(crate) fn l2_insert(&mut self, off: u64, words: Vec<u64>) {
        self.tick += 1;
        self.l2_cache.insert(
            off,
            CachedL2 {
                words,
                tick: self.tick,
            },
        );
    }

    pub(crate) fn l2_forget(&mut self, off: u64) {
        self.l2_cache.remove(&off);
    }

    /// The L2 table offset for guest cluster `gc` (0 when unallocated).
    pub(crate) fn l2_offset_for(&self, gc: u64) -> Result<(u64, u64)> {
        let l1i = gc / self.geo.l2_entries;
        let e = *self
            .l1
            .get(l1i as usize)
            .ok_or_else(|| Error::corrupt(format!("guest cluster {gc} is beyond the L1 table")))?;
        let off = e & OFFSET_MASK;
        if off % self.geo.cs != 0 {
            return Err(Error::corrupt(format!(
                "L1 entry {l1i} holds unaligned L2 table offset {off:#x}"
            )));
        }
        Ok((off, e))
    }

    /// Decodes a standard L2 entry of guest cluster `gc`.
    pub(crate) fn decode(&self, gc: u64, e: u64) -> Result<Entry> {
        if e & COMPRESSED != 0 {
            return Ok(Entry::Compressed(e));
        }
        let host = e & OFFSET_MASK;
        let copied = e & COPIED != 0;
        if host % self.geo.cs != 0 {
            return Err(Error::corrupt(format!(
                "L2 entry of guest offset {:#x} points to unaligned host offset {host:#x}",
                gc << self.geo.cb
            )));
        }
        Ok(match (e & ZERO != 0 && !self.geo.ext, host) {
            (true, 0) => Entry::ZeroPlain,
            (true, h) => Entry::ZeroAlloc { host: h, copied },
            (false, 0) => Entry::Unallocated,
            (false, h) => Entry::Normal { host: h, copied },
        })
    }

    /// The standard L2 entry of guest cluster `gc` (ext L2: the first word).
    pub(crate) fn entry(&mut self, st: &dyn Storage, gc: u64) -> Result<Entry> {
        let (off, _) = self.l2_offset_for(gc)?;
        if off == 0 {
            return Ok(Entry::Unallocated);
        }
        let idx = (gc % self.geo.l2_entries) as usize * if self.geo.ext { 2 } else { 1 };
        let e = self.l2(st, off)?[idx];
        self.decode(gc, e)
    }

    /// Classifies guest offset `pos`: its kind and how many bytes from `pos` keep it (to the
    /// end of the cluster, subcluster run or unallocated L2 range).
    fn classify(&mut self, st: &dyn Storage, pos: u64) -> Result<(RunKind, u64)> {
        let g = self.geo;
        let gc = pos >> g.cb;
        let in_cluster = pos & (g.cs - 1);
        let (off, _) = self.l2_offset_for(gc)?;
        if off == 0 {
            let span = g.l2_entries << g.cb;
            let in_l2 = pos % span;
            return Ok((RunKind::Unallocated, span - in_l2));
        }
        let i = (gc % g.l2_entries) as usize;
        let to_end = g.cs - in_cluster;
        if !g.ext {
            let e = self.l2(st, off)?[i];
            return Ok(match self.decode(gc, e)? {
                Entry::Unallocated => (RunKind::Unallocated, to_end),
                Entry::ZeroPlain | Entry::ZeroAlloc { .. } => (RunKind::Zero, to_end),
                Entry::Normal { host, .. } => (RunKind::Data(host + in_cluster), to_end),
                Entry::Compressed(d) => (RunKind::Compressed(d), to_end),
            });
        }
        let t = self.l2(st, off)?;
        let (e, bitmap) = (t[2 * i], t[2 * i + 1]);
        if e & COMPRESSED != 0 {
            return Ok((RunKind::Compressed(e), to_end));
        }
        let host = e & OFFSET_MASK;
        if host % g.cs != 0 {
            return Err(Error::corrupt(format!(
                "L2 entry of guest offset {:#x} points to unaligned host offset {host:#x}",
                gc << g.cb
            )));
        }
        let alloc = bitmap as u32;
        let zero = (bitmap >> 32) as u32;
        if alloc & zero != 0 {
            return Err(Error::corrupt(format!(
                "subcluster bitmap {bitmap:#x} of guest offset {:#x} marks subclusters both \
                 allocated and zero",
                gc << g.cb
            )));
        }
        if host == 0 && alloc != 0 {
            return Err(Error::corrupt(format!(
                "subcluster bitmap {bitmap:#x} of guest offset {:#x} allocates subclusters of \
                 an unallocated cluster",
                gc << g.cb
            )));
        }
        let sc = g.subcluster_size();
        let first = (in_cluster / sc) as u32;
        let state = |s: u32| (alloc >> s & 1, zero >> s & 1);
        let st0 = state(first);
        let mut last = first;
        while last + 1 < 32 && state(last + 1) == st0 {
            last += 1;
        }
        let len = (u64::from(last) + 1) * sc - in_cluster;
        Ok(match st0 {
            (1, _) => (RunKind::Data(host + in_cluster), len),
            (_, 1) => (RunKind::Zero, len),
            _ => (RunKind::Unallocated, len),
        })
    }

    /// The run at guest offset `pos`, at most `max` bytes (> 0), merging neighbours of the
    /// same kind (and contiguous host offsets for data). Compressed runs stop at the cluster.
    pub(crate) fn run_at(
        &mut self,
        st: &dyn Storage,
        pos: u64,
        max: u64,
    ) -> Result<(RunKind, u64)> {
        let end = pos + max;
        let (kind, first) = self.classify(st, pos)?;
        let mut len = first.min(max);
        if matches!(kind, RunKind::Compressed(_)) {
            return Ok((kind, len));
        }
        while pos + len < end {
            let (k, l) = self.classify(st, pos + len)?;
            let same = match (kind, k) {
                (RunKind::Data(h0), RunKind::Data(h)) => h == h0 + len,
                (RunKind::Zero, RunKind::Zero) => true,
                (RunKind::Unallocated, RunKind::Unallocated) => true,
                _ => false,
            };
            if !same {
                break;
            }
            len = (len + l).min(max);
        }
        Ok((kind, len))
    }

    /// Which metadata structure, if any, the host cluster at `host` belongs to.
    pub(crate) fn metadata_at(&self, host: u64) -> Option<&'static str> {
        let cs = self.geo.cs;
        let c = host & !(cs - 1);
        let within = |start: u64, len: u64| {
            let end = start.saturating_add(len).div_ceil(cs) * cs;
            c >= start & !(cs - 1) && c < end
        };
        if c == 0 {
            return Some("header");
        }
        if self.header.l1_size > 0 && within(self.header.l1_table_offset, self.l1.len() as u64 * 8)
        {
            return Some("active L1 table");
        }
        if within(self.rc.table_offset, self.rc.table_clusters * cs) {
            return Some("refcount table");
        }
        if self.rc.block_set.contains(&c) {
            return Some("refcount block");
        }
        if self.l2_set.contains(&c) {
            return Some("active L2 table");
        }
        if self.header.nb_snapshots > 0
            && within(self.header.snapshots_offset, self.snapshot_table_len())
        {
            return Some("snapshot table");
        }
        if self
            .snapshots
            .iter()
            .any(|s| s.l1_size > 0 && within(s.l1_table_offset, u64::from(s.l1_size) * 8))
        {
            return Some("snapshot L1 table");
        }
        None
    }

    pub(crate) fn snapshot_table_len(&self) -> u64 {
        self.snapshots.iter().map(|s| s.entry_len).sum()
    }

    /// Refuses a guest-data write to host range `[host, host+len)` that hits metadata: marks
    /// the image corrupt (like QEMU) and fails.
    pub(crate) fn guard_data_write(&mut self, st: &dyn Storage, host: u64, len: u64) -> Result<()> {
        let cs = self.geo.cs;
        let mut c = host & !(cs - 1);
        while c < host + len {
            if let Some(what) = self.metadata_at(c) {
                let msg = format!(
                    "data write to host offset {c:#x} would overwrite the {what}; image marked corrupt"
                );
                self.mark_corrupt(st);
                return Err(Error::corrupt(msg));
            }
            c += cs;
        }
        Ok(())
    }

    /// Sets the corrupt bit (v3) and refuses further writes.
    pub(crate) fn mark_corrupt(&mut self, st: &dyn Storage) {
        self.corrupt = true;
        if self.header.version == 3 && !st.is_read_only() {
            self.header.incompatible |= INCOMPAT_CORRUPT;
            let _ = st.write_all_at(&self.header.incompatible.to_be_bytes(), 72);
            let _ = st.sync();
        }
    }

    /// Writes the incompatible-features field.
    pub(crate) fn write_incompatible(&mut self, st: &dyn Storage) -> Result<()> {
        if self.header.version != 3 {
            return Ok(());
        }
        st.write_all_at(&self.header.incompatible.to_be_bytes(), 72)
            .ctx(|| "writing header feature bits".into())
    }

    /// Sets or clears the dirty bit on disk (synced).
    pub(crate) fn set_dirty(&mut self, st: &dyn Storage, dirty: bool) -> Result<()> {
        let was = self.header.incompatible & INCOMPAT_DIRTY != 0;
        if was == dirty || self.header.version != 3 {
            return Ok(());
        }
        if !dirty {
            st.sync()
                .ctx(|| "flushing before clearing the dirty bit".into())?;
        }
        if dirty {
            self.header.incompatible |= INCOMPAT_DIRTY;
        } else {
            self.header.incompatible &= !INCOMPAT_DIRTY;
        }
        self.write_incompatible(st)?;
        st.sync().ctx(|| "flushing the dirty bit".into())
    }

    /// Writes L1 entry `i` (memory and disk).
    pub(crate) fn set_l1(&mut self, st: &dyn Storage, i: u64, e: u64) -> Result<()> {
        let old = self.l1[i as usize] & OFFSET_MASK;
        if old != 0 {
            self.l2_set.remove(&old);
        }
        self.l1[i as usize] = e;
        if e & OFFSET_MASK != 0 {
            self.l2_set.insert(e & OFFSET_MASK);
        }
        let at = self.header.l1_table_offset + i * 8;
        st.write_all_at(&e.to_be_bytes(), at)
            .ctx(|| format!("writing L1 entry {i} at offset {at:#x}"))
    }

    /// Writes standard L2 entries `first..first+n` of table `l2` from the cache to disk.
    pub(crate) fn write_l2_entries(
        &mut self,
        st: &dyn Storage,
        l2: u64,
        first: u64,
        n: u64,
    ) -> Result<()> {
        let t = self.l2(st, l2)?;
        let mut raw = Vec::with_capacity(n as usize * 8);
        for w in &t[first as usize..(first + n) as usize] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        let at = l2 + first * 8;
        st.write_all_at(&raw, at)
            .ctx(|| format!("writing L2 entries at offset {at:#x}"))
    }
}
