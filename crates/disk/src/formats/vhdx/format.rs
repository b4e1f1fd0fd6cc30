//! On-disk structures of MS-VHDX: the file identifier, the two headers, the region tables,
//! the metadata table and its items, and BAT entries. Everything is little-endian; GUIDs are
//! stored in Microsoft's mixed-endian layout (`Uuid::from_bytes_le`).

use uuid::Uuid;

use crate::error::{Error, Result};

/// 1 KiB.
pub(super) const KIB: u64 = 1024;
/// 1 MiB: the alignment of regions, the log and payload blocks.
pub(super) const MIB: u64 = 1024 * KIB;
/// The file type identifier signature at offset 0.
pub(super) const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Offsets of header 1 and header 2.
pub(super) const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
/// Offsets of region table 1 and region table 2.
pub(super) const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
/// Bytes a header's checksum covers.
pub(super) const HEADER_SIZE: usize = 4096;
/// Bytes a region table's checksum covers.
pub(super) const REGION_TABLE_SIZE: usize = 64 * 1024;
/// Size of the metadata table at the start of the metadata region.
pub(super) const METADATA_TABLE_SIZE: usize = 64 * 1024;
/// Most entries a region or metadata table may hold.
pub(super) const MAX_TABLE_ENTRIES: u32 = 2047;
/// Size of a sector bitmap block.
pub(super) const SECTOR_BITMAP_SIZE: u64 = MIB;
/// Largest virtual disk the format (and the engine) allows.
pub(super) const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Largest file offset any structure may name (virtual size plus generous metadata room).
pub(super) const MAX_FILE_OFFSET: u64 = MAX_VIRTUAL_SIZE + (64 << 30);
/// Largest in-memory metadata (BAT, log) the engine accepts.
pub(super) const MAX_TABLE_BYTES: u64 = 256 * MIB;

/// Region table GUID of the BAT.
pub(super) const BAT_GUID: Uuid = Uuid::from_u128(0x2dc27766_f623_4200_9d64_115e9bfd4a08);
/// Region table GUID of the metadata region.
pub(super) const METADATA_GUID: Uuid = Uuid::from_u128(0x8b7ca206_4790_4b9a_b8fe_575f050f886e);
/// Metadata item: file parameters (block size, flags).
pub(super) const FILE_PARAMETERS: Uuid = Uuid::from_u128(0xcaa16737_fa36_4d43_b3b6_33f0aa44e76b);
/// Metadata item: virtual disk size.
pub(super) const VIRTUAL_DISK_SIZE: Uuid = Uuid::from_u128(0x2fa54224_cd1b_4876_b211_5dbed83bf4b8);
/// Metadata item: virtual disk ID (SCSI page 83 data).
pub(super) const PAGE83_DATA: Uuid = Uuid::from_u128(0xbeca12ab_b2e6_4523_93ef_c309e000c746);
/// Metadata item: logical sector size.
pub(super) const LOGICAL_SECTOR_SIZE: Uuid =
    Uuid::from_u128(0x8141bf1d_a96f_4709_ba47_f233a8faab5f);
/// Metadata item: physical sector size.
pub(super) const PHYSICAL_SECTOR_SIZE: Uuid =
    Uuid::from_u128(0xcda348c7_445d_4471_9cc9_e9885251c556);
/// Metadata item: parent locator of a differencing disk.
pub(super) const PARENT_LOCATOR: Uuid = Uuid::from_u128(0xa8d35f2b_b30b_454d_abf7_d3d84834ab0c);
/// Locator type of a VHDX parent locator.
pub(super) const VHDX_LOCATOR_TYPE: Uuid = Uuid::from_u128(0xb04aefb7_d19e_4a81_b789_25b8e9445913);

/// Payload block states (BAT entry bits 0-2).
pub(super) const PAYLOAD_NOT_PRESENT: u64 = 0;
/// Contents undefined (reads as zeroes here).
pub(super) const PAYLOAD_UNDEFINED: u64 = 1;
/// Block reads as zeroes.
pub(super) const PAYLOAD_ZERO: u64 = 2;
/// Block was unmapped (reads as zeroes here).
pub(super) const PAYLOAD_UNMAPPED: u64 = 3;
/// Block fully present in this file.
pub(super) const PAYLOAD_FULLY_PRESENT: u64 = 6;
/// Block partly present; the sector bitmap says which sectors (differencing disks only).
pub(super) const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block present.
pub(super) const SB_PRESENT: u64 = 6;

