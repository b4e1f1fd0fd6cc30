//! The one trait every open image implements, and the plain data it reports.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::Format;

/// What a range of an image holds, as far as this layer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Allocated in this layer and holding data (which may still happen to be zero).
    Data,
    /// Known to read as zeroes in this layer (zero cluster, hole in a raw file).
    Zero,
    /// Not allocated in this layer: reads come from the backing image, or as zeroes without one.
    Unallocated,
}

/// A run of the image with one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Guest offset where the run starts.
    pub start: u64,
    /// Length of the run in bytes (never 0).
    pub length: u64,
    /// What the run holds.
    pub kind: ExtentKind,
    /// Where the data lies in the image file, for uncompressed data when known.
    pub host_offset: Option<u64>,
}

impl Extent {
    /// Appends the run `(kind, length, host_offset)` that follows this extent when it looks the
    /// same (same kind and, for data, the next host bytes); returns whether it did.
    pub fn try_extend(&mut self, kind: ExtentKind, length: u64, host_offset: Option<u64>) -> bool {
        let contiguous = match (self.host_offset, host_offset) {
            (Some(a), Some(b)) => a + self.length == b,
            (None, None) => true,
            _ => false,
        };
        if kind != self.kind || !contiguous {
            return false;
        }
        self.length += length;
        true
    }
}

/// An internal snapshot recorded in an image (qcow2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Snapshot ID string.
    pub id: String,
    /// Snapshot name.
    pub name: String,
    /// Size of the saved VM state in bytes.
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u64,
    /// Virtual disk size at the time of the snapshot.
    pub disk_size: Option<u64>,
}

/// What `info` reports about an open image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Container format.
    pub format: Format,
    /// Variant within the format (e.g. `streamOptimized`, `dynamic`, `fixed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subformat: Option<String>,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Allocation unit (cluster, grain, block), when the format has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// Backing file name as recorded in the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// Backing file format as recorded in the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_format: Option<String>,
    /// The image was not closed cleanly (needs a check or log replay).
    pub dirty: bool,
    /// The image is marked corrupt.
    pub corrupt: bool,
    /// Internal snapshots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotInfo>,
    /// Files that make up this image (descriptor and extents), in order.
    pub files: Vec<PathBuf>,
    /// Format-specific details (compat level, refcount width, features...).
    pub specific: BTreeMap<String, serde_json::Value>,
}

impl ImageInfo {
    /// An info record with only the required fields set.
    pub fn new(format: Format, virtual_size: u64) -> Self {
        ImageInfo {
            format,
            subformat: None,
            virtual_size,
            cluster_size: None,
            backing_file: None,
            backing_format: None,
            dirty: false,
            corrupt: false,
            snapshots: Vec::new(),
            files: Vec::new(),
            specific: BTreeMap::new(),
        }
    }
}

/// What `check` found (and repaired).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Inconsistencies that risk data (overlaps, bad offsets, refcounts too low).
    pub corruptions: u64,
    /// Clusters allocated but referenced by nothing.
    pub leaks: u64,
    /// Corruptions fixed by `--repair`.
    pub corruptions_fixed: u64,
    /// Leaks fixed by `--repair`.
    pub leaks_fixed: u64,
    /// Other faults that stopped the check (unreadable metadata).
    pub check_errors: u64,
    /// Allocated data clusters, and all clusters of the virtual disk, when known.
    pub allocated_clusters: Option<u64>,
    /// Total clusters of the virtual disk, when known.
    pub total_clusters: Option<u64>,
    /// One line per finding, naming the offset and table.
    pub messages: Vec<String>,
}

impl CheckReport {
    /// True when no corruption and no check error remains.
    pub fn is_clean(&self) -> bool {
        self.corruptions == self.corruptions_fixed && self.check_errors == 0
    }
}

/// How hard compressed output is squeezed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionLevel {
    /// Throughput first: deflate level 1, zstd level 1. The default for conversion, where the
    /// output is usually shipped once and read many times at the same speed either way.
    #[default]
    Fast,
    /// What qemu-img uses: deflate level 6, zstd level 3.
    Standard,
    /// An explicit level: deflate 1 to 9, zstd 1 to 19 (clamped).
    Level(u8),
}

impl CompressionLevel {
    /// The deflate level (1 to 9).
    pub fn deflate(self) -> u32 {
        match self {
            CompressionLevel::Fast => 1,
            CompressionLevel::Standard => 6,
            CompressionLevel::Level(l) => u32::from(l).clamp(1, 9),
        }
    }

    /// The zstd level (1 to 19).
    pub fn zstd(self) -> i32 {
        match self {
            CompressionLevel::Fast => 1,
            CompressionLevel::Standard => 3,
            CompressionLevel::Level(l) => i32::from(l).clamp(1, 19),
        }
    }

    /// Parses `fast`, `standard` or a number.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(CompressionLevel::Fast),
            "standard" | "default" => Ok(CompressionLevel::Standard),
            n => n
                .parse::<u8>()
                .ok()
                .filter(|l| (1..=19).contains(l))
                .map(CompressionLevel::Level)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "compression level '{s}' is not fast, standard or 1 to 19"
                    ))
                }),
        }
    }

    /// A compact encoding for an atomic (0 = Fast, 255 = Standard, else the level).
    pub fn encode(self) -> u8 {
        match self {
            CompressionLevel::Fast => 0,
            CompressionLevel::Standard => 255,
            CompressionLevel::Level(l) => l.clamp(1, 19),
        }
    }

    /// Inverse of [`CompressionLevel::encode`].
    pub fn decode(v: u8) -> Self {
        match v {
            0 => CompressionLevel::Fast,
            255 => CompressionLevel::Standard,
            l => CompressionLevel::Level(l),
        }
    }
}

