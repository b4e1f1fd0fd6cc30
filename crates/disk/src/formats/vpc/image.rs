//! An open VHD image: reads, writes, zeroing and mapping through the BAT and sector bitmaps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use serde_json::json;

use super::bat::{set_bits, Bits, Meta, UNALLOCATED};
use super::dynheader::DynHeader;
use super::footer::{DiskType, Footer, SECTOR};
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::{check_range, BlockImage, CheckReport, Extent, ExtentKind, ImageInfo};
use crate::storage::Storage;

/// The sparse part of a dynamic or differencing image.
#[derive(Debug)]
pub struct Dynamic {
    /// The parsed dynamic header.
    pub header: DynHeader,
    /// Bytes of guest data per block.
    pub block_size: u64,
    /// Bytes of the sector bitmap in front of each block.
    pub bitmap_size: u64,
    /// BAT, bitmaps and allocation cursor.
    pub meta: Mutex<Meta>,
}

/// An open VHD image.
pub struct VpcImage {
    pub(super) storage: Box<dyn Storage>,
    /// The footer as last written (a resize rewrites it).
    pub(super) footer: RwLock<Footer>,
    /// The guest size (a resize changes it).
    pub(super) size: AtomicU64,
    pub(super) dynamic: Option<Dynamic>,
    pub(super) parent: Option<Box<dyn BlockImage>>,
    pub(super) backing_name: Option<String>,
    pub(super) files: Vec<PathBuf>,
}

