//! Raw images: the guest's bytes as they are, sparse where the filesystem allows.

use std::io::{IoSlice, IoSliceMut};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::{check_range, BlockImage, Extent, ExtentKind, ImageInfo};
use crate::open::{CreateOptions, OpenContext, Preallocation};
use crate::probe::{probe_bytes, PROBE_LEN};
use crate::storage::{FileStorage, Storage};

/// The raw format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn probe(&self, _head: &[u8]) -> bool {
        true
    }

    fn open(&self, storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        let size = storage.len().ctx(|| "reading size".into())?;
        let files = ctx.path.iter().cloned().collect();
        Ok(Box::new(RawImage {
            storage,
            size: std::sync::atomic::AtomicU64::new(size),
            files,
        }))
    }

    fn create(&self, path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        let mut o = opts.options.clone();
        let prealloc = CreateOptions::take(&mut o, "preallocation", str::parse::<Preallocation>)?
            .unwrap_or_default();
        CreateOptions::reject_unknown(&o, Format::Raw)?;
        if opts.backing_file.is_some() {
            return Err(Error::invalid("raw images cannot have a backing file"));
        }
        let storage = FileStorage::create(path).ctx(|| "creating file".into())?;
        storage.set_len(opts.size).ctx(|| "setting size".into())?;
        match prealloc {
            Preallocation::Off | Preallocation::Metadata => {}
            Preallocation::Falloc => {
                rustix::fs::fallocate(
                    storage.file(),
                    rustix::fs::FallocateFlags::empty(),
                    0,
                    opts.size,
                )
                .map_err(|e| Error::io("preallocating", e.into()))?;
            }
            Preallocation::Full => {
                let zero = vec![0u8; 1 << 20];
                let mut at = 0;
                while at < opts.size {
                    let n = (opts.size - at).min(zero.len() as u64) as usize;
                    storage
                        .write_all_at(&zero[..n], at)
                        .ctx(|| "preallocating".into())?;
                    at += n as u64;
                }
            }
        }
        Ok(Box::new(RawImage {
            storage: Box::new(storage),
            size: std::sync::atomic::AtomicU64::new(opts.size),
            files: vec![path.to_path_buf()],
        }))
    }
}

/// An open raw image.
#[derive(Debug)]
pub struct RawImage {
    storage: Box<dyn Storage>,
    size: std::sync::atomic::AtomicU64,
    files: Vec<std::path::PathBuf>,
}

impl RawImage {
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl BlockImage for RawImage {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::new(Format::Raw, self.size());
        info.files = self.files.clone();
        info
    }

