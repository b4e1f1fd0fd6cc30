//! `check`: recount every reference (header, L1/L2 tables of the active state and of every
//! snapshot, data and compressed clusters, snapshot table, refcount structures) in memory,
//! compare with the stored refcounts, and with `repair` write a fresh refcount structure at
//! the end of the file (also used to recover an image left dirty by lazy refcounts).

use super::meta::{Meta, COMPRESSED, COPIED, OFFSET_MASK};
use super::refcount::Refcounts;
use super::Qcow2Image;
use crate::error::{Error, IoContext, Result};
use crate::image::CheckReport;

/// Most clusters `check` counts in memory (4 bytes each).
const MAX_CHECK_CLUSTERS: u64 = 64 << 20;
/// Findings listed one by one before they are only counted.
const MAX_MESSAGES: usize = 100;

const KIND_META: u8 = 1;
const KIND_DATA: u8 = 2;

struct Counter {
    refs: Vec<u32>,
    kinds: Vec<u8>,
    report: CheckReport,
}

impl Counter {
    fn note(&mut self, corruption: bool, msg: String) {
        if corruption {
            self.report.corruptions += 1;
        }
        if self.report.messages.len() < MAX_MESSAGES {
            self.report.messages.push(msg);
        }
    }

    /// Counts one reference to every cluster of host range `[off, off+len)`.
    fn add(&mut self, cs: u64, off: u64, len: u64, kind: u8, what: &str) -> bool {
        let nb = self.refs.len() as u64;
        let first = off / cs;
        let last = off.saturating_add(len.max(1) - 1) / cs;
        if last >= nb {
            self.note(
                true,
                format!("ERROR {what} at offset {off:#x} lies past the end of the file"),
            );
            return false;
        }
        for c in first..=last {
            let i = c as usize;
            let k = self.kinds[i];
            if k != 0 && (k != kind || kind == KIND_META && what.starts_with("refcount")) {
                self.note(
                    true,
                    format!(
                        "ERROR {what} at offset {:#x} overlaps other metadata or data",
                        c * cs
                    ),
                );
            }
            self.kinds[i] = kind;
            self.refs[i] = self.refs[i].saturating_add(1);
        }
        true
    }
}

impl Qcow2Image {
    /// Walks one L1 table: counts its L2 tables and their clusters.
    fn count_l1(
        &self,
        m: &mut Meta,
        cnt: &mut Counter,
        l1: &[u64],
        active: bool,
        data: bool,
    ) -> Result<u64> {
        let st = self.storage();
        let g = self.geo;
        let mut allocated = 0;
        for (i, &e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if off % g.cs != 0 {
                cnt.note(
                    true,
                    format!("ERROR L1 entry {i}: L2 table offset {off:#x} is not cluster aligned"),
                );
                continue;
            }
            if !data {
                cnt.add(g.cs, off, g.cs, KIND_META, "L2 table");
                continue;
            }
            if off / g.cs >= cnt.refs.len() as u64 {
                continue;
            }
            let table = match m.l2(st, off) {
                Ok(t) => t.clone(),
                Err(e) => {
                    cnt.report.check_errors += 1;
                    cnt.note(false, format!("ERROR reading L2 table at {off:#x}: {e}"));
                    continue;
                }
            };
            let step = if g.ext { 2 } else { 1 };
            for (j, &w) in table.iter().step_by(step).enumerate() {
                let guest = ((i as u64 * g.l2_entries) + j as u64) << g.cb;
                if w & COMPRESSED != 0 {
                    let (coff, nsec) = g.compressed_range(w);
                    cnt.add(
                        g.cs,
                        coff & !511,
                        nsec * 512,
                        KIND_DATA,
                        "compressed cluster",
                    );
                    allocated += u64::from(active);
                    continue;
                }
                let host = w & OFFSET_MASK;
                if host == 0 {
                    continue;
                }
                if host % g.cs != 0 {
                    cnt.note(
                        true,
                        format!("ERROR L2 entry of guest offset {guest:#x}: host offset {host:#x} is not cluster aligned"),
                    );
                    continue;
                }
                if cnt.add(g.cs, host, g.cs, KIND_DATA, "data cluster") && active {
                    allocated += 1;
                }
            }
        }
        Ok(allocated)
    }