impl std::fmt::Debug for VpcImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpcImage")
            .field("footer", &self.footer())
            .field("size", &self.size())
            .field("backing", &self.backing_name)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock(m: &Mutex<Meta>) -> MutexGuard<'_, Meta> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VpcImage {
    pub(super) fn dyn_part(&self) -> &Dynamic {
        self.dynamic
            .as_ref()
            .expect("dynamic part exists for non-fixed images")
    }

    /// Calls `f(block, offset_in_block, range_in_request)` for each block a request touches.
    fn for_blocks(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let bs = self.dyn_part().block_size;
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let o = at % bs;
            let n = (bs - o).min(len - done);
            f((at / bs) as usize, o, done as usize..(done + n) as usize)?;
            done += n;
        }
        Ok(())
    }

    /// Reads what this layer shows where it holds nothing: the parent, or zeroes.
    fn read_below(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.parent {
            Some(p) if offset < p.virtual_size() => {
                let n = (p.virtual_size() - offset).min(buf.len() as u64) as usize;
                p.read_at(&mut buf[..n], offset)?;
                buf[n..].fill(0);
            }
            _ => buf.fill(0),
        }
        Ok(())
    }

    fn read_data(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.storage
            .read_exact_at(buf, at)
            .ctx(|| format!("reading VHD data at offset {at:#x}"))
    }

    fn write_data(&self, buf: &[u8], at: u64) -> Result<()> {
        self.storage
            .write_all_at(buf, at)
            .ctx(|| format!("writing VHD data at offset {at:#x}"))
    }

    fn read_block(&self, b: usize, o: u64, buf: &mut [u8]) -> Result<()> {
        let d = self.dyn_part();
        let guest = b as u64 * d.block_size + o;
        let (entry, bits) = {
            let mut m = lock(&d.meta);
            let entry = m.bat[b];
            if entry == UNALLOCATED {
                (entry, Bits::Empty)
            } else {
                (entry, m.bits(self.storage.as_ref(), b)?)
            }
        };
        let data = u64::from(entry) * SECTOR + d.bitmap_size;
        if let Bits::Full = bits {
            return self.read_data(buf, data + o);
        }
        let end = o + buf.len() as u64;
        let mut pos = o;
        while pos < end {
            let s = pos / SECTOR;
            let (present, run) = bits.run(s, end.div_ceil(SECTOR));
            let stop = ((s + run) * SECTOR).min(end);
            let piece = &mut buf[(pos - o) as usize..(stop - o) as usize];
            if present {
                self.read_data(piece, data + pos)?;
            } else {
                self.read_below(piece, guest - o + pos)?;
            }
            pos = stop;
        }
        Ok(())
    }

    fn write_block(&self, b: usize, o: u64, buf: &[u8]) -> Result<()> {
        let d = self.dyn_part();
        let mut m = lock(&d.meta);
        let entry = m.bat[b];
        if entry != UNALLOCATED {
            if let Bits::Full = m.bits(self.storage.as_ref(), b)? {
                drop(m);
                return self.write_data(buf, u64::from(entry) * SECTOR + d.bitmap_size + o);
            }
        }
        self.write_block_slow(&mut m, b, o, buf)
    }

    /// Writes into a block that must be allocated or whose bitmap changes; runs under the
    /// metadata lock so allocation and bitmap updates are serialized.
    ///
    /// Order for a new block, which takes the place of the trailing footer: first the footer
    /// at the new end of the file, then the data, then the bitmap (over the old footer),
    /// last the BAT entry. At every step the file ends with a valid footer, and a crash
    /// before the BAT write leaves only an unreferenced block (a leak).
    fn write_block_slow(&self, m: &mut Meta, b: usize, o: u64, buf: &[u8]) -> Result<()> {
        let d = self.dyn_part();
        let entry = m.bat[b];
        let fresh = entry == UNALLOCATED;
        let block_pos = if fresh {
            let pos = m.next_block;
            if pos / SECTOR >= u64::from(UNALLOCATED) {
                return Err(Error::limit(format!(
                    "VHD block {b} would lie at offset {pos:#x}, past what a BAT entry can \
                     address (2 TiB)"
                )));
            }
            pos
        } else {
            u64::from(entry) * SECTOR
        };
        let data = block_pos + d.bitmap_size;
        let block_end = data + d.block_size;
        let old_len = m.file_len;
        if fresh {
            self.storage
                .write_all_at(&self.footer().to_bytes(), block_end)
                .ctx(|| format!("writing the VHD footer at offset {block_end:#x}"))?;
            m.next_block = block_end;
            m.file_len = m.file_len.max(block_end + SECTOR);
        }
        if fresh && data < old_len {
            // Space past the last block (a leak from an interrupted allocation) may hold
            // stale bytes: clear it so readers that ignore the bitmap see zeroes.
            let end = old_len.min(block_end);
            self.storage
                .punch_hole(data, end - data)
                .ctx(|| format!("clearing VHD block space at offset {data:#x}"))?;
        }
        let mut bm = if fresh {
            vec![0u8; d.bitmap_size as usize]
        } else {
            m.bits(self.storage.as_ref(), b)?
                .into_bytes(d.bitmap_size as usize)
        };
        let guest_block = b as u64 * d.block_size;
        let end = o + buf.len() as u64;
        let s0 = o / SECTOR;
        let s1 = end.div_ceil(SECTOR);
        let present = |bm: &[u8], s: u64| super::bat::bit(bm, s);
        let head_gap = o % SECTOR != 0 && !present(&bm, s0);
        let tail_gap = end % SECTOR != 0 && !present(&bm, s1 - 1);
        if head_gap || tail_gap {
            // Partial sectors not present yet: complete them with what they show now.
            let start = s0 * SECTOR;
            let mut tmp = vec![0u8; ((s1 - s0) * SECTOR) as usize];
            for s in [s0, s1 - 1] {
                let at = ((s - s0) * SECTOR) as usize;
                let sector = &mut tmp[at..at + SECTOR as usize];
                if present(&bm, s) {
                    self.read_data(sector, data + s * SECTOR)?;
                } else {
                    self.read_below(sector, guest_block + s * SECTOR)?;
                }
            }
            tmp[(o - start) as usize..(end - start) as usize].copy_from_slice(buf);
            self.write_data(&tmp, data + start)?;
        } else {
            self.write_data(buf, data + o)?;
        }
        let before = bm.clone();
        set_bits(&mut bm, s0, s1, true);
        if fresh || bm != before {
            self.storage
                .write_all_at(&bm, block_pos)
                .ctx(|| format!("writing the sector bitmap of block {b} at {block_pos:#x}"))?;
        }
        if fresh {
            let at = m.layout.bat_offset + 4 * b as u64;
            let value = (block_pos / SECTOR) as u32;
            self.storage
                .write_all_at(&value.to_be_bytes(), at)
                .ctx(|| format!("writing BAT entry {b} at offset {at:#x}"))?;
            m.bat[b] = value;
        }
        m.store(b, bm);
        Ok(())
    }

    /// Zeroes `o..o+n` of allocated block `b` in the file and, with `clear`, marks its whole
    /// sectors absent (they then read as zeroes, or as the parent).
    fn zero_block(&self, b: usize, o: u64, n: u64, unmap: bool, clear: bool) -> Result<()> {
        let d = self.dyn_part();
        let mut m = lock(&d.meta);
        let entry = m.bat[b];
        if entry == UNALLOCATED {
            return Ok(());
        }
        let block_pos = u64::from(entry) * SECTOR;
        let data = block_pos + d.bitmap_size;
        if unmap {
            self.storage
                .punch_hole(data + o, n)
                .ctx(|| format!("discarding VHD data at offset {:#x}", data + o))?;
        } else {
            let zero = vec![0u8; n.min(1 << 20) as usize];
            let mut at = 0;
            while at < n {
                let k = (n - at).min(zero.len() as u64);
                self.write_data(&zero[..k as usize], data + o + at)?;
                at += k;
            }
        }
        if clear {
            let s0 = o.div_ceil(SECTOR);
            let s1 = (o + n) / SECTOR;
            if s0 < s1 {
                let mut bm = m
                    .bits(self.storage.as_ref(), b)?
                    .into_bytes(d.bitmap_size as usize);
                let before = bm.clone();
                set_bits(&mut bm, s0, s1, false);
                if bm != before {
                    self.storage
                        .write_all_at(&bm, block_pos)
                        .ctx(|| format!("writing the sector bitmap of block {b}"))?;
                }
                m.store(b, bm);
            }
        }
        Ok(())
    }

    fn block_extent(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let d = self.dyn_part();
        let bs = d.block_size;
        let mut m = lock(&d.meta);
        let mut first: Option<Extent> = None;
        let mut at = offset;
        let end = offset + max_len;
        // Bounded work per call: callers ask again for the rest.
        let mut steps = 0u32;
        while at < end && steps < 65_536 {
            steps += 1;
            let b = (at / bs) as usize;
            let o = at % bs;
            let entry = m.bat[b];
            let (kind, n, host) = if entry == UNALLOCATED {
                (ExtentKind::Unallocated, bs - o, None)
            } else {
                let bits = m.bits(self.storage.as_ref(), b)?;
                let s = o / SECTOR;
                let (present, run) = bits.run(s, m.spb);
                let n = (s + run) * SECTOR - o;
                let host = u64::from(entry) * SECTOR + d.bitmap_size + o;
                if present {
                    (ExtentKind::Data, n, Some(host))
                } else {
                    (ExtentKind::Unallocated, n, None)
                }
            };
            let n = n.min(end - at);
            match &mut first {
                None => {
                    first = Some(Extent {
                        start: offset,
                        length: n,
                        kind,
                        host_offset: host,
                    })
                }
                Some(e) => {
                    if !e.try_extend(kind, n, host) {
                        break;
                    }
                }
            }
            at += n;
        }
        first.ok_or_else(|| Error::invalid("empty block status request"))
    }

    /// The kind of disk.
    pub fn disk_type(&self) -> DiskType {
        self.footer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .disk_type
    }

    /// The footer as last written.
    pub(super) fn footer(&self) -> Footer {
        self.footer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The guest size.
    pub(super) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
}

