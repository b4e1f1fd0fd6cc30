//! `create`: qemu-img's qcow2 options, the initial layout (header, refcount table, refcount
//! blocks, L1 table) and preallocation.

use std::path::{Path, PathBuf};

use super::header::{
    Compression, Header, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, MAX_L1_BYTES,
    MAX_VIRTUAL_SIZE,
};
use super::meta::COPIED;
use super::refcount::Refcounts;
use super::Qcow2Image;
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::open::{parse_size, CreateOptions, OpenContext, Preallocation};
use crate::storage::{FileStorage, Storage};

fn on_off(s: &str) -> Result<bool> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::invalid(format!("'{s}' is not on or off"))),
    }
}

/// Settings parsed from the create options.
struct Settings {
    version: u32,
    cluster_bits: u32,
    refcount_order: u32,
    lazy: bool,
    compression: Compression,
    prealloc: Preallocation,
    backing_file: Option<String>,
    backing_format: Option<String>,
    size: u64,
}

fn parse(opts: &CreateOptions) -> Result<Settings> {
    let mut o = opts.options.clone();
    let version = CreateOptions::take(&mut o, "compat", |s| match s {
        "0.10" | "v2" => Ok(2),
        "1.1" | "v3" => Ok(3),
        _ => Err(Error::invalid("compat must be 0.10, 1.1, v2 or v3")),
    })?
    .unwrap_or(3);
    let cs = CreateOptions::take(&mut o, "cluster_size", parse_size)?.unwrap_or(65536);
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(Error::invalid(format!(
            "cluster_size {cs} is not a power of two between 512 and 2 MiB"
        )));
    }
    let rbits = CreateOptions::take(&mut o, "refcount_bits", |s| {
        s.parse::<u32>()
            .map_err(|_| Error::invalid(format!("'{s}' is not a number")))
    })?
    .unwrap_or(16);
    if !rbits.is_power_of_two() || rbits > 64 {
        return Err(Error::invalid(format!(
            "refcount_bits {rbits} is not one of 1, 2, 4, 8, 16, 32, 64"
        )));
    }
    if version == 2 && rbits != 16 {
        return Err(Error::invalid("compat=0.10 supports only refcount_bits=16"));
    }
    let lazy = CreateOptions::take(&mut o, "lazy_refcounts", on_off)?.unwrap_or(false);
    if lazy && version == 2 {
        return Err(Error::invalid("lazy_refcounts needs compat=1.1"));
    }
    let compression = CreateOptions::take(&mut o, "compression_type", |s| match s {
        "zlib" => Ok(Compression::Zlib),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(Error::invalid("compression_type must be zlib or zstd")),
    })?
    .unwrap_or(Compression::Zlib);
    if compression == Compression::Zstd && version == 2 {
        return Err(Error::invalid("compression_type=zstd needs compat=1.1"));
    }
    if CreateOptions::take(&mut o, "extended_l2", on_off)?.unwrap_or(false) {
        return Err(Error::unsupported(
            "creating images with extended L2 entries is not supported (they are read only)",
        ));
    }
    let prealloc = CreateOptions::take(&mut o, "preallocation", str::parse::<Preallocation>)?
        .unwrap_or_default();
    let opt_backing = CreateOptions::take(&mut o, "backing_file", |s| Ok(s.to_string()))?;
    let opt_fmt = CreateOptions::take(&mut o, "backing_fmt", |s| s.parse::<Format>())?;
    CreateOptions::reject_unknown(&o, Format::Qcow2)?;
    let backing_file = opts.backing_file.clone().or(opt_backing);
    let backing_format = opts
        .backing_format
        .or(opt_fmt)
        .map(|f| f.name().to_string());
    if backing_file.is_some() && prealloc != Preallocation::Off {
        return Err(Error::invalid(
            "preallocation cannot be combined with a backing file",
        ));
    }
    let size = opts.size.div_ceil(512) * 512;
    if size > MAX_VIRTUAL_SIZE {
        return Err(Error::limit(format!(
            "size {size} is above the 64 TiB limit"
        )));
    }
    Ok(Settings {
        version,
        cluster_bits: cs.trailing_zeros(),
        refcount_order: rbits.trailing_zeros(),
        lazy,
        compression,
        prealloc,
        backing_file,
        backing_format,
        size,
    })
}

