//! Byte storage under an image: a file, or memory (for tests and fuzzing).
//!
//! Formats never touch `std::fs::File` directly; they read and write through [`Storage`], so
//! the same parser runs on a file, on an in-memory buffer in a fuzz target, and on a
//! read-only handle that guarantees a source image is never written.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

static UNSAFE_CACHE: AtomicBool = AtomicBool::new(false);

/// Turns every file sync of this process into a no-op (qemu-img's `-t unsafe`): faster, and
/// a crash or power loss can then lose or corrupt what was written. For one-shot conversions
/// whose output is thrown away on failure.
pub fn set_unsafe_cache(enabled: bool) {
    UNSAFE_CACHE.store(enabled, Ordering::Relaxed);
}

/// Random-access byte storage.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `offset`, growing the storage if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Truncates or extends to `len` bytes (extension reads as zeroes).
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes previous writes durable.
    fn sync(&self) -> io::Result<()>;

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// The file behind this storage, if any.
    fn path(&self) -> Option<&Path> {
        None
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short read is `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`, filling past the end of storage with zeroes.
    fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if done < buf.len() {
            // Past the end only: an empty fill still cost a `memset` call per read.
            buf[done..].fill(0);
        }
        Ok(())
    }

    /// Reads consecutive bytes at `offset` into `bufs` in order, filling past the end of
    /// storage with zeroes.
    fn read_vectored_zero_padded(
        &self,
        bufs: &mut [io::IoSliceMut<'_>],
        offset: u64,
    ) -> io::Result<()> {
        let mut at = offset;
        for b in bufs.iter_mut() {
            self.read_zero_padded(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }

    /// Writes `bufs` one after another at `offset`.
    fn write_all_vectored_at(&self, bufs: &[io::IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_all_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }

    /// Deallocates `len` bytes at `offset` so they read as zeroes (a hole where possible).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let zero = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(zero.len() as u64) as usize;
            self.write_all_at(&zero[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Classifies the run starting at `offset` (at most `len` bytes): `(is_data, run_len)`.
    /// Storage that cannot tell holes reports everything as data.
    fn data_run(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let _ = offset;
        Ok((true, len))
    }

    /// Bytes the storage occupies on its medium.
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.len()
    }
}

/// A file on disk.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
    read_only: bool,
}

impl FileStorage {
    /// Opens an existing file, read-only unless `writable`.
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(FileStorage {
            file,
            path: path.to_path_buf(),
            read_only: !writable,
        })
    }

    /// Creates (or truncates) a file for writing.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(FileStorage {
            file,
            path: path.to_path_buf(),
            read_only: false,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        Ok(())
    }
}

/// Calls `write(offset)` (which writes what is left and returns how many bytes it wrote)
/// until `total` bytes are written, retrying on EINTR; a write of nothing is an error.
fn write_fully(
    total: usize,
    mut offset: u64,
    mut write: impl FnMut(u64) -> rustix::io::Result<usize>,
) -> io::Result<()> {
    let mut left = total;
    while left > 0 {
        match write(offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the file accepted no more bytes",
                ))
            }
            Ok(n) => {
                left -= n;
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

// Reads and writes are rustix's raw system calls rather than std's (glibc's) `pread64`: the
// glibc wrapper is a cancellation point that brackets every call with two more calls
// (`__pthread_{enable,disable}_asynccancel`) in a multithreaded process; that was 3-4% of a
// virtio-blk worker serving 4 KiB reads.
impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Ok(rustix::io::pread(&self.file, buf, offset)?)
    }

    fn write_all_at(&self, mut buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        write_fully(buf.len(), offset, |at| {
            let n = rustix::io::pwrite(&self.file, buf, at)?;
            buf = &buf[n..];
            Ok(n)
        })
    }

    fn read_vectored_zero_padded(
        &self,
        mut bufs: &mut [io::IoSliceMut<'_>],
        mut offset: u64,
    ) -> io::Result<()> {
        while !bufs.is_empty() {
            // At most IOV_MAX (1024) buffers per call.
            let take = bufs.len().min(1024);
            match rustix::io::preadv(&self.file, &mut bufs[..take], offset) {
                Ok(0) => {
                    // End of file: the rest reads as zeroes.
                    for b in bufs.iter_mut() {
                        b.fill(0);
                    }
                    return Ok(());
                }
                Ok(n) => {
                    offset += n as u64;
                    io::IoSliceMut::advance_slices(&mut bufs, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn write_all_vectored_at(&self, bufs: &[io::IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        // `advance_slices` needs the list mutable; the caller's stays as it was.
        let mut owned: Vec<io::IoSlice<'_>> = bufs.to_vec();
        let mut list = &mut owned[..];
        let total = bufs.iter().map(|b| b.len()).sum();
        write_fully(total, offset, |at| {
            // At most IOV_MAX (1024) buffers per call.
            let n = rustix::io::pwritev(&self.file, &list[..list.len().min(1024)], at)?;
            io::IoSlice::advance_slices(&mut list, n);
            Ok(n)
        })
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.file.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        if self.read_only || UNSAFE_CACHE.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        self.check_writable()?;
        let end = self.len()?;
        if offset >= end || len == 0 {
            return Ok(());
        }
        let len = len.min(end - offset);
        match fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {
                // Filesystems without hole punching get explicit zeroes.
                let zero = vec![0u8; len.min(1 << 20) as usize];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(zero.len() as u64) as usize;
                    self.file.write_all_at(&zero[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn data_run(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        use rustix::fs::{seek, SeekFrom};
        let size = self.len()?;
        if offset >= size {
            return Ok((false, len));
        }
        let limit = len.min(size - offset);
        // SEEK_DATA from `offset`: if it returns `offset`, we are in data; else in a hole.
        match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(data) if data == offset => {
                let hole = seek(&self.file, SeekFrom::Hole(offset)).map_err(io::Error::from)?;
                Ok((true, (hole - offset).min(limit).max(1)))
            }
            Ok(data) => Ok((false, (data - offset).min(len))),
            // ENXIO: no data after `offset` — the rest of the file is a hole.
            Err(rustix::io::Errno::NXIO) => Ok((false, len)),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok((true, limit)),
            Err(e) => Err(e.into()),
        }
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }
}

/// Storage in memory, for tests and fuzz targets, with a size cap so a hostile image cannot
/// make it grow without bound.
#[derive(Debug, Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    max_len: u64,
    read_only: bool,
}

impl MemStorage {
    /// Memory storage holding `data`, growable up to `max_len` bytes.
    pub fn new(data: Vec<u8>, max_len: u64) -> Self {
        MemStorage {
            data: RwLock::new(data),
            max_len,
            read_only: false,
        }
    }

    /// Read-only memory storage over `data`.
    pub fn read_only(data: Vec<u8>) -> Self {
        let max_len = data.len() as u64;
        MemStorage {
            data: RwLock::new(data),
            max_len,
            read_only: true,
        }
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        if offset >= data.len() as u64 {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.max_len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::StorageFull, "memory storage cap"))?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        if data.len() < end as usize {
            data.resize(end as usize, 0);
        }
        data[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ));
        }
        if len > self.max_len {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "memory storage cap",
            ));
        }
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_storage_reports_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let s = FileStorage::create(&path).unwrap();
        s.set_len(8 << 20).unwrap();
        s.write_all_at(&[1u8; 4096], 4 << 20).unwrap();
        let (data, run) = s.data_run(0, 8 << 20).unwrap();
        assert!(!data, "start of a fresh sparse file is a hole");
        assert_eq!(run, 4 << 20);
        let (data, run) = s.data_run(4 << 20, 4 << 20).unwrap();
        assert!(data);
        assert!(run >= 4096);
    }

    #[test]
    fn read_only_file_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let s = FileStorage::open(&path, false).unwrap();
        assert!(s.write_all_at(b"x", 0).is_err());
        assert!(s.set_len(0).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    }

    #[test]
    fn mem_storage_caps_growth() {
        let s = MemStorage::new(vec![], 16);
        s.write_all_at(&[1; 16], 0).unwrap();
        assert!(s.write_all_at(&[1], 16).is_err());
        assert!(s.set_len(17).is_err());
    }
}