/// The state bits of a BAT entry.
pub(super) fn bat_state(entry: u64) -> u64 {
    entry & 7
}

/// The file offset of a BAT entry (FileOffsetMB, bits 20-63, in bytes).
pub(super) fn bat_offset(entry: u64) -> u64 {
    (entry >> 20) << 20
}

/// A BAT entry with `state` at the MiB-aligned `offset`.
pub(super) fn bat_entry(state: u64, offset: u64) -> u64 {
    (offset & !(MIB - 1)) | (state & 7)
}

pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

pub(super) fn guid_at(b: &[u8], at: usize) -> Uuid {
    let mut v = [0u8; 16];
    v.copy_from_slice(&b[at..at + 16]);
    Uuid::from_bytes_le(v)
}

pub(super) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put_guid(b: &mut [u8], at: usize, g: Uuid) {
    b[at..at + 16].copy_from_slice(&g.to_bytes_le());
}

/// CRC-32C of `buf` with the 4-byte checksum field at `crc_at` taken as zero.
pub(super) fn checksum(buf: &[u8], crc_at: usize) -> u32 {
    let crc = crc32c::crc32c(&buf[..crc_at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &buf[crc_at + 4..])
}

/// Stores the checksum of `buf` into its field at `crc_at`.
pub(super) fn seal(buf: &mut [u8], crc_at: usize) {
    let crc = checksum(buf, crc_at);
    put32(buf, crc_at, crc);
}

fn verify(buf: &[u8], crc_at: usize, what: &str) -> Result<()> {
    let stored = le32(buf, crc_at);
    let computed = checksum(buf, crc_at);
    if stored != computed {
        return Err(Error::corrupt(format!(
            "{what} checksum 0x{stored:08x} does not match computed 0x{computed:08x}"
        )));
    }
    Ok(())
}

/// One of the two file headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    /// Higher is newer; the valid header with the highest number is current.
    pub seq: u64,
    /// Changed before the first write to the file after open.
    pub file_write: Uuid,
    /// Changed before the first guest-visible write after open (parent linkage).
    pub data_write: Uuid,
    /// Non-nil when the log holds entries that must be replayed.
    pub log_guid: Uuid,
    /// Log format version (0).
    pub log_version: u16,
    /// Format version (1).
    pub version: u16,
    /// Log length in bytes (a multiple of 1 MiB).
    pub log_length: u32,
    /// Log offset in bytes (a multiple of 1 MiB, at least 1 MiB).
    pub log_offset: u64,
}

impl Header {
    /// Parses and validates header number `n` (1 or 2) from its 4 KiB.
    pub fn parse(buf: &[u8], n: usize) -> Result<Header> {
        let what = format!("header {n}");
        if buf.len() < HEADER_SIZE || &buf[..4] != b"head" {
            return Err(Error::corrupt(format!("{what} has no 'head' signature")));
        }
        let buf = &buf[..HEADER_SIZE];
        verify(buf, 4, &what)?;
        let h = Header {
            seq: le64(buf, 8),
            file_write: guid_at(buf, 16),
            data_write: guid_at(buf, 32),
            log_guid: guid_at(buf, 48),
            log_version: le16(buf, 64),
            version: le16(buf, 66),
            log_length: le32(buf, 68),
            log_offset: le64(buf, 72),
        };
        if h.version != 1 {
            return Err(Error::unsupported(format!(
                "{what} has version {}; only version 1 is supported",
                h.version
            )));
        }
        if h.log_version != 0 {
            return Err(Error::unsupported(format!(
                "{what} has log version {}; only version 0 is supported",
                h.log_version
            )));
        }
        if h.log_offset % MIB != 0 || h.log_offset < MIB || h.log_offset > MAX_FILE_OFFSET {
            return Err(Error::corrupt(format!(
                "{what} log offset 0x{:x} is not a multiple of 1 MiB past the header section",
                h.log_offset
            )));
        }
        if u64::from(h.log_length) % MIB != 0 {
            return Err(Error::corrupt(format!(
                "{what} log length 0x{:x} is not a multiple of 1 MiB",
                h.log_length
            )));
        }
        if !h.log_guid.is_nil() && h.log_length == 0 {
            return Err(Error::corrupt(format!(
                "{what} names a log GUID but the log length is 0"
            )));
        }
        Ok(h)
    }