    fn is_read_only(&self) -> bool {
        self.storage.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.storage
            .read_zero_padded(buf, offset)
            .ctx(|| format!("reading at offset {offset}"))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.storage
            .write_all_at(buf, offset)
            .ctx(|| format!("writing at offset {offset}"))
    }

    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(offset, len, self.size())?;
        self.storage
            .read_vectored_zero_padded(bufs, offset)
            .ctx(|| format!("reading {len} bytes at offset {offset}"))
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(offset, len, self.size())?;
        self.storage
            .write_all_vectored_at(bufs, offset)
            .ctx(|| format!("writing {len} bytes at offset {offset}"))
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        check_range(offset, len, self.size())?;
        if unmap {
            self.storage
                .punch_hole(offset, len)
                .ctx(|| format!("discarding at offset {offset}"))
        } else {
            let zero = vec![0u8; len.min(1 << 20) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zero.len() as u64) as usize;
                self.write_at(&zero[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
    }

    fn flush(&self) -> Result<()> {
        self.storage.sync().ctx(|| "flushing".into())
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent> {
        check_range(offset, max_len.min(1), self.size())?;
        let max_len = max_len.min(self.size() - offset);
        let (data, run) = self
            .storage
            .data_run(offset, max_len)
            .ctx(|| format!("mapping offset {offset}"))?;
        Ok(Extent {
            start: offset,
            length: run.clamp(1, max_len),
            kind: if data {
                ExtentKind::Data
            } else {
                ExtentKind::Zero
            },
            host_offset: data.then_some(offset),
        })
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        self.storage
            .set_len(new_size)
            .ctx(|| format!("resizing to {new_size}"))?;
        self.size
            .store(new_size, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// A raw image that was recognised by probing rather than declared: the guest may not turn
/// its first sector into another format's header, which would change what the next probe
/// sees (the format-confusion class of attacks, CVE-2008-2004).
pub struct ProbedRaw(pub Box<dyn BlockImage>);

impl ProbedRaw {
    /// Wraps a raw image opened by probing.
    pub fn guard(inner: Box<dyn BlockImage>) -> Box<dyn BlockImage> {
        Box::new(ProbedRaw(inner))
    }
}

impl BlockImage for ProbedRaw {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn virtual_size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn info(&self) -> ImageInfo {
        self.0.info()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.read_at(buf, offset)
    }
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        self.0.read_vectored_at(bufs, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if offset < PROBE_LEN as u64 {
            let mut head = vec![0u8; PROBE_LEN.min(self.virtual_size() as usize)];
            self.0.read_at(&mut head, 0)?;
            let start = offset as usize;
            let n = buf.len().min(head.len().saturating_sub(start));
            head[start..start + n].copy_from_slice(&buf[..n]);
            let now = probe_bytes(&head);
            if now != Format::Raw {
                return Err(Error::invalid(format!(
                    "write at offset {offset} would make this probed raw image look like {now}; \
                     open it with an explicit format (-f raw) to allow this"
                )));
            }
        }
        self.0.write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.0.write_zeroes(offset, len, unmap)
    }
    fn flush(&self) -> Result<()> {
        self.0.flush()
    }
    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent> {
        self.0.block_status(offset, max_len)
    }
    fn resize(&self, new_size: u64) -> Result<()> {
        // A fixed VHD has no header, so it probes as raw; resizing its bytes would leave its
        // footer inside the disk and the file without one. As with `write_at`, the format
        // that probing sees may not change by accident.
        let size = self.virtual_size();
        if new_size != size && size >= 512 {
            let mut tail = [0u8; 512];
            self.0.read_at(&mut tail, size - 512)?;
            if crate::formats::vpc::is_footer(&tail) {
                return Err(Error::invalid(
                    "this probed raw image ends with a VHD footer (a fixed VHD, which has no \
                     header): pass -f vpc to resize the VHD, or -f raw to resize the bytes as \
                     they are",
                ));
            }
        }
        self.0.resize(new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open::{open, OpenOptions};

    #[test]
    fn raw_reads_writes_and_maps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let img = Driver.create(&p, &CreateOptions::sized(4 << 20)).unwrap();
        img.write_at(&[7u8; 65536], 1 << 20).unwrap();
        img.flush().unwrap();
        let mut b = vec![0u8; 65536];
        img.read_at(&mut b, 1 << 20).unwrap();
        assert!(b.iter().all(|&x| x == 7));
        let e = img.block_status(0, 4 << 20).unwrap();
        assert_eq!(e.kind, ExtentKind::Zero);
        assert_eq!(e.length, 1 << 20);
        let e = img.block_status(1 << 20, 4 << 20).unwrap();
        assert_eq!(e.kind, ExtentKind::Data);
        assert!(img.read_at(&mut b, (4 << 20) - 10).is_err());
        img.write_zeroes(1 << 20, 65536, true).unwrap();
        img.read_at(&mut b, 1 << 20).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        drop(img);
        let img = open(&p, &OpenOptions::read(Some(Format::Raw))).unwrap();
        assert_eq!(img.virtual_size(), 4 << 20);
    }

    #[test]
    fn vectored_reads_and_writes_match_the_plain_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        let img = Driver.create(&p, &CreateOptions::sized(1 << 20)).unwrap();
        let pattern: Vec<u8> = (0..12288u32).map(|i| (i * 7 % 251) as u8).collect();
        // Gather three unequal pieces into one write at an odd sector.
        let (a, rest) = pattern.split_at(512);
        let (b, c) = rest.split_at(8192);
        img.write_vectored_at(&[IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)], 4608)
            .unwrap();
        let mut plain = vec![0u8; pattern.len()];
        img.read_at(&mut plain, 4608).unwrap();
        assert_eq!(plain, pattern);
        // Scatter the same range into other pieces.
        let (mut x, mut y, mut z) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        img.read_vectored_at(
            &mut [
                IoSliceMut::new(&mut x),
                IoSliceMut::new(&mut y),
                IoSliceMut::new(&mut z),
            ],
            4608,
        )
        .unwrap();
        assert_eq!([x, y, z].concat(), pattern);
        // Beyond the end: refused, nothing read or written.
        let mut w = vec![0u8; 4096];
        let mut v = vec![0u8; 4096];
        let end = (1 << 20) - 4096;
        assert!(img
            .read_vectored_at(&mut [IoSliceMut::new(&mut w), IoSliceMut::new(&mut v)], end)
            .is_err());
        assert!(img
            .write_vectored_at(&[IoSlice::new(&[1; 4096]), IoSlice::new(&[1; 4096])], end)
            .is_err());
        drop(img);
        let ro = open(&p, &OpenOptions::read(Some(Format::Raw))).unwrap();
        assert!(ro.write_vectored_at(&[IoSlice::new(&[1; 512])], 0).is_err());
        let mut tail = vec![9u8; 4096];
        ro.read_at(&mut tail, end).unwrap();
        assert!(tail.iter().all(|&t| t == 0));
    }

    #[test]
    fn probed_raw_refuses_header_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        drop(Driver.create(&p, &CreateOptions::sized(1 << 20)).unwrap());
        let img = open(&p, &OpenOptions::write(None)).unwrap();
        let mut hdr = vec![0u8; 512];
        hdr[..4].copy_from_slice(b"QFI\xfb");
        hdr[4..8].copy_from_slice(&3u32.to_be_bytes());
        let err = img.write_at(&hdr, 0).unwrap_err();
        assert!(err.to_string().contains("qcow2"), "{err}");
        let img = open(&p, &OpenOptions::write(Some(Format::Raw))).unwrap();
        img.write_at(&hdr, 0).unwrap();
    }
}
