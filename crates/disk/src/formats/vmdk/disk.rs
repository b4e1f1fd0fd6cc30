//! The open VMDK image: a list of extents laid end to end, the descriptor, and the backing
//! image, behind [`BlockImage`].

use std::path::PathBuf;

use super::descriptor::{Access, Descriptor, ExtentType};
use super::sparse::{deflate_grain, Grain, SparseExtent};
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::{
    check_range, BlockImage, CheckReport, CompressedWrite, Extent, ExtentKind, ImageInfo,
};
use crate::storage::Storage;

/// What backs one extent.
pub(crate) enum Body {
    /// A flat file; guest bytes start at `base` in it.
    Flat {
        /// The extent file.
        storage: Box<dyn Storage>,
        /// Byte offset of the extent's first byte in the file.
        base: u64,
    },
    /// Reads as zeroes.
    Zero,
    /// A sparse extent.
    Sparse(Box<SparseExtent>),
}

/// One extent of the disk.
pub(crate) struct Piece {
    /// Guest offset of its first byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Access mode from the descriptor.
    pub access: Access,
    /// Type from the descriptor (for `info`).
    pub kind: ExtentType,
    /// The sparse extent holds the descriptor (monolithicSparse, streamOptimized).
    pub embedded: bool,
    /// Path of the extent file, when known.
    pub file: Option<PathBuf>,
    /// The data.
    pub body: Body,
}

/// An open VMDK image.
pub struct VmdkImage {
    pub(crate) pieces: Vec<Piece>,
    pub(crate) size: u64,
    pub(crate) desc: Descriptor,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) backing: Option<Box<dyn BlockImage>>,
    pub(crate) read_only: bool,
    /// The separate descriptor file, synced on flush.
    pub(crate) desc_storage: Option<Box<dyn Storage>>,
    /// How hard grains are compressed (`CompressionLevel::encode`).
    pub(crate) level: std::sync::atomic::AtomicU8,
}

const ZERO_CHUNK: usize = 1 << 20;

impl VmdkImage {
    fn piece_at(&self, offset: u64) -> Result<&Piece> {
        let i = self.pieces.partition_point(|p| p.start + p.len <= offset);
        self.pieces
            .get(i)
            .filter(|p| p.start <= offset)
            .ok_or_else(|| Error::invalid(format!("offset {offset} is not in any extent")))
    }