    /// The 4 KiB on-disk form, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[..4].copy_from_slice(b"head");
        put64(&mut b, 8, self.seq);
        put_guid(&mut b, 16, self.file_write);
        put_guid(&mut b, 32, self.data_write);
        put_guid(&mut b, 48, self.log_guid);
        put16(&mut b, 64, self.log_version);
        put16(&mut b, 66, self.version);
        put32(&mut b, 68, self.log_length);
        put64(&mut b, 72, self.log_offset);
        seal(&mut b, 4);
        b
    }

    /// The end of the log region.
    pub fn log_end(&self) -> u64 {
        self.log_offset + u64::from(self.log_length)
    }
}

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RegionEntry {
    /// What the region is (BAT, metadata, or unknown).
    pub guid: Uuid,
    /// Where it starts (multiple of 1 MiB).
    pub offset: u64,
    /// Its length (multiple of 1 MiB).
    pub length: u32,
    /// Whether an implementation must understand the region to open the file.
    pub required: bool,
}

impl RegionEntry {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.length)
    }
}

/// Parses and validates region table number `n` (1 or 2) from its 64 KiB.
pub(super) fn parse_region_table(buf: &[u8], n: usize) -> Result<Vec<RegionEntry>> {
    let what = format!("region table {n}");
    if buf.len() < REGION_TABLE_SIZE || &buf[..4] != b"regi" {
        return Err(Error::corrupt(format!("{what} has no 'regi' signature")));
    }
    let buf = &buf[..REGION_TABLE_SIZE];
    verify(buf, 4, &what)?;
    let count = le32(buf, 8);
    if count > MAX_TABLE_ENTRIES {
        return Err(Error::corrupt(format!(
            "{what} entry count {count} exceeds {MAX_TABLE_ENTRIES}"
        )));
    }
    let mut entries: Vec<RegionEntry> = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = 16 + i * 32;
        let e = RegionEntry {
            guid: guid_at(buf, at),
            offset: le64(buf, at + 16),
            length: le32(buf, at + 24),
            required: le32(buf, at + 28) & 1 != 0,
        };
        if e.offset % MIB != 0 || e.offset < MIB || e.offset > MAX_FILE_OFFSET {
            return Err(Error::corrupt(format!(
                "{what} entry {i} offset 0x{:x} is not a multiple of 1 MiB past the header \
                 section",
                e.offset
            )));
        }
        if e.length == 0 || u64::from(e.length) % MIB != 0 {
            return Err(Error::corrupt(format!(
                "{what} entry {i} length 0x{:x} is not a non-zero multiple of 1 MiB",
                e.length
            )));
        }
        if entries.iter().any(|o| o.guid == e.guid) {
            return Err(Error::corrupt(format!(
                "{what} lists region {} twice",
                e.guid
            )));
        }
        if let Some(o) = entries
            .iter()
            .find(|o| e.offset < o.end() && o.offset < e.end())
        {
            return Err(Error::corrupt(format!(
                "{what} region {} at 0x{:x} overlaps region {} at 0x{:x}",
                e.guid, e.offset, o.guid, o.offset
            )));
        }
        entries.push(e);
    }
    Ok(entries)
}

/// The 64 KiB on-disk form of a region table.
pub(super) fn region_table_bytes(entries: &[RegionEntry]) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    b[..4].copy_from_slice(b"regi");
    put32(&mut b, 8, entries.len() as u32);
    for (i, e) in entries.iter().enumerate() {
        let at = 16 + i * 32;
        put_guid(&mut b, at, e.guid);
        put64(&mut b, at + 16, e.offset);
        put32(&mut b, at + 24, e.length);
        put32(&mut b, at + 28, u32::from(e.required));
    }
    seal(&mut b, 4);
    b
}

