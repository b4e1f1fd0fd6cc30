//! The sparse extent header (`KDMV`), its flags, and the stream markers.

use crate::error::{Error, Result};

/// Bytes in a sector; every VMDK offset and size is counted in sectors.
pub const SECTOR: u64 = 512;
/// The magic at offset 0 of a sparse extent.
pub const MAGIC: &[u8; 4] = b"KDMV";
/// `gdOffset` value meaning "the grain directory is described by the footer".
pub const GD_AT_END: u64 = u64::MAX;

/// The newline-detection bytes are valid.
pub const FLAG_NL_DETECT: u32 = 1 << 0;
/// A redundant grain directory is present.
pub const FLAG_RGD: u32 = 1 << 1;
/// Grain table entry 1 means "this grain reads as zeroes".
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// The extent carries metadata markers (stream format).
pub const FLAG_MARKERS: u32 = 1 << 17;

/// `compressAlgorithm`: none.
pub const COMPRESS_NONE: u16 = 0;
/// `compressAlgorithm`: deflate (stored as a zlib stream).
pub const COMPRESS_DEFLATE: u16 = 1;

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: the grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: the footer follows.
pub const MARKER_FOOTER: u32 = 3;

/// Bytes of a grain marker before the compressed data (lba u64 + size u32).
pub const GRAIN_MARKER_LEN: usize = 12;

/// The newline test characters at offset 73 of the header.
const NL_BYTES: [u8; 4] = [b'\n', b' ', b'\r', b'\n'];

/// A parsed sparse extent header. All offsets and sizes are in sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Extent size in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Sector of the embedded descriptor (0 when none).
    pub desc_offset: u64,
    /// Sectors reserved for the embedded descriptor.
    pub desc_size: u64,
    /// Entries per grain table (512 in every known writer).
    pub gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors before the first grain.
    pub overhead: u64,
    /// Set while a writer has the extent open.
    pub unclean_shutdown: bool,
    /// The newline test bytes were intact.
    pub nl_ok: bool,
    /// `COMPRESS_*` value.
    pub compress_algorithm: u16,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl SparseHeader {
    /// Parses the first sector of a sparse extent (or a footer).
    pub fn parse(sector: &[u8]) -> Result<Self> {
        if sector.len() < 79 {
            return Err(Error::corrupt("sparse extent header is truncated"));
        }
        if &sector[..4] != MAGIC {
            return Err(Error::corrupt("sparse extent header has no KDMV magic"));
        }
        Ok(SparseHeader {
            version: le32(sector, 4),
            flags: le32(sector, 8),
            capacity: le64(sector, 12),
            grain_size: le64(sector, 20),
            desc_offset: le64(sector, 28),
            desc_size: le64(sector, 36),
            gtes_per_gt: le32(sector, 44),
            rgd_offset: le64(sector, 48),
            gd_offset: le64(sector, 56),
            overhead: le64(sector, 64),
            unclean_shutdown: sector[72] != 0,
            nl_ok: sector[73..77] == NL_BYTES,
            compress_algorithm: u16::from_le_bytes([sector[77], sector[78]]),
        })
    }

    /// Serializes into one 512-byte sector.
    pub fn to_sector(&self) -> Vec<u8> {
        let mut s = vec![0u8; SECTOR as usize];
        s[..4].copy_from_slice(MAGIC);
        s[4..8].copy_from_slice(&self.version.to_le_bytes());
        s[8..12].copy_from_slice(&self.flags.to_le_bytes());
        s[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        s[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        s[28..36].copy_from_slice(&self.desc_offset.to_le_bytes());
        s[36..44].copy_from_slice(&self.desc_size.to_le_bytes());
        s[44..48].copy_from_slice(&self.gtes_per_gt.to_le_bytes());
        s[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        s[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        s[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        s[72] = self.unclean_shutdown as u8;
        s[73..77].copy_from_slice(&NL_BYTES);
        s[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        s
    }

    /// Whether grains are compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether grain table entry 1 means a zeroed grain.
    pub fn zero_grain(&self) -> bool {
        self.flags & FLAG_ZERO_GRAIN != 0 && self.version >= 2
    }
}

/// Builds a metadata marker sector: `sectors` of metadata of `kind` follow it.
pub fn marker_sector(sectors: u64, kind: u32) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR as usize];
    s[..8].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&kind.to_le_bytes());
    s
}

/// A parsed marker: `(value, size, type)`; `size` 0 means a metadata marker of `type`,
/// otherwise a grain marker with `value` = LBA and `size` compressed bytes.
pub fn parse_marker(b: &[u8]) -> (u64, u32, u32) {
    (le64(b, 0), le32(b, 8), le32(b, 12))
}

/// Sectors needed for `bytes` bytes.
pub fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = SparseHeader {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: 12345,
            grain_size: 128,
            desc_offset: 1,
            desc_size: 20,
            gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            unclean_shutdown: false,
            nl_ok: true,
            compress_algorithm: COMPRESS_DEFLATE,
        };
        let s = h.to_sector();
        assert_eq!(&s[..4], b"KDMV");
        assert_eq!(SparseHeader::parse(&s).unwrap(), h);
        assert!(SparseHeader::parse(&s[..50]).is_err());
        let m = marker_sector(4, MARKER_GT);
        assert_eq!(parse_marker(&m), (4, 0, MARKER_GT));
    }
}
