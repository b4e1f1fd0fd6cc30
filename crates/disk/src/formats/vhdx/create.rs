//! Creating VHDX images: dynamic, fixed and differencing.
//!
//! Layout of a new file: header section (file identifier, two headers, two region tables)
//! in the first MiB, the log (`log_size`, default 1 MiB), the metadata region (1 MiB), the
//! BAT (rounded up to whole MiB), then payload blocks.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::format::*;
use super::parse;
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::BlockImage;
use crate::open::{parse_size, CreateOptions, OpenContext, Preallocation};
use crate::storage::{FileStorage, Storage};

fn parse_bool(s: &str) -> Result<bool> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::invalid(format!("'{s}' is not on or off"))),
    }
}

/// qemu-img's automatic block size: 8 MiB up to 1 GiB, 16 MiB up to 100 GiB, 32 MiB up to
/// 32 TiB, 64 MiB above.
pub(super) fn auto_block_size(size: u64) -> u64 {
    if size > 32 << 40 {
        64 * MIB
    } else if size > 100 << 30 {
        32 * MIB
    } else if size > 1 << 30 {
        16 * MIB
    } else {
        8 * MIB
    }
}

/// Creates a VHDX image at `path`.
pub(super) fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
    let mut o = opts.options.clone();
    let fixed = CreateOptions::take(&mut o, "subformat", |s| match s {
        "dynamic" => Ok(false),
        "fixed" => Ok(true),
        _ => Err(Error::invalid("subformat must be dynamic or fixed")),
    })?
    .unwrap_or(false);
    let block_size = CreateOptions::take(&mut o, "block_size", parse_size)?.unwrap_or(0);
    let log_size = CreateOptions::take(&mut o, "log_size", parse_size)?.unwrap_or(MIB);
    let zero_state = CreateOptions::take(&mut o, "block_state_zero", parse_bool)?.unwrap_or(true);
    let lss = CreateOptions::take(&mut o, "logical_sector_size", parse_size)?.unwrap_or(512);
    let prealloc = CreateOptions::take(&mut o, "preallocation", str::parse::<Preallocation>)?
        .unwrap_or_default();
    CreateOptions::reject_unknown(&o, Format::Vhdx)?;
    if prealloc != Preallocation::Off {
        return Err(Error::unsupported(
            "vhdx supports only preallocation=off (use subformat=fixed for a fixed disk)",
        ));
    }
    if lss != 512 && lss != 4096 {
        return Err(Error::invalid(format!(
            "logical_sector_size {lss} is neither 512 nor 4096"
        )));
    }
    if log_size < MIB || log_size % MIB != 0 || log_size > MAX_TABLE_BYTES {
        return Err(Error::invalid(format!(
            "log_size {log_size} is not a multiple of 1 MiB from 1 MiB to 256 MiB"
        )));
    }
    let size = opts.size.div_ceil(lss).saturating_mul(lss);
    if size > MAX_VIRTUAL_SIZE {
        return Err(Error::invalid(format!(
            "size {} exceeds the vhdx maximum of 64 TiB",
            opts.size
        )));
    }
    let block_size = if block_size == 0 {
        auto_block_size(size)
    } else {
        block_size
    };
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
        return Err(Error::invalid(format!(
            "block_size {block_size} is not a power of two from 1 MiB to 256 MiB"
        )));
    }
    let parent = match &opts.backing_file {
        Some(name) => {
            if fixed {
                return Err(Error::invalid(
                    "a fixed vhdx image cannot have a backing file",
                ));
            }
            if opts.backing_format.is_some_and(|f| f != Format::Vhdx) {
                return Err(Error::invalid(
                    "the parent of a vhdx differencing disk must be a vhdx image",
                ));
            }
            Some(parent_linkage(path, name)?)
        }
        None => None,
    };
    let geo = Geometry::new(size, block_size, lss, lss, parent.is_some())
        .map_err(|e| Error::invalid(e.message().to_string()))?;

    let log_offset = MIB;
    let meta_offset = log_offset + log_size;
    let bat_offset = meta_offset + MIB;
    let bat_length = geo.bat_bytes().div_ceil(MIB).max(1) * MIB;
    let data_start = bat_offset + bat_length;

    let storage = FileStorage::create(path).ctx(|| "creating file".into())?;
    let w = |buf: &[u8], at: u64, what: &str| {
        storage
            .write_all_at(buf, at)
            .ctx(|| format!("writing {what} at 0x{at:x}"))
    };
    let mut id = vec![0u8; 520];
    id[..8].copy_from_slice(FILE_SIGNATURE);
    for (i, u) in "paddock-disk".encode_utf16().enumerate() {
        put16(&mut id, 8 + 2 * i, u);
    }
    w(&id, 0, "file type identifier")?;
    let mut header = Header {
        seq: 1,
        file_write: Uuid::new_v4(),
        data_write: Uuid::new_v4(),
        log_guid: Uuid::nil(),
        log_version: 0,
        version: 1,
        log_length: log_size as u32,
        log_offset,
    };
    w(&header.to_bytes(), HEADER_OFFSETS[0], "header 1")?;
    header.seq = 2;
    w(&header.to_bytes(), HEADER_OFFSETS[1], "header 2")?;
    let regions = [
        RegionEntry {
            guid: BAT_GUID,
            offset: bat_offset,
            length: bat_length as u32,
            required: true,
        },
        RegionEntry {
            guid: METADATA_GUID,
            offset: meta_offset,
            length: MIB as u32,
            required: true,
        },
    ];
    let table = region_table_bytes(&regions);
    w(&table, REGION_TABLE_OFFSETS[0], "region table 1")?;
    w(&table, REGION_TABLE_OFFSETS[1], "region table 2")?;
    let locator = parent.as_ref().map(|(guid, name)| {
        let mut pairs = vec![("parent_linkage", format!("{{{guid}}}"))];
        if Path::new(name).is_absolute() {
            pairs.push(("absolute_win32_path", name.replace('/', "\\")));
        } else {
            pairs.push(("relative_path", format!(".\\{}", name.replace('/', "\\"))));
        }
        parent_locator_bytes(&pairs)
    });
    w(
        &metadata_region_bytes(&geo, fixed, Uuid::new_v4(), locator.as_deref()),
        meta_offset,
        "metadata",
    )?;
    // BAT: fixed blocks are laid out in order; dynamic blocks start as zero blocks (qemu's
    // block_state_zero default) or not present; differencing blocks start not present.
    let initial = if fixed {
        PAYLOAD_FULLY_PRESENT
    } else if zero_state && parent.is_none() {
        PAYLOAD_ZERO
    } else {
        PAYLOAD_NOT_PRESENT
    };
    if initial != PAYLOAD_NOT_PRESENT {
        let per_chunk = (MIB / 8) as usize;
        let mut buf = vec![0u8; MIB as usize];
        let mut block = 0u64;
        let mut index = 0usize;
        while index < geo.bat_entries as usize {
            let n = per_chunk.min(geo.bat_entries as usize - index);
            buf.fill(0);
            for k in 0..n {
                let i = index + k;
                if geo.is_bitmap_index(i as u64) {
                    continue;
                }
                let at = if fixed {
                    data_start + block * block_size
                } else {
                    0
                };
                put64(&mut buf, k * 8, bat_entry(initial, at));
                block += 1;
            }
            w(&buf[..n * 8], bat_offset + index as u64 * 8, "BAT")?;
            index += n;
        }
    }
    let end = if fixed {
        data_start + geo.data_blocks * block_size
    } else {
        data_start
    };
    storage
        .set_len(end)
        .ctx(|| format!("setting file size to {end}"))?;
    storage.sync().ctx(|| "flushing new image".into())?;
    drop(storage);

    let storage = FileStorage::open(path, true).ctx(|| "reopening new image".into())?;
    let mut allowed: Vec<PathBuf> = Vec::new();
    let canon = path.canonicalize().ctx(|| path.display().to_string())?;
    if let Some(dir) = canon.parent() {
        allowed.push(dir.to_path_buf());
    }
    if let Some((_, name)) = &parent {
        let p = resolve_parent(path, name);
        if let Some(dir) = p
            .canonicalize()
            .ok()
            .and_then(|c| c.parent().map(Path::to_path_buf))
        {
            allowed.push(dir);
        }
    }
    let ctx = OpenContext {
        path: Some(path.to_path_buf()),
        writable: true,
        allowed_dirs: allowed,
        open_backing: true,
        allow_backing: true,
        depth: 0,
    };
    Ok(Box::new(parse::open(Box::new(storage), &ctx)?))
}

fn resolve_parent(path: &Path, name: &str) -> PathBuf {
    if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        path.parent()
            .map(|d| d.join(name))
            .unwrap_or_else(|| PathBuf::from(name))
    }
}

/// The data write GUID of the parent `name` (relative to the new image's directory).
fn parent_linkage(path: &Path, name: &str) -> Result<(Uuid, String)> {
    let p = resolve_parent(path, name);
    let storage = FileStorage::open(&p, false).ctx(|| format!("parent {}", p.display()))?;
    let mut sig = [0u8; 8];
    storage
        .read_exact_at(&mut sig, 0)
        .ctx(|| format!("parent {}", p.display()))?;
    if &sig != FILE_SIGNATURE {
        return Err(Error::invalid(format!(
            "parent {} is not a vhdx image",
            p.display()
        )));
    }
    let (h, _, _) =
        parse::read_headers(&storage).map_err(|e| e.context(format!("parent {}", p.display())))?;
    Ok((h.data_write, name.to_string()))
}
