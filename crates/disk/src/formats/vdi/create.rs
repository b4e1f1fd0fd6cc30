//! Creating VDI images: dynamic (default) or static (`-o static=on`), with qemu-img's
//! `preallocation` for static images.

use std::path::Path;

use super::header::{
    Header, BLOCK_SIZE, HEADER_SIZE_1_1, PRE_HEADER_TEXT, SECTOR, TYPE_DYNAMIC, TYPE_STATIC,
    UNALLOCATED, VERSION_1_1,
};
use super::image::{open, VdiImage, MAX_VIRTUAL_SIZE};
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext, Preallocation};
use crate::storage::{FileStorage, Storage};

/// What a new image looks like.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Guest size (rounded up to whole sectors).
    pub size: u64,
    /// Every block allocated up front.
    pub fixed: bool,
    /// How to preallocate the data of a static image.
    pub prealloc: Preallocation,
}

fn parse_bool(s: &str) -> Result<bool> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::invalid(format!("'{s}' is not on or off"))),
    }
}

/// Parses the options of `qemu-img create -f vdi`.
pub fn plan(opts: &CreateOptions) -> Result<Plan> {
    let mut o = opts.options.clone();
    let fixed = CreateOptions::take(&mut o, "static", parse_bool)?.unwrap_or(false);
    let prealloc = CreateOptions::take(&mut o, "preallocation", str::parse::<Preallocation>)?
        .unwrap_or_default();
    CreateOptions::reject_unknown(&o, Format::Vdi)?;
    if prealloc == Preallocation::Metadata {
        return Err(Error::invalid(
            "vdi supports preallocation off, falloc and full",
        ));
    }
    if opts.backing_file.is_some() {
        return Err(Error::invalid("VDI images cannot have a backing file here"));
    }
    let size = opts.size.div_ceil(SECTOR) * SECTOR;
    if size > MAX_VIRTUAL_SIZE {
        return Err(Error::invalid(format!(
            "VDI size {size} is over the 64 TiB limit"
        )));
    }
    Ok(Plan {
        size,
        fixed,
        prealloc,
    })
}

/// Writes the header and block map of a new image into empty `storage`; a static image's
/// data area is sized (and, with `Preallocation::Full`, written with zeroes).
pub fn write_layout(storage: &dyn Storage, plan: &Plan) -> Result<()> {
    let bs = u64::from(BLOCK_SIZE);
    let blocks = plan.size.div_ceil(bs);
    let offset_bmap = SECTOR;
    let map_len = (blocks * 4).div_ceil(SECTOR) * SECTOR;
    let offset_data = offset_bmap + map_len.max(SECTOR);
    let mut text = [0u8; 64];
    text[..PRE_HEADER_TEXT.len()].copy_from_slice(PRE_HEADER_TEXT);
    let header = Header {
        text,
        version: VERSION_1_1,
        header_size: HEADER_SIZE_1_1,
        image_type: if plan.fixed {
            TYPE_STATIC
        } else {
            TYPE_DYNAMIC
        },
        flags: 0,
        comment: vec![0; 256],
        offset_bmap: offset_bmap as u32,
        offset_data: u32::try_from(offset_data)
            .map_err(|_| Error::invalid("VDI block map too large"))?,
        legacy_chs: [0; 3],
        sector_size: SECTOR as u32,
        disk_size: plan.size,
        block_size: BLOCK_SIZE,
        block_extra: 0,
        blocks_in_hdd: blocks as u32,
        blocks_allocated: if plan.fixed { blocks as u32 } else { 0 },
        uuid_image: *uuid::Uuid::new_v4().as_bytes(),
        uuid_last_snap: *uuid::Uuid::new_v4().as_bytes(),
        uuid_link: [0; 16],
        uuid_parent: [0; 16],
    };
    let mut map = vec![0u8; (offset_data - offset_bmap) as usize];
    for i in 0..blocks as usize {
        let e = if plan.fixed { i as u32 } else { UNALLOCATED };
        map[4 * i..4 * i + 4].copy_from_slice(&e.to_le_bytes());
    }
    let end = offset_data + if plan.fixed { blocks * bs } else { 0 };
    storage.set_len(end).ctx(|| "sizing the VDI file".into())?;
    if plan.fixed && plan.prealloc == Preallocation::Full {
        let zero = vec![0u8; bs as usize];
        for i in 0..blocks {
            storage
                .write_all_at(&zero, offset_data + i * bs)
                .ctx(|| "preallocating VDI data".into())?;
        }
    }
    storage
        .write_all_at(&map, offset_bmap)
        .ctx(|| "writing the VDI block map".into())?;
    storage
        .write_all_at(&header.to_bytes(), 0)
        .ctx(|| "writing the VDI header".into())
}

/// Creates the image file at `path` and opens it for writing.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
    let plan = plan(opts)?;
    let storage = FileStorage::create(path).ctx(|| "creating VDI file".into())?;
    write_layout(&storage, &plan)?;
    if plan.fixed && plan.prealloc == Preallocation::Falloc {
        let len = storage.len().ctx(|| "reading VDI size".into())?;
        if len > 0 {
            rustix::fs::fallocate(
                storage.file(),
                rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                len,
            )
            .map_err(|e| Error::io("preallocating VDI data", e.into()))?;
        }
    }
    storage.sync().ctx(|| "syncing new VDI".into())?;
    let mut ctx = OpenContext::isolated(true);
    ctx.path = Some(path.to_path_buf());
    let img: VdiImage = open(Box::new(storage), &ctx)?;
    Ok(Box::new(img))
}
