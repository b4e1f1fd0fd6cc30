//! An open VDI image: block map lookups, allocation, mapping and check.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use serde_json::json;

use super::header::{Header, ALLOCATED_FIELD, TYPE_STATIC, UNALLOCATED, ZERO_BLOCK};
use crate::error::{Error, IoContext, Result};
use crate::format::Format;
use crate::image::{check_range, BlockImage, CheckReport, Extent, ExtentKind, ImageInfo};
use crate::open::OpenContext;
use crate::storage::Storage;

/// Largest guest size accepted.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Largest block map read into memory.
pub const MAX_MAP_BYTES: u64 = 256 << 20;

/// The block map and allocation cursor.
#[derive(Debug)]
pub struct Meta {
    /// Block map: block index in the data area, or [`UNALLOCATED`] / [`ZERO_BLOCK`].
    pub map: Vec<u32>,
    /// Index the next allocated block takes: past every used index and the header count.
    pub next_index: u32,
    /// File length as last written or seen.
    pub file_len: u64,
}

/// An open VDI image.
pub struct VdiImage {
    pub(super) storage: Box<dyn Storage>,
    pub(super) header: Header,
    pub(super) block_size: u64,
    pub(super) meta: Mutex<Meta>,
    pub(super) files: Vec<PathBuf>,
}

impl std::fmt::Debug for VdiImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiImage")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

fn allocated(e: u32) -> bool {
    e != UNALLOCATED && e != ZERO_BLOCK
}

