//! Consistency checks: damaged header or region table copies, a log awaiting replay, and BAT
//! entries with invalid states, pointing into metadata, past the end of the file, or at the
//! same space as another block. `--repair` rewrites damaged copies and turns bad BAT entries
//! into zero blocks (their data cannot be trusted).

use std::sync::atomic::Ordering;

use super::format::*;
use super::image::{lock, Layout, VhdxImage};
use crate::error::{IoContext, Result};
use crate::image::CheckReport;

/// What is wrong with one BAT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fault {
    /// Unsafe to use: invalid state, offset 0, or overlapping metadata.
    Invalid(String),
    /// Points past the end of the file.
    BeyondEof(String),
}

/// Classifies BAT entry `i` (value `e`) of an image whose file is `file_len` bytes.
pub(super) fn classify(
    geo: &Geometry,
    layout: &Layout,
    i: usize,
    e: u64,
    file_len: u64,
) -> Option<Fault> {
    let state = bat_state(e);
    let off = bat_offset(e);
    let range = |len: u64, what: &str| -> Option<Fault> {
        if off == 0 {
            return Some(Fault::Invalid(format!(
                "BAT entry {i}: {what} is present at file offset 0"
            )));
        }
        let Some(end) = off.checked_add(len).filter(|&e| e <= MAX_FILE_OFFSET) else {
            return Some(Fault::Invalid(format!(
                "BAT entry {i}: {what} offset 0x{off:x} is beyond the file size limit"
            )));
        };
        if let Some(m) = layout.overlaps(off, len) {
            return Some(Fault::Invalid(format!(
                "BAT entry {i}: {what} at 0x{off:x} overlaps the {m}"
            )));
        }
        if end > file_len {
            return Some(Fault::BeyondEof(format!(
                "BAT entry {i}: {what} at 0x{off:x} lies past the end of the file \
                 ({file_len} bytes)"
            )));
        }
        None
    };
    if geo.is_bitmap_index(i as u64) {
        if !geo.has_parent {
            return None;
        }
        return match state {
            PAYLOAD_NOT_PRESENT => None,
            SB_PRESENT => range(SECTOR_BITMAP_SIZE, "sector bitmap"),
            s => Some(Fault::Invalid(format!(
                "BAT entry {i}: sector bitmap state {s} is invalid"
            ))),
        };
    }
    let block = geo.block_of_index(i as u64);
    if block >= geo.data_blocks {
        return None;
    }
    let len = geo
        .block_size
        .min(geo.virtual_size - block * geo.block_size);
    match state {
        PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => None,
        PAYLOAD_FULLY_PRESENT => range(len, "payload block"),
        PAYLOAD_PARTIALLY_PRESENT if geo.has_parent => range(len, "payload block"),
        s => Some(Fault::Invalid(format!(
            "BAT entry {i} (block {block}) has invalid state {s}"
        ))),
    }
}

/// A partially present block whose chunk has no usable sector bitmap.
fn orphan_partial(geo: &Geometry, bat: &[u64], i: usize) -> Option<String> {
    if !geo.has_parent
        || geo.is_bitmap_index(i as u64)
        || bat_state(bat[i]) != PAYLOAD_PARTIALLY_PRESENT
    {
        return None;
    }
    let chunk = geo.block_of_index(i as u64) / geo.chunk_ratio;
    let sb = bat.get(geo.bitmap_index(chunk)).copied().unwrap_or(0);
    (bat_state(sb) != SB_PRESENT).then(|| {
        format!("BAT entry {i}: partially present block has no sector bitmap (chunk {chunk})")
    })
}

const MAX_MESSAGES: usize = 100;

