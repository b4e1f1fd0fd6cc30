//! Creating VHD images: fixed, dynamic and differencing, with qemu-img's `-o` options.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::dynheader::{encode_relative, DynHeader, Locator};
use super::footer::{plan_size, DiskType, Footer, NO_OFFSET, SECTOR, VHD_EPOCH};
use super::parse;
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext, OpenOptions, Preallocation};
use crate::storage::{FileStorage, Storage};

/// Default block size of dynamic images (what Hyper-V and qemu-img use).
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

/// What a new image looks like, after option parsing.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// Requested size in bytes (rounded as the footer requires).
    pub size: u64,
    /// `force_size`: keep the exact size instead of rounding up to a CHS geometry.
    pub force_size: bool,
    /// Preallocation of fixed images.
    pub prealloc: Preallocation,
    /// Parent of a differencing image: (relative name, absolute name, UUID, timestamp).
    pub parent: Option<ParentRef>,
}

/// What a differencing image records about its parent.
#[derive(Debug, Clone)]
pub struct ParentRef {
    /// Path relative to the new image's directory, if there is one.
    pub relative: Option<String>,
    /// Absolute path, if known.
    pub absolute: Option<String>,
    /// The parent's unique ID.
    pub uuid: [u8; 16],
    /// The parent's modification time, seconds since 2000.
    pub timestamp: u32,
}

pub(super) fn parse_bool(s: &str) -> Result<bool> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::invalid(format!("'{s}' is not on or off"))),
    }
}

fn now_vhd() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(VHD_EPOCH);
    secs.saturating_sub(VHD_EPOCH).min(u64::from(u32::MAX)) as u32
}

fn parent_ref(path: &Path, backing: &str, fmt: Option<Format>) -> Result<(ParentRef, u64)> {
    if fmt.is_some_and(|f| f != Format::Vpc) {
        return Err(Error::invalid(
            "a differencing VHD's parent must be a VHD (vpc) image",
        ));
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let bpath = if Path::new(backing).is_absolute() {
        PathBuf::from(backing)
    } else {
        dir.join(backing)
    };
    let parent = crate::open::open(&bpath, &OpenOptions::read(Some(Format::Vpc)))?;
    let uuid = parent
        .info()
        .specific
        .get("uuid")
        .and_then(|v| v.as_str())
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| Error::invalid(format!("parent '{backing}' has no VHD UUID")))?;
    let timestamp = std::fs::metadata(&bpath)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs().saturating_sub(VHD_EPOCH) as u32);
    let canon = bpath.canonicalize().ctx(|| bpath.display().to_string())?;
    let relative = if Path::new(backing).is_absolute() {
        dir.canonicalize()
            .ok()
            .and_then(|d| canon.strip_prefix(d).ok().map(|p| p.display().to_string()))
    } else {
        Some(backing.to_string())
    };
    Ok((
        ParentRef {
            relative,
            absolute: Some(canon.display().to_string()),
            uuid: *uuid.as_bytes(),
            timestamp,
        },
        parent.virtual_size(),
    ))
}

/// Parses the options of `qemu-img create -f vpc` into a plan.
pub fn plan(path: &Path, opts: &CreateOptions) -> Result<Plan> {
    let mut o = opts.options.clone();
    let sub = CreateOptions::take(&mut o, "subformat", |s| match s {
        "dynamic" => Ok(DiskType::Dynamic),
        "fixed" => Ok(DiskType::Fixed),
        _ => Err(Error::invalid(format!(
            "VHD subformat '{s}' is not dynamic or fixed"
        ))),
    })?;
    let force_size = CreateOptions::take(&mut o, "force_size", parse_bool)?.unwrap_or(false);
    let prealloc = CreateOptions::take(&mut o, "preallocation", str::parse::<Preallocation>)?
        .unwrap_or_default();
    CreateOptions::reject_unknown(&o, Format::Vpc)?;
    if prealloc == Preallocation::Metadata {
        return Err(Error::invalid(
            "vpc supports preallocation off, falloc and full",
        ));
    }
    let mut size = opts.size;
    let (disk_type, parent) = match &opts.backing_file {
        Some(b) => {
            if sub == Some(DiskType::Fixed) {
                return Err(Error::invalid("a fixed VHD cannot have a backing file"));
            }
            let (p, psize) = parent_ref(path, b, opts.backing_format)?;
            if size == 0 {
                size = psize;
            }
            (DiskType::Differencing, Some(p))
        }
        None => (sub.unwrap_or(DiskType::Dynamic), None),
    };
    Ok(Plan {
        disk_type,
        size,
        // A child has exactly its parent's size, whatever geometry that has.
        force_size: force_size || parent.is_some(),
        prealloc,
        parent,
    })
}