/// One metadata table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MetaEntry {
    /// Which item.
    pub id: Uuid,
    /// Offset from the start of the metadata region.
    pub offset: u32,
    /// Length of the item.
    pub length: u32,
    /// A user item (not a system item).
    pub is_user: bool,
    /// Describes the virtual disk (as opposed to the file).
    pub is_virtual_disk: bool,
    /// Must be understood to open the file.
    pub is_required: bool,
}

/// Parses the metadata table (the first 64 KiB of a region of `region_len` bytes).
pub(super) fn parse_metadata_table(buf: &[u8], region_len: u64) -> Result<Vec<MetaEntry>> {
    if buf.len() < METADATA_TABLE_SIZE || &buf[..8] != b"metadata" {
        return Err(Error::corrupt("metadata table has no 'metadata' signature"));
    }
    let count = u32::from(le16(buf, 10));
    if count > MAX_TABLE_ENTRIES {
        return Err(Error::corrupt(format!(
            "metadata table entry count {count} exceeds {MAX_TABLE_ENTRIES}"
        )));
    }
    let mut entries: Vec<MetaEntry> = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let at = 32 + i * 32;
        let flags = le32(buf, at + 24);
        let e = MetaEntry {
            id: guid_at(buf, at),
            offset: le32(buf, at + 16),
            length: le32(buf, at + 20),
            is_user: flags & 1 != 0,
            is_virtual_disk: flags & 2 != 0,
            is_required: flags & 4 != 0,
        };
        if e.length > MIB as u32 {
            return Err(Error::corrupt(format!(
                "metadata item {} length {} exceeds 1 MiB",
                e.id, e.length
            )));
        }
        if e.length > 0
            && (u64::from(e.offset) < METADATA_TABLE_SIZE as u64
                || u64::from(e.offset) + u64::from(e.length) > region_len)
        {
            return Err(Error::corrupt(format!(
                "metadata item {} at offset 0x{:x} length {} lies outside the metadata region",
                e.id, e.offset, e.length
            )));
        }
        if entries
            .iter()
            .any(|o| o.id == e.id && o.is_user == e.is_user)
        {
            return Err(Error::corrupt(format!(
                "metadata table lists item {} twice",
                e.id
            )));
        }
        let end = |m: &MetaEntry| u64::from(m.offset) + u64::from(m.length);
        if let Some(o) = entries.iter().find(|o| {
            e.length > 0
                && o.length > 0
                && u64::from(e.offset) < end(o)
                && u64::from(o.offset) < end(&e)
        }) {
            return Err(Error::corrupt(format!(
                "metadata item {} at offset 0x{:x} overlaps item {}",
                e.id, e.offset, o.id
            )));
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Parses a VHDX parent locator item into its key/value pairs.
pub(super) fn parse_parent_locator(buf: &[u8]) -> Result<Vec<(String, String)>> {
    if buf.len() < 20 {
        return Err(Error::corrupt(format!(
            "parent locator is {} bytes, shorter than its 20-byte header",
            buf.len()
        )));
    }
    let kind = guid_at(buf, 0);
    if kind != VHDX_LOCATOR_TYPE {
        return Err(Error::unsupported(format!(
            "parent locator type {kind} is not the VHDX locator type"
        )));
    }
    let count = usize::from(le16(buf, 18));
    if 20 + count * 12 > buf.len() {
        return Err(Error::corrupt(format!(
            "parent locator key/value count {count} does not fit its {} bytes",
            buf.len()
        )));
    }
    let text = |off: u32, len: u16, what: &str| -> Result<String> {
        let (off, len) = (off as usize, usize::from(len));
        if len % 2 != 0 || off.checked_add(len).is_none_or(|e| e > buf.len()) {
            return Err(Error::corrupt(format!(
                "parent locator {what} at offset {off} length {len} is out of bounds"
            )));
        }
        let units: Vec<u16> = buf[off..off + len]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units)
            .map_err(|_| Error::corrupt(format!("parent locator {what} is not valid UTF-16")))
    };
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let at = 20 + i * 12;
        let key = text(le32(buf, at), le16(buf, at + 8), "key")?;
        let value = text(le32(buf, at + 4), le16(buf, at + 10), "value")?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// The on-disk form of a VHDX parent locator with `pairs`.
pub(super) fn parent_locator_bytes(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut b = vec![0u8; 20 + pairs.len() * 12];
    put_guid(&mut b, 0, VHDX_LOCATOR_TYPE);
    put16(&mut b, 18, pairs.len() as u16);
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect() };
    for (i, (k, v)) in pairs.iter().enumerate() {
        let (k, v) = (utf16(k), utf16(v));
        let at = 20 + i * 12;
        let koff = b.len();
        b.extend_from_slice(&k);
        let voff = b.len();
        b.extend_from_slice(&v);
        put32(&mut b, at, koff as u32);
        put32(&mut b, at + 4, voff as u32);
        put16(&mut b, at + 8, k.len() as u16);
        put16(&mut b, at + 10, v.len() as u16);
    }
    b
}

/// The shape of the virtual disk and of its BAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Payload block size (power of two, 1 MiB to 256 MiB).
    pub block_size: u64,
    /// Logical sector size (512 or 4096).
    pub logical_sector: u64,
    /// Physical sector size (512 or 4096).
    pub physical_sector: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual disk.
    pub data_blocks: u64,
    /// Entries in the BAT.
    pub bat_entries: u64,
    /// A differencing disk.
    pub has_parent: bool,
}

