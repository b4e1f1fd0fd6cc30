//! The 1024-byte dynamic disk header ("cxsparse") and the parent locators of differencing
//! disks.

use super::footer::{be32, be64, checksum, NO_OFFSET, SECTOR};
use crate::error::{Error, Result};

/// Signature of the dynamic header.
pub const DYN_COOKIE: &[u8; 8] = b"cxsparse";
/// Size of the dynamic header.
pub const DYN_HEADER_SIZE: usize = 1024;
/// Largest block size accepted (the bitmap of one block then takes 64 KiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest parent locator payload read (a Windows path of 32 K UTF-16 units).
pub const MAX_LOCATOR_LEN: u32 = 64 << 10;

/// One parent locator entry: where a platform-specific parent path is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// Platform code ("W2ru" relative, "W2ku" absolute, UTF-16LE paths).
    pub code: [u8; 4],
    /// Space reserved for the data (sectors per the specification, bytes in some writers).
    pub space: u32,
    /// Bytes of path data.
    pub length: u32,
    /// Offset of the data in the file.
    pub offset: u64,
}

/// A parsed dynamic header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynHeader {
    /// Offset of the BAT.
    pub table_offset: u64,
    /// Header version (0x00010000).
    pub version: u32,
    /// Entries in the BAT.
    pub max_table_entries: u32,
    /// Bytes of guest data per block (a power of two, 2 MiB by default).
    pub block_size: u32,
    /// Unique ID of the parent (differencing disks).
    pub parent_uuid: [u8; 16],
    /// Modification time of the parent, seconds since 2000.
    pub parent_timestamp: u32,
    /// Parent file name, UTF-16 big-endian, decoded.
    pub parent_name: String,
    /// The eight locator entries (unused ones have a zero code).
    pub locators: Vec<Locator>,
}

impl DynHeader {
    /// Parses and verifies a dynamic header read at offset `at`.
    pub fn parse(buf: &[u8; DYN_HEADER_SIZE], at: u64) -> Result<DynHeader> {
        if &buf[..8] != DYN_COOKIE {
            return Err(Error::corrupt(format!(
                "no VHD dynamic header signature 'cxsparse' at offset {at:#x}"
            )));
        }
        let stored = be32(buf, 36);
        let computed = checksum(buf, 36);
        if stored != computed {
            return Err(Error::corrupt(format!(
                "VHD dynamic header at offset {at:#x} has checksum {stored:#010x}, expected \
                 {computed:#010x}"
            )));
        }
        let block_size = be32(buf, 32);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(Error::corrupt(format!(
                "VHD block size {block_size} at offset {:#x} is not a power of two between \
                 512 bytes and 256 MiB",
                at + 32
            )));
        }
        let mut parent_uuid = [0u8; 16];
        parent_uuid.copy_from_slice(&buf[40..56]);
        let name_units: Vec<u16> = buf[64..576]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let locators = (0..8)
            .map(|i| {
                let e = 576 + i * 24;
                let mut code = [0u8; 4];
                code.copy_from_slice(&buf[e..e + 4]);
                Locator {
                    code,
                    space: be32(buf, e + 4),
                    length: be32(buf, e + 8),
                    offset: be64(buf, e + 16),
                }
            })
            .collect();
        Ok(DynHeader {
            table_offset: be64(buf, 16),
            version: be32(buf, 24),
            max_table_entries: be32(buf, 28),
            block_size,
            parent_uuid,
            parent_timestamp: be32(buf, 56),
            parent_name: String::from_utf16_lossy(&name_units),
            locators,
        })
    }

    /// Serializes the header with a fresh checksum.
    pub fn to_bytes(&self) -> [u8; DYN_HEADER_SIZE] {
        let mut b = [0u8; DYN_HEADER_SIZE];
        b[..8].copy_from_slice(DYN_COOKIE);
        // The specification says 0xFFFFFFFF here, but Microsoft's tools expect all 64 bits.
        b[8..16].copy_from_slice(&NO_OFFSET.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_uuid);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, u) in self.parent_name.encode_utf16().take(255).enumerate() {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&u.to_be_bytes());
        }
        for (i, l) in self.locators.iter().take(8).enumerate() {
            let e = 576 + i * 24;
            b[e..e + 4].copy_from_slice(&l.code);
            b[e + 4..e + 8].copy_from_slice(&l.space.to_be_bytes());
            b[e + 8..e + 12].copy_from_slice(&l.length.to_be_bytes());
            b[e + 16..e + 24].copy_from_slice(&l.offset.to_be_bytes());
        }
        let sum = checksum(&b, 36);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of the sector bitmap in front of each block, padded to whole sectors.
    pub fn bitmap_size(&self) -> u64 {
        (u64::from(self.block_size) / SECTOR / 8).div_ceil(SECTOR) * SECTOR
    }

    /// The locators that carry a path this engine can decode, in the order to try them:
    /// relative Windows paths first, then absolute ones.
    pub fn path_locators(&self) -> Vec<&Locator> {
        let mut v: Vec<&Locator> = self
            .locators
            .iter()
            .filter(|l| &l.code == b"W2ru")
            .collect();
        v.extend(self.locators.iter().filter(|l| &l.code == b"W2ku"));
        v
    }
}

