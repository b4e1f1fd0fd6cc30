//! Opening a VHDX file: identifier, headers, log replay, region tables, metadata, BAT and
//! parent, each checked before use.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};

use uuid::Uuid;

use super::check::{classify, Fault};
use super::format::*;
use super::image::{AllocState, HeaderState, Layout, VhdxImage};
use super::log::{self, ReplayedStorage};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::Format;
use crate::image::BlockImage;
use crate::open::OpenContext;
use crate::storage::Storage;

/// The current header, its slot, and a note for each damaged copy.
pub(super) fn read_headers(storage: &dyn Storage) -> Result<(Header, usize, Vec<String>)> {
    let mut parsed = Vec::with_capacity(2);
    for (i, &at) in HEADER_OFFSETS.iter().enumerate() {
        let mut b = vec![0u8; HEADER_SIZE];
        storage
            .read_exact_at(&mut b, at)
            .ctx(|| format!("reading header {}", i + 1))?;
        parsed.push(Header::parse(&b, i + 1));
    }
    let mut faults = Vec::new();
    let second = parsed.pop().expect("two headers");
    let first = parsed.pop().expect("two headers");
    match (first, second) {
        (Ok(a), Ok(b)) => Ok(if b.seq > a.seq {
            (b, 1, faults)
        } else {
            (a, 0, faults)
        }),
        (Ok(a), Err(e)) => {
            faults.push(e.message().to_string());
            Ok((a, 0, faults))
        }
        (Err(e), Ok(b)) => {
            faults.push(e.message().to_string());
            Ok((b, 1, faults))
        }
        (Err(e1), Err(e2)) => {
            // An unsupported version beats a checksum complaint as the reason to give.
            let e = if e2.kind() == ErrorKind::Unsupported && e1.kind() != ErrorKind::Unsupported {
                e2
            } else {
                e1
            };
            Err(Error::new(
                e.kind(),
                format!("no valid header: {}", e.message()),
            ))
        }
    }
}

/// The region table in force and a note for each damaged copy.
pub(super) fn read_region_tables(storage: &dyn Storage) -> Result<(Vec<RegionEntry>, Vec<String>)> {
    let mut faults = Vec::new();
    let mut first_err = None;
    let mut chosen = None;
    for (i, &at) in REGION_TABLE_OFFSETS.iter().enumerate() {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        storage
            .read_exact_at(&mut b, at)
            .ctx(|| format!("reading region table {}", i + 1))?;
        match parse_region_table(&b, i + 1) {
            Ok(t) => {
                if chosen.is_none() {
                    chosen = Some(t);
                }
            }
            Err(e) => {
                faults.push(e.message().to_string());
                first_err.get_or_insert(e);
            }
        }
    }
    match chosen {
        Some(t) => Ok((t, faults)),
        None => {
            let e = first_err.expect("both tables failed");
            Err(Error::new(
                e.kind(),
                format!("no valid region table: {}", e.message()),
            ))
        }
    }
}