/// Format-specific compressed output, where the format has it (qcow2 compressed clusters,
/// VMDK streamOptimized grains). Compression is pure CPU work done by the caller on any
/// thread; storing is done by [`CompressedWrite::write_compressed`].
pub trait CompressedWrite: Sync {
    /// The unit of compression in bytes (cluster or grain size).
    fn compressed_unit(&self) -> u64;

    /// Compresses one unit of data. Pure function of its input; safe to call in parallel. An
    /// empty result means "not worth compressing": the format then stores the data as is.
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>>;

    /// Stores one unit at guest offset `offset` (unit-aligned); `compressed` is what
    /// [`CompressedWrite::compress`] returned for `raw`. The format may store `raw` instead
    /// when compression does not pay.
    fn write_compressed(&self, offset: u64, raw: &[u8], compressed: &[u8]) -> Result<()>;

    /// Stores several units at once (each as [`CompressedWrite::write_compressed`] would), so
    /// a format can allocate, write and update its tables for the whole batch in one go.
    fn write_compressed_batch(&self, units: &[(u64, &[u8], &[u8])]) -> Result<()> {
        for &(offset, raw, compressed) in units {
            self.write_compressed(offset, raw, compressed)?;
        }
        Ok(())
    }

    /// True when units must be stored in increasing offset order (stream formats).
    fn requires_sequential(&self) -> bool {
        false
    }

    /// Sets how hard [`CompressedWrite::compress`] compresses from now on.
    fn set_level(&self, level: CompressionLevel);
}

/// An open disk image.
///
/// All methods take `&self`: implementations guard their metadata internally, so one image can
/// serve several threads (parallel conversion, a VMM's I/O threads). Requests beyond
/// [`BlockImage::virtual_size`] fail with [`crate::ErrorKind::InvalidInput`].
pub trait BlockImage: Send + Sync {
    /// The container format.
    fn format(&self) -> Format;

    /// The guest-visible size in bytes.
    fn virtual_size(&self) -> u64;

    /// Details for `info`.
    fn info(&self) -> ImageInfo;

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Reads `buf.len()` bytes at guest offset `offset`, through the backing chain.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes `buf` at guest offset `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Reads consecutive bytes from guest offset `offset` into `bufs`, in order (a scatter
    /// list, as a VMM gets from a guest's request). One [`BlockImage::read_at`] per buffer
    /// unless the format can do better (raw: one `preadv`).
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        let mut at = offset;
        for b in bufs.iter_mut() {
            self.read_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }

    /// Writes `bufs` one after another from guest offset `offset` (a gather list). One
    /// [`BlockImage::write_at`] per buffer unless the format can do better (raw: `pwritev`).
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }

    /// Makes the range read as zeroes; with `unmap`, the format may deallocate it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()>;

    /// Hints that the range is no longer needed; afterwards it reads as zeroes or as the
    /// backing image (formats with backing files) — never as stale data of another range.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len, true)
    }

    /// Makes all completed writes durable, metadata included.
    fn flush(&self) -> Result<()>;

    /// Describes the run at `offset` (at most `max_len` bytes) in this layer only.
    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent>;

    /// The open backing image, if any.
    fn backing(&self) -> Option<&dyn BlockImage> {
        None
    }

    /// Checks metadata consistency; with `repair`, fixes what can be fixed safely.
    fn check(&self, repair: bool) -> Result<CheckReport> {
        let _ = repair;
        Ok(CheckReport::default())
    }

    /// Changes the virtual size.
    fn resize(&self, new_size: u64) -> Result<()> {
        let _ = new_size;
        Err(Error::unsupported(format!(
            "resizing {} images is not supported",
            self.format()
        )))
    }

    /// Compressed output, where the format has it.
    fn compressed(&self) -> Option<&dyn CompressedWrite> {
        None
    }

    /// Completes the image (writes footers, tables) and flushes; the image should not be
    /// written afterwards. For most formats this is [`BlockImage::flush`].
    fn finish(&self) -> Result<()> {
        self.flush()
    }

    /// Points the image at a different backing file without copying data (unsafe rebase).
    fn set_backing(&self, backing: Option<(&str, Option<Format>)>) -> Result<()> {
        let _ = backing;
        Err(Error::unsupported(format!(
            "{} images have no backing file",
            self.format()
        )))
    }
}

/// Rejects requests that leave the virtual disk.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::invalid(format!(
            "request at offset {offset} length {len} is beyond the end of the disk ({size} bytes)"
        ))),
    }
}

/// Whether every byte of `buf` is zero (fast path over 8-byte words).
pub fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(16);
    words
        .by_ref()
        .all(|w| w.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4097]));
        let mut b = vec![0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[7] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn extents_extend_only_with_the_same_kind_and_contiguous_data() {
        let mut e = Extent {
            start: 0,
            length: 10,
            kind: ExtentKind::Data,
            host_offset: Some(100),
        };
        assert!(e.try_extend(ExtentKind::Data, 5, Some(110)));
        assert!(!e.try_extend(ExtentKind::Data, 5, Some(200)));
        assert!(!e.try_extend(ExtentKind::Zero, 5, None));
        assert_eq!(e.length, 15);
        let mut z = Extent {
            start: 0,
            length: 4,
            kind: ExtentKind::Zero,
            host_offset: None,
        };
        assert!(z.try_extend(ExtentKind::Zero, 4, None));
        assert_eq!(z.length, 8);
    }

    #[test]
    fn range_check_catches_overflow() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(1, 10, 10).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
