//! `check` for VMDK: grain directories and tables in bounds, grains inside the file and clear
//! of metadata, no two grain table entries sharing a grain.

use super::disk::{Body, VmdkImage};
use super::header::{parse_marker, FLAG_RGD, GRAIN_MARKER_LEN, SECTOR};
use super::sparse::{merge_ranges, overlaps, read_dir, SparseExtent};
use crate::error::{IoContext, Result};
use crate::image::CheckReport;

/// Grains remembered for the shared-grain check before it is skipped.
const MAX_TRACKED: usize = 16 << 20;

/// Checks every sparse extent of `img`. Nothing is repaired: VMDK keeps no reference counts,
/// and leaked grains are harmless.
pub fn check(img: &VmdkImage, repair: bool) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let (mut allocated, mut total) = (0u64, 0u64);
    for (i, p) in img.pieces.iter().enumerate() {
        if let Body::Sparse(e) = &p.body {
            if e.unfinished_stream() {
                r.messages.push(format!(
                    "extent {}: stream not finished; not checked",
                    i + 1
                ));
                continue;
            }
            let (a, t) = check_sparse(e, i + 1, &mut r)?;
            allocated += a;
            total += t;
        }
    }
    if total > 0 {
        r.allocated_clusters = Some(allocated);
        r.total_clusters = Some(total);
    }
    if repair && r.corruptions > 0 {
        r.messages
            .push("vmdk images cannot be repaired in place; convert them instead".into());
    }
    Ok(r)
}

fn corrupt(r: &mut CheckReport, msg: String) {
    r.corruptions += 1;
    if r.messages.len() < 1000 {
        r.messages.push(msg);
    }
}

fn check_sparse(e: &SparseExtent, n: usize, r: &mut CheckReport) -> Result<(u64, u64)> {
    let len = e
        .storage
        .len()
        .ctx(|| format!("extent {n}: reading size"))?;
    let h = &e.hdr;
    let gt_bytes = e.gtes * 4;
    let mut meta_ranges = vec![(
        0,
        (h.desc_offset.saturating_add(h.desc_size))
            .max(1)
            .saturating_mul(SECTOR),
    )];
    let gd = e.lock().gd.clone();
    let gd_at = h.gd_offset.saturating_mul(SECTOR);
    meta_ranges.push((gd_at, gd_at.saturating_add(e.gt_count.saturating_mul(4))));
    let mut dirs = vec![gd.clone()];
    if h.flags & FLAG_RGD != 0 && h.rgd_offset != 0 && e.gt_count > 0 {
        match read_dir(
            e.storage.as_ref(),
            h.rgd_offset,
            e.gt_count,
            gt_bytes,
            len,
            "redundant grain directory",
        ) {
            Ok(rgd) => {
                meta_ranges.push((
                    h.rgd_offset.saturating_mul(SECTOR),
                    h.rgd_offset
                        .saturating_mul(SECTOR)
                        .saturating_add(e.gt_count.saturating_mul(4)),
                ));
                dirs.push(rgd);
            }
            Err(err) => corrupt(r, format!("extent {n}: {err}")),
        }
    }
    let mut gt_ranges = Vec::new();
    for dir in &dirs {
        for &s in dir.iter().filter(|&&s| s != 0) {
            let at = u64::from(s) * SECTOR;
            gt_ranges.push((at, at + gt_bytes));
        }
    }
    let fixed = merge_ranges(meta_ranges.clone());
    for &(s, end) in &gt_ranges {
        if overlaps(&fixed, s, end) {
            corrupt(r, format!("extent {n}: grain table at offset {s:#x} overlaps the header or a grain directory"));
        }
        if end > len {
            corrupt(
                r,
                format!(
                    "extent {n}: grain table at offset {s:#x} extends past the end of the file"
                ),
            );
        }
    }
    meta_ranges.extend(gt_ranges);
    let all_meta = merge_ranges(meta_ranges);
    let grains_total = h.capacity.div_ceil(h.grain_size);
    let mut seen: Vec<u32> = Vec::new();
    let mut allocated = 0u64;
    for t in 0..e.gt_count {
        let table = {
            let mut meta = e.lock();
            e.table(&mut meta, t)
        };
        let table = match table {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(err) => {
                r.check_errors += 1;
                r.messages.push(format!("extent {n}: {err}"));
                continue;
            }
        };
        for (k, &v) in table.iter().enumerate() {
            let grain = t * e.gtes + k as u64;
            if grain >= grains_total || v == 0 || (v == 1 && h.zero_grain()) {
                continue;
            }
            allocated += 1;
            let off = u64::from(v) * SECTOR;
            let end = if h.compressed() {
                let mut m = [0u8; 16];
                if off + GRAIN_MARKER_LEN as u64 > len
                    || e.storage.read_exact_at(&mut m, off).is_err()
                {
                    corrupt(r, format!("extent {n}: grain {grain} marker at offset {off:#x} is past the end of the file"));
                    continue;
                }
                let (lba, size, _) = parse_marker(&m);
                if lba != grain * h.grain_size || size == 0 {
                    corrupt(r, format!("extent {n}: grain {grain} marker at offset {off:#x} is invalid (lba {lba}, size {size})"));
                }
                off + GRAIN_MARKER_LEN as u64 + u64::from(size)
            } else {
                off + e.grain_bytes
            };
            if end > len {
                corrupt(r, format!("extent {n}: grain {grain} at offset {off:#x} extends past the end of the file"));
            } else if overlaps(&all_meta, off, end) {
                corrupt(
                    r,
                    format!("extent {n}: grain {grain} at offset {off:#x} overlaps metadata"),
                );
            }
            if seen.len() < MAX_TRACKED {
                seen.push(v);
            }
        }
    }
    seen.sort_unstable();
    if !h.compressed() {
        for w in seen.windows(2) {
            if u64::from(w[1]) < u64::from(w[0]) + h.grain_size {
                corrupt(
                    r,
                    format!(
                        "extent {n}: grains at sectors {:#x} and {:#x} overlap",
                        w[0], w[1]
                    ),
                );
            }
        }
    } else {
        for w in seen.windows(2) {
            if w[0] == w[1] {
                corrupt(
                    r,
                    format!(
                        "extent {n}: two grain table entries share sector {:#x}",
                        w[0]
                    ),
                );
            }
        }
    }
    Ok((allocated, grains_total))
}
