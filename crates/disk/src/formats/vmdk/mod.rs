//! VMware virtual disks (VMDK): reading and writing monolithicSparse, streamOptimized,
//! monolithicFlat, twoGbMaxExtentSparse and twoGbMaxExtentFlat images.
//!
//! # Layout
//! A VMDK image is a text *descriptor* (identity `CID`/`parentCID`, `createType`, extent
//! lines, and the `ddb.*` disk database) plus one or more *extents* laid end to end in guest
//! order. The descriptor is its own file (flat and twoGb subformats) or is embedded in a
//! sparse extent at `descriptorOffset` (monolithicSparse, streamOptimized). Extents are
//! FLAT (guest bytes at an offset of a raw file), ZERO (nothing stored), or SPARSE: a
//! `KDMV` header, a grain directory (GD) of 32-bit sector offsets of grain tables (GT, 512
//! entries each), and GT entries giving the sector of each grain (0 = unallocated, 1 = zeroed
//! grain when the header allows it). A redundant GD/GT copy (RGD) is kept in step on writes.
//! streamOptimized extents store each grain zlib-compressed after a 12-byte grain marker
//! (LBA, size); their header says `gdOffset = GD_AT_END` and the real directory is in a footer
//! (a header copy) that sits before the end-of-stream marker, after GT and GD markers.
//!
//! # Update order
//! Grains are appended at the end of the extent file. A write to an unallocated grain writes
//! the whole grain (filled from the backing image or zeroes) first, then the GT entry (primary,
//! then redundant), so a crash leaves at most a leaked grain. New grain tables are written
//! zeroed before the directory entry that points at them. The order is the order of the
//! pwrites (no fsync between data and table entry, as in qemu): it holds against a killed
//! process; `flush` syncs every extent file. Allocation is serialized by the
//! extent's metadata mutex; writes to allocated grains run in parallel outside it. A
//! streamOptimized image is written once, in increasing grain order (`write_at` or
//! [`crate::CompressedWrite`]); `finish` (or dropping the image) writes the last GT, the GD,
//! the footer and the end-of-stream marker.
//!
//! # Refused
//! Descriptors over 1 MiB, absolute extent paths or paths leaving the image's directory,
//! VMFS raw device maps and COWD (`vmfsSparse`) extents, grain sizes over 16 MiB, directories
//! over 128 MiB, virtual sizes over 64 TiB, compressed grains that inflate beyond one grain,
//! rewriting existing compressed extents, and writes to grains that overlap metadata.

mod check;
mod create;
mod descriptor;
mod disk;
mod header;
mod sparse;
mod stream;
#[cfg(test)]
mod tests;

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

use descriptor::{Descriptor, ExtentType, MAX_DESCRIPTOR, NO_PARENT};
use disk::{Body, Piece, VmdkImage};
use header::{MAGIC, SECTOR};
use sparse::{SparseExtent, MAX_VIRTUAL};

pub use disk::VmdkImage as Image;

/// The vmdk format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(b"KDMV") || probe_descriptor(head)
    }

    fn open(&self, storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Ok(Box::new(open_image(storage, ctx)?))
    }

    fn create(&self, path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        create::create(path, opts)
    }
}

/// True when `head` looks like a VMDK text descriptor.
fn probe_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&head[..head.len().min(1024)]);
    text.starts_with("# Disk DescriptorFile")
        || (text.contains("createType=") && text.contains("version="))
}

/// Opens a VMDK image from its first file (a sparse extent or a text descriptor).
pub(crate) fn open_image(storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<VmdkImage> {
    let mut magic = [0u8; 4];
    storage
        .read_zero_padded(&mut magic, 0)
        .ctx(|| "reading vmdk header".into())?;
    let read_only = !ctx.writable || storage.is_read_only();
    let main_path = ctx.path.clone();
    let (desc, pieces, desc_storage) = if &magic == MAGIC {
        let e = SparseExtent::open(storage, !read_only)?;
        let desc = embedded_descriptor(&e)?;
        let piece = Piece {
            start: 0,
            len: e.capacity_bytes,
            access: descriptor::Access::Rw,
            kind: ExtentType::Sparse,
            embedded: true,
            file: main_path.clone(),
            body: Body::Sparse(Box::new(e)),
        };
        (desc, vec![piece], None)
    } else {
        let len = storage.len().ctx(|| "reading descriptor size".into())?;
        if len > MAX_DESCRIPTOR {
            return Err(Error::limit(format!(
                "vmdk descriptor file of {len} bytes is larger than 1 MiB"
            )));
        }
        let mut raw = vec![0u8; len as usize];
        storage
            .read_exact_at(&mut raw, 0)
            .ctx(|| "reading vmdk descriptor".into())?;
        if !probe_descriptor(&raw) {
            return Err(Error::corrupt(
                "file is neither a sparse extent nor a vmdk descriptor",
            ));
        }
        let desc = Descriptor::parse(&raw)?;
        let pieces = open_extents(&desc, ctx, !read_only)?;
        (desc, pieces, Some(storage))
    };
    let size = pieces.last().map_or(0, |p| p.start + p.len);
    let mut files: Vec<PathBuf> = main_path.into_iter().collect();
    for p in &pieces {
        if let Some(f) = &p.file {
            if !files.contains(f) {
                files.push(f.clone());
            }
        }
    }
    let backing = match &desc.parent_hint {
        Some(hint) if ctx.open_backing => Some(ctx.open_backing_file(hint, None)?),
        Some(hint) if !ctx.allow_backing => {
            return Err(Error::new(
                ErrorKind::PathNotAllowed,
                format!(
                    "image names backing file '{hint}', and backing files are not allowed here"
                ),
            ))
        }
        _ => None,
    };
    Ok(VmdkImage {
        pieces,
        size,
        desc,
        files,
        backing,
        read_only,
        desc_storage,
        level: Default::default(),
    })
}

/// The descriptor embedded in a sparse extent, or a default one when it has none.
fn embedded_descriptor(e: &SparseExtent) -> Result<Descriptor> {
    let h = &e.hdr;
    if h.desc_offset == 0 || h.desc_size == 0 {
        let mut d = Descriptor::parse(b"")?;
        d.create_type = "monolithicSparse".into();
        d.parent_cid = NO_PARENT;
        return Ok(d);
    }
    let bytes = h
        .desc_size
        .checked_mul(SECTOR)
        .filter(|&b| b <= MAX_DESCRIPTOR)
        .ok_or_else(|| {
            Error::limit(format!(
                "embedded descriptor of {} sectors is larger than 1 MiB",
                h.desc_size
            ))
        })?;
    let off = h
        .desc_offset
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::corrupt("descriptor offset overflows"))?;
    let mut raw = vec![0u8; bytes as usize];
    e.storage
        .read_exact_at(&mut raw, off)
        .ctx(|| format!("reading embedded descriptor at offset {off:#x}"))?;
    Descriptor::parse(&raw)
}

