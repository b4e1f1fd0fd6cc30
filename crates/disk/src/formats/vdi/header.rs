//! The VDI 1.1 header: a 64-byte text pre-header, the signature at 0x40, then little-endian
//! fields, all inside the first 512 bytes.

use crate::error::{Error, Result};

/// Signature at offset 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1 (major in the high half).
pub const VERSION_1_1: u32 = 0x0001_0001;
/// The only block size accepted: 1 MiB (what VirtualBox and qemu-img use).
pub const BLOCK_SIZE: u32 = 1 << 20;
/// Sector size recorded in the header.
pub const SECTOR: u64 = 512;
/// Header size field qemu-img writes (the 1.1 header without the LCHS geometry).
pub const HEADER_SIZE_1_1: u32 = 0x180;
/// Image type: dynamically growing.
pub const TYPE_DYNAMIC: u32 = 1;
/// Image type: preallocated ("static", qemu's `static=on`).
pub const TYPE_STATIC: u32 = 2;
/// Block map entry of a block that is not allocated.
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// Block map entry of a block that reads as zeroes without data ("discarded").
pub const ZERO_BLOCK: u32 = 0xffff_fffe;
/// Offset of the blocks-allocated counter.
pub const ALLOCATED_FIELD: u64 = 0x184;
/// Text qemu-img's and our images carry in the pre-header.
pub const PRE_HEADER_TEXT: &[u8] = b"<<< Paddock VM Virtual Disk Image >>>\n";

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A parsed VDI header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The text pre-header (64 bytes).
    pub text: [u8; 64],
    /// Format version.
    pub version: u32,
    /// Size of the header after the pre-header and signature fields.
    pub header_size: u32,
    /// 1 = dynamic, 2 = static; 3 (undo) and 4 (differencing) are refused.
    pub image_type: u32,
    /// Image flags.
    pub flags: u32,
    /// Free-text comment (256 bytes).
    pub comment: Vec<u8>,
    /// Offset of the block map.
    pub offset_bmap: u32,
    /// Offset of the first data block.
    pub offset_data: u32,
    /// Legacy geometry: cylinders, heads, sectors.
    pub legacy_chs: [u32; 3],
    /// Sector size (must be 512).
    pub sector_size: u32,
    /// Guest size in bytes.
    pub disk_size: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// Extra bytes in front of each block (must be 0).
    pub block_extra: u32,
    /// Entries in the block map.
    pub blocks_in_hdd: u32,
    /// Blocks allocated (also the index the next block takes).
    pub blocks_allocated: u32,
    /// Image UUID.
    pub uuid_image: [u8; 16],
    /// UUID of the last snapshot.
    pub uuid_last_snap: [u8; 16],
    /// Link UUID (differencing images).
    pub uuid_link: [u8; 16],
    /// Parent UUID (differencing images).
    pub uuid_parent: [u8; 16],
}

fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[at..at + 16]);
    u
}

impl Header {
    /// Parses the first 512 bytes of a file. Only the signature is checked here; see
    /// [`Header::validate`].
    pub fn parse(b: &[u8; 512]) -> Result<Header> {
        let sig = le32(b, 0x40);
        if sig != SIGNATURE {
            return Err(Error::corrupt(format!(
                "not a VDI image: signature {sig:#010x} at offset 0x40, expected {SIGNATURE:#010x}"
            )));
        }
        let mut text = [0u8; 64];
        text.copy_from_slice(&b[..64]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[0x170..0x178]);
        Ok(Header {
            text,
            version: le32(b, 0x44),
            header_size: le32(b, 0x48),
            image_type: le32(b, 0x4c),
            flags: le32(b, 0x50),
            comment: b[0x54..0x154].to_vec(),
            offset_bmap: le32(b, 0x154),
            offset_data: le32(b, 0x158),
            legacy_chs: [le32(b, 0x15c), le32(b, 0x160), le32(b, 0x164)],
            sector_size: le32(b, 0x168),
            disk_size: u64::from_le_bytes(size),
            block_size: le32(b, 0x178),
            block_extra: le32(b, 0x17c),
            blocks_in_hdd: le32(b, 0x180),
            blocks_allocated: le32(b, 0x184),
            uuid_image: uuid_at(b, 0x188),
            uuid_last_snap: uuid_at(b, 0x198),
            uuid_link: uuid_at(b, 0x1a8),
            uuid_parent: uuid_at(b, 0x1b8),
        })
    }

