//! Opening a VHD: finding and verifying the footer, the dynamic header and the BAT, and
//! finding the parent of a differencing disk.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};

use super::bat::{Layout, Meta, UNALLOCATED};
use super::dynheader::{locator_name, DynHeader, DYN_HEADER_SIZE, MAX_LOCATOR_LEN};
use super::footer::{DiskType, Footer, SECTOR};
use super::image::{Dynamic, VpcImage};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::Format;
use crate::open::OpenContext;
use crate::storage::Storage;

/// Largest guest size accepted.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Largest BAT read into memory.
pub const MAX_BAT_BYTES: u64 = 256 << 20;
/// The name of the BAT's entry in a dynamic image's metadata regions.
pub(super) const BAT_REGION: &str = "block allocation table";

pub(super) fn align_up(v: u64) -> u64 {
    v.div_ceil(SECTOR) * SECTOR
}

fn read_sector(storage: &dyn Storage, at: u64, what: &str) -> Result<[u8; 512]> {
    let mut b = [0u8; 512];
    storage
        .read_exact_at(&mut b, at)
        .ctx(|| format!("reading the {what} at offset {at:#x}"))?;
    Ok(b)
}

/// Opens the VHD in `storage`.
pub fn open(storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<VpcImage> {
    let len = storage.len().ctx(|| "reading the VHD file size".into())?;
    if len < SECTOR {
        return Err(Error::corrupt(format!(
            "VHD file of {len} bytes is truncated: it cannot hold a 512-byte footer"
        )));
    }
    let head = read_sector(storage.as_ref(), 0, "VHD footer copy")?;
    let tail_at = len - SECTOR;
    // A dynamic disk keeps a footer copy at offset 0, never rewritten after creation; a
    // fixed disk has its footer only at the end (its first sector is guest data).
    let footer = match Footer::has_cookie(&head) {
        true => match Footer::parse(&head, 0)? {
            f if f.disk_type == DiskType::Fixed => {
                let tail = read_sector(storage.as_ref(), tail_at, "VHD footer")?;
                Footer::parse(&tail, tail_at)?
            }
            f => f,
        },
        false => {
            let tail = read_sector(storage.as_ref(), tail_at, "VHD footer")?;
            Footer::parse(&tail, tail_at)?
        }
    };
    let size = footer.virtual_size();
    if size > MAX_VIRTUAL_SIZE {
        return Err(Error::limit(format!(
            "VHD virtual size {size} is over the 64 TiB limit"
        )));
    }
    let disk_type = footer.disk_type;
    let mut img = VpcImage {
        footer: RwLock::new(footer),
        size: AtomicU64::new(size),
        dynamic: None,
        parent: None,
        backing_name: None,
        files: ctx.path.iter().cloned().collect(),
        storage,
    };
    if disk_type == DiskType::Fixed {
        if size > tail_at {
            return Err(Error::corrupt(format!(
                "fixed VHD of {size} bytes is truncated: the file holds {tail_at} bytes of \
                 data before its footer"
            )));
        }
        return Ok(img);
    }
    let dynamic = open_dynamic(&img, len, ctx.writable)?;
    img.dynamic = Some(dynamic);
    if disk_type == DiskType::Differencing {
        open_parent(&mut img, len, ctx)?;
    }
    Ok(img)
}

fn open_dynamic(img: &VpcImage, len: u64, writable: bool) -> Result<Dynamic> {
    let storage = img.storage.as_ref();
    let at = img.footer().data_offset;
    match at.checked_add(DYN_HEADER_SIZE as u64) {
        Some(end) if end <= len => {}
        _ => {
            return Err(Error::corrupt(format!(
                "VHD dynamic header offset {at:#x} is past the end of the file ({len} bytes): \
                 the image is truncated or corrupt"
            )))
        }
    }
    let mut hb = [0u8; DYN_HEADER_SIZE];
    storage
        .read_exact_at(&mut hb, at)
        .ctx(|| format!("reading the VHD dynamic header at offset {at:#x}"))?;
    let header = DynHeader::parse(&hb, at)?;
    let bs = u64::from(header.block_size);
    let bitmap_size = header.bitmap_size();
    let needed = img.size().div_ceil(bs);
    let max = u64::from(header.max_table_entries);
    if max < needed {
        return Err(Error::corrupt(format!(
            "VHD BAT has {max} entries of {bs} bytes, too few for the disk size {}",
            img.size()
        )));
    }
    if max * 4 > MAX_BAT_BYTES {
        return Err(Error::limit(format!(
            "VHD BAT of {max} entries ({} bytes) is over the 256 MiB limit",
            max * 4
        )));
    }
    let bat_offset = header.table_offset;
    let bat_bytes = needed * 4;
    match bat_offset.checked_add(max * 4) {
        Some(end) if end <= len => {}
        _ => {
            return Err(Error::corrupt(format!(
                "VHD BAT at offset {bat_offset:#x} ({max} entries) is past the end of the \
                 file ({len} bytes): the image is truncated"
            )))
        }
    }
    let mut raw = vec![0u8; bat_bytes as usize];
    storage
        .read_exact_at(&mut raw, bat_offset)
        .ctx(|| format!("reading the VHD BAT at offset {bat_offset:#x}"))?;
    let bat: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    drop(raw);

    let mut regions = vec![
        (0, SECTOR, "footer copy".to_string()),
        (
            at,
            at + DYN_HEADER_SIZE as u64,
            "dynamic header".to_string(),
        ),
        (
            bat_offset,
            bat_offset + align_up(max * 4),
            BAT_REGION.to_string(),
        ),
    ];
    if img.disk_type() == DiskType::Differencing {
        for (i, l) in header.locators.iter().enumerate() {
            if l.code == [0; 4] || l.length == 0 {
                continue;
            }
            if l.length > MAX_LOCATOR_LEN {
                return Err(Error::corrupt(format!(
                    "VHD parent locator {i} is {} bytes long, over {MAX_LOCATOR_LEN}",
                    l.length
                )));
            }
            let space = if l.space <= 128 {
                u64::from(l.space) * SECTOR
            } else {
                u64::from(l.space)
            };
            let reserved = align_up(u64::from(l.length).max(space.min(u64::from(MAX_LOCATOR_LEN))));
            match l.offset.checked_add(u64::from(l.length)) {
                Some(end) if end <= len => {}
                _ => {
                    return Err(Error::corrupt(format!(
                        "VHD parent locator {i} data at offset {:#x} is past the end of the \
                         file: the image is truncated",
                        l.offset
                    )))
                }
            }
            regions.push((l.offset, l.offset + reserved, format!("parent locator {i}")));
        }
    }
    let meta_end = regions.iter().map(|r| r.1).max().unwrap_or(SECTOR);
    let mut blocks_end = 0;
    let mut blocks = Vec::new();
    for (i, &e) in bat.iter().enumerate() {
        if e == UNALLOCATED {
            continue;
        }
        let start = u64::from(e) * SECTOR;
        let end = start + bitmap_size + bs;
        if end > len {
            return Err(Error::corrupt(format!(
                "VHD BAT entry {i} points at offset {start:#x}, whose block ends past the end \
                 of the file ({len} bytes): the image is truncated"
            )));
        }
        blocks_end = blocks_end.max(end);
        if writable {
            blocks.push((start, end, i));
        }
    }
    if writable {
        check_layout(&regions, &mut blocks)?;
    }
    let next_block = meta_end
        .max(blocks_end)
        .max(align_up(len - SECTOR))
        .max(align_up(meta_end));
    let spb = bs / SECTOR;
    let mut meta = Meta::new(bat, next_block, len, spb, bitmap_size);
    meta.layout = Layout {
        bat_offset,
        capacity: align_up(max * 4) / 4,
        max_table_entries: header.max_table_entries,
        regions,
    };
    Ok(Dynamic {
        block_size: bs,
        bitmap_size,
        meta: Mutex::new(meta),
        header,
    })
}

/// Refuses, before any write, a layout where blocks overlap each other or the metadata: a
/// guest write there would corrupt the image.
fn check_layout(regions: &[(u64, u64, String)], blocks: &mut [(u64, u64, usize)]) -> Result<()> {
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(Error::corrupt(format!(
                "VHD blocks {} and {} overlap at offset {:#x}",
                w[0].2, w[1].2, w[1].0
            )));
        }
    }
    for (start, end, what) in regions {
        let i = blocks.partition_point(|b| b.1 <= *start);
        if let Some(b) = blocks.get(i) {
            if b.0 < *end {
                return Err(Error::corrupt(format!(
                    "VHD block {} at offset {:#x} overlaps the {what} at {start:#x}",
                    b.2, b.0
                )));
            }
        }
    }
    Ok(())
}