/// Checks an extent file name lexically: relative, and never climbing above its directory.
fn check_extent_name(name: &str) -> Result<()> {
    let refuse = |why: &str| {
        Error::new(
            ErrorKind::PathNotAllowed,
            format!("extent file '{name}' {why}"),
        )
    };
    let p = Path::new(name);
    if p.is_absolute() {
        return Err(refuse("is an absolute path"));
    }
    let mut depth = 0i64;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(refuse("leaves the descriptor's directory"));
                }
            }
            _ => return Err(refuse("is not a plain relative path")),
        }
    }
    Ok(())
}

/// Opens the extents a text descriptor lists.
fn open_extents(desc: &Descriptor, ctx: &OpenContext, writable: bool) -> Result<Vec<Piece>> {
    if desc.extents.is_empty() {
        return Err(Error::corrupt("vmdk descriptor lists no extents"));
    }
    let total = desc.total_sectors()?;
    if total.checked_mul(SECTOR).is_none_or(|b| b > MAX_VIRTUAL) {
        return Err(Error::limit(format!(
            "vmdk extents add up to {total} sectors, more than 64 TiB"
        )));
    }
    let me = ctx.path.as_ref().and_then(|p| p.canonicalize().ok());
    let mut pieces = Vec::with_capacity(desc.extents.len());
    let mut start = 0u64;
    for (i, line) in desc.extents.iter().enumerate() {
        let len = line.sectors * SECTOR;
        if len == 0 {
            continue;
        }
        let what = format!("extent {}", i + 1);
        let mut file = None;
        let body = match line.kind {
            ExtentType::Zero => Body::Zero,
            kind => {
                let name = line
                    .file
                    .as_deref()
                    .ok_or_else(|| Error::corrupt(format!("{what} has no file name")))?;
                check_extent_name(name)?;
                let storage = ctx.open_side_file(name, "extent file")?;
                let path = storage.path().map(Path::to_path_buf);
                if path.is_some() && path == me {
                    return Err(Error::corrupt(format!(
                        "{what} '{name}' is the descriptor file itself"
                    )));
                }
                file = path;
                let storage: Box<dyn Storage> = Box::new(storage);
                match kind {
                    ExtentType::Flat | ExtentType::Vmfs => {
                        let base = line
                            .offset
                            .checked_mul(SECTOR)
                            .filter(|b| b.checked_add(len).is_some_and(|e| e <= MAX_VIRTUAL))
                            .ok_or_else(|| {
                                Error::corrupt(format!(
                                    "{what} offset of {} sectors is out of range",
                                    line.offset
                                ))
                            })?;
                        Body::Flat { storage, base }
                    }
                    _ => {
                        let mut m = [0u8; 4];
                        storage
                            .read_zero_padded(&mut m, 0)
                            .ctx(|| format!("reading {what} '{name}'"))?;
                        if &m != MAGIC {
                            return Err(Error::unsupported(format!(
                                "{what} '{name}' is not a KDMV sparse extent (COWD and SESparse are not supported)"
                            )));
                        }
                        let e = SparseExtent::open(storage, writable)
                            .map_err(|e| e.context(format!("{what} '{name}'")))?;
                        if e.capacity_bytes < len {
                            return Err(Error::corrupt(format!(
                                "{what} '{name}' holds {} bytes but the descriptor gives it {len}",
                                e.capacity_bytes
                            )));
                        }
                        Body::Sparse(Box::new(e))
                    }
                }
            }
        };
        pieces.push(Piece {
            start,
            len,
            access: line.access,
            kind: line.kind,
            embedded: false,
            file,
            body,
        });
        start += len;
    }
    Ok(pieces)
}
