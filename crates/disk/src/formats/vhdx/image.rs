//! The open VHDX image: reads, writes, zeroing, block status and flush.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use uuid::Uuid;

use super::format::*;
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::{check_range, is_zero, BlockImage, CheckReport, Extent, ExtentKind, ImageInfo};
use crate::storage::Storage;

/// Where the metadata structures lie in the file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub log_offset: u64,
    pub log_length: u64,
    pub bat_offset: u64,
    pub bat_length: u64,
    pub meta_offset: u64,
    pub meta_length: u64,
}

impl Layout {
    /// The metadata ranges no payload or bitmap block may overlap.
    pub fn reserved(&self) -> [(u64, u64, &'static str); 4] {
        [
            (0, MIB, "header section"),
            (self.log_offset, self.log_length, "log"),
            (self.bat_offset, self.bat_length, "BAT"),
            (self.meta_offset, self.meta_length, "metadata region"),
        ]
    }

    /// Which metadata range `[off, off+len)` overlaps, if any.
    pub fn overlaps(&self, off: u64, len: u64) -> Option<&'static str> {
        self.reserved()
            .into_iter()
            .find(|&(o, l, _)| l > 0 && off < o + l && o < off + len)
            .map(|(_, _, what)| what)
    }
}

/// Header state for the first-write update.
#[derive(Debug)]
pub(super) struct HeaderState {
    /// The current header.
    pub current: Header,
    /// Which slot (0 or 1) holds it.
    pub slot: usize,
}

/// Allocation state, serialized by one mutex.
#[derive(Debug)]
pub(super) struct AllocState {
    /// Where the next payload block goes (MiB-aligned, past every structure).
    pub next_free: u64,
    /// 4 KiB BAT sectors (by file offset) changed in memory since the last flush.
    pub dirty: BTreeSet<u64>,
}

/// An open VHDX image.
pub struct VhdxImage {
    pub(super) storage: Box<dyn Storage>,
    pub(super) geo: Geometry,
    pub(super) layout: Layout,
    pub(super) bat: RwLock<Vec<u64>>,
    pub(super) alloc: Mutex<AllocState>,
    pub(super) header: Mutex<HeaderState>,
    pub(super) in_use: AtomicBool,
    /// BAT entries that point into metadata or carry invalid states: writes are refused
    /// until `check --repair` clears them.
    pub(super) bat_faults: AtomicBool,
    pub(super) leave_allocated: bool,
    pub(super) page83: Uuid,
    pub(super) parent_name: Option<String>,
    pub(super) backing: Option<Box<dyn BlockImage>>,
    /// The log still needs replay (read-only open shows the replayed state from memory).
    pub(super) dirty_log: bool,
    pub(super) bitmaps: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    pub(super) files: Vec<PathBuf>,
    pub(super) header_faults: Mutex<Vec<String>>,
    pub(super) regions: Vec<RegionEntry>,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("geo", &self.geo)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Most sector bitmaps kept in memory (1 MiB each).
const BITMAP_CACHE: usize = 32;
/// Unit of block copies and zero fills.
const PIECE: u64 = MIB;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VhdxImage {
    pub(super) fn bat_read(&self) -> RwLockReadGuard<'_, Vec<u64>> {
        self.bat.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn bat_write(&self) -> RwLockWriteGuard<'_, Vec<u64>> {
        self.bat.write().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, block: u64) -> u64 {
        self.bat_read()
            .get(self.geo.payload_index(block))
            .copied()
            .unwrap_or(0)
    }

    /// Sets BAT entry `index` in memory and records its sector for the next flush.
    pub(super) fn set_entry(&self, alloc: &mut AllocState, index: usize, value: u64) {
        self.bat_write()[index] = value;
        let at = self.layout.bat_offset + index as u64 * 8;
        alloc.dirty.insert(at - at % 4096);
    }

    /// The file offset of an allocated block, refused when it points into metadata.
    fn payload_at(&self, block: u64, e: u64) -> Result<u64> {
        let at = bat_offset(e);
        match self.layout.overlaps(at, self.block_len(block)) {
            None => Ok(at),
            Some(what) => Err(Error::corrupt(format!(
                "BAT entry {} of block {block} points at 0x{at:x}, inside the {what}",
                self.geo.payload_index(block)
            ))),
        }
    }

    fn block_len(&self, block: u64) -> u64 {
        let start = block * self.geo.block_size;
        self.geo.block_size.min(self.geo.virtual_size - start)
    }

