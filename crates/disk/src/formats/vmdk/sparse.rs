//! Sparse extents: the grain directory (GD), grain tables (GT), grain lookup, compressed
//! grains, and grain allocation for writes.
//!
//! Locking: one `Mutex<Meta>` per extent guards the directory, the table cache and the end
//! of file. Lookups hold it only to read a table entry; data I/O to already allocated
//! grains runs outside it. Allocation (append grain data, then point the GT entry at it)
//! runs entirely under it, so two writers never allocate the same grain twice.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};

use super::header::{
    parse_marker, sectors_for, SparseHeader, COMPRESS_DEFLATE, FLAG_NL_DETECT, FLAG_RGD, GD_AT_END,
    GRAIN_MARKER_LEN, MAGIC, MARKER_EOS, MARKER_FOOTER, SECTOR,
};
use super::stream::StreamState;
use crate::error::{Error, IoContext, Result};
use crate::image::is_zero;
use crate::storage::Storage;

/// Largest virtual size accepted (64 TiB).
pub const MAX_VIRTUAL: u64 = 64 << 40;
/// Largest grain directory held in memory (each of GD and RGD).
const MAX_GD_BYTES: u64 = 128 << 20;
/// Largest grain accepted (16 MiB); real images use 64 KiB.
const MAX_GRAIN_SECTORS: u64 = 32768;
/// Most grain table entries per table accepted (writers use 512).
const MAX_GTES: u32 = 4096;
/// Grain tables kept in the cache before it is emptied.
const GT_CACHE: usize = 4096;

/// What one grain (or a run of grains) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not allocated: reads come from the backing image or as zeroes.
    Unallocated,
    /// A zeroed grain (GT entry 1).
    Zero,
    /// Uncompressed data at this byte offset of the extent file.
    Data(u64),
    /// A compressed grain whose marker starts at this sector.
    Compressed(u64),
}

/// Mutable metadata of a sparse extent.
pub(crate) struct Meta {
    /// Grain directory: sector of each grain table, 0 when absent.
    pub gd: Vec<u32>,
    /// Redundant grain directory, when present and used for writes.
    pub rgd: Option<Vec<u32>>,
    cache: HashMap<u64, Arc<Vec<u32>>>,
    /// Next free sector at the end of the file.
    pub next_free: u64,
    /// Known length of the extent file in bytes.
    pub file_len: u64,
    /// Sorted, merged byte ranges holding metadata (header, descriptor, GD, GTs).
    reserved: Vec<(u64, u64)>,
}

/// An open sparse extent.
pub struct SparseExtent {
    /// The extent file.
    pub storage: Box<dyn Storage>,
    /// Its header (with the footer's directory offset for stream files).
    pub hdr: SparseHeader,
    /// Grain size in bytes.
    pub grain_bytes: u64,
    /// Entries per grain table.
    pub gtes: u64,
    /// Number of grain tables the capacity needs.
    pub gt_count: u64,
    /// Extent capacity in bytes.
    pub capacity_bytes: u64,
    pub(crate) meta: Mutex<Meta>,
    zcache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// State of a streamOptimized extent being written, if this one is.
    pub(crate) stream: Option<Mutex<StreamState>>,
}

fn le32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(crate) fn merge_ranges(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|r| r.1 > r.0);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Whether `[start, end)` overlaps any of the sorted, merged `ranges`.
pub(crate) fn overlaps(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= start);
    i < ranges.len() && ranges[i].0 < end
}

/// Geometry derived from a header, validated.
pub(crate) struct Geometry {
    pub grain_bytes: u64,
    pub gtes: u64,
    pub gt_bytes: u64,
    pub gt_count: u64,
    pub capacity_bytes: u64,
}