impl Geometry {
    /// Validates the metadata values and derives the BAT shape.
    pub fn new(
        virtual_size: u64,
        block_size: u64,
        logical_sector: u64,
        physical_sector: u64,
        has_parent: bool,
    ) -> Result<Geometry> {
        if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
            return Err(Error::corrupt(format!(
                "block size {block_size} is not a power of two from 1 MiB to 256 MiB"
            )));
        }
        if logical_sector != 512 && logical_sector != 4096 {
            return Err(Error::corrupt(format!(
                "logical sector size {logical_sector} is neither 512 nor 4096"
            )));
        }
        if physical_sector != 512 && physical_sector != 4096 {
            return Err(Error::corrupt(format!(
                "physical sector size {physical_sector} is neither 512 nor 4096"
            )));
        }
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Error::limit(format!(
                "virtual disk size {virtual_size} exceeds 64 TiB"
            )));
        }
        if virtual_size % logical_sector != 0 {
            return Err(Error::corrupt(format!(
                "virtual disk size {virtual_size} is not a multiple of the logical sector \
                 size {logical_sector}"
            )));
        }
        // Both factors are powers of two within range, so this is exact and at least 16.
        let chunk_ratio = ((1u64 << 23) * logical_sector) / block_size;
        let data_blocks = virtual_size.div_ceil(block_size);
        let bat_entries = if has_parent {
            data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        if bat_entries * 8 > MAX_TABLE_BYTES {
            return Err(Error::limit(format!(
                "BAT of {bat_entries} entries exceeds the {} MiB metadata limit",
                MAX_TABLE_BYTES / MIB
            )));
        }
        Ok(Geometry {
            virtual_size,
            block_size,
            logical_sector,
            physical_sector,
            chunk_ratio,
            data_blocks,
            bat_entries,
            has_parent,
        })
    }

    /// BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }

    /// BAT index of the sector bitmap entry of chunk `chunk` (differencing disks).
    pub fn bitmap_index(&self, chunk: u64) -> usize {
        (chunk * (self.chunk_ratio + 1) + self.chunk_ratio) as usize
    }

    /// Whether BAT index `i` is a sector bitmap entry.
    pub fn is_bitmap_index(&self, i: u64) -> bool {
        i % (self.chunk_ratio + 1) == self.chunk_ratio
    }

    /// The payload block of BAT index `i` (not a bitmap index).
    pub fn block_of_index(&self, i: u64) -> u64 {
        i - i / (self.chunk_ratio + 1)
    }

    /// Bytes of the BAT.
    pub fn bat_bytes(&self) -> u64 {
        self.bat_entries * 8
    }
}