/// Opens the VHDX image in `storage`.
pub(super) fn open(storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<VhdxImage> {
    let mut storage = storage;
    let file_len = storage.len().ctx(|| "reading file size".into())?;
    if file_len < MIB {
        return Err(Error::corrupt(format!(
            "file is truncated: {file_len} bytes, shorter than the 1 MiB header section"
        )));
    }
    let mut sig = [0u8; 8];
    storage
        .read_exact_at(&mut sig, 0)
        .ctx(|| "reading file type identifier".into())?;
    if &sig != FILE_SIGNATURE {
        return Err(Error::corrupt(
            "file type identifier signature is not 'vhdxfile'",
        ));
    }
    let (header, slot, mut header_faults) = read_headers(storage.as_ref())?;
    let writable = !storage.is_read_only();
    let mut dirty_log = false;
    let mut clear_log = false;
    if !header.log_guid.is_nil() {
        let plan = log::read_log(storage.as_ref(), &header, file_len)?;
        if plan.entries > 0 && writable {
            log::apply(storage.as_ref(), &plan)?;
            storage.sync().ctx(|| "flushing log replay".into())?;
        } else if plan.entries > 0 {
            storage =
                Box::new(ReplayedStorage::new(storage, &plan).ctx(|| "reading file size".into())?);
            dirty_log = true;
        }
        clear_log = writable;
    }
    let file_len = storage.len().ctx(|| "reading file size".into())?;
    let (regions, rt_faults) = read_region_tables(storage.as_ref())?;
    header_faults.extend(rt_faults);
    let log_end = header.log_end();
    let mut bat_region = None;
    let mut meta_region = None;
    for r in &regions {
        match r.guid {
            BAT_GUID => bat_region = Some(*r),
            METADATA_GUID => meta_region = Some(*r),
            g if r.required => {
                return Err(Error::unsupported(format!(
                    "region {g} at 0x{:x} is required but unknown",
                    r.offset
                )))
            }
            _ => {}
        }
        if r.end() > file_len {
            return Err(Error::corrupt(format!(
                "region {} at 0x{:x} length {} lies past the end of the file ({file_len} \
                 bytes): file is truncated",
                r.guid, r.offset, r.length
            )));
        }
        if header.log_length > 0 && r.offset < log_end && header.log_offset < r.end() {
            return Err(Error::corrupt(format!(
                "region {} at 0x{:x} overlaps the log at 0x{:x}",
                r.guid, r.offset, header.log_offset
            )));
        }
    }
    let bat_region = bat_region.ok_or_else(|| Error::corrupt("region table has no BAT region"))?;
    let meta_region =
        meta_region.ok_or_else(|| Error::corrupt("region table has no metadata region"))?;
    let layout = Layout {
        log_offset: header.log_offset,
        log_length: u64::from(header.log_length),
        bat_offset: bat_region.offset,
        bat_length: u64::from(bat_region.length),
        meta_offset: meta_region.offset,
        meta_length: u64::from(meta_region.length),
    };

    // Metadata.
    let mut table = vec![0u8; METADATA_TABLE_SIZE];
    storage
        .read_exact_at(&mut table, layout.meta_offset)
        .ctx(|| format!("reading metadata table at 0x{:x}", layout.meta_offset))?;
    let items = parse_metadata_table(&table, layout.meta_length)?;
    let mut found: HashMap<Uuid, MetaEntry> = HashMap::new();
    for e in &items {
        let known = matches!(
            e.id,
            FILE_PARAMETERS
                | VIRTUAL_DISK_SIZE
                | PAGE83_DATA
                | LOGICAL_SECTOR_SIZE
                | PHYSICAL_SECTOR_SIZE
                | PARENT_LOCATOR
        );
        if e.is_user {
            continue;
        }
        if !known && e.is_required {
            return Err(Error::unsupported(format!(
                "metadata item {} is required but unknown",
                e.id
            )));
        }
        found.insert(e.id, *e);
    }
    let read_item = |id: Uuid, name: &str, len: Option<u32>| -> Result<Option<Vec<u8>>> {
        let Some(e) = found.get(&id) else {
            return Ok(None);
        };
        if let Some(want) = len {
            if e.length != want {
                return Err(Error::corrupt(format!(
                    "metadata item {name} is {} bytes, not {want}",
                    e.length
                )));
            }
        }
        let mut b = vec![0u8; e.length as usize];
        let at = layout.meta_offset + u64::from(e.offset);
        storage
            .read_exact_at(&mut b, at)
            .ctx(|| format!("reading metadata item {name} at 0x{at:x}"))?;
        Ok(Some(b))
    };
    let missing = |name: &str| Error::corrupt(format!("metadata item {name} is missing"));
    let fp = read_item(FILE_PARAMETERS, "file parameters", Some(8))?
        .ok_or_else(|| missing("file parameters"))?;
    let vds = read_item(VIRTUAL_DISK_SIZE, "virtual disk size", Some(8))?
        .ok_or_else(|| missing("virtual disk size"))?;
    let lss = read_item(LOGICAL_SECTOR_SIZE, "logical sector size", Some(4))?
        .ok_or_else(|| missing("logical sector size"))?;
    let pss = read_item(PHYSICAL_SECTOR_SIZE, "physical sector size", Some(4))?
        .ok_or_else(|| missing("physical sector size"))?;
    let page83 = read_item(PAGE83_DATA, "page 83 data", Some(16))?
        .map(|b| guid_at(&b, 0))
        .unwrap_or_default();
    let flags = le32(&fp, 4);
    let leave_allocated = flags & 1 != 0;
    let has_parent = flags & 2 != 0;
    let geo = Geometry::new(
        le64(&vds, 0),
        u64::from(le32(&fp, 0)),
        u64::from(le32(&lss, 0)),
        u64::from(le32(&pss, 0)),
        has_parent,
    )?;
    if geo.bat_bytes() > layout.bat_length {
        return Err(Error::corrupt(format!(
            "BAT region of {} bytes is too small for {} entries",
            layout.bat_length, geo.bat_entries
        )));
    }

    // BAT.
    let mut bat = Vec::with_capacity(geo.bat_entries as usize);
    let mut chunk = vec![0u8; MIB as usize];
    let mut done = 0u64;
    while done < geo.bat_bytes() {
        let n = (geo.bat_bytes() - done).min(MIB) as usize;
        let at = layout.bat_offset + done;
        storage
            .read_exact_at(&mut chunk[..n], at)
            .ctx(|| format!("reading BAT at 0x{at:x}"))?;
        bat.extend(chunk[..n].chunks_exact(8).map(|c| le64(c, 0)));
        done += n as u64;
    }
    let mut max_end = file_len
        .max(log_end)
        .max(meta_region.end())
        .max(bat_region.end());
    let mut faults = false;
    for (i, &e) in bat.iter().enumerate() {
        match classify(&geo, &layout, i, e, u64::MAX) {
            Some(Fault::Invalid(_)) => faults = true,
            _ => {
                let state = bat_state(e);
                if matches!(state, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT) {
                    // Bitmap blocks are 1 MiB; payload blocks are a block each.
                    let len = if geo.has_parent && geo.is_bitmap_index(i as u64) {
                        SECTOR_BITMAP_SIZE
                    } else {
                        geo.block_size
                    };
                    max_end = max_end.max(bat_offset(e).saturating_add(len));
                }
            }
        }
    }
    let next_free = max_end.div_ceil(MIB).saturating_mul(MIB);

    // Parent.
    let mut parent_name = None;
    let mut backing = None;
    if has_parent {
        let loc = read_item(PARENT_LOCATOR, "parent locator", None)?
            .ok_or_else(|| missing("parent locator"))?;
        let pairs = parse_parent_locator(&loc)?;
        let (name, parent) = open_parent(&pairs, ctx)?;
        parent_name = Some(name);
        backing = parent;
    }

    let img = VhdxImage {
        storage,
        geo,
        layout,
        bat: RwLock::new(bat),
        alloc: Mutex::new(AllocState {
            next_free,
            dirty: BTreeSet::new(),
        }),
        header: Mutex::new(HeaderState {
            current: header.clone(),
            slot,
        }),
        in_use: AtomicBool::new(false),
        bat_faults: AtomicBool::new(faults),
        leave_allocated,
        page83,
        parent_name,
        backing,
        dirty_log,
        bitmaps: Mutex::new(HashMap::new()),
        files: ctx.path.iter().cloned().collect(),
        header_faults: Mutex::new(header_faults),
        regions,
    };
    if clear_log {
        // The log is replayed (or held nothing valid): record that in both headers.
        let mut h = super::image::lock(&img.header);
        let mut next = h.current.clone();
        next.log_guid = Uuid::nil();
        next.file_write = Uuid::new_v4();
        img.write_headers(&mut h, next)?;
    }
    Ok(img)
}

fn parse_guid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s.trim().trim_start_matches('{').trim_end_matches('}')).ok()
}