/// Validates the sizes in `hdr` and derives the table geometry.
pub(crate) fn geometry(hdr: &SparseHeader) -> Result<Geometry> {
    if hdr.version == 0 || hdr.version > 3 {
        return Err(Error::unsupported(format!(
            "sparse extent version {} is not supported",
            hdr.version
        )));
    }
    if hdr.grain_size == 0
        || !hdr.grain_size.is_power_of_two()
        || hdr.grain_size > MAX_GRAIN_SECTORS
    {
        return Err(Error::corrupt(format!(
            "grain size of {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
            hdr.grain_size
        )));
    }
    if hdr.gtes_per_gt == 0 || hdr.gtes_per_gt > MAX_GTES {
        return Err(Error::corrupt(format!(
            "{} grain table entries per table is out of range (1..={MAX_GTES})",
            hdr.gtes_per_gt
        )));
    }
    let capacity_bytes = hdr
        .capacity
        .checked_mul(SECTOR)
        .filter(|&c| c <= MAX_VIRTUAL)
        .ok_or_else(|| {
            Error::limit(format!(
                "extent capacity of {} sectors exceeds 64 TiB",
                hdr.capacity
            ))
        })?;
    if hdr.compressed() && hdr.compress_algorithm != COMPRESS_DEFLATE {
        return Err(Error::unsupported(format!(
            "compression algorithm {} is not supported",
            hdr.compress_algorithm
        )));
    }
    let grain_bytes = hdr.grain_size * SECTOR;
    let gtes = u64::from(hdr.gtes_per_gt);
    let grains = hdr.capacity.div_ceil(hdr.grain_size);
    let gt_count = grains.div_ceil(gtes);
    if gt_count * 4 > MAX_GD_BYTES {
        return Err(Error::limit(format!(
            "grain directory of {gt_count} entries is larger than {} MiB",
            MAX_GD_BYTES >> 20
        )));
    }
    Ok(Geometry {
        grain_bytes,
        gtes,
        gt_bytes: gtes * 4,
        gt_count,
        capacity_bytes,
    })
}

/// Reads and checks the footer of a stream file whose header says `GD_AT_END`.
fn read_footer(storage: &dyn Storage, hdr: &SparseHeader, len: u64) -> Result<SparseHeader> {
    let end = len / SECTOR * SECTOR;
    if end < 4 * SECTOR {
        return Err(Error::corrupt(
            "stream-optimized extent is truncated: no room for its footer",
        ));
    }
    let mut tail = vec![0u8; 3 * SECTOR as usize];
    storage
        .read_exact_at(&mut tail, end - 3 * SECTOR)
        .ctx(|| "reading stream footer".into())?;
    let (_, fsize, ftype) = parse_marker(&tail[..16]);
    let (eval, esize, etype) = parse_marker(&tail[1024..1040]);
    if &tail[512..516] != MAGIC
        || fsize != 0
        || ftype != MARKER_FOOTER
        || eval != 0
        || esize != 0
        || etype != MARKER_EOS
    {
        return Err(Error::corrupt(format!(
            "stream-optimized extent has no footer at offset {:#x} (file truncated or not finished)",
            end - 2 * SECTOR
        )));
    }
    let footer = SparseHeader::parse(&tail[512..1024])?;
    if footer.gd_offset == GD_AT_END
        || footer.capacity != hdr.capacity
        || footer.grain_size != hdr.grain_size
        || footer.gtes_per_gt != hdr.gtes_per_gt
    {
        return Err(Error::corrupt(
            "stream-optimized footer disagrees with the header",
        ));
    }
    Ok(footer)
}

