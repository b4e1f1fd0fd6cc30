//! The open qcow2 image: opening (every table checked), `info`, reads, and the shared
//! helpers the write path, `check` and `create` use.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_json::json;

use super::compress;
use super::header::{Compression, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::meta::{Entry, Geo, Meta, RunKind};
use super::refcount::Refcounts;
use super::snapshot;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::Format;
use crate::image::{BlockImage, ImageInfo};
use crate::open::OpenContext;
use crate::storage::Storage;

/// An open qcow2 image.
pub(crate) struct Qcow2Image {
    pub(crate) st: Box<dyn Storage>,
    pub(crate) backing: Option<Box<dyn BlockImage>>,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) writable: bool,
    pub(crate) geo: Geo,
    pub(crate) compression: Compression,
    /// How hard compressed clusters are compressed (`CompressionLevel::encode`).
    pub(crate) compression_level: std::sync::atomic::AtomicU8,
    pub(crate) size: AtomicU64,
    pub(crate) meta: Mutex<Meta>,
    /// The last decompressed cluster: (descriptor, bytes).
    ccache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// Held shared by reads and in-place writes doing I/O without the metadata lock, and
    /// exclusively before clusters are freed, so a freed cluster is never reused while
    /// such I/O still targets it.
    pub(crate) inflight: RwLock<()>,
}

fn read_table(st: &dyn Storage, offset: u64, entries: u64, what: &str) -> Result<Vec<u64>> {
    let file_len = st.len().ctx(|| "reading file size".into())?;
    if offset.saturating_add(entries * 8) > file_len {
        return Err(Error::corrupt(format!(
            "{what} at offset {offset:#x} ({entries} entries) is truncated: the file ends at \
             {file_len:#x}"
        )));
    }
    let mut raw = vec![0u8; (entries * 8) as usize];
    st.read_exact_at(&mut raw, offset)
        .ctx(|| format!("reading {what} at offset {offset:#x}"))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect())
}