    /// Runs the check (with the metadata lock held). `repair` rewrites refcounts.
    pub(crate) fn check_locked(&self, m: &mut Meta, repair: bool) -> Result<CheckReport> {
        let st = self.storage();
        let g = self.geo;
        if repair {
            self.check_writable(m)?;
            m.rc.release(st)?;
        }
        let file_len = st.len().ctx(|| "reading file size".into())?;
        let nb = file_len.div_ceil(g.cs);
        if nb > MAX_CHECK_CLUSTERS {
            return Err(Error::limit(format!(
                "check of {nb} clusters is above the limit of {MAX_CHECK_CLUSTERS}"
            )));
        }
        let mut cnt = Counter {
            refs: vec![0; nb as usize],
            kinds: vec![0; nb as usize],
            report: CheckReport::default(),
        };
        // Metadata first, so data pointing into it is reported.
        cnt.add(g.cs, 0, g.cs, KIND_META, "header");
        let l1 = m.l1.clone();
        if !l1.is_empty() {
            cnt.add(
                g.cs,
                m.header.l1_table_offset,
                l1.len() as u64 * 8,
                KIND_META,
                "L1 table",
            );
        }
        let mut snap_l1s = Vec::new();
        if m.header.nb_snapshots > 0 {
            let len = m.snapshot_table_len();
            cnt.add(
                g.cs,
                m.header.snapshots_offset,
                len,
                KIND_META,
                "snapshot table",
            );
            for s in m.snapshots.clone() {
                if s.l1_size == 0 {
                    continue;
                }
                cnt.add(
                    g.cs,
                    s.l1_table_offset,
                    u64::from(s.l1_size) * 8,
                    KIND_META,
                    "snapshot L1 table",
                );
                let mut raw = vec![0u8; s.l1_size as usize * 8];
                match st.read_exact_at(&mut raw, s.l1_table_offset) {
                    Ok(()) => snap_l1s.push(
                        raw.chunks_exact(8)
                            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                            .collect::<Vec<u64>>(),
                    ),
                    Err(e) => {
                        cnt.report.check_errors += 1;
                        cnt.note(false, format!("ERROR reading snapshot L1 table: {e}"));
                    }
                }
            }
        }
        self.count_l1(m, &mut cnt, &l1, true, false)?;
        for s in &snap_l1s {
            self.count_l1(m, &mut cnt, s, false, false)?;
        }
        let allocated = self.count_l1(m, &mut cnt, &l1, true, true)?;
        for s in &snap_l1s {
            self.count_l1(m, &mut cnt, s, false, true)?;
        }
        // References without the refcount structures: what a rebuild writes.
        let base = cnt.refs.clone();
        cnt.add(
            g.cs,
            m.rc.table_offset,
            m.rc.table_clusters * g.cs,
            KIND_META,
            "refcount table",
        );
        for ti in 0..m.rc.table.len() as u64 {
            match m.rc.block_offset(ti) {
                Ok(0) => {}
                Ok(off) => {
                    cnt.add(g.cs, off, g.cs, KIND_META, "refcount block");
                }
                Err(e) => cnt.note(true, format!("ERROR {e}")),
            }
        }
        // Compare.
        let mut leaks = 0;
        let mut low = 0;
        for c in 0..nb {
            let stored = match m.rc.get(st, c) {
                Ok(v) => v,
                Err(e) => {
                    cnt.report.check_errors += 1;
                    cnt.note(
                        false,
                        format!("ERROR cannot read refcount of cluster {c}: {e}"),
                    );
                    continue;
                }
            };
            let want = u64::from(cnt.refs[c as usize]);
            if stored > want {
                leaks += 1;
                cnt.report.leaks += 1;
                if cnt.report.messages.len() < MAX_MESSAGES {
                    cnt.report.messages.push(format!(
                        "Leaked cluster {c} refcount={stored} reference={want}"
                    ));
                }
            } else if stored < want {
                low += 1;
                cnt.note(
                    true,
                    format!("ERROR cluster {c} refcount={stored} reference={want}"),
                );
            }
        }
        let dirty = m.header.incompatible & super::header::INCOMPAT_DIRTY != 0;
        if repair && (leaks > 0 || low > 0 || dirty) {
            self.rebuild_refcounts(m, &base)?;
            cnt.report.leaks_fixed = leaks;
            cnt.report.corruptions_fixed = low;
        }
        if repair {
            cnt.report.corruptions_fixed += self.fix_copied_flags(m, &base, true)?;
            m.set_dirty(st, false)?;
        } else {
            let n = self.fix_copied_flags(m, &base, false)?;
            cnt.report.corruptions += n;
        }
        cnt.report.allocated_clusters = Some(allocated);
        cnt.report.total_clusters = Some(self.size().div_ceil(g.cs));
        Ok(cnt.report)
    }