    /// Reads `buf` from the parent at `offset`, zeroes past its end or without one.
    fn read_parent(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            Some(p) => {
                let psize = p.virtual_size();
                let n = (psize.saturating_sub(offset) as usize).min(buf.len());
                if n > 0 {
                    p.read_at(&mut buf[..n], offset)?;
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

    fn read_file(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.storage
            .read_exact_at(buf, at)
            .ctx(|| format!("reading payload at 0x{at:x}"))
    }

    /// The sector bitmap of chunk `chunk`, cached.
    fn bitmap(&self, chunk: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = lock(&self.bitmaps).get(&chunk) {
            return Ok(b.clone());
        }
        let idx = self.geo.bitmap_index(chunk);
        let e = self.bat_read().get(idx).copied().unwrap_or(0);
        if bat_state(e) != SB_PRESENT
            || self
                .layout
                .overlaps(bat_offset(e), SECTOR_BITMAP_SIZE)
                .is_some()
        {
            return Err(Error::corrupt(format!(
                "sector bitmap entry {idx} (state {}, offset 0x{:x}) is not usable for a \
                 partially present block",
                bat_state(e),
                bat_offset(e)
            )));
        }
        let mut b = vec![0u8; SECTOR_BITMAP_SIZE as usize];
        self.storage
            .read_exact_at(&mut b, bat_offset(e))
            .ctx(|| format!("reading sector bitmap at 0x{:x}", bat_offset(e)))?;
        let b = Arc::new(b);
        let mut cache = lock(&self.bitmaps);
        if cache.len() >= BITMAP_CACHE {
            cache.clear();
        }
        cache.insert(chunk, b.clone());
        Ok(b)
    }

    /// Runs of a partially present block: (present, length) starting at guest `offset`,
    /// at most `len` bytes, within one block.
    fn partial_run(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        let ss = self.geo.logical_sector;
        let chunk_bytes = self.geo.chunk_ratio * self.geo.block_size;
        let chunk = offset / chunk_bytes;
        let bitmap = self.bitmap(chunk)?;
        let bit = |sector: u64| {
            let s = (sector % (chunk_bytes / ss)) as usize;
            bitmap[s / 8] & (1 << (s % 8)) != 0
        };
        let first = offset / ss;
        let present = bit(first);
        let mut end = ((first + 1) * ss).min(offset + len);
        while end < offset + len && bit(end / ss) == present {
            end = (end + ss).min(offset + len);
        }
        Ok((present, end - offset))
    }

    /// Reads within one block, through the parent where this layer has no data.
    fn read_block(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let block = offset / self.geo.block_size;
        let in_block = offset % self.geo.block_size;
        let e = self.entry(block);
        match bat_state(e) {
            PAYLOAD_FULLY_PRESENT => self.read_file(buf, self.payload_at(block, e)? + in_block),
            PAYLOAD_ZERO => {
                buf.fill(0);
                Ok(())
            }
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_UNMAPPED => {
                self.read_parent(buf, offset)
            }
            PAYLOAD_PARTIALLY_PRESENT if self.geo.has_parent => {
                let base = self.payload_at(block, e)?;
                let mut done = 0usize;
                while done < buf.len() {
                    let at = offset + done as u64;
                    let (present, n) = self.partial_run(at, (buf.len() - done) as u64)?;
                    let part = &mut buf[done..done + n as usize];
                    if present {
                        self.read_file(part, base + (at % self.geo.block_size))?;
                    } else {
                        self.read_parent(part, at)?;
                    }
                    done += n as usize;
                }
                Ok(())
            }
            s => Err(Error::corrupt(format!(
                "BAT entry {} of block {block} has invalid state {s}",
                self.geo.payload_index(block)
            ))),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.storage.is_read_only() {
            return Err(Error::read_only("vhdx image is opened read-only"));
        }
        if self.bat_faults.load(Ordering::Acquire) {
            return Err(Error::corrupt(
                "vhdx image has BAT entries that point into metadata or carry invalid states; \
                 run check --repair before writing",
            ));
        }
        Ok(())
    }

    /// Before the first write after open, gives the file new write GUIDs (MS-VHDX 2.2.2.1):
    /// both header slots are rewritten, newest last, each followed by a sync.
    pub(super) fn mark_in_use(&self) -> Result<()> {
        if self.in_use.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut h = lock(&self.header);
        if self.in_use.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut next = h.current.clone();
        next.file_write = Uuid::new_v4();
        next.data_write = Uuid::new_v4();
        next.log_guid = Uuid::nil();
        self.write_headers(&mut h, next)?;
        self.in_use.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes `next` into both header slots with increasing sequence numbers.
    pub(super) fn write_headers(&self, h: &mut HeaderState, mut next: Header) -> Result<()> {
        for _ in 0..2 {
            next.seq = h.current.seq.wrapping_add(1);
            let slot = 1 - h.slot;
            let at = HEADER_OFFSETS[slot];
            self.storage
                .write_all_at(&next.to_bytes(), at)
                .ctx(|| format!("writing header {}", slot + 1))?;
            self.storage.sync().ctx(|| "flushing header".into())?;
            h.current = next.clone();
            h.slot = slot;
        }
        Ok(())
    }

    /// Writes `data` into `block` at `in_block`, allocating or completing the block.
    fn write_block(&self, data: &[u8], block: u64, in_block: u64) -> Result<()> {
        let e = self.entry(block);
        if bat_state(e) == PAYLOAD_FULLY_PRESENT {
            let at = self.payload_at(block, e)? + in_block;
            return self
                .storage
                .write_all_at(data, at)
                .ctx(|| format!("writing payload at 0x{at:x}"));
        }
        let mut alloc = lock(&self.alloc);
        let e = self.entry(block);
        let index = self.geo.payload_index(block);
        let bs = self.geo.block_size;
        match bat_state(e) {
            PAYLOAD_FULLY_PRESENT => {
                drop(alloc);
                let at = self.payload_at(block, e)? + in_block;
                self.storage
                    .write_all_at(data, at)
                    .ctx(|| format!("writing payload at 0x{at:x}"))
            }
            PAYLOAD_PARTIALLY_PRESENT => {
                // Complete the block in place: sectors absent here get the parent's data,
                // then the state flips to fully present.
                let at = self.payload_at(block, e)?;
                self.fill_block(at, block, data, in_block, true)?;
                self.set_entry(&mut alloc, index, bat_entry(PAYLOAD_FULLY_PRESENT, at));
                Ok(())
            }
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_UNMAPPED | PAYLOAD_ZERO => {
                let at = alloc.next_free;
                let end = at
                    .checked_add(bs)
                    .filter(|&e| e <= MAX_FILE_OFFSET)
                    .ok_or_else(|| Error::limit("vhdx file would grow past its size limit"))?;
                self.storage
                    .set_len(end)
                    .ctx(|| format!("extending file to {end} for block {block}"))?;
                alloc.next_free = end;
                let from_parent = self.geo.has_parent && bat_state(e) != PAYLOAD_ZERO;
                if from_parent {
                    self.fill_block(at, block, data, in_block, false)?;
                } else {
                    self.storage
                        .write_all_at(data, at + in_block)
                        .ctx(|| format!("writing payload at 0x{:x}", at + in_block))?;
                }
                self.set_entry(&mut alloc, index, bat_entry(PAYLOAD_FULLY_PRESENT, at));
                Ok(())
            }
            s => Err(Error::corrupt(format!(
                "BAT entry {index} of block {block} has invalid state {s}"
            ))),
        }
    }

    /// Writes the whole of `block` at file offset `at`: its current content (parent or
    /// partial data) with `data` laid over at `in_block`, one piece at a time.
    fn fill_block(
        &self,
        at: u64,
        block: u64,
        data: &[u8],
        in_block: u64,
        in_place: bool,
    ) -> Result<()> {
        let start = block * self.geo.block_size;
        let len = self.block_len(block);
        let (ds, de) = (in_block, in_block + data.len() as u64);
        let mut buf = vec![0u8; PIECE.min(len) as usize];
        let mut p = 0;
        while p < len {
            let n = PIECE.min(len - p);
            let piece = &mut buf[..n as usize];
            let covered = ds <= p && de >= p + n;
            if !covered {
                self.read_block(piece, start + p)?;
            }
            let (s, e) = (ds.max(p), de.min(p + n));
            if s < e {
                piece[(s - p) as usize..(e - p) as usize]
                    .copy_from_slice(&data[(s - ds) as usize..(e - ds) as usize]);
            }
            // Fresh space already reads as zeroes.
            if in_place || !is_zero(piece) {
                self.storage
                    .write_all_at(piece, at + p)
                    .ctx(|| format!("writing payload at 0x{:x}", at + p))?;
            }
            p += n;
        }
        Ok(())
    }

    /// Whether this block reads as zeroes without looking at data.
    fn reads_zero(&self, e: u64) -> bool {
        match bat_state(e) {
            PAYLOAD_ZERO => true,
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_UNMAPPED => !self.geo.has_parent,
            _ => false,
        }
    }

    fn zero_block(&self, block: u64, in_block: u64, len: u64, unmap: bool) -> Result<()> {
        let e = self.entry(block);
        let whole = in_block == 0 && len == self.block_len(block);
        if self.reads_zero(e) {
            return Ok(());
        }
        let state = bat_state(e);
        if state == PAYLOAD_FULLY_PRESENT && (!whole || !unmap || self.leave_allocated) {
            // Keep the allocation; the file range becomes a hole or zeroes.
            let at = self.payload_at(block, e)? + in_block;
            return self
                .storage
                .punch_hole(at, len)
                .ctx(|| format!("zeroing payload at 0x{at:x}"));
        }
        if whole {
            let mut alloc = lock(&self.alloc);
            let e = self.entry(block);
            self.set_entry(
                &mut alloc,
                self.geo.payload_index(block),
                bat_entry(PAYLOAD_ZERO, 0),
            );
            if matches!(
                bat_state(e),
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT
            ) {
                // The block is no longer referenced in memory; give its space back.
                if let Ok(at) = self.payload_at(block, e) {
                    self.storage
                        .punch_hole(at, self.block_len(block))
                        .ctx(|| format!("discarding payload at 0x{at:x}"))?;
                }
            }
            return Ok(());
        }
        // Part of a block that shows parent data or is partly present: write zeroes.
        let zero = vec![0u8; PIECE.min(len) as usize];
        let mut p = 0;
        while p < len {
            let n = PIECE.min(len - p);
            self.write_block(&zero[..n as usize], block, in_block + p)?;
            p += n;
        }
        Ok(())
    }

    /// The extent of this layer at `offset` within its block: kind, host offset, length.
    fn block_extent(&self, offset: u64, max: u64) -> Result<(ExtentKind, Option<u64>, u64)> {
        let block = offset / self.geo.block_size;
        let in_block = offset % self.geo.block_size;
        let len = (self.geo.block_size - in_block).min(max);
        let e = self.entry(block);
        let absent = if self.geo.has_parent {
            ExtentKind::Unallocated
        } else {
            ExtentKind::Zero
        };
        Ok(match bat_state(e) {
            PAYLOAD_FULLY_PRESENT => {
                self.payload_run(block, self.payload_at(block, e)? + in_block, len)?
            }
            PAYLOAD_ZERO => (ExtentKind::Zero, None, len),
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_UNMAPPED => (absent, None, len),
            PAYLOAD_PARTIALLY_PRESENT if self.geo.has_parent => {
                let (present, n) = self.partial_run(offset, len)?;
                if present {
                    self.payload_run(block, self.payload_at(block, e)? + in_block, n)?
                } else {
                    (ExtentKind::Unallocated, None, n)
                }
            }
            s => {
                return Err(Error::corrupt(format!(
                    "BAT entry {} of block {block} has invalid state {s}",
                    self.geo.payload_index(block)
                )))
            }
        })
    }

    /// Classifies `len` present payload bytes at host offset `at`: holes in the host file
    /// (qemu-img leaves the unwritten part of a new block as one) read as zeroes, so they
    /// are reported as zero and a conversion never reads them. Ranges past the end of the
    /// file stay data, so reading them reports the truncation.
    fn payload_run(&self, block: u64, at: u64, len: u64) -> Result<(ExtentKind, Option<u64>, u64)> {
        let file_len = self.storage.len().ctx(|| "reading the file size".into())?;
        if at.saturating_add(len) > file_len {
            return Ok((ExtentKind::Data, Some(at), len));
        }
        let (data, run) = self
            .storage
            .data_run(at, len)
            .ctx(|| format!("mapping VHDX block {block}"))?;
        let run = run.clamp(1, len);
        Ok(if data {
            (ExtentKind::Data, Some(at), run)
        } else {
            (ExtentKind::Zero, None, run)
        })
    }

    /// Writes the BAT sectors changed since the last flush, after syncing the data they
    /// point at, then syncs again.
    pub(super) fn flush_bat(&self, alloc: &mut AllocState) -> Result<()> {
        self.storage.sync().ctx(|| "flushing data".into())?;
        if alloc.dirty.is_empty() {
            return Ok(());
        }
        let bat_end = self.layout.bat_offset + self.geo.bat_bytes();
        let mut sector = vec![0u8; 4096];
        for &at in &alloc.dirty {
            self.storage
                .read_zero_padded(&mut sector, at)
                .ctx(|| format!("reading BAT sector at 0x{at:x}"))?;
            {
                let bat = self.bat_read();
                let first = at.max(self.layout.bat_offset);
                let mut p = first;
                while p < (at + 4096).min(bat_end) {
                    let i = ((p - self.layout.bat_offset) / 8) as usize;
                    put64(&mut sector, (p - at) as usize, bat[i]);
                    p += 8;
                }
            }
            self.storage
                .write_all_at(&sector, at)
                .ctx(|| format!("writing BAT sector at 0x{at:x}"))?;
        }
        alloc.dirty.clear();
        self.storage.sync().ctx(|| "flushing BAT".into())
    }

    /// The data write GUID of the current header (parent linkage of children).
    pub(super) fn data_write_guid(&self) -> Uuid {
        lock(&self.header).current.data_write
    }

    /// The log length recorded in the header.
    fn log_size(&self) -> u64 {
        self.layout.log_length
    }
}

impl BlockImage for VhdxImage {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn virtual_size(&self) -> u64 {
        self.geo.virtual_size
    }

    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::new(Format::Vhdx, self.geo.virtual_size);
        info.subformat = Some(
            if self.geo.has_parent {
                "differencing"
            } else if self.leave_allocated {
                "fixed"
            } else {
                "dynamic"
            }
            .to_string(),
        );
        info.cluster_size = Some(self.geo.block_size);
        info.dirty = self.dirty_log;
        info.corrupt = self.bat_faults.load(Ordering::Acquire);
        info.files = self.files.clone();
        if let Some(p) = &self.parent_name {
            info.backing_file = Some(p.clone());
            info.backing_format = Some("vhdx".into());
        }
        let s = &mut info.specific;
        s.insert("block-size".into(), self.geo.block_size.into());
        s.insert("log-size".into(), self.log_size().into());
        s.insert("logical-sector-size".into(), self.geo.logical_sector.into());
        s.insert(
            "physical-sector-size".into(),
            self.geo.physical_sector.into(),
        );
        s.insert("page83".into(), self.page83.to_string().into());
        s.insert(
            "data-write-guid".into(),
            self.data_write_guid().to_string().into(),
        );
        info
    }

    fn is_read_only(&self) -> bool {
        self.storage.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.geo.virtual_size)?;
        let bs = self.geo.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = ((bs - at % bs) as usize).min(buf.len() - done);
            self.read_block(&mut buf[done..done + n], at)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.geo.virtual_size)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.check_writable()?;
        self.mark_in_use()?;
        let bs = self.geo.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = ((bs - at % bs) as usize).min(buf.len() - done);
            self.write_block(&buf[done..done + n], at / bs, at % bs)?;
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        check_range(offset, len, self.geo.virtual_size)?;
        if len == 0 {
            return Ok(());
        }
        self.check_writable()?;
        self.mark_in_use()?;
        let bs = self.geo.block_size;
        let mut at = offset;
        while at < offset + len {
            let n = (bs - at % bs).min(offset + len - at);
            self.zero_block(at / bs, at % bs, n, unmap)?;
            at += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.storage.is_read_only() {
            return Ok(());
        }
        let mut alloc = lock(&self.alloc);
        self.flush_bat(&mut alloc)
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent> {
        check_range(offset, max_len.min(1), self.geo.virtual_size)?;
        let max_len = max_len.min(self.geo.virtual_size - offset);
        if max_len == 0 {
            return Err(Error::invalid("block status of an empty range"));
        }
        let (kind, host_offset, length) = self.block_extent(offset, max_len)?;
        let mut extent = Extent {
            start: offset,
            length,
            kind,
            host_offset,
        };
        while extent.length < max_len {
            let (k, h, n) = self.block_extent(offset + extent.length, max_len - extent.length)?;
            if !extent.try_extend(k, n, h) {
                break;
            }
        }
        Ok(extent)
    }

    fn backing(&self) -> Option<&dyn BlockImage> {
        self.backing.as_deref()
    }

    fn check(&self, repair: bool) -> Result<CheckReport> {
        super::check::check(self, repair)
    }
}

impl Drop for VhdxImage {
    fn drop(&mut self) {
        if !self.storage.is_read_only() {
            let _ = self.flush();
        }
    }
}
