//! Creating VMDK images with qemu-img's `-o` options: subformat, adapter_type, hwversion,
//! toolsversion, compat6, zeroed_grain, preallocation (and the file-level no-ops nocow and
//! extent_size_hint).

use std::path::{Path, PathBuf};

use super::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT};
use super::disk::{Body, Piece, VmdkImage};
use super::header::{
    sectors_for, SparseHeader, COMPRESS_DEFLATE, COMPRESS_NONE, FLAG_COMPRESSED, FLAG_MARKERS,
    FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, GD_AT_END, SECTOR,
};
use super::sparse::{SparseExtent, MAX_VIRTUAL};
use super::stream::StreamState;
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::BlockImage;
use crate::open::{parse_size, CreateOptions, OpenContext, OpenOptions, Preallocation};
use crate::storage::{FileStorage, Storage};

/// Grain size of new sparse extents, in sectors (64 KiB).
const GRAIN: u64 = 128;
/// Grain table entries per table.
const GTES: u64 = 512;
/// Largest extent of the twoGbMaxExtent subformats.
const SPLIT: u64 = 2 << 30;
/// Sectors reserved for an embedded descriptor (at least).
const DESC_SECTORS: u64 = 20;

/// The subformats `qemu-img create -o subformat=` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subformat {
    MonolithicSparse,
    MonolithicFlat,
    TwoGbSparse,
    TwoGbFlat,
    Stream,
}

impl Subformat {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbFlat,
            "streamOptimized" => Subformat::Stream,
            _ => {
                return Err(Error::invalid(format!(
                    "subformat '{s}' is not one of monolithicSparse, monolithicFlat, \
                     twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized"
                )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbFlat => "twoGbMaxExtentFlat",
            Subformat::Stream => "streamOptimized",
        }
    }
}

fn parse_bool(s: &str) -> Result<bool> {
    match s {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Error::invalid(format!("'{s}' is not on or off"))),
    }
}

/// Options after parsing.
struct Plan {
    subformat: Subformat,
    adapter: String,
    hwversion: String,
    toolsversion: String,
    zeroed_grain: bool,
    prealloc: Preallocation,
}

fn plan(opts: &CreateOptions) -> Result<Plan> {
    let mut o = opts.options.clone();
    let subformat = CreateOptions::take(&mut o, "subformat", Subformat::parse)?
        .unwrap_or(Subformat::MonolithicSparse);
    let adapter = CreateOptions::take(&mut o, "adapter_type", |s| match s {
        "ide" | "lsilogic" | "buslogic" | "legacyESX" => Ok(s.to_string()),
        _ => Err(Error::invalid(format!(
            "adapter type '{s}' is not one of ide, lsilogic, buslogic, legacyESX"
        ))),
    })?
    .unwrap_or_else(|| "ide".into());
    let hw = CreateOptions::take(&mut o, "hwversion", |s| Ok(s.to_string()))?
        .filter(|s| s != "undefined");
    let compat6 = CreateOptions::take(&mut o, "compat6", parse_bool)?.unwrap_or(false);
    if compat6 && hw.is_some() {
        return Err(Error::invalid(
            "compat6 cannot be enabled with hwversion set",
        ));
    }
    let hwversion = hw.unwrap_or_else(|| if compat6 { "6" } else { "4" }.into());
    let toolsversion = CreateOptions::take(&mut o, "toolsversion", |s| Ok(s.to_string()))?
        .unwrap_or_else(|| "2147483647".into());
    let zeroed_grain = CreateOptions::take(&mut o, "zeroed_grain", parse_bool)?.unwrap_or(false);
    let prealloc = CreateOptions::take(&mut o, "preallocation", |s| {
        let p: Preallocation = s.parse()?;
        if p == Preallocation::Metadata {
            return Err(Error::invalid(
                "vmdk supports preallocation off, falloc or full",
            ));
        }
        Ok(p)
    })?
    .unwrap_or_default();
    if let Some(f) = CreateOptions::take(&mut o, "backing_fmt", |s| s.parse::<Format>())? {
        if f != Format::Vmdk {
            return Err(Error::invalid(
                "the backing file of a vmdk image must be vmdk",
            ));
        }
    }
    CreateOptions::take(&mut o, "nocow", parse_bool)?;
    CreateOptions::take(&mut o, "extent_size_hint", parse_size)?;
    CreateOptions::reject_unknown(&o, Format::Vmdk)?;
    if subformat == Subformat::Stream && prealloc != Preallocation::Off {
        return Err(Error::invalid(
            "streamOptimized images cannot be preallocated",
        ));
    }
    Ok(Plan {
        subformat,
        adapter,
        hwversion,
        toolsversion,
        zeroed_grain,
        prealloc,
    })
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::invalid(format!("'{}' has no usable file name", p.display())))
}