/// The 64 KiB metadata table plus items for a new image, as region-relative bytes.
pub(super) fn metadata_region_bytes(
    geo: &Geometry,
    leave_allocated: bool,
    page83: Uuid,
    locator: Option<&[u8]>,
) -> Vec<u8> {
    let mut items: Vec<(Uuid, Vec<u8>, u32)> = Vec::new();
    let mut fp = vec![0u8; 8];
    put32(&mut fp, 0, geo.block_size as u32);
    put32(
        &mut fp,
        4,
        u32::from(leave_allocated) | (u32::from(geo.has_parent) << 1),
    );
    // Flags: bit 1 virtual disk, bit 2 required.
    items.push((FILE_PARAMETERS, fp, 4));
    items.push((
        VIRTUAL_DISK_SIZE,
        geo.virtual_size.to_le_bytes().to_vec(),
        6,
    ));
    items.push((PAGE83_DATA, page83.to_bytes_le().to_vec(), 6));
    items.push((
        LOGICAL_SECTOR_SIZE,
        (geo.logical_sector as u32).to_le_bytes().to_vec(),
        6,
    ));
    items.push((
        PHYSICAL_SECTOR_SIZE,
        (geo.physical_sector as u32).to_le_bytes().to_vec(),
        6,
    ));
    if let Some(loc) = locator {
        items.push((PARENT_LOCATOR, loc.to_vec(), 6));
    }
    let mut b = vec![0u8; METADATA_TABLE_SIZE];
    b[..8].copy_from_slice(b"metadata");
    put16(&mut b, 10, items.len() as u16);
    for (i, (id, data, flags)) in items.iter().enumerate() {
        let at = 32 + i * 32;
        let off = b.len();
        b.extend_from_slice(data);
        put_guid(&mut b, at, *id);
        put32(&mut b, at + 16, off as u32);
        put32(&mut b, at + 20, data.len() as u32);
        put32(&mut b, at + 24, *flags);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checksum() {
        let h = Header {
            seq: 7,
            file_write: Uuid::new_v4(),
            data_write: Uuid::new_v4(),
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        };
        let mut b = h.to_bytes();
        assert_eq!(Header::parse(&b, 1).unwrap(), h);
        b[100] ^= 1;
        let e = Header::parse(&b, 1).unwrap_err();
        assert!(e.message().contains("checksum"), "{e}");
    }

    #[test]
    fn geometry_matches_spec_formulas() {
        let g = Geometry::new(300 * MIB, MIB, 512, 512, false).unwrap();
        assert_eq!(g.chunk_ratio, 4096);
        assert_eq!(g.data_blocks, 300);
        assert_eq!(g.bat_entries, 300);
        let g = Geometry::new(64 << 30, 256 * MIB, 512, 512, false).unwrap();
        assert_eq!(g.chunk_ratio, 16);
        assert_eq!(g.data_blocks, 256);
        assert_eq!(g.bat_entries, 256 + 255 / 16);
        assert_eq!(g.payload_index(16), 17);
        assert!(g.is_bitmap_index(16));
        assert_eq!(g.block_of_index(17), 16);
        let g = Geometry::new(64 << 30, 256 * MIB, 512, 512, true).unwrap();
        assert_eq!(g.bat_entries, 16 * 17);
        assert_eq!(g.bitmap_index(1), 33);
        assert!(Geometry::new(MIB, 3 * MIB, 512, 512, false).is_err());
        assert!(Geometry::new(MIB, 512 * MIB, 512, 512, false).is_err());
        assert!(Geometry::new(MIB, MIB, 1024, 512, false).is_err());
        assert!(Geometry::new(MIB + 512, MIB, 4096, 512, false).is_err());
        assert!(Geometry::new(MAX_VIRTUAL_SIZE + 4096, MIB, 512, 512, false).is_err());
    }

    #[test]
    fn locator_round_trip() {
        let b = parent_locator_bytes(&[
            ("parent_linkage", "{abc}".into()),
            ("relative_path", ".\\base.vhdx".into()),
        ]);
        let pairs = parse_parent_locator(&b).unwrap();
        assert_eq!(pairs[1], ("relative_path".into(), ".\\base.vhdx".into()));
        let mut bad = b.clone();
        put32(&mut bad, 20, 60_000);
        assert!(parse_parent_locator(&bad).is_err());
    }
}