/// Reads a directory of `count` entries at `sector`, bounds-checked against `len`.
pub(crate) fn read_dir(
    storage: &dyn Storage,
    sector: u64,
    count: u64,
    gt_bytes: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u32>> {
    let bytes = count * 4;
    let start = sector
        .checked_mul(SECTOR)
        .filter(|&s| sector != 0 && s.checked_add(bytes).is_some_and(|e| e <= len))
        .ok_or_else(|| {
            Error::corrupt(format!(
                "{what} at sector {sector:#x} ({bytes} bytes) is outside the file ({len} bytes)"
            ))
        })?;
    let mut raw = vec![0u8; bytes as usize];
    storage
        .read_exact_at(&mut raw, start)
        .ctx(|| format!("reading {what} at offset {start:#x}"))?;
    let dir = le32s(&raw);
    for (i, &e) in dir.iter().enumerate() {
        if e == 0 {
            continue;
        }
        let ok = u64::from(e) * SECTOR + gt_bytes <= len;
        if !ok {
            return Err(Error::corrupt(format!(
                "{what} entry {i} points to a grain table at sector {e:#x} beyond the end of the file"
            )));
        }
    }
    Ok(dir)
}

impl SparseExtent {
    /// Opens a sparse extent. `for_write` loads the redundant directory and the metadata map
    /// that writes are checked against.
    pub fn open(storage: Box<dyn Storage>, for_write: bool) -> Result<Self> {
        let len = storage.len().ctx(|| "reading extent size".into())?;
        let mut sec = vec![0u8; SECTOR as usize];
        storage
            .read_exact_at(&mut sec, 0)
            .ctx(|| "reading sparse extent header".into())?;
        let mut hdr = SparseHeader::parse(&sec)?;
        if hdr.flags & FLAG_NL_DETECT != 0 && !hdr.nl_ok {
            return Err(Error::corrupt(
                "sparse extent header newline check failed (file was transferred in text mode?)",
            ));
        }
        let geo = geometry(&hdr)?;
        if hdr.gd_offset == GD_AT_END {
            hdr = read_footer(storage.as_ref(), &hdr, len)?;
        }
        let gd = read_dir(
            storage.as_ref(),
            hdr.gd_offset,
            geo.gt_count,
            geo.gt_bytes,
            len,
            "grain directory",
        )?;
        let mut rgd = None;
        if for_write && hdr.flags & FLAG_RGD != 0 && hdr.rgd_offset != 0 && geo.gt_count > 0 {
            rgd = Some(read_dir(
                storage.as_ref(),
                hdr.rgd_offset,
                geo.gt_count,
                geo.gt_bytes,
                len,
                "redundant grain directory",
            )?);
        }
        let mut reserved = Vec::new();
        if for_write {
            let desc_end = hdr
                .desc_offset
                .saturating_add(hdr.desc_size)
                .saturating_mul(SECTOR)
                .max(SECTOR);
            reserved.push((0, desc_end));
            for (off, dir) in [(hdr.gd_offset, Some(&gd)), (hdr.rgd_offset, rgd.as_ref())] {
                if let Some(dir) = dir {
                    reserved.push((off * SECTOR, off * SECTOR + geo.gt_count * 4));
                    for &e in dir.iter().filter(|&&e| e != 0) {
                        let s = u64::from(e) * SECTOR;
                        reserved.push((s, s + geo.gt_bytes));
                    }
                }
            }
        }
        let meta = Meta {
            gd,
            rgd,
            cache: HashMap::new(),
            next_free: sectors_for(len),
            file_len: len,
            reserved: merge_ranges(reserved),
        };
        Ok(SparseExtent {
            storage,
            grain_bytes: geo.grain_bytes,
            gtes: geo.gtes,
            gt_count: geo.gt_count,
            capacity_bytes: geo.capacity_bytes,
            hdr,
            meta: Mutex::new(meta),
            zcache: Mutex::new(None),
            stream: None,
        })
    }

    /// Builds an extent around freshly written tables (create) or a stream writer.
    pub(crate) fn from_parts(
        storage: Box<dyn Storage>,
        hdr: SparseHeader,
        gd: Vec<u32>,
        rgd: Option<Vec<u32>>,
        stream: Option<StreamState>,
    ) -> Result<Self> {
        let geo = geometry(&hdr)?;
        let len = storage.len().ctx(|| "reading extent size".into())?;
        let mut reserved = vec![(0, (hdr.desc_offset + hdr.desc_size).max(1) * SECTOR)];
        for (off, dir) in [(hdr.gd_offset, Some(&gd)), (hdr.rgd_offset, rgd.as_ref())] {
            if let Some(dir) = dir.filter(|_| off != GD_AT_END && off != 0) {
                reserved.push((off * SECTOR, off * SECTOR + geo.gt_count * 4));
                for &e in dir.iter().filter(|&&e| e != 0) {
                    let s = u64::from(e) * SECTOR;
                    reserved.push((s, s + geo.gt_bytes));
                }
            }
        }
        Ok(SparseExtent {
            storage,
            grain_bytes: geo.grain_bytes,
            gtes: geo.gtes,
            gt_count: geo.gt_count,
            capacity_bytes: geo.capacity_bytes,
            hdr,
            meta: Mutex::new(Meta {
                gd,
                rgd,
                cache: HashMap::new(),
                next_free: sectors_for(len),
                file_len: len,
                reserved: merge_ranges(reserved),
            }),
            zcache: Mutex::new(None),
            stream: stream.map(Mutex::new),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this extent is a stream being written that is not finished yet.
    pub fn unfinished_stream(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| !s.lock().unwrap_or_else(|e| e.into_inner()).finished)
    }

    /// The grain table `t`, loaded through the cache; `None` when the directory has no table.
    pub(crate) fn table(&self, meta: &mut Meta, t: u64) -> Result<Option<Arc<Vec<u32>>>> {
        let Some(&e) = meta.gd.get(t as usize) else {
            return Err(Error::corrupt(format!(
                "grain table index {t} out of range"
            )));
        };
        if e == 0 {
            return Ok(None);
        }
        if let Some(gt) = meta.cache.get(&t) {
            return Ok(Some(gt.clone()));
        }
        let off = u64::from(e) * SECTOR;
        let mut raw = vec![0u8; (self.gtes * 4) as usize];
        self.storage
            .read_exact_at(&mut raw, off)
            .ctx(|| format!("reading grain table {t} at offset {off:#x}"))?;
        let gt = Arc::new(le32s(&raw));
        if meta.cache.len() >= GT_CACHE {
            meta.cache.clear();
        }
        meta.cache.insert(t, gt.clone());
        Ok(Some(gt))
    }

    fn classify(&self, meta: &Meta, grain: u64, v: u32) -> Result<Grain> {
        match v {
            0 => Ok(Grain::Unallocated),
            1 if self.hdr.zero_grain() => Ok(Grain::Zero),
            s => {
                let off = u64::from(s) * SECTOR;
                if off >= meta.file_len {
                    return Err(Error::corrupt(format!(
                        "grain table entry for grain {grain} points to offset {off:#x} beyond the end of the file"
                    )));
                }
                if self.hdr.compressed() {
                    Ok(Grain::Compressed(u64::from(s)))
                } else {
                    Ok(Grain::Data(off))
                }
            }
        }
    }

    /// Describes the run at extent offset `off` (at most `max` bytes, `max` > 0). Runs of
    /// compressed grains are merged only with `merge_compressed`.
    pub fn map(&self, off: u64, max: u64, merge_compressed: bool) -> Result<(Grain, u64)> {
        let g = self.grain_bytes;
        let mut meta = self.lock();
        let first_grain = off / g;
        let in_grain = off % g;
        let mut first: Option<Grain> = None;
        let mut run = 0u64;
        let mut grain = first_grain;
        let wanted = max + in_grain;
        while run < wanted {
            let t = grain / self.gtes;
            let table = self.table(&mut meta, t)?;
            let end_of_table = (t + 1) * self.gtes;
            while grain < end_of_table && run < wanted {
                let state = match &table {
                    None => Grain::Unallocated,
                    Some(gt) => self.classify(&meta, grain, gt[(grain % self.gtes) as usize])?,
                };
                let same = match (first, state) {
                    (None, _) => true,
                    (Some(Grain::Unallocated), Grain::Unallocated)
                    | (Some(Grain::Zero), Grain::Zero) => true,
                    (Some(Grain::Data(a)), Grain::Data(b)) => b == a + (grain - first_grain) * g,
                    (Some(Grain::Compressed(_)), Grain::Compressed(_)) => merge_compressed,
                    _ => false,
                };
                if !same {
                    return Ok((Self::shift(first, in_grain), (run - in_grain).min(max)));
                }
                if first.is_none() {
                    first = Some(state);
                }
                if table.is_none() && state == Grain::Unallocated {
                    // A missing table: the whole rest of it is unallocated.
                    run += (end_of_table - grain) * g;
                    grain = end_of_table;
                } else {
                    run += g;
                    grain += 1;
                }
            }
        }
        Ok((Self::shift(first, in_grain), (run - in_grain).min(max)))
    }

    fn shift(first: Option<Grain>, in_grain: u64) -> Grain {
        match first {
            Some(Grain::Data(a)) => Grain::Data(a + in_grain),
            Some(s) => s,
            None => Grain::Unallocated,
        }
    }

    /// The decompressed contents of the compressed grain `grain` whose marker is at `sector`.
    pub fn read_compressed(&self, grain: u64, sector: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((s, data)) = &*self.zcache.lock().unwrap_or_else(|e| e.into_inner()) {
            if *s == sector {
                return Ok(data.clone());
            }
        }
        let off = sector * SECTOR;
        let mut m = [0u8; GRAIN_MARKER_LEN];
        self.storage
            .read_exact_at(&mut m, off)
            .ctx(|| format!("reading grain marker at offset {off:#x}"))?;
        let lba = u64::from_le_bytes(m[..8].try_into().unwrap_or_default());
        let size = u64::from(u32::from_le_bytes(m[8..12].try_into().unwrap_or_default()));
        let expect = grain * self.hdr.grain_size;
        if lba != expect {
            return Err(Error::corrupt(format!(
                "grain marker at offset {off:#x} names sector {lba}, expected {expect}"
            )));
        }
        let limit = self.grain_bytes + self.grain_bytes / 8 + 1024;
        if size == 0 || size > limit {
            return Err(Error::corrupt(format!(
                "compressed grain at offset {off:#x} has size {size}, more than {limit} bytes"
            )));
        }
        let mut packed = vec![0u8; size as usize];
        self.storage
            .read_exact_at(&mut packed, off + GRAIN_MARKER_LEN as u64)
            .ctx(|| format!("reading compressed grain at offset {off:#x}"))?;
        let data = Arc::new(
            inflate_grain(&packed, self.grain_bytes as usize)
                .map_err(|e| e.context(format!("compressed grain at offset {off:#x}")))?,
        );
        *self.zcache.lock().unwrap_or_else(|e| e.into_inner()) = Some((sector, data.clone()));
        Ok(data)
    }

    /// Reads `buf` at extent offset `off`; `unalloc` fills unallocated runs (backing or zero).
    pub fn read(
        &self,
        buf: &mut [u8],
        off: u64,
        unalloc: &mut dyn FnMut(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        if self.unfinished_stream() {
            return Err(Error::unsupported(
                "a streamOptimized image cannot be read before it is finished",
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let (state, run) = self.map(at, (buf.len() - done) as u64, false)?;
            let piece = &mut buf[done..done + run as usize];
            match state {
                Grain::Data(h) => self
                    .storage
                    .read_zero_padded(piece, h)
                    .ctx(|| format!("reading grain data at offset {h:#x}"))?,
                Grain::Zero => piece.fill(0),
                Grain::Unallocated => unalloc(piece, at)?,
                Grain::Compressed(s) => {
                    let data = self.read_compressed(at / self.grain_bytes, s)?;
                    let in_grain = (at % self.grain_bytes) as usize;
                    piece.copy_from_slice(&data[in_grain..in_grain + piece.len()]);
                }
            }
            done += run as usize;
        }
        Ok(())
    }

    /// Writes `entries` into grain table `t` starting at entry `first`, on disk (primary,
    /// then redundant) and in the cache. The table must exist.
    fn write_gtes(&self, meta: &mut Meta, t: u64, first: u64, entries: &[u32]) -> Result<()> {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        let dirs = [
            Some(meta.gd[t as usize]),
            meta.rgd.as_ref().map(|r| r[t as usize]),
        ];
        for sector in dirs.into_iter().flatten().filter(|&s| s != 0) {
            let off = u64::from(sector) * SECTOR + first * 4;
            self.storage
                .write_all_at(&bytes, off)
                .ctx(|| format!("writing grain table entries at offset {off:#x}"))?;
        }
        if let Some(gt) = meta.cache.get_mut(&t) {
            let gt = Arc::make_mut(gt);
            gt[first as usize..first as usize + entries.len()].copy_from_slice(entries);
        }
        Ok(())
    }

    /// Appends `sectors` zeroed sectors at the end of the file; returns the first sector.
    pub(crate) fn append(&self, meta: &mut Meta, data: &[u8]) -> Result<u64> {
        let sectors = sectors_for(data.len() as u64);
        let start = meta.next_free;
        let end = start + sectors;
        if end > u64::from(u32::MAX) {
            return Err(Error::limit(
                "sparse extent file would grow past 2 TiB (grain offsets are 32-bit sectors)",
            ));
        }
        let off = start * SECTOR;
        self.storage
            .write_all_at(data, off)
            .ctx(|| format!("writing at offset {off:#x}"))?;
        meta.next_free = end;
        meta.file_len = meta.file_len.max(off + data.len() as u64);
        Ok(start)
    }

    /// Makes sure grain table `t` exists (allocating zeroed tables at the end of the file,
    /// before the directory entries that point at them).
    fn ensure_table(&self, meta: &mut Meta, t: u64) -> Result<()> {
        if meta.gd[t as usize] != 0 {
            return Ok(());
        }
        let zero = vec![0u8; (sectors_for(self.gtes * 4) * SECTOR) as usize];
        let has_rgd = meta.rgd.is_some();
        for redundant in [false, true] {
            if redundant && !has_rgd {
                continue;
            }
            let s = self.append(meta, &zero)?;
            let (dir_sector, dir) = if redundant {
                (
                    self.hdr.rgd_offset,
                    meta.rgd.as_mut().map(|r| &mut r[t as usize]),
                )
            } else {
                (self.hdr.gd_offset, Some(&mut meta.gd[t as usize]))
            };
            if let Some(slot) = dir {
                *slot = s as u32;
            }
            let off = dir_sector * SECTOR + t * 4;
            self.storage
                .write_all_at(&(s as u32).to_le_bytes(), off)
                .ctx(|| format!("writing grain directory entry at offset {off:#x}"))?;
            let start = s * SECTOR;
            meta.reserved.push((start, start + self.gtes * 4));
            meta.reserved = merge_ranges(std::mem::take(&mut meta.reserved));
        }
        Ok(())
    }

    fn refuse_compressed(&self) -> Result<()> {
        if self.hdr.compressed() {
            return Err(Error::unsupported(
                "rewriting a compressed (streamOptimized) extent in place is not supported",
            ));
        }
        Ok(())
    }

    /// Writes `buf` at extent offset `off`. Unallocated grains that are only partly written
    /// are first filled by `fill` (backing data or zeroes); `has_backing` tells whether
    /// unallocated grains read as something other than zeroes.
    pub fn write(
        &self,
        buf: &[u8],
        off: u64,
        has_backing: bool,
        fill: &mut dyn FnMut(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.refuse_compressed()?;
        let g = self.grain_bytes;
        let first = off / g;
        let last = (off + buf.len() as u64 - 1) / g;
        let mut meta = self.lock();
        let mut states = Vec::with_capacity((last - first + 1) as usize);
        for grain in first..=last {
            let t = grain / self.gtes;
            let state = match self.table(&mut meta, t)? {
                None => Grain::Unallocated,
                Some(gt) => self.classify(&meta, grain, gt[(grain % self.gtes) as usize])?,
            };
            states.push(state);
        }
        let piece = |grain: u64| -> (usize, usize, u64) {
            let gstart = grain * g;
            let s = gstart.max(off);
            let e = (gstart + g).min(off + buf.len() as u64);
            ((s - off) as usize, (e - off) as usize, s - gstart)
        };
        for (&s, grain) in states.iter().zip(first..) {
            if let Grain::Data(h) = s {
                if overlaps(&meta.reserved, h, h + g) {
                    return Err(Error::corrupt(format!(
                        "grain {grain} at offset {h:#x} overlaps extent metadata; refusing to write"
                    )));
                }
            }
        }
        if states.iter().all(|s| matches!(s, Grain::Data(_))) {
            drop(meta);
            return self.write_in_place(buf, off, first, &states);
        }
        let mut grain = first;
        while grain <= last {
            let state = states[(grain - first) as usize];
            let (a, b, in_grain) = piece(grain);
            match state {
                Grain::Data(h) => {
                    self.storage
                        .write_all_at(&buf[a..b], h + in_grain)
                        .ctx(|| format!("writing grain data at offset {:#x}", h + in_grain))?;
                    grain += 1;
                }
                Grain::Compressed(_) => return Err(Error::unsupported("compressed grain")),
                Grain::Zero | Grain::Unallocated => {
                    let reads_zero = state == Grain::Zero || !has_backing;
                    if reads_zero && is_zero(&buf[a..b]) {
                        grain += 1;
                        continue;
                    }
                    // Gather a run of grains in this table that need allocation.
                    let t = grain / self.gtes;
                    let mut n = 1u64;
                    while grain + n <= last && (grain + n) / self.gtes == t {
                        let st = states[(grain + n - first) as usize];
                        let (a2, b2, _) = piece(grain + n);
                        let rz = st == Grain::Zero || (st == Grain::Unallocated && !has_backing);
                        if !matches!(st, Grain::Zero | Grain::Unallocated)
                            || (rz && is_zero(&buf[a2..b2]))
                        {
                            break;
                        }
                        n += 1;
                    }
                    let mut data = vec![0u8; (n * g) as usize];
                    for k in 0..n {
                        let gr = grain + k;
                        let (a2, b2, in_g) = piece(gr);
                        let dst = &mut data[(k * g) as usize..((k + 1) * g) as usize];
                        if (b2 - a2) as u64 != g {
                            let st = states[(gr - first) as usize];
                            if st == Grain::Unallocated && has_backing {
                                let valid = (self.capacity_bytes - gr * g).min(g) as usize;
                                fill(&mut dst[..valid], gr * g)?;
                            }
                        }
                        dst[in_g as usize..in_g as usize + (b2 - a2)].copy_from_slice(&buf[a2..b2]);
                    }
                    self.ensure_table(&mut meta, t)?;
                    let start = self.append(&mut meta, &data)?;
                    let entries: Vec<u32> = (0..n)
                        .map(|k| (start + k * self.hdr.grain_size) as u32)
                        .collect();
                    self.write_gtes(&mut meta, t, grain % self.gtes, &entries)?;
                    grain += n;
                }
            }
        }
        Ok(())
    }

    fn write_in_place(&self, buf: &[u8], off: u64, first: u64, states: &[Grain]) -> Result<()> {
        let g = self.grain_bytes;
        let mut done = 0usize;
        let mut i = 0usize;
        while i < states.len() {
            let Grain::Data(h) = states[i] else {
                unreachable_state()?;
                return Ok(());
            };
            let in_grain = (off + done as u64) - (first + i as u64) * g;
            let mut j = i + 1;
            while j < states.len() && states[j] == Grain::Data(h + (j - i) as u64 * g) {
                j += 1;
            }
            let end = (((first + j as u64) * g) - off).min(buf.len() as u64) as usize;
            let at = h + in_grain;
            self.storage
                .write_all_at(&buf[done..end], at)
                .ctx(|| format!("writing grain data at offset {at:#x}"))?;
            done = end;
            i = j;
        }
        Ok(())
    }

    /// Sets the GT entries of whole grains `[first, first + count)` to `value` (0 to
    /// deallocate, 1 for zeroed grains), one table at a time.
    pub fn set_entries(&self, first: u64, count: u64, value: u32) -> Result<()> {
        self.refuse_compressed()?;
        let mut meta = self.lock();
        let mut grain = first;
        let end = first + count;
        while grain < end {
            let t = grain / self.gtes;
            let stop = ((t + 1) * self.gtes).min(end);
            if meta.gd[t as usize] == 0 {
                if value == 0 {
                    grain = stop;
                    continue;
                }
                self.ensure_table(&mut meta, t)?;
            }
            let Some(gt) = self.table(&mut meta, t)? else {
                grain = stop;
                continue;
            };
            let a = (grain % self.gtes) as usize;
            let b = a + (stop - grain) as usize;
            if gt[a..b].iter().any(|&e| e != value) {
                let entries = vec![value; b - a];
                self.write_gtes(&mut meta, t, a as u64, &entries)?;
            }
            grain = stop;
        }
        Ok(())
    }

    /// Syncs the extent file.
    pub fn flush(&self) -> Result<()> {
        self.storage.sync().ctx(|| "flushing extent".into())
    }
}

fn unreachable_state() -> Result<()> {
    Err(Error::corrupt("grain state changed during write"))
}

/// Inflates a zlib stream into exactly one grain; refuses streams that would inflate beyond
/// the grain (a compression bomb) and pads short ones with zeroes.
pub fn inflate_grain(packed: &[u8], grain: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; grain];
    let mut dec = flate2::read::ZlibDecoder::new(packed);
    let mut filled = 0;
    while filled < grain {
        match dec.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::corrupt(format!("grain does not inflate: {e}"))),
        }
    }
    if filled == grain {
        let mut extra = [0u8; 1];
        match dec.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(Error::corrupt(format!(
                    "grain inflates beyond the grain size of {grain} bytes"
                )))
            }
            Err(e) => return Err(Error::corrupt(format!("grain does not inflate: {e}"))),
        }
    }
    Ok(out)
}

/// Deflates one grain (padded with zeroes to `grain` bytes) into a zlib stream.
pub fn deflate_grain(
    data: &[u8],
    grain: usize,
    level: crate::image::CompressionLevel,
) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(grain / 2),
        flate2::Compression::new(level.deflate()),
    );
    let n = data.len().min(grain);
    enc.write_all(&data[..n])
        .and_then(|_| enc.write_all(&vec![0u8; grain - n]))
        .map_err(|e| Error::io("compressing grain", e))?;
    enc.finish().map_err(|e| Error::io("compressing grain", e))
}