    /// Checks (and with `fix` repairs) the COPIED flags of the active tables: set exactly
    /// when the refcount is 1. Returns the number of wrong flags.
    fn fix_copied_flags(&self, m: &mut Meta, refs: &[u32], fix: bool) -> Result<u64> {
        let st = self.storage();
        let g = self.geo;
        let one = |off: u64| refs.get((off / g.cs) as usize).copied() == Some(1);
        let mut wrong = 0;
        for i in 0..m.l1.len() as u64 {
            let e = m.l1[i as usize];
            let off = e & OFFSET_MASK;
            if off == 0 || off % g.cs != 0 || off / g.cs >= refs.len() as u64 {
                continue;
            }
            if (e & COPIED != 0) != one(off) {
                wrong += 1;
                if fix {
                    let ne = if one(off) { e | COPIED } else { e & !COPIED };
                    m.set_l1(st, i, ne)?;
                }
            }
            if g.ext {
                continue;
            }
            let Ok(t) = m.l2(st, off) else { continue };
            let mut bad = Vec::new();
            for (j, &w) in t.iter().enumerate() {
                let host = w & OFFSET_MASK;
                if w & COMPRESSED != 0 || host == 0 || host % g.cs != 0 {
                    continue;
                }
                if (w & COPIED != 0) != one(host) {
                    bad.push(j);
                }
            }
            wrong += bad.len() as u64;
            if fix && !bad.is_empty() {
                for &j in &bad {
                    let t = m.l2(st, off)?;
                    let w = t[j];
                    t[j] = if one(w & OFFSET_MASK) {
                        w | COPIED
                    } else {
                        w & !COPIED
                    };
                    m.write_l2_entries(st, off, j as u64, 1)?;
                }
            }
        }
        Ok(wrong)
    }

    /// Writes a new refcount table and blocks at the end of the file holding `base` (the
    /// counted references) plus the new structure itself, then switches the header to it.
    fn rebuild_refcounts(&self, m: &mut Meta, base: &[u32]) -> Result<()> {
        let st = self.storage();
        let cs = self.geo.cs;
        let rbe = m.rc.rbe();
        let max = m.rc.max_value();
        let start = (base.len() as u64).max(m.rc.end);
        let (mut blocks, mut tclusters) = (1u64, 1u64);
        loop {
            let total = start + blocks + tclusters;
            let nb = total.div_ceil(rbe);
            let nt = (nb * 8).div_ceil(cs);
            if nb == blocks && nt == tclusters {
                break;
            }
            blocks = nb;
            tclusters = nt;
        }
        if tclusters * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::limit("rebuilt refcount table would be too large"));
        }
        let total = start + blocks + tclusters;
        let value = |c: u64| -> u64 {
            if c < base.len() as u64 {
                u64::from(base[c as usize])
            } else if c >= start {
                1
            } else {
                0
            }
        };
        if let Some(c) = (0..base.len()).find(|&c| u64::from(base[c]) > max) {
            return Err(Error::limit(format!(
                "cluster {c} has {} references, more than {}-bit refcounts hold",
                base[c],
                1u32 << self.geo.rc_order
            )));
        }
        let mut table = vec![0u64; (tclusters * cs / 8) as usize];
        for b in 0..blocks {
            let vals: Vec<u64> = (b * rbe..((b + 1) * rbe).min(total)).map(value).collect();
            let raw = Refcounts::encode_block(self.geo.rc_order, cs, &vals);
            let off = (start + b) * cs;
            st.write_all_at(&raw, off)
                .ctx(|| format!("writing refcount block at offset {off:#x}"))?;
            table[b as usize] = off;
        }
        let toff = (start + blocks) * cs;
        let raw: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        st.write_all_at(&raw, toff)
            .ctx(|| format!("writing refcount table at offset {toff:#x}"))?;
        st.sync().ctx(|| "flushing rebuilt refcounts".into())?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&toff.to_be_bytes());
        hdr[8..].copy_from_slice(&(tclusters as u32).to_be_bytes());
        st.write_all_at(&hdr, 48)
            .ctx(|| "writing the refcount table location".into())?;
        st.sync().ctx(|| "flushing header".into())?;
        m.header.refcount_table_offset = toff;
        m.header.refcount_table_clusters = tclusters as u32;
        m.rc.replace(table, toff, tclusters, total);
        Ok(())
    }
}
