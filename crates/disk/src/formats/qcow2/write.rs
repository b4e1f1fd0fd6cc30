//! The write path: in-place writes, cluster allocation with copy-on-write, zeroing and
//! discarding, compressed clusters, L2/L1 growth.
//!
//! Order of every allocating write (see the module doc of `qcow2`): refcounts of the new
//! clusters are durable first (reservations), then the data, then the L2 entry (a new L2
//! table is written and synced before the L1 entry points at it), and last the references
//! dropped from the old clusters. A crash between any two steps leaks at worst.

use super::meta::{Entry, Meta, COPIED, OFFSET_MASK, ZERO};
use super::Qcow2Image;
use crate::error::{Error, IoContext, Result};

/// How whole clusters are zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroMode {
    /// Zero flag, keeping an allocation when the cluster is ours alone (v3).
    KeepAlloc,
    /// Zero flag, dropping the allocation (v3).
    Unmap,
    /// Deallocate: reads then come from the backing file or as zeroes.
    Deallocate,
}

impl Qcow2Image {
    /// Marks the start of a metadata change (sets the dirty bit with lazy refcounts).
    pub(crate) fn begin_change(&self, m: &mut Meta) -> Result<()> {
        self.check_writable(m)?;
        if m.rc.lazy {
            m.set_dirty(self.storage(), true)?;
        }
        Ok(())
    }

    /// Returns the L2 table for guest cluster `gc`, allocating it or copying a shared one.
    pub(crate) fn l2_for_write(&self, m: &mut Meta, gc: u64) -> Result<u64> {
        let st = self.storage();
        let (off, e) = m.l2_offset_for(gc)?;
        if off != 0 && e & COPIED != 0 {
            return Ok(off);
        }
        let new = m.rc.alloc_one(st)?;
        if let Some(what) = m.metadata_at(new) {
            m.mark_corrupt(st);
            return Err(Error::corrupt(format!(
                "new L2 table at {new:#x} would overwrite the {what}; image marked corrupt"
            )));
        }
        let words = if off == 0 {
            vec![0u64; (self.geo.cs / 8) as usize]
        } else {
            m.l2(st, off)?.clone()
        };
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        st.write_all_at(&raw, new)
            .ctx(|| format!("writing L2 table at offset {new:#x}"))?;
        if !m.rc.lazy {
            st.sync().ctx(|| "flushing new L2 table".into())?;
        }
        m.l2_insert(new, words);
        m.set_l1(st, gc / self.geo.l2_entries, new | COPIED)?;
        if off != 0 {
            m.l2_forget(off);
            m.rc.free(st, off / self.geo.cs, 1)?;
        }
        Ok(new)
    }

    /// Drops the reference an old L2 entry held.
    pub(crate) fn free_entry(&self, m: &mut Meta, old: Entry) -> Result<()> {
        if matches!(old, Entry::Unallocated | Entry::ZeroPlain) {
            return Ok(());
        }
        // Wait for unlocked I/O that may still target the cluster.
        let _quiet = self.inflight.write().unwrap_or_else(|e| e.into_inner());
        let st = self.storage();
        let cs = self.geo.cs;
        match old {
            Entry::Normal { host, .. } | Entry::ZeroAlloc { host, .. } => {
                m.rc.free(st, host / cs, 1)
            }
            Entry::Compressed(d) => {
                self.forget_compressed();
                let (off, nsec) = self.geo.compressed_range(d);
                let start = off & !511;
                let first = start / cs;
                let last = (start + nsec * 512 - 1) / cs;
                m.rc.free(st, first, last - first + 1)
            }
            Entry::Unallocated | Entry::ZeroPlain => Ok(()),
        }
    }