/// Candidate parent names, in the order to try them.
pub(super) fn parent_candidates(img: &VpcImage, len: u64) -> Result<Vec<String>> {
    let d = img.dyn_part();
    let mut names = Vec::new();
    for l in d.header.path_locators() {
        if l.length == 0 || l.length > MAX_LOCATOR_LEN {
            continue;
        }
        if l.offset
            .checked_add(u64::from(l.length))
            .is_none_or(|e| e > len)
        {
            continue;
        }
        let mut data = vec![0u8; l.length as usize];
        img.storage
            .read_exact_at(&mut data, l.offset)
            .ctx(|| format!("reading VHD parent locator at offset {:#x}", l.offset))?;
        if let Some(n) = locator_name(&data, &l.code == b"W2ku") {
            names.push(n);
        }
    }
    let pn = d.header.parent_name.replace('\\', "/");
    if let Some(base) = pn.rsplit('/').next().filter(|s| !s.is_empty()) {
        names.push(base.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

fn open_parent(img: &mut VpcImage, len: u64, ctx: &OpenContext) -> Result<()> {
    let names = parent_candidates(img, len)?;
    let Some(first) = names.first() else {
        return Err(Error::corrupt(
            "differencing VHD names no parent: no W2ru/W2ku locator and no parent name",
        ));
    };
    img.backing_name = Some(first.clone());
    if !ctx.open_backing {
        return Ok(());
    }
    let want = uuid::Uuid::from_bytes(img.dyn_part().header.parent_uuid).to_string();
    let mut tried = Vec::new();
    for name in &names {
        match ctx.open_backing_file(name, Some(Format::Vpc)) {
            Ok(p) => {
                let got = p.info().specific.get("uuid").cloned();
                if got.as_ref().and_then(|v| v.as_str()) != Some(want.as_str()) {
                    return Err(Error::corrupt(format!(
                        "parent '{name}' of differencing VHD has UUID {}, but the image \
                         expects {want}",
                        got.map(|v| v.to_string()).unwrap_or_default()
                    )));
                }
                img.backing_name = Some(name.clone());
                img.parent = Some(p);
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Io => tried.push(format!("'{name}' ({e})")),
            Err(e) => return Err(e),
        }
    }
    Err(Error::new(
        ErrorKind::Io,
        format!(
            "parent of differencing VHD not found; tried {}",
            tried.join(", ")
        ),
    ))
}
