//! Refcounts: reading and writing entries of every width (1..64 bits), creating refcount
//! blocks and relocating the refcount table as the file grows, and the cluster allocator.
//!
//! Allocation is done from *reservations*: a batch of clusters gets its refcount written and
//! synced before any table may point at one of them, so a crash (or power loss) can only
//! leak. Reservations not used are handed back on `flush`/close. Compressed data is packed
//! into clusters reserved with a refcount high enough for every blob they may hold; the
//! refcount is lowered to the real number of blobs when the cluster is closed.

use std::collections::{HashMap, HashSet, VecDeque};

use super::header::MAX_REFTABLE_BYTES;
use crate::error::{Error, IoContext, Result};
use crate::storage::Storage;

/// Offset bits of a refcount table entry.
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Bytes of refcount blocks kept cached.
const BLOCK_CACHE_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy)]
struct Packing {
    cluster: u64,
    used: u64,
    count: u64,
}

/// The refcount structures of an open image and the allocator state.
#[derive(Debug)]
pub(crate) struct Refcounts {
    pub(crate) table: Vec<u64>,
    pub(crate) table_offset: u64,
    pub(crate) table_clusters: u64,
    /// Host offsets of refcount blocks (for the overlap guard).
    pub(crate) block_set: HashSet<u64>,
    blocks: HashMap<u64, Vec<u8>>,
    order: u32,
    cs: u64,
    /// First cluster index past everything in use: where allocation at the end starts.
    pub(crate) end: u64,
    /// No cluster below this index is free.
    free_hint: u64,
    pool: VecDeque<(u64, u64)>,
    cpool: VecDeque<u64>,
    packing: Option<Packing>,
    chunk: u64,
    /// Lazy refcounts: no syncs, the dirty bit guards consistency.
    pub(crate) lazy: bool,
    depth: u32,
}

fn rc_get(block: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            u64::from(block[i / per] >> ((i % per) * bits)) & ((1 << bits) - 1)
        }
        3 => u64::from(block[i]),
        _ => {
            let w = 1usize << (order - 3);
            block[i * w..i * w + w]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        }
    }
}

fn rc_set(block: &mut [u8], order: u32, i: usize, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (i % per) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            block[i / per] = (block[i / per] & !mask) | (((v as u8) << shift) & mask);
        }
        3 => block[i] = v as u8,
        _ => {
            let w = 1usize << (order - 3);
            let bytes = v.to_be_bytes();
            block[i * w..i * w + w].copy_from_slice(&bytes[8 - w..]);
        }
    }
}