/// Opens the VDI in `storage`.
pub fn open(storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<VdiImage> {
    let len = storage.len().ctx(|| "reading the VDI file size".into())?;
    if len < 512 {
        return Err(Error::corrupt(format!(
            "VDI file of {len} bytes is truncated: the header takes 512"
        )));
    }
    let mut hb = [0u8; 512];
    storage
        .read_exact_at(&mut hb, 0)
        .ctx(|| "reading the VDI header".into())?;
    let header = Header::parse(&hb)?;
    header.validate(len, MAX_VIRTUAL_SIZE, MAX_MAP_BYTES)?;
    let n = header.blocks_in_hdd as usize;
    let mut raw = vec![0u8; n * 4];
    let at = u64::from(header.offset_bmap);
    storage
        .read_exact_at(&mut raw, at)
        .ctx(|| format!("reading the VDI block map at offset {at:#x}"))?;
    let map: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    drop(raw);
    let bs = u64::from(header.block_size);
    let mut max_index: Option<u32> = None;
    for (i, &e) in map.iter().enumerate() {
        if !allocated(e) {
            continue;
        }
        if e >= header.blocks_in_hdd {
            if ctx.writable {
                return Err(Error::corrupt(format!(
                    "VDI block map entry {i} is {e}, not below the {} blocks of the image",
                    header.blocks_in_hdd
                )));
            }
            continue;
        }
        max_index = Some(max_index.map_or(e, |m| m.max(e)));
    }
    if let Some(m) = max_index {
        let end = u64::from(header.offset_data) + (u64::from(m) + 1) * bs;
        if end > len {
            return Err(Error::corrupt(format!(
                "VDI block {m} ends at offset {end:#x}, past the end of the file ({len} \
                 bytes): the image is truncated"
            )));
        }
    }
    if ctx.writable {
        let mut seen = vec![false; n];
        for (i, &e) in map.iter().enumerate() {
            if allocated(e) {
                if seen[e as usize] {
                    return Err(Error::corrupt(format!(
                        "VDI block map entry {i} reuses data block {e}, which another entry \
                         holds"
                    )));
                }
                seen[e as usize] = true;
            }
        }
    }
    let next_index = header.blocks_allocated.max(max_index.map_or(0, |m| m + 1));
    Ok(VdiImage {
        storage,
        block_size: bs,
        meta: Mutex::new(Meta {
            map,
            next_index,
            file_len: len,
        }),
        files: ctx.path.iter().cloned().collect(),
        header,
    })
}

impl VdiImage {
    fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn data_pos(&self, b: usize, e: u32) -> Result<u64> {
        if e >= self.header.blocks_in_hdd {
            return Err(Error::corrupt(format!(
                "VDI block map entry {b} is {e}, not below the {} blocks of the image",
                self.header.blocks_in_hdd
            )));
        }
        Ok(u64::from(self.header.offset_data) + u64::from(e) * self.block_size)
    }

    fn for_blocks(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let bs = self.block_size;
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

    fn read_block(&self, b: usize, o: u64, buf: &mut [u8]) -> Result<()> {
        let e = self.lock().map[b];
        if !allocated(e) {
            buf.fill(0);
            return Ok(());
        }
        let at = self.data_pos(b, e)? + o;
        self.storage
            .read_exact_at(buf, at)
            .ctx(|| format!("reading VDI block {b} at offset {at:#x}"))
    }

    /// Writes into block `b`, allocating it if needed. Allocation order: the data (the rest
    /// of the block reads as zeroes: holes), then the header's block count, then the map
    /// entry. A crash in between leaves an unreferenced block, never a map entry without
    /// data, and the count never falls below the indexes in use, so the next allocation
    /// (ours or qemu's) cannot land on a block that is referenced.
    fn write_block(&self, b: usize, o: u64, buf: &[u8]) -> Result<()> {
        let mut m = self.lock();
        let e = m.map[b];
        if allocated(e) {
            let at = self.data_pos(b, e)? + o;
            drop(m);
            return self
                .storage
                .write_all_at(buf, at)
                .ctx(|| format!("writing VDI block {b} at offset {at:#x}"));
        }
        let idx = m.next_index;
        if idx >= self.header.blocks_in_hdd {
            return Err(Error::corrupt(format!(
                "VDI image has no free block index for block {b} (next index {idx}, {} blocks)",
                self.header.blocks_in_hdd
            )));
        }
        let pos = self.data_pos(b, idx)?;
        let end = pos + self.block_size;
        if pos < m.file_len {
            // Left over from an interrupted allocation: make the block read as zeroes.
            self.storage
                .punch_hole(pos, m.file_len.min(end) - pos)
                .ctx(|| format!("clearing VDI block space at offset {pos:#x}"))?;
        }
        self.storage
            .write_all_at(buf, pos + o)
            .ctx(|| format!("writing VDI block {b} at offset {:#x}", pos + o))?;
        if m.file_len < end {
            self.storage
                .set_len(end)
                .ctx(|| format!("extending the VDI file to {end:#x}"))?;
            m.file_len = end;
        }
        self.storage
            .write_all_at(&(idx + 1).to_le_bytes(), ALLOCATED_FIELD)
            .ctx(|| "writing the VDI allocated-block count".into())?;
        m.next_index = idx + 1;
        let at = u64::from(self.header.offset_bmap) + 4 * b as u64;
        self.storage
            .write_all_at(&idx.to_le_bytes(), at)
            .ctx(|| format!("writing VDI block map entry {b} at offset {at:#x}"))?;
        m.map[b] = idx;
        Ok(())
    }

    fn ensure_writable(&self) -> Result<()> {
        if self.storage.is_read_only() {
            return Err(Error::read_only("VDI image is open read-only"));
        }
        Ok(())
    }
}

impl BlockImage for VdiImage {
    fn format(&self) -> Format {
        Format::Vdi
    }

    fn virtual_size(&self) -> u64 {
        self.header.disk_size
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let mut info = ImageInfo::new(Format::Vdi, h.disk_size);
        let sub = if h.image_type == TYPE_STATIC {
            "static"
        } else {
            "dynamic"
        };
        info.subformat = Some(sub.into());
        info.cluster_size = Some(self.block_size);
        info.files = self.files.clone();
        let m = self.lock();
        let s = &mut info.specific;
        s.insert("image-type".into(), json!(sub));
        s.insert("version".into(), json!("1.1"));
        s.insert("header-size".into(), json!(h.header_size));
        s.insert("blocks".into(), json!(h.blocks_in_hdd));
        s.insert(
            "blocks-allocated".into(),
            json!(m.map.iter().filter(|&&e| allocated(e)).count()),
        );
        s.insert(
            "uuid".into(),
            json!(uuid::Uuid::from_bytes(h.uuid_image).to_string()),
        );
        s.insert(
            "last-snapshot-uuid".into(),
            json!(uuid::Uuid::from_bytes(h.uuid_last_snap).to_string()),
        );
        let comment = String::from_utf8_lossy(&h.comment);
        let comment = comment.trim_end_matches('\0');
        if !comment.is_empty() {
            s.insert("comment".into(), json!(comment));
        }
        info
    }

    fn is_read_only(&self) -> bool {
        self.storage.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.virtual_size())?;
        self.for_blocks(offset, buf.len() as u64, |b, o, r| {
            self.read_block(b, o, &mut buf[r])
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.virtual_size())?;
        self.ensure_writable()?;
        self.for_blocks(offset, buf.len() as u64, |b, o, r| {
            self.write_block(b, o, &buf[r])
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        check_range(offset, len, self.virtual_size())?;
        self.ensure_writable()?;
        // Blocks stay allocated (freeing one would break the block count that qemu-img
        // uses as its allocation cursor): their bytes are zeroed or punched out.
        self.for_blocks(offset, len, |b, o, r| {
            let e = self.lock().map[b];
            if !allocated(e) {
                return Ok(());
            }
            let at = self.data_pos(b, e)? + o;
            let n = r.len() as u64;
            if unmap {
                self.storage
                    .punch_hole(at, n)
                    .ctx(|| format!("discarding VDI data at offset {at:#x}"))
            } else {
                let zero = vec![0u8; n as usize];
                self.storage
                    .write_all_at(&zero, at)
                    .ctx(|| format!("zeroing VDI data at offset {at:#x}"))
            }
        })
    }

    fn flush(&self) -> Result<()> {
        self.storage.sync().ctx(|| "flushing VDI image".into())
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<Extent> {
        check_range(offset, max_len.min(1), self.virtual_size())?;
        let max_len = max_len.min(self.virtual_size() - offset);
        if max_len == 0 {
            return Err(Error::invalid(format!(
                "block status at offset {offset} is at the end of the disk"
            )));
        }
        let bs = self.block_size;
        let m = self.lock();
        let mut first: Option<Extent> = None;
        let mut at = offset;
        let end = offset + max_len;
        let mut steps = 0u32;
        while at < end && steps < 65_536 {
            steps += 1;
            let b = (at / bs) as usize;
            let o = at % bs;
            let mut n = (bs - o).min(end - at);
            let e = m.map[b];
            let (kind, host) = match e {
                UNALLOCATED => (ExtentKind::Unallocated, None),
                ZERO_BLOCK => (ExtentKind::Zero, None),
                _ => {
                    let pos = self.data_pos(b, e)? + o;
                    // Holes punched into allocated blocks read as zeroes.
                    let (data, run) = self
                        .storage
                        .data_run(pos, n)
                        .ctx(|| format!("mapping VDI block {b}"))?;
                    n = run.clamp(1, n);
                    if data {
                        (ExtentKind::Data, Some(pos))
                    } else {
                        (ExtentKind::Zero, None)
                    }
                }
            };
            match &mut first {
                None => {
                    first = Some(Extent {
                        start: offset,
                        length: n,
                        kind,
                        host_offset: host,
                    })
                }
                Some(x) => {
                    if !x.try_extend(kind, n, host) {
                        break;
                    }
                }
            }
            at += n;
        }
        first.ok_or_else(|| Error::invalid("empty block status request"))
    }

    fn check(&self, repair: bool) -> Result<CheckReport> {
        let mut r = CheckReport::default();
        let len = self.storage.len().ctx(|| "reading VDI file size".into())?;
        let mut m = self.lock();
        let blocks = self.header.blocks_in_hdd;
        let mut owner: Vec<Option<usize>> = vec![None; blocks as usize];
        let mut count = 0u64;
        let mut max_used = 0u32;
        for (i, &e) in m.map.iter().enumerate() {
            if !allocated(e) {
                continue;
            }
            count += 1;
            if e >= blocks {
                r.corruptions += 1;
                r.messages.push(format!(
                    "block map entry {i}: data block {e} is not below {blocks}"
                ));
                continue;
            }
            max_used = max_used.max(e + 1);
            if let Some(j) = owner[e as usize] {
                r.corruptions += 1;
                r.messages.push(format!(
                    "block map entries {j} and {i} both use data block {e}"
                ));
            }
            owner[e as usize] = Some(i);
            let end = u64::from(self.header.offset_data) + (u64::from(e) + 1) * self.block_size;
            if end > len {
                r.corruptions += 1;
                r.messages.push(format!(
                    "block map entry {i}: data block {e} ends past the end of the file"
                ));
            }
        }
        r.allocated_clusters = Some(count);
        r.total_clusters = Some(u64::from(blocks));
        let mut hb = [0u8; 4];
        self.storage
            .read_exact_at(&mut hb, ALLOCATED_FIELD)
            .ctx(|| "reading the VDI allocated-block count".into())?;
        let stored = u32::from_le_bytes(hb);
        if stored < max_used {
            // The next allocation would reuse a referenced block.
            r.corruptions += 1;
            r.messages.push(format!(
                "header counts {stored} allocated blocks, but block {} is in use",
                max_used - 1
            ));
            if repair && !self.storage.is_read_only() {
                let fixed = m.next_index.max(max_used);
                self.storage
                    .write_all_at(&fixed.to_le_bytes(), ALLOCATED_FIELD)
                    .ctx(|| "rewriting the VDI allocated-block count".into())?;
                m.next_index = fixed;
                r.corruptions_fixed += 1;
            }
        } else if u64::from(stored) > count {
            r.leaks += u64::from(stored) - count;
            r.messages.push(format!(
                "header counts {stored} allocated blocks, the map references {count}"
            ));
        }
        Ok(r)
    }
}