impl Qcow2Image {
    /// The current compression level for compressed clusters.
    pub(crate) fn level(&self) -> crate::image::CompressionLevel {
        crate::image::CompressionLevel::decode(
            self.compression_level
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Opens the image in `st`.
    pub(crate) fn open(st: Box<dyn Storage>, ctx: &OpenContext) -> Result<Qcow2Image> {
        let file_len = st.len().ctx(|| "reading file size".into())?;
        let mut first = vec![0u8; 104.min(file_len as usize)];
        st.read_exact_at(&mut first, 0)
            .ctx(|| "reading qcow2 header".into())?;
        if first.len() < 72 {
            return Err(Error::corrupt("qcow2 header is truncated"));
        }
        let cb = u32::from_be_bytes([first[20], first[21], first[22], first[23]]);
        if !(9..=21).contains(&cb) {
            return Err(Error::corrupt(format!(
                "cluster_bits {cb} is outside 9..21"
            )));
        }
        let mut head = vec![0u8; (1u64 << cb).min(file_len) as usize];
        st.read_exact_at(&mut head, 0)
            .ctx(|| "reading qcow2 header".into())?;
        let header = Header::parse(&head)?;
        let writable = ctx.writable && !st.is_read_only();
        if writable && header.incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Error::corrupt(
                "image is marked corrupt (incompatible feature bit 1); it can only be opened \
                 read-only",
            ));
        }
        if writable && header.extended_l2() {
            return Err(Error::unsupported(
                "writing images with extended L2 entries (subclusters) is not supported; open \
                 it read-only",
            ));
        }
        let backing = match &header.backing_file {
            Some(name) if ctx.open_backing || !ctx.allow_backing => {
                let fmt = match &header.backing_format {
                    Some(f) => Some(f.parse::<Format>().map_err(|_| {
                        Error::unsupported(format!("backing file format '{f}' is not supported"))
                    })?),
                    None => None,
                };
                Some(ctx.open_backing_file(name, fmt)?)
            }
            _ => None,
        };
        let l1 = read_table(
            st.as_ref(),
            header.l1_table_offset,
            u64::from(header.l1_size),
            "L1 table",
        )?;
        let rt_entries = u64::from(header.refcount_table_clusters) * header.cluster_size() / 8;
        let rtable = read_table(
            st.as_ref(),
            header.refcount_table_offset,
            rt_entries,
            "refcount table",
        )?;
        let snapshots = if header.nb_snapshots > 0 {
            snapshot::read_table(
                st.as_ref(),
                header.snapshots_offset,
                header.nb_snapshots,
                header.cluster_size(),
            )?
        } else {
            Vec::new()
        };
        let mut rc = Refcounts::new(
            rtable,
            header.refcount_table_offset,
            u64::from(header.refcount_table_clusters),
            header.refcount_order,
            header.cluster_size(),
            file_len,
        );
        rc.lazy = writable && header.lazy_refcounts();
        let geo = Geo::from_header(&header);
        let compression = header.compression;
        let size = header.size;
        let dirty = header.incompatible & INCOMPAT_DIRTY != 0;
        let autoclear = header.autoclear;
        let meta = Meta::new(header, l1, rc, snapshots);
        let img = Qcow2Image {
            st,
            backing,
            files: ctx.path.iter().cloned().collect(),
            writable,
            geo,
            compression,
            compression_level: std::sync::atomic::AtomicU8::new(0),
            size: AtomicU64::new(size),
            meta: Mutex::new(meta),
            ccache: Mutex::new(None),
            inflight: RwLock::new(()),
        };
        if writable {
            let mut m = img.lock();
            if autoclear != 0 {
                // We do not maintain bitmaps: clear the autoclear bits as the spec asks.
                m.header.autoclear = 0;
                img.st
                    .write_all_at(&0u64.to_be_bytes(), 88)
                    .ctx(|| "clearing autoclear feature bits".into())?;
            }
            if dirty {
                img.check_locked(&mut m, true)
                    .map_err(|e| e.context("rebuilding refcounts of a dirty image"))?;
            }
        }
        Ok(img)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn storage(&self) -> &dyn Storage {
        self.st.as_ref()
    }

    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Fails unless writes are allowed now.
    pub(crate) fn check_writable(&self, m: &Meta) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        if m.corrupt {
            return Err(Error::corrupt(
                "image is marked corrupt; writes are refused",
            ));
        }
        Ok(())
    }

    /// Reads guest bytes at `guest` from the backing image, zeroes past its end.
    pub(crate) fn read_backing(&self, buf: &mut [u8], guest: u64) -> Result<()> {
        let mut n = 0;
        if let Some(b) = &self.backing {
            let bsize = b.virtual_size();
            if guest < bsize {
                n = (buf.len() as u64).min(bsize - guest) as usize;
                b.read_at(&mut buf[..n], guest)?;
            }
        }
        buf[n..].fill(0);
        Ok(())
    }

    /// The decompressed contents of the compressed cluster with descriptor `desc`.
    pub(crate) fn compressed_cluster(&self, desc: u64) -> Result<Arc<Vec<u8>>> {
        {
            let c = self.ccache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((d, data)) = c.as_ref() {
                if *d == desc {
                    return Ok(data.clone());
                }
            }
        }
        let (off, nsec) = self.geo.compressed_range(desc);
        let end = (off & !511) + nsec * 512;
        let mut input = vec![0u8; (end - off) as usize];
        self.st
            .read_zero_padded(&mut input, off)
            .ctx(|| format!("reading compressed cluster at offset {off:#x}"))?;
        let mut out = vec![0u8; self.geo.cs as usize];
        compress::decompress(self.compression, &input, &mut out, off)?;
        let data = Arc::new(out);
        *self.ccache.lock().unwrap_or_else(|e| e.into_inner()) = Some((desc, data.clone()));
        Ok(data)
    }