    /// Serializes the header into a 512-byte sector.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..64].copy_from_slice(&self.text);
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(0x40, SIGNATURE);
        put(0x44, self.version);
        put(0x48, self.header_size);
        put(0x4c, self.image_type);
        put(0x50, self.flags);
        put(0x154, self.offset_bmap);
        put(0x158, self.offset_data);
        put(0x15c, self.legacy_chs[0]);
        put(0x160, self.legacy_chs[1]);
        put(0x164, self.legacy_chs[2]);
        put(0x168, self.sector_size);
        put(0x178, self.block_size);
        put(0x17c, self.block_extra);
        put(0x180, self.blocks_in_hdd);
        put(0x184, self.blocks_allocated);
        let n = self.comment.len().min(256);
        b[0x54..0x54 + n].copy_from_slice(&self.comment[..n]);
        b[0x170..0x178].copy_from_slice(&self.disk_size.to_le_bytes());
        b[0x188..0x198].copy_from_slice(&self.uuid_image);
        b[0x198..0x1a8].copy_from_slice(&self.uuid_last_snap);
        b[0x1a8..0x1b8].copy_from_slice(&self.uuid_link);
        b[0x1b8..0x1c8].copy_from_slice(&self.uuid_parent);
        b
    }

    /// Checks every field against what the driver supports and the file length `len`.
    pub fn validate(&self, len: u64, max_size: u64, max_map_bytes: u64) -> Result<()> {
        if self.version != VERSION_1_1 {
            return Err(Error::unsupported(format!(
                "VDI version {}.{} is not supported (only 1.1)",
                self.version >> 16,
                self.version & 0xffff
            )));
        }
        match self.image_type {
            TYPE_DYNAMIC | TYPE_STATIC => {}
            3 => return Err(Error::unsupported("VDI undo images are not supported")),
            4 => {
                return Err(Error::unsupported(
                    "VDI differencing images are not supported",
                ))
            }
            t => {
                return Err(Error::unsupported(format!(
                    "VDI image type {t} at offset 0x4c is not dynamic (1) or static (2)"
                )))
            }
        }
        if self.uuid_link != [0; 16] || self.uuid_parent != [0; 16] {
            return Err(Error::unsupported(
                "VDI image has a link or parent UUID (differencing images are not supported)",
            ));
        }
        if self.sector_size != SECTOR as u32 {
            return Err(Error::unsupported(format!(
                "VDI sector size {} at offset 0x168 is not 512",
                self.sector_size
            )));
        }
        if self.block_size != BLOCK_SIZE {
            return Err(Error::unsupported(format!(
                "VDI block size {} at offset 0x178 is not 1 MiB",
                self.block_size
            )));
        }
        if self.block_extra != 0 {
            return Err(Error::unsupported(format!(
                "VDI extra block data of {} bytes at offset 0x17c is not supported",
                self.block_extra
            )));
        }
        for (what, v, at) in [
            ("block map", self.offset_bmap, 0x154),
            ("data", self.offset_data, 0x158),
        ] {
            if u64::from(v) % SECTOR != 0 {
                return Err(Error::corrupt(format!(
                    "VDI {what} offset {v:#x} at offset {at:#x} is not sector aligned"
                )));
            }
        }
        if self.disk_size > max_size {
            return Err(Error::limit(format!(
                "VDI disk size {} is over the 64 TiB limit",
                self.disk_size
            )));
        }
        let map_bytes = u64::from(self.blocks_in_hdd) * 4;
        if map_bytes > max_map_bytes {
            return Err(Error::limit(format!(
                "VDI block map of {} entries is over the 256 MiB limit",
                self.blocks_in_hdd
            )));
        }
        let room = u64::from(self.blocks_in_hdd) * u64::from(self.block_size);
        if self.disk_size > room {
            return Err(Error::corrupt(format!(
                "VDI disk size {} is larger than its {} blocks of {} bytes",
                self.disk_size, self.blocks_in_hdd, self.block_size
            )));
        }
        let bmap = u64::from(self.offset_bmap);
        if bmap < SECTOR {
            return Err(Error::corrupt(format!(
                "VDI block map offset {bmap:#x} overlaps the header"
            )));
        }
        if bmap + map_bytes > u64::from(self.offset_data) {
            return Err(Error::corrupt(format!(
                "VDI block map at {bmap:#x} ({} entries) runs into the data at {:#x}",
                self.blocks_in_hdd, self.offset_data
            )));
        }
        if bmap + map_bytes > len {
            return Err(Error::corrupt(format!(
                "VDI block map at {bmap:#x} ({} entries) is past the end of the file \
                 ({len} bytes): the image is truncated",
                self.blocks_in_hdd
            )));
        }
        if self.blocks_allocated > self.blocks_in_hdd {
            return Err(Error::corrupt(format!(
                "VDI header counts {} allocated blocks of {}",
                self.blocks_allocated, self.blocks_in_hdd
            )));
        }
        Ok(())
    }
}