/// Writes a new, empty image laid out by `plan` into `storage` (which must be empty).
pub fn write_layout(storage: &dyn Storage, plan: &Plan) -> Result<()> {
    let (size, geometry, app) = plan_size(plan.size, plan.force_size)?;
    let mut footer = Footer {
        features: 2,
        version: 0x0001_0000,
        data_offset: NO_OFFSET,
        timestamp: now_vhd(),
        creator_app: app,
        creator_version: 0x0005_0003,
        creator_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        geometry,
        disk_type: plan.disk_type,
        uuid: *uuid::Uuid::new_v4().as_bytes(),
        saved_state: 0,
    };
    let w = |buf: &[u8], at: u64, what: &str| {
        storage
            .write_all_at(buf, at)
            .ctx(|| format!("writing the VHD {what} at offset {at:#x}"))
    };
    if plan.disk_type == DiskType::Fixed {
        if plan.prealloc == Preallocation::Full {
            let zero = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < size {
                let n = (size - at).min(zero.len() as u64) as usize;
                w(&zero[..n], at, "preallocated data")?;
                at += n as u64;
            }
        }
        return w(&footer.to_bytes(), size, "footer");
    }
    footer.data_offset = SECTOR;
    let bs = u64::from(DEFAULT_BLOCK_SIZE);
    let entries = size.div_ceil(bs).max(1);
    let bat_offset = 3 * SECTOR;
    let bat_len = (entries * 4).div_ceil(SECTOR) * SECTOR;
    let mut end = bat_offset + bat_len;
    let mut header = DynHeader {
        table_offset: bat_offset,
        version: 0x0001_0000,
        max_table_entries: entries as u32,
        block_size: DEFAULT_BLOCK_SIZE,
        parent_uuid: [0; 16],
        parent_timestamp: 0,
        parent_name: String::new(),
        locators: Vec::new(),
    };
    w(&vec![0xff; bat_len as usize], bat_offset, "BAT")?;
    if let Some(p) = &plan.parent {
        header.parent_uuid = p.uuid;
        header.parent_timestamp = p.timestamp;
        let name = p
            .relative
            .as_deref()
            .or(p.absolute.as_deref())
            .unwrap_or("");
        header.parent_name = name.rsplit('/').next().unwrap_or(name).to_string();
        let mut add = |code: [u8; 4], data: Vec<u8>| -> Result<()> {
            let space = (data.len() as u64).div_ceil(SECTOR).max(1);
            w(&data, end, "parent locator")?;
            header.locators.push(Locator {
                code,
                space: space as u32,
                length: data.len() as u32,
                offset: end,
            });
            end += space * SECTOR;
            Ok(())
        };
        if let Some(rel) = &p.relative {
            add(*b"W2ru", encode_relative(rel))?;
        }
        if let Some(abs) = &p.absolute {
            let data = abs
                .replace('/', "\\")
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect();
            add(*b"W2ku", data)?;
        }
    }
    w(&header.to_bytes(), SECTOR, "dynamic header")?;
    let fb = footer.to_bytes();
    w(&fb, 0, "footer copy")?;
    w(&fb, end, "footer")
}

/// Creates the image file at `path` and opens it for writing.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
    let plan = plan(path, opts)?;
    let storage = FileStorage::create(path).ctx(|| "creating VHD file".into())?;
    if plan.disk_type == DiskType::Fixed && plan.prealloc == Preallocation::Falloc {
        let (size, _, _) = plan_size(plan.size, plan.force_size)?;
        if size > 0 {
            rustix::fs::fallocate(storage.file(), rustix::fs::FallocateFlags::empty(), 0, size)
                .map_err(|e| Error::io("preallocating VHD data", e.into()))?;
        }
    }
    write_layout(&storage, &plan)?;
    storage.sync().ctx(|| "syncing new VHD".into())?;
    let mut allowed = Vec::new();
    for p in [
        Some(path.to_path_buf()),
        plan.parent
            .as_ref()
            .and_then(|p| p.absolute.clone().map(PathBuf::from)),
    ]
    .into_iter()
    .flatten()
    {
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