/// Writes the initial layout of an empty image into `st` (header, refcount table and
/// blocks, L1 table).
fn format_storage(st: &dyn Storage, s: &Settings) -> Result<()> {
    let cs = 1u64 << s.cluster_bits;
    let mut h = Header {
        version: s.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: s.cluster_bits,
        size: s.size,
        l1_size: 0,
        l1_table_offset: 0,
        refcount_table_offset: cs,
        refcount_table_clusters: 0,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: 0,
        compatible: if s.lazy { COMPAT_LAZY_REFCOUNTS } else { 0 },
        autoclear: 0,
        refcount_order: s.refcount_order,
        header_length: if s.version == 3 { 112 } else { 72 },
        compression: s.compression,
        tail: Vec::new(),
        backing_file: s.backing_file.clone(),
        backing_format: s.backing_format.clone(),
        feature_names: Vec::new(),
        other_extensions: Vec::new(),
    };
    if s.compression == Compression::Zstd {
        h.incompatible |= INCOMPAT_COMPRESSION;
    }
    let l1_entries = h.l1_entries_for(s.size).max(1);
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(Error::limit(format!(
            "an L1 table of {l1_entries} entries is above the 32 MiB limit; use bigger clusters"
        )));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    let rbe = (cs * 8) >> s.refcount_order;
    let (mut blocks, mut tclusters) = (1u64, 1u64);
    loop {
        let total = 1 + tclusters + blocks + l1_clusters;
        let nb = total.div_ceil(rbe);
        let nt = (nb * 8).div_ceil(cs);
        if nb == blocks && nt == tclusters {
            break;
        }
        blocks = nb;
        tclusters = nt;
    }
    let total = 1 + tclusters + blocks + l1_clusters;
    h.refcount_table_clusters = tclusters as u32;
    h.l1_size = l1_entries as u32;
    h.l1_table_offset = (1 + tclusters + blocks) * cs;
    let cluster0 = h.encode_cluster0()?;
    st.write_all_at(&cluster0, 0)
        .ctx(|| "writing header".into())?;
    let mut table = vec![0u8; (tclusters * cs) as usize];
    for b in 0..blocks {
        let off = (1 + tclusters + b) * cs;
        table[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
        let vals: Vec<u64> = (b * rbe..((b + 1) * rbe).min(total)).map(|_| 1).collect();
        st.write_all_at(&Refcounts::encode_block(s.refcount_order, cs, &vals), off)
            .ctx(|| "writing refcount block".into())?;
    }
    st.write_all_at(&table, cs)
        .ctx(|| "writing refcount table".into())?;
    st.write_all_at(&vec![0u8; (l1_clusters * cs) as usize], h.l1_table_offset)
        .ctx(|| "writing L1 table".into())?;
    st.sync().ctx(|| "flushing new image".into())
}

/// Creates an image in memory (tests): `opts` as for `create`, no backing file.
#[cfg(test)]
pub(crate) fn create_in(st: Box<dyn Storage>, opts: &CreateOptions) -> Result<Qcow2Image> {
    let s = parse(opts)?;
    format_storage(st.as_ref(), &s)?;
    Qcow2Image::open(st, &OpenContext::isolated(true))
}

/// Creates a qcow2 image at `path` and returns it open for writing.
pub(crate) fn create(path: &Path, opts: &CreateOptions) -> Result<Qcow2Image> {
    let s = parse(opts)?;
    let st = FileStorage::create(path).ctx(|| "creating file".into())?;
    format_storage(&st, &s)?;
    let mut allowed = Vec::new();
    let canon = path.canonicalize().ctx(|| path.display().to_string())?;
    if let Some(p) = canon.parent() {
        allowed.push(p.to_path_buf());
    }
    if let Some(b) = &s.backing_file {
        // A backing file named on the command line is trusted where it lies.
        let bp = PathBuf::from(b);
        let bp = if bp.is_absolute() {
            bp
        } else {
            canon.parent().map(|p| p.join(&bp)).unwrap_or(bp)
        };
        if let Some(parent) = bp.canonicalize().ok().as_deref().and_then(Path::parent) {
            allowed.push(parent.to_path_buf());
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
    let img = Qcow2Image::open(Box::new(st), &ctx)?;
    if s.prealloc != Preallocation::Off {
        preallocate(&img, path, s.prealloc)?;
    }
    Ok(img)
}

/// Allocates every cluster of the disk (and with falloc/full, its space).
fn preallocate(img: &Qcow2Image, path: &Path, mode: Preallocation) -> Result<()> {
    let st = img.storage();
    let g = img.geo;
    let clusters = img.size().div_ceil(g.cs);
    let mut m = img.lock();
    let mut gc = 0;
    while gc < clusters {
        let last = clusters.min(gc - gc % g.l2_entries + g.l2_entries);
        let l2 = img.l2_for_write(&mut m, gc)?;
        let runs = m.rc.alloc(st, last - gc)?;
        let mut c = gc;
        for (hs, hn) in runs {
            let t = m.l2(st, l2)?;
            for j in 0..hn {
                t[((c + j) % g.l2_entries) as usize] = ((hs + j) * g.cs) | COPIED;
            }
            match mode {
                Preallocation::Full => {
                    let zero = vec![0u8; (1 << 20).min(hn * g.cs) as usize];
                    let mut at = hs * g.cs;
                    let end = (hs + hn) * g.cs;
                    while at < end {
                        let n = (end - at).min(zero.len() as u64);
                        st.write_all_at(&zero[..n as usize], at)
                            .ctx(|| "preallocating".into())?;
                        at += n;
                    }
                }
                Preallocation::Falloc => {
                    let f = FileStorage::open(path, true).ctx(|| "preallocating".into())?;
                    rustix::fs::fallocate(
                        f.file(),
                        rustix::fs::FallocateFlags::empty(),
                        hs * g.cs,
                        hn * g.cs,
                    )
                    .map_err(|e| Error::io("preallocating", e.into()))?;
                }
                _ => {}
            }
            c += hn;
        }
        m.write_l2_entries(st, l2, gc % g.l2_entries, last - gc)?;
        gc = last;
    }
    img.flush_locked(&mut m)?;
    let end = m.rc.end * g.cs;
    if st.len().ctx(|| "reading size".into())? < end {
        st.set_len(end).ctx(|| "extending file".into())?;
    }
    Ok(())
}