/// `stem{suffix}.ext` (or `name{suffix}` without an extension), as qemu-img names extents.
fn side_name(path: &Path, suffix: &str) -> Result<String> {
    let name = file_name(path)?;
    Ok(match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}{suffix}.{ext}"),
        _ => format!("{name}{suffix}"),
    })
}

fn new_cid() -> u32 {
    let v = uuid::Uuid::new_v4().as_u128() as u32;
    if v == NO_PARENT {
        0xfffffffe
    } else {
        v
    }
}

fn fill_prealloc(storage: &FileStorage, off: u64, len: u64, mode: Preallocation) -> Result<()> {
    match mode {
        Preallocation::Off | Preallocation::Metadata => Ok(()),
        Preallocation::Falloc => rustix::fs::fallocate(
            storage.file(),
            rustix::fs::FallocateFlags::empty(),
            off,
            len,
        )
        .map_err(|e| Error::io("preallocating", e.into())),
        Preallocation::Full => {
            let zero = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zero.len() as u64) as usize;
                storage
                    .write_all_at(&zero[..n], off + at)
                    .ctx(|| "preallocating".into())?;
                at += n as u64;
            }
            Ok(())
        }
    }
}

/// Writes a new (non-stream) sparse extent of `sectors` with optional embedded descriptor,
/// with all grain tables laid out after the directories, like qemu-img and VMware do.
/// Returns the byte range of the grain area that preallocation must fill.
pub(crate) fn write_sparse(
    storage: &dyn Storage,
    sectors: u64,
    desc: Option<&str>,
    zeroed_grain: bool,
    prealloc: Preallocation,
) -> Result<(u64, u64)> {
    let grains = sectors.div_ceil(GRAIN);
    let gt_count = grains.div_ceil(GTES);
    let gt_sectors = sectors_for(GTES * 4);
    let gd_sectors = sectors_for(gt_count * 4);
    let (desc_offset, desc_size) = match desc {
        Some(d) => (1, sectors_for(d.len() as u64).max(DESC_SECTORS)),
        None => (0, 0),
    };
    let rgd_offset = 1 + desc_size;
    let gd_offset = rgd_offset + gd_sectors + gt_count * gt_sectors;
    let tables_end = gd_offset + gd_sectors + gt_count * gt_sectors;
    let overhead = tables_end.next_multiple_of(GRAIN);
    let data_end = overhead
        + if prealloc == Preallocation::Off {
            0
        } else {
            grains * GRAIN
        };
    if data_end > u64::from(u32::MAX) {
        return Err(Error::limit(
            "sparse extent would exceed 2 TiB of 32-bit sector offsets",
        ));
    }
    let hdr = SparseHeader {
        version: if zeroed_grain { 2 } else { 1 },
        flags: FLAG_NL_DETECT | FLAG_RGD | if zeroed_grain { FLAG_ZERO_GRAIN } else { 0 },
        capacity: sectors,
        grain_size: GRAIN,
        desc_offset,
        desc_size,
        gtes_per_gt: GTES as u32,
        rgd_offset,
        gd_offset,
        overhead,
        unclean_shutdown: false,
        nl_ok: true,
        compress_algorithm: COMPRESS_NONE,
    };
    storage
        .set_len(data_end * SECTOR)
        .ctx(|| "sizing sparse extent".into())?;
    let mut meta = hdr.to_sector();
    if let Some(d) = desc {
        let mut text = d.as_bytes().to_vec();
        text.resize((desc_size * SECTOR) as usize, 0);
        meta.extend(text);
    }
    for dir in [rgd_offset, gd_offset] {
        let first_gt = dir + gd_sectors;
        let mut gd: Vec<u8> = (0..gt_count)
            .flat_map(|i| ((first_gt + i * gt_sectors) as u32).to_le_bytes())
            .collect();
        gd.resize((gd_sectors * SECTOR) as usize, 0);
        if prealloc != Preallocation::Off {
            for i in 0..gt_count {
                let mut gt = Vec::with_capacity((gt_sectors * SECTOR) as usize);
                for k in 0..GTES {
                    let g = i * GTES + k;
                    let v = if g < grains { overhead + g * GRAIN } else { 0 };
                    gt.extend((v as u32).to_le_bytes());
                }
                gd.extend(gt);
            }
        }
        storage
            .write_all_at(&gd, dir * SECTOR)
            .ctx(|| "writing grain directory".into())?;
    }
    // The header goes last: a crash before this point leaves no valid image.
    storage
        .write_all_at(&meta, 0)
        .ctx(|| "writing sparse extent header".into())?;
    storage.sync().ctx(|| "flushing new extent".into())?;
    Ok((overhead * SECTOR, grains * GRAIN * SECTOR))
}