    /// Forgets the decompressed-cluster cache (after a write replaced a compressed cluster).
    pub(crate) fn forget_compressed(&self) {
        *self.ccache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Fills `out` (one cluster) with the current contents of guest cluster `gc`, whose old
    /// entry is `old`: the source of copy-on-write.
    pub(crate) fn cluster_contents(&self, gc: u64, old: Entry, out: &mut [u8]) -> Result<()> {
        match old {
            Entry::Normal { host, .. } => self
                .st
                .read_zero_padded(out, host)
                .ctx(|| format!("reading host cluster at offset {host:#x}")),
            Entry::ZeroPlain | Entry::ZeroAlloc { .. } => {
                out.fill(0);
                Ok(())
            }
            Entry::Compressed(d) => {
                let data = self.compressed_cluster(d)?;
                out.copy_from_slice(&data[..out.len()]);
                Ok(())
            }
            Entry::Unallocated => self.read_backing(out, gc << self.geo.cb),
        }
    }

    /// Reads guest bytes (range already checked).
    pub(crate) fn read_guest(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut plan = Vec::new();
        let _io = {
            let mut m = self.lock();
            let mut pos = offset;
            while pos < end {
                let (kind, n) = m.run_at(self.storage(), pos, end - pos)?;
                plan.push((pos, n, kind));
                pos += n;
            }
            self.inflight.read().unwrap_or_else(|e| e.into_inner())
        };
        for (pos, n, kind) in plan {
            let slice = &mut buf[(pos - offset) as usize..(pos - offset + n) as usize];
            match kind {
                RunKind::Data(h) => self
                    .st
                    .read_zero_padded(slice, h)
                    .ctx(|| format!("reading data at host offset {h:#x}"))?,
                RunKind::Zero => slice.fill(0),
                RunKind::Unallocated => self.read_backing(slice, pos)?,
                RunKind::Compressed(d) => {
                    let data = self.compressed_cluster(d)?;
                    let at = (pos & (self.geo.cs - 1)) as usize;
                    slice.copy_from_slice(&data[at..at + slice.len()]);
                }
            }
        }
        Ok(())
    }

    /// `info` as qemu-img reports it.
    pub(crate) fn build_info(&self) -> ImageInfo {
        let m = self.lock();
        let h = &m.header;
        let mut info = ImageInfo::new(Format::Qcow2, self.size());
        info.cluster_size = Some(self.geo.cs);
        info.backing_file = h.backing_file.clone();
        info.backing_format = h.backing_format.clone();
        info.dirty = h.incompatible & INCOMPAT_DIRTY != 0;
        info.corrupt = h.incompatible & INCOMPAT_CORRUPT != 0 || m.corrupt;
        info.snapshots = m.snapshots.iter().map(|s| s.info.clone()).collect();
        info.files = self.files.clone();
        let s = &mut info.specific;
        s.insert(
            "compat".into(),
            json!(if h.version == 2 { "0.10" } else { "1.1" }),
        );
        s.insert("compression-type".into(), json!(h.compression.name()));
        s.insert("refcount-bits".into(), json!(h.refcount_bits()));
        if h.version == 3 {
            s.insert("lazy-refcounts".into(), json!(h.lazy_refcounts()));
            s.insert("corrupt".into(), json!(info.corrupt));
            s.insert("extended-l2".into(), json!(h.extended_l2()));
        }
        info
    }

    /// Hands back reservations and syncs.
    pub(crate) fn flush_locked(&self, m: &mut Meta) -> Result<()> {
        if self.writable {
            m.rc.release(self.storage())?;
        }
        self.st.sync().ctx(|| "flushing".into())
    }

    /// Flushes and clears the dirty bit left by lazy refcounts.
    pub(crate) fn close_locked(&self, m: &mut Meta) -> Result<()> {
        self.flush_locked(m)?;
        if self.writable && !m.corrupt {
            m.set_dirty(self.storage(), false)?;
        }
        Ok(())
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        if self.writable {
            let mut m = self.lock();
            if let Err(e) = self.close_locked(&mut m) {
                if e.kind() != ErrorKind::ReadOnly {
                    // Nothing to report to: the image stays dirty/leaky, which check repairs.
                }
            }
        }
    }
}