/// Decodes a locator's UTF-16LE Windows path into a name relative to the image's directory:
/// "`.\dir\base.vhd`" becomes "`dir/base.vhd`"; for absolute paths ("`C:\x\base.vhd`") only
/// the file name is kept, since the image's directory is where the parent is looked for.
pub fn locator_name(data: &[u8], absolute: bool) -> Option<String> {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let path = String::from_utf16(&units).ok()?.replace('\\', "/");
    let name = if absolute {
        path.rsplit('/').next().unwrap_or("").to_string()
    } else {
        let mut p = path.as_str();
        while let Some(rest) = p.strip_prefix("./") {
            p = rest;
        }
        p.to_string()
    };
    (!name.is_empty()).then_some(name)
}

/// Encodes a relative path as a "W2ru" locator payload (`.\name`, UTF-16LE).
pub fn encode_relative(name: &str) -> Vec<u8> {
    let win = format!(".\\{}", name.replace('/', "\\"));
    win.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_bad_block_sizes() {
        let h = DynHeader {
            table_offset: 1536,
            version: 0x0001_0000,
            max_table_entries: 51,
            block_size: 2 << 20,
            parent_uuid: [3; 16],
            parent_timestamp: 5,
            parent_name: "base.vhd".into(),
            locators: vec![Locator {
                code: *b"W2ru",
                space: 1,
                length: 24,
                offset: 2048,
            }],
        };
        let b = h.to_bytes();
        let mut p = DynHeader::parse(&b, 512).unwrap();
        p.locators.truncate(1);
        assert_eq!(p, h);
        assert_eq!(h.bitmap_size(), 512);
        for bad in [0u32, 3 << 20, 256, 1 << 30] {
            let mut h2 = h.clone();
            h2.block_size = bad;
            assert!(DynHeader::parse(&h2.to_bytes(), 512).is_err(), "{bad}");
        }
        let mut b2 = b;
        b2[40] ^= 1;
        assert!(DynHeader::parse(&b2, 512).is_err());
    }

    #[test]
    fn locator_paths_decode() {
        assert_eq!(
            locator_name(&encode_relative("sub/base.vhd"), false).unwrap(),
            "sub/base.vhd"
        );
        let abs: Vec<u8> = "C:\\vms\\base.vhd"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(locator_name(&abs, true).unwrap(), "base.vhd");
        assert!(locator_name(&[], false).is_none());
        assert!(
            locator_name(&[0x00, 0xd8], false).is_none(),
            "lone surrogate"
        );
    }
}