fn write_sparse_file(
    storage: &FileStorage,
    sectors: u64,
    desc: Option<&str>,
    zeroed_grain: bool,
    prealloc: Preallocation,
) -> Result<()> {
    let (off, len) = write_sparse(storage, sectors, desc, zeroed_grain, prealloc)?;
    if prealloc != Preallocation::Off {
        fill_prealloc(storage, off, len, prealloc)?;
    }
    Ok(())
}

/// A descriptor for a new image (extent lines are added by the caller).
fn new_descriptor(plan: &Plan, sectors: u64, parent_cid: u32, hint: Option<String>) -> Descriptor {
    let heads: u64 = if plan.adapter == "ide" { 16 } else { 255 };
    let cylinders = (sectors / (heads * 63)).min(16383);
    Descriptor {
        cid: new_cid(),
        parent_cid,
        create_type: plan.subformat.name().into(),
        parent_hint: hint,
        extents: Vec::new(),
        ddb: vec![
            ("ddb.virtualHWVersion".into(), plan.hwversion.clone()),
            ("ddb.geometry.cylinders".into(), cylinders.to_string()),
            ("ddb.geometry.heads".into(), heads.to_string()),
            ("ddb.geometry.sectors".into(), "63".into()),
            ("ddb.adapterType".into(), plan.adapter.clone()),
            ("ddb.toolsVersion".into(), plan.toolsversion.clone()),
        ],
    }
}

/// A descriptor for an in-memory test image of `subformat`.
#[cfg(test)]
pub(crate) fn test_descriptor(subformat: &str, sectors: u64) -> Descriptor {
    let mut o = CreateOptions::sized(sectors * SECTOR);
    o.options.insert("subformat".into(), subformat.into());
    let p = plan(&o).expect("valid test options");
    new_descriptor(&p, sectors, NO_PARENT, None)
}