impl Refcounts {
    pub(crate) fn new(
        table: Vec<u64>,
        table_offset: u64,
        table_clusters: u64,
        order: u32,
        cs: u64,
        file_len: u64,
    ) -> Refcounts {
        let block_set = table
            .iter()
            .map(|e| e & REFT_OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        Refcounts {
            table,
            table_offset,
            table_clusters,
            block_set,
            blocks: HashMap::new(),
            order,
            cs,
            end: file_len.div_ceil(cs),
            free_hint: 0,
            pool: VecDeque::new(),
            cpool: VecDeque::new(),
            packing: None,
            chunk: 8,
            lazy: false,
            depth: 0,
        }
    }

    /// Refcount entries per block.
    pub(crate) fn rbe(&self) -> u64 {
        (self.cs * 8) >> self.order
    }

    /// The largest refcount this width holds.
    pub(crate) fn max_value(&self) -> u64 {
        if self.order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << self.order)) - 1
        }
    }

    fn sync(&self, st: &dyn Storage) -> Result<()> {
        if self.lazy {
            return Ok(());
        }
        st.sync().ctx(|| "flushing refcount update".into())
    }

    /// The block offset of table entry `ti` (0 when none), validated.
    pub(crate) fn block_offset(&self, ti: u64) -> Result<u64> {
        let Some(&e) = self.table.get(ti as usize) else {
            return Ok(0);
        };
        let off = e & REFT_OFFSET_MASK;
        if off % self.cs != 0 {
            return Err(Error::corrupt(format!(
                "refcount block offset {off:#x} (table entry {ti}) is not cluster aligned"
            )));
        }
        Ok(off)
    }

    fn load(&mut self, st: &dyn Storage, off: u64) -> Result<&mut Vec<u8>> {
        if !self.blocks.contains_key(&off) {
            if self.blocks.len() as u64 >= (BLOCK_CACHE_BYTES / self.cs).max(8) {
                self.blocks.clear();
            }
            let mut b = vec![0u8; self.cs as usize];
            st.read_exact_at(&mut b, off)
                .ctx(|| format!("reading refcount block at offset {off:#x}"))?;
            self.blocks.insert(off, b);
        }
        self.blocks
            .get_mut(&off)
            .ok_or_else(|| Error::corrupt("refcount block cache"))
    }

    /// The refcount of host cluster `c`.
    pub(crate) fn get(&mut self, st: &dyn Storage, c: u64) -> Result<u64> {
        let rbe = self.rbe();
        let off = self.block_offset(c / rbe)?;
        if off == 0 {
            return Ok(0);
        }
        let order = self.order;
        let b = self.load(st, off)?;
        Ok(rc_get(b, order, (c % rbe) as usize))
    }

    /// Sets the refcount of clusters `start..start+count` to `value`.
    pub(crate) fn set_range(
        &mut self,
        st: &dyn Storage,
        start: u64,
        count: u64,
        value: u64,
    ) -> Result<()> {
        self.update_range(st, start, count, |_, _| Ok(value))
    }

    /// Rewrites the refcounts of `start..start+count` with `f(cluster, old)`, one write per
    /// refcount block touched.
    fn update_range(
        &mut self,
        st: &dyn Storage,
        start: u64,
        count: u64,
        mut f: impl FnMut(u64, u64) -> Result<u64>,
    ) -> Result<()> {
        let rbe = self.rbe();
        let max = self.max_value();
        let order = self.order;
        let mut c = start;
        let end = start + count;
        while c < end {
            let ti = c / rbe;
            let off = self.ensure_block(st, ti)?;
            let first = c % rbe;
            let n = (end - c).min(rbe - first);
            let b = self.load(st, off)?;
            let mut failed = None;
            for i in first..first + n {
                let old = rc_get(b, order, i as usize);
                match f(ti * rbe + i, old) {
                    Ok(v) if v <= max => rc_set(b, order, i as usize, v),
                    Ok(_) => {
                        failed = Some(Error::limit(format!(
                            "refcount of cluster {} would exceed {max}",
                            ti * rbe + i
                        )));
                        break;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                // The cached block no longer matches the disk: drop it.
                self.blocks.remove(&off);
                return Err(e);
            }
            let lo = ((first << order) / 8) as usize;
            let hi = (((first + n) << order).div_ceil(8)) as usize;
            let bytes = b[lo..hi].to_vec();
            st.write_all_at(&bytes, off + lo as u64)
                .ctx(|| format!("writing refcount block at offset {off:#x}"))?;
            c += n;
        }
        Ok(())
    }

    /// Makes sure table entry `ti` has a refcount block, creating one at the end of the file.
    fn ensure_block(&mut self, st: &dyn Storage, ti: u64) -> Result<u64> {
        if ti >= self.table.len() as u64 {
            self.grow_table(st, ti + 1)?;
        }
        let off = self.block_offset(ti)?;
        if off != 0 {
            return Ok(off);
        }
        if self.depth > 8 {
            return Err(Error::corrupt(
                "refcount structure allocation does not converge",
            ));
        }
        self.depth += 1;
        let r = self.new_block(st, ti);
        self.depth -= 1;
        r
    }

    fn new_block(&mut self, st: &dyn Storage, ti: u64) -> Result<u64> {
        let rbe = self.rbe();
        let p = self.end;
        self.end += 1;
        let mut block = vec![0u8; self.cs as usize];
        if p / rbe == ti {
            rc_set(&mut block, self.order, (p % rbe) as usize, 1);
        } else {
            // The block's own refcount lives in another block: count it first.
            self.set_range(st, p, 1, 1)?;
        }
        let off = p * self.cs;
        st.write_all_at(&block, off)
            .ctx(|| format!("writing refcount block at offset {off:#x}"))?;
        self.sync(st)?;
        self.table[ti as usize] = off;
        self.block_set.insert(off);
        self.blocks.insert(off, block);
        let at = self.table_offset + ti * 8;
        st.write_all_at(&off.to_be_bytes(), at)
            .ctx(|| format!("writing refcount table entry at offset {at:#x}"))?;
        Ok(off)
    }

    /// Moves the refcount table to a bigger one at the end of the file.
    fn grow_table(&mut self, st: &dyn Storage, min_entries: u64) -> Result<()> {
        if self.depth > 8 {
            return Err(Error::corrupt("refcount table growth does not converge"));
        }
        let per_cluster = self.cs / 8;
        let rbe = self.rbe();
        let start = self.end;
        let mut entries = min_entries.max(self.table.len() as u64 * 2);
        let mut clusters;
        loop {
            clusters = entries.div_ceil(per_cluster);
            // Room for the table itself and the blocks that count it.
            let need = (start + 2 * clusters + 8).div_ceil(rbe) + 1;
            if need <= entries {
                break;
            }
            entries = need;
        }
        if clusters * self.cs > MAX_REFTABLE_BYTES {
            return Err(Error::limit(format!(
                "refcount table would grow beyond {MAX_REFTABLE_BYTES} bytes"
            )));
        }
        self.depth += 1;
        let old = (self.table_offset, self.table_clusters);
        self.end += clusters;
        self.table.resize((clusters * per_cluster) as usize, 0);
        self.table_offset = start * self.cs;
        self.table_clusters = clusters;
        let r = self.set_range(st, start, clusters, 1);
        self.depth -= 1;
        r?;
        let mut raw = Vec::with_capacity(self.table.len() * 8);
        for e in &self.table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        st.write_all_at(&raw, self.table_offset)
            .ctx(|| "writing the new refcount table".into())?;
        self.sync(st)?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&self.table_offset.to_be_bytes());
        hdr[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        st.write_all_at(&hdr, 48)
            .ctx(|| "writing the refcount table location".into())?;
        self.sync(st)?;
        self.set_range(st, old.0 / self.cs, old.1, 0)?;
        self.free_hint = self.free_hint.min(old.0 / self.cs);
        Ok(())
    }

    /// Reserves `want` clusters with refcount `value` (synced), reusing free clusters first.
    fn reserve(&mut self, st: &dyn Storage, want: u64, value: u64) -> Result<Vec<(u64, u64)>> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut got = 0;
        let mut c = self.free_hint;
        while got < want && c < self.end {
            if self.get(st, c)? == 0 {
                match runs.last_mut() {
                    Some((s, n)) if *s + *n == c => *n += 1,
                    _ => runs.push((c, 1)),
                }
                got += 1;
            }
            c += 1;
        }
        self.free_hint = c;
        if got < want {
            let rest = want - got;
            // Create the refcount blocks (and table room) for the new range first, so they
            // land before it and an unused tail can be handed back without leaving a hole.
            let rbe = self.rbe();
            let mut guard = 0;
            loop {
                let s = self.end;
                let mut grew = false;
                for ti in s / rbe..=(s + rest - 1) / rbe {
                    if ti >= self.table.len() as u64 || self.block_offset(ti)? == 0 {
                        self.ensure_block(st, ti)?;
                        grew = true;
                    }
                }
                guard += 1;
                if !grew || guard > 16 {
                    break;
                }
            }
            let s = self.end;
            self.end += rest;
            match runs.last_mut() {
                Some((s0, n)) if *s0 + *n == s => *n += rest,
                _ => runs.push((s, rest)),
            }
        }
        for &(s, n) in &runs {
            self.set_range(st, s, n, value)?;
        }
        self.sync(st)?;
        Ok(runs)
    }

    /// Allocates `n` clusters (refcount 1, durable), as few contiguous runs as possible.
    pub(crate) fn alloc(&mut self, st: &dyn Storage, n: u64) -> Result<Vec<(u64, u64)>> {
        let have: u64 = self.pool.iter().map(|r| r.1).sum();
        if have < n {
            let cap = ((256 << 20) / self.cs).max(16);
            let want = (n - have).max(self.chunk);
            self.chunk = (self.chunk * 2).min(cap);
            let runs = self.reserve(st, want, 1)?;
            self.pool.extend(runs);
        }
        let out = self.take_reserved(n);
        if out.iter().map(|r| r.1).sum::<u64>() < n {
            return Err(Error::corrupt("cluster reservation ran dry"));
        }
        Ok(out)
    }

    /// Takes up to `n` clusters from the front of the plain reservation, as few contiguous
    /// runs as possible; fewer when the reservation holds fewer.
    fn take_reserved(&mut self, n: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut left = n;
        while left > 0 {
            let Some((s, len)) = self.pool.pop_front() else {
                break;
            };
            let take = len.min(left);
            if take < len {
                self.pool.push_front((s + take, len - take));
            }
            match out.last_mut() {
                Some((s0, n0)) if *s0 + *n0 == s => *n0 += take,
                _ => out.push((s, take)),
            }
            left -= take;
        }
        out
    }

    /// Allocates one cluster and returns its host offset.
    pub(crate) fn alloc_one(&mut self, st: &dyn Storage) -> Result<u64> {
        Ok(self.alloc(st, 1)?[0].0 * self.cs)
    }

    /// Drops one reference to each of clusters `start..start+count`; freed clusters get their
    /// space punched out.
    pub(crate) fn free(&mut self, st: &dyn Storage, start: u64, count: u64) -> Result<()> {
        let mut c = start;
        let end = start + count;
        while c < end {
            if let Some(p) = self.packing.as_mut() {
                if p.cluster == c {
                    p.count = p.count.saturating_sub(1);
                    c += 1;
                    continue;
                }
            }
            // Up to the packing cluster, if it lies inside the range.
            let stop = match self.packing {
                Some(p) if p.cluster > c && p.cluster < end => p.cluster,
                _ => end,
            };
            let cs = self.cs;
            if self.block_offset(c / self.rbe())? == 0 {
                return Err(Error::corrupt(format!(
                    "refcount of cluster at offset {:#x} is already 0",
                    c * cs
                )));
            }
            let stop = stop.min((c / self.rbe() + 1) * self.rbe());
            let mut freed = Vec::new();
            self.update_range(st, c, stop - c, |cl, old| {
                if old == 0 {
                    return Err(Error::corrupt(format!(
                        "refcount of cluster at offset {:#x} would drop below zero",
                        cl * cs
                    )));
                }
                if old == 1 {
                    freed.push(cl);
                }
                Ok(old - 1)
            })?;
            for cl in freed {
                let _ = st.punch_hole(cl * self.cs, self.cs);
                self.free_hint = self.free_hint.min(cl);
            }
            c = stop;
        }
        Ok(())
    }

    /// Finds room for `len` bytes of compressed data (< one cluster) and counts the reference.
    pub(crate) fn alloc_compressed(&mut self, st: &dyn Storage, len: u64) -> Result<u64> {
        let limit = self.max_value().min((self.cs / 64).max(1));
        if let Some(p) = self.packing.as_mut() {
            if p.used + len <= self.cs && p.count < limit {
                let off = p.cluster * self.cs + p.used;
                p.used += len;
                p.count += 1;
                return Ok(off);
            }
            // Spill into the next reserved cluster when it follows this one in the file, as
            // qemu does: no space is wasted at the end of each host cluster. The spanning
            // entry counts as a reference in both clusters (both are reserved, so their
            // on-disk refcounts already cover it).
            let next = p.cluster + 1;
            if p.used < self.cs
                && p.count < limit
                && len <= self.cs
                && self.cpool.front() == Some(&next)
            {
                let off = p.cluster * self.cs + p.used;
                let spill = p.used + len - self.cs;
                p.count += 1;
                self.close_packing(st)?;
                self.cpool.pop_front();
                self.packing = Some(Packing {
                    cluster: next,
                    used: spill,
                    count: 1,
                });
                return Ok(off);
            }
        }
        self.close_packing(st)?;
        if self.cpool.is_empty() {
            let want = self.chunk.min(8);
            // Clusters already reserved for plain data come first: taking fresh ones at the
            // end of the file while a plain reservation stayed unused below them left that
            // reservation as a hole inside the file (a compressed conversion of mixed data
            // came out 23% longer than the bytes it allocated). Their refcount is raised to
            // the packing limit and synced before anything points at them, as `reserve` does.
            let taken = self.take_reserved(want);
            for &(s, n) in &taken {
                self.set_range(st, s, n, limit)?;
                self.cpool.extend(s..s + n);
            }
            if !taken.is_empty() {
                self.sync(st)?;
            } else {
                for (s, n) in self.reserve(st, want, limit)? {
                    self.cpool.extend(s..s + n);
                }
            }
        }
        let cluster = self
            .cpool
            .pop_front()
            .ok_or_else(|| Error::corrupt("compressed cluster reservation ran dry"))?;
        self.packing = Some(Packing {
            cluster,
            used: len,
            count: 1,
        });
        Ok(cluster * self.cs)
    }

    fn close_packing(&mut self, st: &dyn Storage) -> Result<()> {
        if let Some(p) = self.packing.take() {
            self.set_range(st, p.cluster, 1, p.count)?;
            if p.count == 0 {
                self.free_hint = self.free_hint.min(p.cluster);
            }
        }
        Ok(())
    }

    /// Hands back every reservation not used (refcounts lowered to the truth); clusters at
    /// the end of the file are taken off it again.
    pub(crate) fn release(&mut self, st: &dyn Storage) -> Result<()> {
        self.close_packing(st)?;
        let mut runs: Vec<(u64, u64)> = self.pool.drain(..).collect();
        runs.extend(self.cpool.drain(..).map(|c| (c, 1)));
        runs.sort_unstable();
        for &(s, n) in runs.iter().rev() {
            self.set_range(st, s, n, 0)?;
            self.free_hint = self.free_hint.min(s);
            if s + n == self.end {
                self.end = s;
            }
        }
        Ok(())
    }

    /// Forgets cached blocks (after the structure was rebuilt on disk).
    pub(crate) fn replace(&mut self, table: Vec<u64>, offset: u64, clusters: u64, end: u64) {
        self.block_set = table
            .iter()
            .map(|e| e & REFT_OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        self.table = table;
        self.table_offset = offset;
        self.table_clusters = clusters;
        self.blocks.clear();
        self.end = self.end.max(end);
        self.free_hint = 0;
        self.pool.clear();
        self.cpool.clear();
        self.packing = None;
    }

    /// Encodes refcount `values` (index = cluster) into blocks of this width: used by the
    /// rebuild in `check` and by `create`.
    pub(crate) fn encode_block(order: u32, cs: u64, values: &[u64]) -> Vec<u8> {
        let mut b = vec![0u8; cs as usize];
        for (i, &v) in values.iter().enumerate() {
            rc_set(&mut b, order, i, v);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width_round_trip() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut b = vec![0u8; 512];
            let n = 512 * 8 / bits as usize;
            for i in 0..n {
                rc_set(&mut b, order, i, (i as u64 * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    rc_get(&b, order, i),
                    (i as u64 * 7) & max,
                    "order {order} i {i}"
                );
            }
        }
        // Sub-byte widths are packed from the least significant bit, as qemu does.
        let mut b = vec![0u8; 1];
        rc_set(&mut b, 0, 0, 1);
        assert_eq!(b[0], 1);
        rc_set(&mut b, 1, 1, 3);
        assert_eq!(b[0], 0b1101);
    }
}