impl BlockImage for VpcImage {
    fn format(&self) -> Format {
        Format::Vpc
    }

    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn info(&self) -> ImageInfo {
        let f = &self.footer();
        let mut info = ImageInfo::new(Format::Vpc, self.size());
        info.subformat = Some(f.disk_type.name().to_string());
        info.files = self.files.clone();
        let s = &mut info.specific;
        s.insert("subformat".into(), json!(f.disk_type.name()));
        s.insert("creator-app".into(), json!(f.creator_app_str()));
        s.insert(
            "creator-version".into(),
            json!(format!(
                "{}.{}",
                f.creator_version >> 16,
                f.creator_version & 0xffff
            )),
        );
        s.insert(
            "creator-os".into(),
            json!(String::from_utf8_lossy(&f.creator_os).trim_end_matches('\0')),
        );
        s.insert(
            "geometry".into(),
            json!({
                "cylinders": f.geometry.cylinders,
                "heads": f.geometry.heads,
                "sectors-per-track": f.geometry.sectors,
            }),
        );
        s.insert("current-size".into(), json!(f.current_size));
        s.insert(
            "size-source".into(),
            json!(if f.size_from_chs() {
                "chs"
            } else {
                "current-size"
            }),
        );
        s.insert(
            "uuid".into(),
            json!(uuid::Uuid::from_bytes(f.uuid).to_string()),
        );
        if let Some(d) = &self.dynamic {
            info.cluster_size = Some(d.block_size);
            s.insert("block-size".into(), json!(d.block_size));
            s.insert(
                "max-table-entries".into(),
                json!(lock(&d.meta).layout.max_table_entries),
            );
            if f.disk_type == DiskType::Differencing {
                s.insert(
                    "parent-uuid".into(),
                    json!(uuid::Uuid::from_bytes(d.header.parent_uuid).to_string()),
                );
                s.insert("parent-name".into(), json!(d.header.parent_name));
                info.backing_file = self.backing_name.clone();
                info.backing_format = Some("vpc".into());
            }
        }
        info
    }