/// Creates a VMDK image at `path` and returns it open for writing.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
    let plan = plan(opts)?;
    let size = opts.size.next_multiple_of(SECTOR);
    if size > MAX_VIRTUAL {
        return Err(Error::limit(format!("size {size} is more than 64 TiB")));
    }
    if opts.backing_format.is_some_and(|f| f != Format::Vmdk) {
        return Err(Error::invalid(
            "the backing file of a vmdk image must be vmdk",
        ));
    }
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut parent_cid = NO_PARENT;
    let mut allowed = vec![dir.canonicalize().ctx(|| dir.display().to_string())?];
    if let Some(b) = &opts.backing_file {
        if plan.subformat == Subformat::Stream {
            return Err(Error::unsupported(
                "streamOptimized images cannot have a backing file",
            ));
        }
        let bpath = if Path::new(b).is_absolute() {
            PathBuf::from(b)
        } else {
            dir.join(b)
        };
        let mut ro = OpenOptions::read(Some(Format::Vmdk));
        ro.open_backing = false;
        let backing =
            crate::open::open(&bpath, &ro).map_err(|e| e.context(format!("backing file {b}")))?;
        parent_cid = backing
            .info()
            .specific
            .get("cid")
            .and_then(|v| v.as_u64())
            .unwrap_or(u64::from(NO_PARENT)) as u32;
        if let Some(p) = bpath
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            allowed.push(p);
        }
    }
    let sectors = size / SECTOR;
    let mut desc = new_descriptor(&plan, sectors, parent_cid, opts.backing_file.clone());
    let line = |sectors: u64, kind: ExtentType, file: String| ExtentLine {
        access: Access::Rw,
        sectors,
        kind,
        file: Some(file),
        offset: 0,
    };
    let own_name = file_name(path)?;
    match plan.subformat {
        Subformat::Stream => return create_stream(path, sectors, desc),
        Subformat::MonolithicSparse => {
            desc.extents
                .push(line(sectors, ExtentType::Sparse, own_name));
            let storage = FileStorage::create(path).ctx(|| path.display().to_string())?;
            write_sparse_file(
                &storage,
                sectors,
                Some(&desc.render()),
                plan.zeroed_grain,
                plan.prealloc,
            )?;
        }
        Subformat::MonolithicFlat | Subformat::TwoGbFlat | Subformat::TwoGbSparse => {
            let sparse = plan.subformat == Subformat::TwoGbSparse;
            let chunk = if plan.subformat == Subformat::MonolithicFlat {
                size.max(1)
            } else {
                SPLIT
            };
            let mut at = 0u64;
            let mut k = 1;
            while at < size || (size == 0 && k == 1) {
                let n = (size - at).min(chunk);
                let name = match plan.subformat {
                    Subformat::MonolithicFlat => side_name(path, "-flat")?,
                    _ if sparse => side_name(path, &format!("-s{k:03}"))?,
                    _ => side_name(path, &format!("-f{k:03}"))?,
                };
                let epath = dir.join(&name);
                let storage = FileStorage::create(&epath).ctx(|| epath.display().to_string())?;
                if sparse {
                    write_sparse_file(
                        &storage,
                        n / SECTOR,
                        None,
                        plan.zeroed_grain,
                        plan.prealloc,
                    )?;
                    desc.extents
                        .push(line(n / SECTOR, ExtentType::Sparse, name));
                } else {
                    storage.set_len(n).ctx(|| epath.display().to_string())?;
                    fill_prealloc(&storage, 0, n, plan.prealloc)?;
                    desc.extents.push(line(n / SECTOR, ExtentType::Flat, name));
                }
                at += n;
                k += 1;
                if size == 0 {
                    break;
                }
            }
            let storage = FileStorage::create(path).ctx(|| path.display().to_string())?;
            storage
                .write_all_at(desc.render().as_bytes(), 0)
                .and_then(|_| storage.sync())
                .ctx(|| format!("writing descriptor {}", path.display()))?;
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
    let storage = FileStorage::open(path, true).ctx(|| path.display().to_string())?;
    Ok(Box::new(super::open_image(Box::new(storage), &ctx)?))
}

/// Creates a streamOptimized image: header and descriptor now, grains as they are written,
/// tables and footer at `finish`.
fn create_stream(path: &Path, sectors: u64, desc: Descriptor) -> Result<Box<dyn BlockImage>> {
    let storage = FileStorage::create(path).ctx(|| path.display().to_string())?;
    let mut img = build_stream(Box::new(storage), &file_name(path)?, sectors, desc)?;
    img.pieces[0].file = path.canonicalize().ok();
    img.files = vec![path.to_path_buf()];
    Ok(Box::new(img))
}

/// Starts a streamOptimized image of `sectors` in `storage` (named `name` in its descriptor).
pub(crate) fn build_stream(
    storage: Box<dyn Storage>,
    name: &str,
    sectors: u64,
    mut desc: Descriptor,
) -> Result<VmdkImage> {
    desc.extents.push(ExtentLine {
        access: Access::Rw,
        sectors,
        kind: ExtentType::Sparse,
        file: Some(name.to_string()),
        offset: 0,
    });
    let text = desc.render();
    let desc_size = sectors_for(text.len() as u64).max(DESC_SECTORS);
    let hdr = SparseHeader {
        version: 3,
        flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: sectors,
        grain_size: GRAIN,
        desc_offset: 1,
        desc_size,
        gtes_per_gt: GTES as u32,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: (1 + desc_size).next_multiple_of(GRAIN),
        unclean_shutdown: false,
        nl_ok: true,
        compress_algorithm: COMPRESS_DEFLATE,
    };
    let mut head = hdr.to_sector();
    let mut t = text.into_bytes();
    t.resize((desc_size * SECTOR) as usize, 0);
    head.extend(t);
    head.resize((hdr.overhead * SECTOR) as usize, 0);
    storage
        .write_all_at(&head, 0)
        .ctx(|| "writing stream header".into())?;
    let gt_count = sectors.div_ceil(GRAIN).div_ceil(GTES);
    let ext = SparseExtent::from_parts(
        storage,
        hdr,
        vec![0; gt_count as usize],
        None,
        Some(StreamState::new(gt_count)),
    )?;
    let piece = Piece {
        start: 0,
        len: sectors * SECTOR,
        access: Access::Rw,
        kind: ExtentType::Sparse,
        embedded: true,
        file: None,
        body: Body::Sparse(Box::new(ext)),
    };
    Ok(VmdkImage {
        pieces: vec![piece],
        size: sectors * SECTOR,
        desc,
        files: Vec::new(),
        backing: None,
        read_only: false,
        desc_storage: None,
        level: Default::default(),
    })
}
