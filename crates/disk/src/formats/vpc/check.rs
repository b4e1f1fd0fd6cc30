//! `check` for VHD: BAT entries in bounds and not overlapping each other or the metadata,
//! and the trailing footer present and equal to the copy at offset 0.

use super::bat::UNALLOCATED;
use super::footer::SECTOR;
use super::image::{lock, VpcImage};
use crate::error::{IoContext, Result};
use crate::image::{BlockImage, CheckReport};

/// Checks `img`; with `repair`, rewrites a missing or stale trailing footer.
pub fn check(img: &VpcImage, repair: bool) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let len = img.storage.len().ctx(|| "reading VHD file size".into())?;
    let Some(d) = &img.dynamic else {
        if len < img.size() + SECTOR {
            r.corruptions += 1;
            r.messages.push(format!(
                "fixed VHD of {} bytes needs {} bytes of file, has {len}",
                img.size(),
                img.size() + SECTOR
            ));
        }
        return Ok(r);
    };
    let m = lock(&d.meta);
    let per_block = d.bitmap_size + d.block_size;
    let mut blocks = Vec::new();
    for (i, &e) in m.bat.iter().enumerate() {
        if e == UNALLOCATED {
            continue;
        }
        let start = u64::from(e) * SECTOR;
        let end = start + per_block;
        if end > len {
            r.corruptions += 1;
            r.messages.push(format!(
                "BAT entry {i}: block at offset {start:#x} ends past the end of the file"
            ));
        }
        blocks.push((start, end, i));
    }
    r.allocated_clusters = Some(blocks.len() as u64);
    r.total_clusters = Some(m.bat.len() as u64);
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        if w[1].0 < w[0].1 {
            r.corruptions += 1;
            r.messages.push(format!(
                "BAT entries {} and {} overlap: blocks at offsets {:#x} and {:#x}",
                w[0].2, w[1].2, w[0].0, w[1].0
            ));
        }
    }
    for (start, end, what) in &m.layout.regions {
        for b in blocks.iter().filter(|b| b.0 < *end && *start < b.1) {
            r.corruptions += 1;
            r.messages.push(format!(
                "BAT entry {}: block at offset {:#x} overlaps the {what} at {start:#x}",
                b.2, b.0
            ));
        }
    }
    let mut tail = [0u8; 512];
    let tail_ok = len >= SECTOR
        && img.storage.read_exact_at(&mut tail, len - SECTOR).is_ok()
        && tail == img.footer().to_bytes();
    if !tail_ok {
        r.corruptions += 1;
        r.messages.push(format!(
            "the footer at the end of the file (offset {:#x}) is missing or differs from the \
             copy at offset 0",
            len.saturating_sub(SECTOR)
        ));
        if repair && !img.is_read_only() {
            let at = m.next_block.max(blocks.last().map_or(0, |b| b.1));
            img.storage
                .write_all_at(&img.footer().to_bytes(), at)
                .ctx(|| format!("rewriting the VHD footer at offset {at:#x}"))?;
            img.storage
                .set_len(at + SECTOR)
                .ctx(|| "trimming the VHD file after its footer".into())?;
            r.corruptions_fixed += 1;
        }
    }
    Ok(r)
}