/// Checks `img`; with `repair` (and a writable image) fixes what it found.
pub(super) fn check(img: &VhdxImage, repair: bool) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let repair = repair && !img.storage.is_read_only();
    let mut msgs = Vec::new();
    let note = |msgs: &mut Vec<String>, m: String| {
        if msgs.len() < MAX_MESSAGES {
            msgs.push(m);
        }
    };
    let header_faults = lock(&img.header_faults).clone();
    for m in &header_faults {
        r.corruptions += 1;
        note(&mut msgs, m.clone());
    }
    if repair && !header_faults.is_empty() {
        let mut h = lock(&img.header);
        let current = h.current.clone();
        img.write_headers(&mut h, current)?;
        let table = region_table_bytes(&img.regions);
        for (i, &at) in REGION_TABLE_OFFSETS.iter().enumerate() {
            img.storage
                .write_all_at(&table, at)
                .ctx(|| format!("writing region table {}", i + 1))?;
        }
        img.storage.sync().ctx(|| "flushing region tables".into())?;
        r.corruptions_fixed += header_faults.len() as u64;
        lock(&img.header_faults).clear();
    }
    if img.dirty_log {
        r.corruptions += 1;
        note(
            &mut msgs,
            "log holds updates that need replay: open the image writable or run check --repair"
                .into(),
        );
    }
    let file_len = img.storage.len().ctx(|| "reading file size".into())?;
    let geo = &img.geo;
    let mut bad: Vec<u32> = Vec::new();
    let mut allocated = 0u64;
    {
        let bat = img.bat_read();
        let units = (file_len.min(MAX_FILE_OFFSET) / MIB + 1) as usize;
        let mut used = vec![0u64; units.div_ceil(64)];
        for (i, &e) in bat.iter().enumerate() {
            let fault = match classify(geo, &img.layout, i, e, file_len) {
                Some(Fault::Invalid(m) | Fault::BeyondEof(m)) => Some(m),
                None => orphan_partial(geo, &bat, i),
            };
            if let Some(m) = fault {
                r.corruptions += 1;
                note(&mut msgs, m);
                bad.push(i as u32);
                continue;
            }
            let state = bat_state(e);
            let is_bitmap = geo.is_bitmap_index(i as u64);
            let present = if is_bitmap {
                geo.has_parent && state == SB_PRESENT
            } else {
                geo.block_of_index(i as u64) < geo.data_blocks
                    && matches!(state, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT)
            };
            if !present {
                continue;
            }
            if !is_bitmap {
                allocated += 1;
            }
            let len = if is_bitmap {
                SECTOR_BITMAP_SIZE
            } else {
                geo.block_size
            };
            let off = bat_offset(e);
            let first = (off / MIB) as usize;
            let last = ((off + len).div_ceil(MIB) as usize).min(units);
            let mut clash = false;
            for u in first..last {
                if used[u / 64] & (1 << (u % 64)) != 0 {
                    clash = true;
                    break;
                }
                used[u / 64] |= 1 << (u % 64);
            }
            if clash {
                r.corruptions += 1;
                note(
                    &mut msgs,
                    format!("BAT entry {i}: block at 0x{off:x} overlaps another block"),
                );
                bad.push(i as u32);
            }
        }
    }
    if repair && !bad.is_empty() {
        img.mark_in_use()?;
        let mut alloc = lock(&img.alloc);
        for &i in &bad {
            let value = if geo.is_bitmap_index(u64::from(i)) {
                0
            } else {
                bat_entry(PAYLOAD_ZERO, 0)
            };
            img.set_entry(&mut alloc, i as usize, value);
        }
        // Partially present blocks that just lost their bitmap go too.
        let orphans: Vec<usize> = {
            let bat = img.bat_read();
            (0..bat.len())
                .filter(|&i| orphan_partial(geo, &bat, i).is_some())
                .collect()
        };
        for i in orphans {
            img.set_entry(&mut alloc, i, bat_entry(PAYLOAD_ZERO, 0));
        }
        img.flush_bat(&mut alloc)?;
        r.corruptions_fixed += bad.len() as u64;
        img.bat_faults.store(false, Ordering::Release);
        note(
            &mut msgs,
            format!("{} bad BAT entries now read as zeroes", bad.len()),
        );
    }
    if r.corruptions > msgs.len() as u64 {
        msgs.push(format!("... {} findings in all", r.corruptions));
    }
    r.allocated_clusters = Some(allocated);
    r.total_clusters = Some(geo.data_blocks);
    r.messages = msgs;
    Ok(r)
}