    /// Fills `buf` with what the layer below shows at guest offset `at`.
    fn read_below(&self, buf: &mut [u8], at: u64) -> Result<()> {
        match &self.backing {
            Some(b) => {
                let bsize = b.virtual_size();
                let n = bsize.saturating_sub(at).min(buf.len() as u64) as usize;
                if n > 0 {
                    b.read_at(&mut buf[..n], at)?;
                }
                buf[n..].fill(0);
                Ok(())
            }
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn writable_piece(&self, p: &Piece) -> Result<()> {
        if self.read_only {
            return Err(Error::read_only("the vmdk image is open read-only"));
        }
        if p.access != Access::Rw {
            return Err(Error::read_only(format!(
                "the extent at guest offset {} is not RW",
                p.start
            )));
        }
        Ok(())
    }

    /// Runs `f` over each extent piece of `[offset, offset + len)`.
    fn for_pieces(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&Piece, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let p = self.piece_at(at)?;
            let rel = at - p.start;
            let n = (p.len - rel).min(len - done);
            f(p, rel, n, done)?;
            done += n;
        }
        Ok(())
    }

    fn has_backing(&self) -> bool {
        self.backing.is_some()
    }

    fn stream_extent(&self) -> Option<&SparseExtent> {
        self.pieces.iter().find_map(|p| match &p.body {
            Body::Sparse(e) if e.stream.is_some() => Some(e.as_ref()),
            _ => None,
        })
    }

    /// Zeroes (or with `discard`, deallocates) part of a sparse extent.
    fn zero_sparse(
        &self,
        p: &Piece,
        e: &SparseExtent,
        rel: u64,
        n: u64,
        unmap: bool,
        discard: bool,
    ) -> Result<()> {
        let g = e.grain_bytes;
        let end = rel + n;
        let full_start = rel.next_multiple_of(g);
        let full_end = if end == e.capacity_bytes {
            end.next_multiple_of(g)
        } else {
            end / g * g
        };
        if full_start >= full_end {
            return self.write_zero_bytes(p, rel, n);
        }
        if rel < full_start {
            self.write_zero_bytes(p, rel, full_start - rel)?;
        }
        if full_end < end {
            self.write_zero_bytes(p, full_end, end - full_end)?;
        }
        let limit = full_end.min(e.capacity_bytes);
        let mut at = full_start;
        while at < limit {
            let (state, run) = e.map(at, limit - at, true)?;
            let run_end = (at + run).next_multiple_of(g).min(full_end);
            let grains = (run_end - at) / g;
            let act = match state {
                Grain::Data(_) | Grain::Compressed(_) => true,
                Grain::Unallocated => self.has_backing() && !discard,
                Grain::Zero => false,
            };
            if act {
                if discard {
                    e.set_entries(at / g, grains, 0)?;
                } else if e.hdr.zero_grain() {
                    e.set_entries(at / g, grains, 1)?;
                } else if unmap && !self.has_backing() {
                    e.set_entries(at / g, grains, 0)?;
                } else {
                    self.write_zero_bytes(p, at, run_end.min(e.capacity_bytes) - at)?;
                }
            }
            at = run_end;
        }
        Ok(())
    }

    fn write_zero_bytes(&self, p: &Piece, rel: u64, n: u64) -> Result<()> {
        let zero = vec![0u8; (n as usize).min(ZERO_CHUNK)];
        let mut done = 0u64;
        while done < n {
            let k = (n - done).min(zero.len() as u64) as usize;
            self.write_piece(p, &zero[..k], rel + done)?;
            done += k as u64;
        }
        Ok(())
    }

    fn write_piece(&self, p: &Piece, buf: &[u8], rel: u64) -> Result<()> {
        match &p.body {
            Body::Flat { storage, base } => storage
                .write_all_at(buf, base + rel)
                .ctx(|| format!("writing flat extent at offset {}", base + rel)),
            Body::Zero => Err(Error::unsupported(format!(
                "the ZERO extent at guest offset {} cannot be written",
                p.start
            ))),
            Body::Sparse(e) if e.stream.is_some() => e.stream_write(buf, rel, false),
            Body::Sparse(e) => e.write(buf, rel, self.has_backing(), &mut |b, r| {
                self.read_below(b, p.start + r)
            }),
        }
    }

    fn zero_range(&self, offset: u64, len: u64, unmap: bool, discard: bool) -> Result<()> {
        check_range(offset, len, self.size)?;
        self.for_pieces(offset, len, |p, rel, n, _| {
            self.writable_piece(p)?;
            match &p.body {
                Body::Flat { storage, base } if unmap || discard => storage
                    .punch_hole(base + rel, n)
                    .ctx(|| format!("discarding flat extent at offset {}", base + rel)),
                Body::Flat { .. } => self.write_zero_bytes(p, rel, n),
                Body::Zero => Ok(()),
                Body::Sparse(e) if e.stream.is_some() => {
                    let zero = vec![0u8; (n as usize).min(ZERO_CHUNK)];
                    let mut done = 0u64;
                    while done < n {
                        let k = (n - done).min(zero.len() as u64) as usize;
                        e.stream_write(&zero[..k], rel + done, true)?;
                        done += k as u64;
                    }
                    Ok(())
                }
                Body::Sparse(e) => self.zero_sparse(p, e, rel, n, unmap, discard),
            }
        })
    }
}

impl BlockImage for VmdkImage {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::new(Format::Vmdk, self.size);
        if !self.desc.create_type.is_empty() {
            info.subformat = Some(self.desc.create_type.clone());
        }
        info.cluster_size = match self.pieces.first().map(|p| &p.body) {
            Some(Body::Sparse(e)) => Some(e.grain_bytes),
            _ => None,
        };
        info.backing_file = self.desc.parent_hint.clone();
        if info.backing_file.is_some() {
            info.backing_format = Some(
                self.backing
                    .as_ref()
                    .map_or_else(|| "vmdk".to_string(), |b| b.format().to_string()),
            );
        }
        info.files = self.files.clone();
        let s = &mut info.specific;
        s.insert("cid".into(), self.desc.cid.into());
        s.insert("parent-cid".into(), self.desc.parent_cid.into());
        s.insert("create-type".into(), self.desc.create_type.clone().into());
        let extents: Vec<serde_json::Value> = self
            .pieces
            .iter()
            .map(|p| {
                let mut m = serde_json::Map::new();
                if let Some(f) = &p.file {
                    m.insert("filename".into(), f.display().to_string().into());
                }
                m.insert("virtual-size".into(), p.len.into());
                m.insert(
                    "format".into(),
                    if p.embedded { "" } else { p.kind.name() }.into(),
                );
                if let Body::Sparse(e) = &p.body {
                    m.insert("cluster-size".into(), e.grain_bytes.into());
                    if e.hdr.compressed() {
                        m.insert("compressed".into(), true.into());
                    }
                }
                serde_json::Value::Object(m)
            })
            .collect();
        s.insert("extents".into(), extents.into());
        info
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let len = buf.len() as u64;
        self.for_pieces(offset, len, |p, rel, n, done| {
            let chunk = &mut buf[done as usize..(done + n) as usize];
            if p.access == Access::Denied {
                return Err(Error::invalid(format!(
                    "the extent at guest offset {} is NOACCESS",
                    p.start
                )));
            }
            match &p.body {
                Body::Flat { storage, base } => storage
                    .read_zero_padded(chunk, base + rel)
                    .ctx(|| format!("reading flat extent at offset {}", base + rel)),
                Body::Zero => {
                    chunk.fill(0);
                    Ok(())
                }
                Body::Sparse(e) => e.read(chunk, rel, &mut |b, r| self.read_below(b, p.start + r)),
            }
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.for_pieces(offset, buf.len() as u64, |p, rel, n, done| {
            self.writable_piece(p)?;
            self.write_piece(p, &buf[done as usize..(done + n) as usize], rel)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.zero_range(offset, len, unmap, false)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len, true, true)
    }

    fn flush(&self) -> Result<()> {
        for p in &self.pieces {
            match &p.body {
                Body::Flat { storage, .. } => storage.sync().ctx(|| "flushing extent".into())?,
                Body::Zero => {}
                Body::Sparse(e) => e.flush()?,
            }
        }
        if let Some(d) = &self.desc_storage {
            d.sync().ctx(|| "flushing descriptor".into())?;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent> {
        check_range(offset, max_len.min(1), self.size)?;
        let p = self.piece_at(offset)?;
        let rel = offset - p.start;
        let n = max_len.min(p.len - rel).max(1);
        let (kind, length, host) = match &p.body {
            Body::Flat { storage, base } => {
                let (data, run) = storage
                    .data_run(base + rel, n)
                    .ctx(|| format!("mapping flat extent at offset {}", base + rel))?;
                if data {
                    (ExtentKind::Data, run, Some(base + rel))
                } else {
                    (ExtentKind::Zero, run, None)
                }
            }
            Body::Zero => (ExtentKind::Zero, n, None),
            Body::Sparse(e) => {
                if e.unfinished_stream() {
                    return Err(Error::unsupported(
                        "a streamOptimized image cannot be mapped before it is finished",
                    ));
                }
                let (g, run) = e.map(rel, n, true)?;
                match g {
                    Grain::Data(h) => (ExtentKind::Data, run, Some(h)),
                    Grain::Compressed(_) => (ExtentKind::Data, run, None),
                    Grain::Zero => (ExtentKind::Zero, run, None),
                    Grain::Unallocated => (ExtentKind::Unallocated, run, None),
                }
            }
        };
        Ok(Extent {
            start: offset,
            length: length.clamp(1, n),
            kind,
            host_offset: host,
        })
    }

    fn backing(&self) -> Option<&dyn BlockImage> {
        self.backing.as_deref()
    }

    fn check(&self, repair: bool) -> Result<CheckReport> {
        super::check::check(self, repair)
    }

    fn compressed(&self) -> Option<&dyn CompressedWrite> {
        self.stream_extent()
            .filter(|e| e.unfinished_stream())
            .map(|_| self as &dyn CompressedWrite)
    }

    fn finish(&self) -> Result<()> {
        if let Some(e) = self.stream_extent() {
            e.stream_finish()?;
        }
        self.flush()
    }
}

impl CompressedWrite for VmdkImage {
    fn compressed_unit(&self) -> u64 {
        self.stream_extent().map_or(65536, |e| e.grain_bytes)
    }

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let g = self.compressed_unit() as usize;
        if data.len() > g {
            return Err(Error::invalid(format!(
                "{} bytes is more than one grain ({g} bytes)",
                data.len()
            )));
        }
        let level = self.level.load(std::sync::atomic::Ordering::Relaxed);
        deflate_grain(data, g, crate::image::CompressionLevel::decode(level))
    }

    fn set_level(&self, level: crate::image::CompressionLevel) {
        self.level
            .store(level.encode(), std::sync::atomic::Ordering::Relaxed);
    }

    fn write_compressed(&self, offset: u64, raw: &[u8], compressed: &[u8]) -> Result<()> {
        let e = self
            .stream_extent()
            .ok_or_else(|| Error::unsupported("this vmdk image does not take compressed grains"))?;
        let g = e.grain_bytes;
        if offset % g != 0 || raw.len() as u64 > g {
            return Err(Error::invalid(format!(
                "compressed write at offset {offset} of {} bytes is not one aligned grain",
                raw.len()
            )));
        }
        check_range(offset, raw.len() as u64, self.size)?;
        if self.read_only {
            return Err(Error::read_only("the vmdk image is open read-only"));
        }
        e.stream_put_compressed(offset / g, raw, compressed)
    }

    fn requires_sequential(&self) -> bool {
        true
    }
}

impl Drop for VmdkImage {
    fn drop(&mut self) {
        // A stream image that was never finished would be unreadable; complete it.
        if let Some(e) = self.stream_extent() {
            let _ = e.stream_finish();
        }
    }
}