/// Opens the parent named by a locator; returns the name used and the image (none when
/// the context does not open backing chains).
fn open_parent(
    pairs: &[(String, String)],
    ctx: &OpenContext,
) -> Result<(String, Option<Box<dyn BlockImage>>)> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let linkage = get("parent_linkage")
        .ok_or_else(|| Error::corrupt("parent locator has no parent_linkage"))?;
    let linkage = parse_guid(linkage).ok_or_else(|| {
        Error::corrupt(format!(
            "parent locator parent_linkage '{linkage}' is not a GUID"
        ))
    })?;
    let linkage2 = get("parent_linkage2").and_then(parse_guid);
    let names: Vec<String> = ["relative_path", "absolute_win32_path", "volume_path"]
        .iter()
        .filter_map(|k| get(k))
        .map(|v| {
            let v = v.replace('\\', "/");
            v.strip_prefix("./").map(str::to_string).unwrap_or(v)
        })
        .collect();
    let first = names
        .first()
        .cloned()
        .ok_or_else(|| Error::corrupt("parent locator names no parent path"))?;
    if !ctx.allow_backing {
        return Err(Error::new(
            ErrorKind::PathNotAllowed,
            format!(
                "image is a differencing disk with parent '{first}', and backing files are \
                 not allowed here"
            ),
        ));
    }
    if !ctx.open_backing {
        return Ok((first, None));
    }
    let mut first_err = None;
    for name in &names {
        match ctx.open_backing_file(name, Some(Format::Vhdx)) {
            Ok(parent) => {
                let guid = parent
                    .info()
                    .specific
                    .get("data-write-guid")
                    .and_then(|v| v.as_str())
                    .and_then(parse_guid);
                if guid != Some(linkage) && (linkage2.is_none() || guid != linkage2) {
                    return Err(Error::corrupt(format!(
                        "parent '{name}' has data write GUID {}, but this image links to {linkage}: \
                         the parent was modified or is another disk",
                        guid.map(|g| g.to_string()).unwrap_or_else(|| "(none)".into())
                    )));
                }
                return Ok((name.clone(), Some(parent)));
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.expect("at least one parent name"))
}