    fn is_read_only(&self) -> bool {
        self.storage.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        if self.dynamic.is_none() {
            return self.read_data(buf, offset);
        }
        self.for_blocks(offset, buf.len() as u64, |b, o, r| {
            self.read_block(b, o, &mut buf[r])
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        if self.is_read_only() {
            return Err(Error::read_only("VHD image is open read-only"));
        }
        if self.dynamic.is_none() {
            return self.write_data(buf, offset);
        }
        self.for_blocks(offset, buf.len() as u64, |b, o, r| {
            self.write_block(b, o, &buf[r])
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        check_range(offset, len, self.size())?;
        if self.is_read_only() {
            return Err(Error::read_only("VHD image is open read-only"));
        }
        if self.dynamic.is_none() {
            if unmap {
                return self
                    .storage
                    .punch_hole(offset, len)
                    .ctx(|| format!("zeroing VHD data at offset {offset:#x}"));
            }
            let zero = vec![0u8; len.min(1 << 20) as usize];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zero.len() as u64) as usize;
                self.write_data(&zero[..n], offset + at)?;
                at += n as u64;
            }
            return Ok(());
        }
        let has_parent = self.disk_type() == DiskType::Differencing;
        self.for_blocks(offset, len, |b, o, r| {
            let n = r.len() as u64;
            if has_parent {
                // Zeroes must hide the parent: write them as data.
                let zero = vec![0u8; n as usize];
                self.write_block(b, o, &zero)
            } else {
                self.zero_block(b, o, n, unmap, unmap)
            }
        })
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.disk_type() != DiskType::Differencing {
            return self.write_zeroes(offset, len, true);
        }
        check_range(offset, len, self.size())?;
        if self.is_read_only() {
            return Err(Error::read_only("VHD image is open read-only"));
        }
        // Discarded sectors of a differencing disk show the parent again.
        self.for_blocks(offset, len, |b, o, r| {
            let (s0, s1) = (o.div_ceil(SECTOR), (o + r.len() as u64) / SECTOR);
            if s0 < s1 {
                self.zero_block(b, s0 * SECTOR, (s1 - s0) * SECTOR, true, true)?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> Result<()> {
        self.storage.sync().ctx(|| "flushing VHD image".into())
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let size = self.size();
        check_range(offset, max_len.min(1), size)?;
        let max_len = max_len.min(size - offset);
        if max_len == 0 {
            return Err(Error::invalid(format!(
                "block status at offset {offset} is at the end of the disk"
            )));
        }
        if self.dynamic.is_some() {
            return self.block_extent(offset, max_len);
        }
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

    fn backing(&self) -> Option<&dyn BlockImage> {
        self.parent.as_deref()
    }

    fn check(&self, repair: bool) -> Result<CheckReport> {
        super::check::check(self, repair)
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        self.resize_to(new_size)
    }
}
