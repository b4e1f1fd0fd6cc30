//! The qcow2 format (QEMU copy-on-write, versions 2 and 3), read and write.
//!
//! # Layout
//! Cluster 0 holds the header, its extensions (backing format, feature names, bitmaps and
//! unknown ones kept verbatim) and the backing file name. Guest clusters map through a
//! two-level table: the L1 table (kept in memory) points at L2 tables (cached, LRU, 8 MiB),
//! whose entries point at data clusters, compressed data (deflate or zstd, byte-packed into
//! shared host clusters), or say "zero" / "unallocated". Extended L2 entries (32 subclusters
//! per cluster) are read with per-subcluster status. Every host cluster has a refcount
//! (1..64 bits wide) in refcount blocks listed by the refcount table.
//!
//! # Metadata update order
//! Allocation takes clusters from reservations whose refcounts were written **and synced**
//! before any table points at them; then the data is written, then the L2 entry (a new L2
//! table is written and synced before its L1 entry, a new refcount block before its table
//! entry, a relocated refcount table or L1 table before the header points at it), and last
//! the references of replaced clusters are dropped. A crash at any point leaves at most
//! leaked clusters, which `check(repair)` reclaims. Unused reservations are handed back on
//! `flush` and close. With lazy refcounts the syncs are skipped and the dirty bit (set
//! before the first metadata change, cleared on close) makes the next writable open rebuild
//! the refcounts. Guest data is never written over a cluster that holds the header, an L1,
//! L2, refcount or snapshot table: such a write marks the image corrupt (incompatible bit 1)
//! and fails.
//!
//! # Concurrency
//! Metadata sits behind one mutex. Reads map under the lock and `pread` without it; writes
//! to clusters the image already owns `pwrite` without it; allocating writes (and
//! compressed writes) run under it, so concurrent partial writes to one new cluster cannot
//! lose each other's data.
//!
//! # Refused
//! Encryption, external data files, unknown incompatible feature bits (named in the error),
//! writable opens of images marked corrupt or with extended L2 entries, and creating images
//! with extended L2 entries. Internal snapshots are listed, counted by `check` and respected
//! by copy-on-write, but not created, applied or deleted. `set_backing` rewrites the header;
//! the backing image already open stays in use until the image is reopened.

mod check;
mod compress;
mod create;
mod header;
mod image;
mod meta;
mod refcount;
mod snapshot;
#[cfg(test)]
mod tests;
mod write;

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::{
    check_range, BlockImage, CheckReport, CompressedWrite, CompressionLevel, Extent, ExtentKind,
    ImageInfo,
};
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

pub(crate) use image::Qcow2Image;
use meta::RunKind;

/// The qcow2 format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.len() >= 8 && head[..4] == *b"QFI\xfb"
    }

    fn open(&self, storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Ok(Box::new(Qcow2Image::open(storage, ctx)?))
    }

    fn create(&self, path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        Ok(Box::new(create::create(path, opts)?))
    }
}

impl BlockImage for Qcow2Image {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn info(&self) -> ImageInfo {
        self.build_info()
    }

    fn is_read_only(&self) -> bool {
        !self.writable
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.read_guest(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        check_range(offset, buf.len() as u64, self.size())?;
        self.write_guest(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        self.zero_range(offset, len, unmap, false)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        self.zero_range(offset, len, true, true)
    }

    fn flush(&self) -> Result<()> {
        let mut m = self.lock();
        self.flush_locked(&mut m)
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let size = self.size();
        check_range(offset, max_len.min(1), size)?;
        let max = max_len.min(size - offset);
        if max == 0 {
            return Err(Error::invalid("block_status of an empty range"));
        }
        let st = self.storage();
        let mut m = self.lock();
        let (kind, mut len) = m.run_at(st, offset, max)?;
        let (kind, host) = match kind {
            RunKind::Data(h) => (ExtentKind::Data, Some(h)),
            RunKind::Zero => (ExtentKind::Zero, None),
            RunKind::Unallocated => (ExtentKind::Unallocated, None),
            RunKind::Compressed(_) => {
                while len < max {
                    match m.run_at(st, offset + len, max - len)? {
                        (RunKind::Compressed(_), n) => len += n,
                        _ => break,
                    }
                }
                (ExtentKind::Data, None)
            }
        };
        Ok(Extent {
            start: offset,
            length: len,
            kind,
            host_offset: host,
        })
    }

    fn backing(&self) -> Option<&dyn BlockImage> {
        self.backing.as_deref()
    }

    fn check(&self, repair: bool) -> Result<CheckReport> {
        if repair && !self.writable {
            return Err(Error::read_only(
                "repairing needs the image opened for writing",
            ));
        }
        let mut m = self.lock();
        self.check_locked(&mut m, repair)
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        self.resize_to(new_size)
    }

    fn compressed(&self) -> Option<&dyn CompressedWrite> {
        Some(self)
    }

    fn finish(&self) -> Result<()> {
        let mut m = self.lock();
        self.close_locked(&mut m)
    }

    fn set_backing(&self, backing: Option<(&str, Option<Format>)>) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        match backing {
            Some((name, fmt)) => self.set_backing_name(Some(name), fmt.map(Format::name)),
            None => self.set_backing_name(None, None),
        }
    }
}

/// Bytes of a cluster deflated on trial to spot incompressible data (`Fast` level only).
const SAMPLE: usize = 4096;

impl CompressedWrite for Qcow2Image {
    fn compressed_unit(&self) -> u64 {
        self.geo.cs
    }

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        if data.len() as u64 > self.geo.cs {
            return Err(Error::invalid(format!(
                "cannot compress {} bytes: the unit is one cluster ({})",
                data.len(),
                self.geo.cs
            )));
        }
        // Incompressible data (already compressed or encrypted guest files) is common and
        // costly to deflate: a trial on the first 4 KiB decides, and an empty result tells
        // `write_compressed` to store the cluster as it is. zstd needs no trial: it gives up
        // on incompressible input at several GB/s by itself, and the trial would cost
        // compressible clusters a sixteenth more work.
        if self.compression == header::Compression::Zlib
            && self.level() == CompressionLevel::Fast
            && data.len() >= 2 * SAMPLE
        {
            let trial = compress::compress(self.compression, &data[..SAMPLE], self.level())?;
            if trial.len() * 100 >= SAMPLE * 97 {
                return Ok(Vec::new());
            }
        }
        let out = if (data.len() as u64) < self.geo.cs {
            let mut padded = data.to_vec();
            padded.resize(self.geo.cs as usize, 0);
            compress::compress(self.compression, &padded, self.level())?
        } else {
            compress::compress(self.compression, data, self.level())?
        };
        // A cluster that does not shrink is stored as it is: say so with an empty result, so
        // the caller can write neighbouring ones together.
        if out.len() as u64 >= self.geo.cs {
            return Ok(Vec::new());
        }
        Ok(out)
    }

    fn write_compressed_batch(&self, units: &[(u64, &[u8], &[u8])]) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        self.write_compressed_clusters(units)
    }

    fn set_level(&self, level: CompressionLevel) {
        self.compression_level
            .store(level.encode(), std::sync::atomic::Ordering::Relaxed);
    }

    fn write_compressed(&self, offset: u64, raw: &[u8], compressed: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only("qcow2 image is opened read-only"));
        }
        self.write_compressed_cluster(offset, raw, compressed)
    }
}