    /// Host ranges for a write that touches only clusters we own: `None` when any cluster
    /// needs allocation or copy-on-write.
    fn in_place_plan(
        &self,
        m: &mut Meta,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<(u64, u64, u64)>>> {
        let st = self.storage();
        let cb = self.geo.cb;
        let end = offset + len;
        let mut plan: Vec<(u64, u64, u64)> = Vec::new();
        let mut gc = offset >> cb;
        while gc << cb < end {
            let (_, l1e) = m.l2_offset_for(gc)?;
            if l1e & COPIED == 0 {
                return Ok(None);
            }
            let Entry::Normal { host, copied: true } = m.entry(st, gc)? else {
                return Ok(None);
            };
            let g0 = (gc << cb).max(offset);
            let g1 = ((gc + 1) << cb).min(end);
            let h0 = host + (g0 - (gc << cb));
            match plan.last_mut() {
                Some((pg, ph, pn)) if *pg + *pn == g0 && *ph + *pn == h0 => *pn += g1 - g0,
                _ => plan.push((g0, h0, g1 - g0)),
            }
            gc += 1;
        }
        for &(_, h, n) in &plan {
            m.guard_data_write(st, h, n)?;
        }
        Ok(Some(plan))
    }

    /// Writes guest bytes (range already checked).
    pub(crate) fn write_guest(&self, buf: &[u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut m = self.lock();
        self.check_writable(&m)?;
        if let Some(plan) = self.in_place_plan(&mut m, offset, buf.len() as u64)? {
            let _io = self.inflight.read().unwrap_or_else(|e| e.into_inner());
            drop(m);
            for (g, h, n) in plan {
                let at = (g - offset) as usize;
                self.st
                    .write_all_at(&buf[at..at + n as usize], h)
                    .ctx(|| format!("writing data at host offset {h:#x}"))?;
            }
            return Ok(());
        }
        self.begin_change(&mut m)?;
        self.write_locked(&mut m, buf, offset)
    }

    fn write_locked(&self, m: &mut Meta, buf: &[u8], offset: u64) -> Result<()> {
        let st = self.storage();
        let (cb, cs, l2n) = (self.geo.cb, self.geo.cs, self.geo.l2_entries);
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let gc0 = pos >> cb;
            let l2 = self.l2_for_write(m, gc0)?;
            let last = ((end - 1) >> cb).min(gc0 - gc0 % l2n + l2n - 1);
            let mut gc = gc0;
            while gc <= last {
                let e = m.entry(st, gc)?;
                match e {
                    Entry::Normal { host, copied: true } => {
                        let first = gc;
                        let mut h_end = host + cs;
                        gc += 1;
                        while gc <= last {
                            match m.entry(st, gc)? {
                                Entry::Normal {
                                    host: h,
                                    copied: true,
                                } if h == h_end => {
                                    h_end += cs;
                                    gc += 1;
                                }
                                _ => break,
                            }
                        }
                        let g0 = (first << cb).max(offset);
                        let g1 = (gc << cb).min(end);
                        let h0 = host + (g0 - (first << cb));
                        m.guard_data_write(st, h0, g1 - g0)?;
                        st.write_all_at(&buf[(g0 - offset) as usize..(g1 - offset) as usize], h0)
                            .ctx(|| format!("writing data at host offset {h0:#x}"))?;
                    }
                    Entry::ZeroAlloc { host, copied: true } => {
                        let mut data = vec![0u8; cs as usize];
                        let g0 = (gc << cb).max(offset);
                        let g1 = ((gc + 1) << cb).min(end);
                        data[(g0 - (gc << cb)) as usize..(g1 - (gc << cb)) as usize]
                            .copy_from_slice(&buf[(g0 - offset) as usize..(g1 - offset) as usize]);
                        m.guard_data_write(st, host, cs)?;
                        st.write_all_at(&data, host)
                            .ctx(|| format!("writing data at host offset {host:#x}"))?;
                        let idx = gc % l2n;
                        m.l2(st, l2)?[idx as usize] = host | COPIED;
                        m.write_l2_entries(st, l2, idx, 1)?;
                        gc += 1;
                    }
                    _ => {
                        let first = gc;
                        let mut olds = vec![e];
                        gc += 1;
                        while gc <= last {
                            let e2 = m.entry(st, gc)?;
                            if matches!(
                                e2,
                                Entry::Normal { copied: true, .. }
                                    | Entry::ZeroAlloc { copied: true, .. }
                            ) {
                                break;
                            }
                            olds.push(e2);
                            gc += 1;
                        }
                        self.alloc_and_write(m, buf, offset, first, &olds, l2)?;
                    }
                }
            }
            pos = (last + 1) << cb;
        }
        Ok(())
    }

    /// Allocates new clusters for guest clusters `first..first+olds.len()` (one L2 table),
    /// writes the data (with copy-on-write of partial clusters), points the L2 entries at
    /// them and drops the old references.
    fn alloc_and_write(
        &self,
        m: &mut Meta,
        buf: &[u8],
        offset: u64,
        first: u64,
        olds: &[Entry],
        l2: u64,
    ) -> Result<()> {
        let st = self.storage();
        let (cb, cs, l2n) = (self.geo.cb, self.geo.cs, self.geo.l2_entries);
        let end = offset + buf.len() as u64;
        let runs = m.rc.alloc(st, olds.len() as u64)?;
        let mut k = 0u64;
        for (hs, hn) in runs {
            let host0 = hs * cs;
            let g_lo = (first + k) << cb;
            let g_hi = (first + k + hn) << cb;
            m.guard_data_write(st, host0, hn * cs)?;
            if g_lo >= offset && g_hi <= end {
                st.write_all_at(
                    &buf[(g_lo - offset) as usize..(g_hi - offset) as usize],
                    host0,
                )
                .ctx(|| format!("writing data at host offset {host0:#x}"))?;
            } else {
                let mut data = vec![0u8; (hn * cs) as usize];
                for j in 0..hn {
                    let cg0 = (first + k + j) << cb;
                    if cg0 < offset || cg0 + cs > end {
                        let slot = &mut data[(j * cs) as usize..((j + 1) * cs) as usize];
                        self.cluster_contents(first + k + j, olds[(k + j) as usize], slot)?;
                    }
                }
                let o0 = g_lo.max(offset);
                let o1 = g_hi.min(end);
                data[(o0 - g_lo) as usize..(o1 - g_lo) as usize]
                    .copy_from_slice(&buf[(o0 - offset) as usize..(o1 - offset) as usize]);
                st.write_all_at(&data, host0)
                    .ctx(|| format!("writing data at host offset {host0:#x}"))?;
            }
            let idx0 = (first + k) % l2n;
            let t = m.l2(st, l2)?;
            for j in 0..hn {
                t[(idx0 + j) as usize] = ((hs + j) * cs) | COPIED;
            }
            m.write_l2_entries(st, l2, idx0, hn)?;
            k += hn;
        }
        for &old in olds {
            self.free_entry(m, old)?;
        }
        Ok(())
    }

    /// Zeroes or deallocates whole guest clusters `c0..c1` with `mode`.
    pub(crate) fn zero_clusters(
        &self,
        m: &mut Meta,
        c0: u64,
        c1: u64,
        mode: ZeroMode,
    ) -> Result<()> {
        let st = self.storage();
        let l2n = self.geo.l2_entries;
        let mut gc = c0;
        while gc < c1 {
            let last = c1.min(gc - gc % l2n + l2n);
            let (off, _) = m.l2_offset_for(gc)?;
            // Without a backing file, unallocated already reads as zeroes.
            if off == 0 && (!m.has_backing || mode == ZeroMode::Deallocate) {
                gc = last;
                continue;
            }
            let l2 = self.l2_for_write(m, gc)?;
            let mut olds = Vec::new();
            let mut changed = false;
            for c in gc..last {
                let e = m.entry(st, c)?;
                let new = match (mode, e) {
                    (ZeroMode::Deallocate, _) => 0,
                    (_, Entry::Unallocated) if !m.has_backing => 0,
                    (ZeroMode::KeepAlloc, Entry::Normal { host, copied: true })
                    | (ZeroMode::KeepAlloc, Entry::ZeroAlloc { host, copied: true }) => {
                        host | COPIED | ZERO
                    }
                    _ => ZERO,
                };
                let idx = (c % l2n) as usize;
                let t = m.l2(st, l2)?;
                if t[idx] != new {
                    let keeps = new & OFFSET_MASK != 0;
                    t[idx] = new;
                    changed = true;
                    if !keeps {
                        olds.push(e);
                    }
                }
            }
            if changed {
                m.write_l2_entries(st, l2, gc % l2n, last - gc)?;
            }
            for old in olds {
                self.free_entry(m, old)?;
            }
            gc = last;
        }
        Ok(())
    }

    /// `write_zeroes` and `discard`.
    pub(crate) fn zero_range(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        discard: bool,
    ) -> Result<()> {
        let cs = self.geo.cs;
        let end = offset + len;
        let size = self.size();
        let v2 = self.lock().header.version == 2;
        let has_backing = self.lock().has_backing;
        // Whole clusters: those inside the range (the last one may stop at the disk's end).
        let c0 = offset.div_ceil(cs);
        let c1 = if end == size {
            end.div_ceil(cs)
        } else {
            end / cs
        };
        let zero_data = !discard && v2 && has_backing;
        if (discard || !zero_data) && c0 < c1 {
            let mode = if discard || (v2 && !has_backing) {
                ZeroMode::Deallocate
            } else if unmap {
                ZeroMode::Unmap
            } else {
                ZeroMode::KeepAlloc
            };
            let mut m = self.lock();
            self.begin_change(&mut m)?;
            self.zero_clusters(&mut m, c0, c1, mode)?;
        }
        // Partial clusters, or everything for v2 with a backing file: write zeroes. Discard
        // too: the trait promises a discarded range never reads as its old data.
        let mut pieces = Vec::new();
        if zero_data || c0 >= c1 {
            pieces.push((offset, end));
        } else {
            if offset < c0 * cs {
                pieces.push((offset, (c0 * cs).min(end)));
            }
            if c1 * cs < end {
                pieces.push(((c1 * cs).max(offset), end));
            }
        }
        let zero = vec![0u8; (len.min(1 << 20)) as usize];
        for (mut at, stop) in pieces {
            while at < stop {
                let n = (stop - at).min(zero.len() as u64);
                self.write_guest(&zero[..n as usize], at)?;
                at += n;
            }
        }
        Ok(())
    }

    /// Stores one compressed cluster.
    pub(crate) fn write_compressed_cluster(
        &self,
        offset: u64,
        raw: &[u8],
        compressed: &[u8],
    ) -> Result<()> {
        let cs = self.geo.cs;
        if offset % cs != 0 || raw.len() as u64 > cs {
            return Err(Error::invalid(format!(
                "compressed write at offset {offset} length {} is not one aligned cluster",
                raw.len()
            )));
        }
        crate::image::check_range(offset, raw.len() as u64, self.size())?;
        if compressed.is_empty() || compressed.len() as u64 >= cs {
            return self.write_guest(raw, offset);
        }
        let st = self.storage();
        let mut m = self.lock();
        self.begin_change(&mut m)?;
        let gc = offset / cs;
        let l2 = self.l2_for_write(&mut m, gc)?;
        let old = m.entry(st, gc)?;
        let len = compressed.len() as u64;
        let host = m.rc.alloc_compressed(st, len)?;
        m.guard_data_write(st, host, len)?;
        st.write_all_at(compressed, host)
            .ctx(|| format!("writing compressed data at host offset {host:#x}"))?;
        let idx = gc % self.geo.l2_entries;
        m.l2(st, l2)?[idx as usize] = self.geo.compressed_entry(host, len);
        m.write_l2_entries(st, l2, idx, 1)?;
        self.free_entry(&mut m, old)
    }

    /// Stores a batch of clusters as compressed clusters: every unit's bytes are allocated
    /// first, the data goes out in one write per run of contiguous host bytes, then the L2
    /// entries in one write per run of neighbouring entries. Units that compression does not
    /// shrink are stored as normal clusters. Same ordering as the single-unit path: data
    /// before the entries that point at it, on reserved (already counted) clusters.
    pub(crate) fn write_compressed_clusters(&self, units: &[(u64, &[u8], &[u8])]) -> Result<()> {
        let cs = self.geo.cs;
        let mut packed: Vec<(u64, &[u8])> = Vec::with_capacity(units.len());
        for &(offset, raw, compressed) in units {
            if offset % cs != 0 || raw.len() as u64 > cs {
                return Err(Error::invalid(format!(
                    "compressed write at offset {offset} length {} is not one aligned cluster",
                    raw.len()
                )));
            }
            crate::image::check_range(offset, raw.len() as u64, self.size())?;
            if compressed.is_empty() || compressed.len() as u64 >= cs {
                self.write_guest(raw, offset)?;
            } else {
                packed.push((offset / cs, compressed));
            }
        }
        if packed.is_empty() {
            return Ok(());
        }
        let st = self.storage();
        let mut m = self.lock();
        self.begin_change(&mut m)?;
        let mut placed: Vec<(u64, u64, u64)> = Vec::with_capacity(packed.len());
        for &(gc, data) in &packed {
            let len = data.len() as u64;
            let host = m.rc.alloc_compressed(st, len)?;
            m.guard_data_write(st, host, len)?;
            placed.push((gc, host, len));
        }
        let mut i = 0;
        while i < placed.len() {
            let mut j = i + 1;
            while j < placed.len() && placed[j - 1].1 + placed[j - 1].2 == placed[j].1 {
                j += 1;
            }
            let at = placed[i].1;
            if j == i + 1 {
                st.write_all_at(packed[i].1, at)
            } else {
                let mut run = Vec::with_capacity(packed[i..j].iter().map(|(_, d)| d.len()).sum());
                for (_, d) in &packed[i..j] {
                    run.extend_from_slice(d);
                }
                st.write_all_at(&run, at)
            }
            .ctx(|| format!("writing compressed data at host offset {at:#x}"))?;
            i = j;
        }
        let per_l2 = self.geo.l2_entries;
        let mut k = 0;
        while k < placed.len() {
            let (gc, _, _) = placed[k];
            let l2 = self.l2_for_write(&mut m, gc)?;
            let first = gc % per_l2;
            let mut olds = Vec::new();
            let mut n = 0;
            while k + n < placed.len() {
                let (g, host, len) = placed[k + n];
                if g != gc + n as u64 || g / per_l2 != gc / per_l2 {
                    break;
                }
                olds.push(m.entry(st, g)?);
                m.l2(st, l2)?[(g % per_l2) as usize] = self.geo.compressed_entry(host, len);
                n += 1;
            }
            m.write_l2_entries(st, l2, first, n as u64)?;
            for old in olds {
                self.free_entry(&mut m, old)?;
            }
            k += n;
        }
        Ok(())
    }

    /// Grows the L1 table to `need` entries (new table at the end of the file).
    fn grow_l1(&self, m: &mut Meta, need: u64) -> Result<()> {
        let st = self.storage();
        let cs = self.geo.cs;
        if need * 8 > super::header::MAX_L1_BYTES {
            return Err(Error::limit(format!(
                "L1 table of {need} entries would be above the 32 MiB limit"
            )));
        }
        let clusters = (need * 8).div_ceil(cs);
        let runs = m.rc.alloc(st, clusters)?;
        let start = if runs.len() == 1 {
            runs[0].0
        } else {
            // Not contiguous: give them back and take fresh clusters at the end.
            for (s, n) in runs {
                m.rc.set_range(st, s, n, 0)?;
            }
            let s = m.rc.end;
            m.rc.end += clusters;
            m.rc.set_range(st, s, clusters, 1)?;
            if !m.rc.lazy {
                st.sync().ctx(|| "flushing refcounts".into())?;
            }
            s
        };
        let new_off = start * cs;
        let mut l1 = m.l1.clone();
        l1.resize(need as usize, 0);
        let mut raw: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        raw.resize((clusters * cs) as usize, 0);
        st.write_all_at(&raw, new_off)
            .ctx(|| format!("writing L1 table at offset {new_off:#x}"))?;
        st.sync().ctx(|| "flushing new L1 table".into())?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&(need as u32).to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        st.write_all_at(&hdr, 36)
            .ctx(|| "writing L1 table location".into())?;
        st.sync().ctx(|| "flushing header".into())?;
        let old_off = m.header.l1_table_offset;
        let old_clusters = (u64::from(m.header.l1_size) * 8).div_ceil(cs);
        m.header.l1_size = need as u32;
        m.header.l1_table_offset = new_off;
        m.l1 = l1;
        if old_clusters > 0 && old_off != 0 {
            m.rc.free(st, old_off / cs, old_clusters)?;
        }
        Ok(())
    }

    /// Changes the virtual size.
    pub(crate) fn resize_to(&self, new_size: u64) -> Result<()> {
        if new_size % 512 != 0 {
            return Err(Error::invalid(format!(
                "new size {new_size} is not a multiple of 512"
            )));
        }
        if new_size > super::header::MAX_VIRTUAL_SIZE {
            return Err(Error::limit(format!(
                "new size {new_size} is above the 64 TiB limit"
            )));
        }
        let st = self.storage();
        let old = self.size();
        {
            let mut m = self.lock();
            self.begin_change(&mut m)?;
            if new_size < old {
                let mut pos = new_size;
                while pos < old {
                    let (kind, n) = m.run_at(st, pos, old - pos)?;
                    if matches!(
                        kind,
                        super::meta::RunKind::Data(_) | super::meta::RunKind::Compressed(_)
                    ) {
                        return Err(Error::invalid(format!(
                            "cannot shrink to {new_size}: data is allocated at offset {pos}"
                        )));
                    }
                    pos += n;
                }
            } else {
                let need = m.header.l1_entries_for(new_size);
                if need > m.l1.len() as u64 {
                    self.grow_l1(&mut m, need)?;
                }
            }
            st.write_all_at(&new_size.to_be_bytes(), 24)
                .ctx(|| "writing the virtual size".into())?;
            st.sync().ctx(|| "flushing header".into())?;
            m.header.size = new_size;
            self.size
                .store(new_size, std::sync::atomic::Ordering::Release);
        }
        // Bytes past the old end inside its last cluster must read as zeroes now.
        let cs = self.geo.cs;
        if new_size > old && old % cs != 0 {
            let stop = (old.div_ceil(cs) * cs).min(new_size);
            let gc = old / cs;
            let e = self.lock().entry(st, gc)?;
            if !matches!(e, Entry::Unallocated | Entry::ZeroPlain) || self.backing.is_some() {
                self.zero_range(old, stop - old, false, false)?;
            }
        }
        Ok(())
    }

    /// Records a different backing file (name and format) in the header.
    pub(crate) fn set_backing_name(&self, name: Option<&str>, fmt: Option<&str>) -> Result<()> {
        let st = self.storage();
        let mut m = self.lock();
        self.check_writable(&m)?;
        let mut h = m.header.clone();
        h.backing_file = name.map(str::to_string);
        h.backing_format = name.and(fmt).map(str::to_string);
        h.refcount_table_offset = m.rc.table_offset;
        h.refcount_table_clusters = m.rc.table_clusters as u32;
        let bytes = h.encode_cluster0()?;
        st.write_all_at(&bytes, 0)
            .ctx(|| "rewriting the header".into())?;
        st.sync().ctx(|| "flushing header".into())?;
        m.has_backing = h.backing_file.is_some();
        m.header = h;
        Ok(())
    }
}
