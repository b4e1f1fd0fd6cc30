//! The 512-byte VHD footer ("conectix"), its checksum, CHS geometry and the rules that turn a
//! footer into the guest-visible size.

use crate::error::{Error, Result};

/// Size of the footer and of the dynamic header's sector unit.
pub const SECTOR: u64 = 512;
/// Signature at the start of every footer.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// The largest CHS geometry a footer can hold (65535 cylinders, 16 heads, 255 sectors).
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// The largest image qemu-img creates and opens: 2040 GiB.
pub const MAX_CREATE_SECTORS: u64 = 0xff00_0000;
/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH: u64 = 946_684_800;
/// "No offset" marker used by fixed disks and by the dynamic header.
pub const NO_OFFSET: u64 = u64::MAX;

/// The kind of disk a footer describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Guest data first, footer at the end.
    Fixed,
    /// Sparse blocks found through the block allocation table.
    Dynamic,
    /// Sparse blocks over a parent image.
    Differencing,
}

impl DiskType {
    fn from_raw(v: u32) -> Result<Self> {
        match v {
            2 => Ok(DiskType::Fixed),
            3 => Ok(DiskType::Dynamic),
            4 => Ok(DiskType::Differencing),
            _ => Err(Error::unsupported(format!(
                "VHD disk type {v} in the footer is not fixed (2), dynamic (3) or differencing (4)"
            ))),
        }
    }

    fn raw(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    /// The `subformat` spelling (qemu-img's `-o subformat=`, plus "differencing").
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// Cylinders, heads and sectors per track as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

impl Geometry {
    /// The maximum geometry: a marker that the size lives in `current_size`.
    pub const MAX: Geometry = Geometry {
        cylinders: 65535,
        heads: 16,
        sectors: 255,
    };

    /// Sectors the geometry covers.
    pub fn total_sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }

    /// The geometry the VHD specification's appendix derives from a sector count (which may
    /// round down).
    pub fn for_sectors(total: u64) -> Geometry {
        let total = total.min(MAX_CHS_SECTORS);
        let (sectors, heads, cyl_times_heads);
        if total >= 65535 * 16 * 63 {
            sectors = 255u64;
            heads = 16u64;
            cyl_times_heads = total / sectors;
        } else {
            let mut s = 17u64;
            let mut cth = total / s;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                cth = total / s;
            }
            if cth >= h * 1024 {
                s = 63;
                h = 16;
                cth = total / s;
            }
            sectors = s;
            heads = h;
            cyl_times_heads = cth;
        }
        Geometry {
            cylinders: (cyl_times_heads / heads).min(65535) as u16,
            heads: heads as u8,
            sectors: sectors as u8,
        }
    }

    /// The smallest geometry that covers at least `total` sectors, as Hyper-V and qemu-img
    /// round a requested size up; the maximum geometry when none does.
    pub fn covering(total: u64) -> Geometry {
        if total >= MAX_CHS_SECTORS {
            return Geometry::MAX;
        }
        // Each step of the table loses less than one track of 16 heads x 255 sectors, so
        // this loop ends within a few thousand steps.
        let mut n = total;
        loop {
            let g = Geometry::for_sectors(n);
            if g.total_sectors() >= total || g == Geometry::MAX {
                return g;
            }
            n += 1;
        }
    }
}

/// A parsed VHD footer (all fields big-endian on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Feature flags (2 = reserved bit that must be set).
    pub features: u32,
    /// File format version (0x00010000).
    pub version: u32,
    /// Offset of the dynamic header; [`NO_OFFSET`] for fixed disks.
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01.
    pub timestamp: u32,
    /// Creator application ("qemu", "win ", "vpc "...).
    pub creator_app: [u8; 4],
    /// Creator application version.
    pub creator_version: u32,
    /// Creator host OS ("Wi2k", "Mac ").
    pub creator_os: [u8; 4],
    /// Size at creation.
    pub original_size: u64,
    /// Current size in bytes.
    pub current_size: u64,
    /// Disk geometry.
    pub geometry: Geometry,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// Unique ID of this image (children record it as their parent's ID).
    pub uuid: [u8; 16],
    /// Saved-state flag.
    pub saved_state: u8,
}

/// The one's complement of the byte sum, with the checksum field itself counted as zero.
pub fn checksum(buf: &[u8], field: usize) -> u32 {
    let sum = buf
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

impl Footer {
    /// Whether `buf` starts with the footer signature.
    pub fn has_cookie(buf: &[u8]) -> bool {
        buf.len() >= 8 && &buf[..8] == FOOTER_COOKIE
    }

    /// Parses and verifies a footer; `at` names where it was read, for messages.
    pub fn parse(buf: &[u8; 512], at: u64) -> Result<Footer> {
        if !Self::has_cookie(buf) {
            return Err(Error::corrupt(format!(
                "no VHD footer signature 'conectix' at offset {at:#x}"
            )));
        }
        let stored = be32(buf, 64);
        let computed = checksum(buf, 64);
        if stored != computed {
            return Err(Error::corrupt(format!(
                "VHD footer at offset {at:#x} has checksum {stored:#010x}, expected \
                 {computed:#010x}"
            )));
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&buf[28..32]);
        let mut creator_os = [0u8; 4];
        creator_os.copy_from_slice(&buf[36..40]);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&buf[68..84]);
        Ok(Footer {
            features: be32(buf, 8),
            version: be32(buf, 12),
            data_offset: be64(buf, 16),
            timestamp: be32(buf, 24),
            creator_app,
            creator_version: be32(buf, 32),
            creator_os,
            original_size: be64(buf, 40),
            current_size: be64(buf, 48),
            geometry: Geometry {
                cylinders: u16::from_be_bytes([buf[56], buf[57]]),
                heads: buf[58],
                sectors: buf[59],
            },
            disk_type: DiskType::from_raw(be32(buf, 60))?,
            uuid,
            saved_state: buf[84],
        })
    }

    /// Serializes the footer with a fresh checksum.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..8].copy_from_slice(FOOTER_COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[58] = self.geometry.heads;
        b[59] = self.geometry.sectors;
        b[60..64].copy_from_slice(&self.disk_type.raw().to_be_bytes());
        b[68..84].copy_from_slice(&self.uuid);
        b[84] = self.saved_state;
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Whether the guest size comes from the CHS geometry rather than `current_size`.
    ///
    /// Virtual PC and older qemu-img ("vpc ", "qemu") sized disks by geometry; Hyper-V,
    /// Disk2vhd, XenServer, Azure and qemu-img with `force_size` ("qem2") use
    /// `current_size`, as does every image whose geometry is the maximum (the size would not
    /// fit). This is the rule qemu 10 applies.
    pub fn size_from_chs(&self) -> bool {
        (&self.creator_app == b"vpc " || &self.creator_app == b"qemu")
            && self.geometry != Geometry::MAX
    }

    /// The guest-visible size in bytes.
    pub fn virtual_size(&self) -> u64 {
        if self.size_from_chs() {
            self.geometry.total_sectors() * SECTOR
        } else {
            self.current_size / SECTOR * SECTOR
        }
    }

    /// The creator application as text (NULs dropped).
    pub fn creator_app_str(&self) -> String {
        String::from_utf8_lossy(&self.creator_app)
            .trim_end_matches('\0')
            .to_string()
    }
}

/// The size, geometry and creator a new image gets for a requested size, like qemu-img:
/// rounded up to a CHS geometry unless `force_size` (or the size is past the largest
/// geometry), exact with `force_size`.
pub fn plan_size(requested: u64, force_size: bool) -> Result<(u64, Geometry, [u8; 4])> {
    let sectors = requested.div_ceil(SECTOR);
    let too_big = |s: u64| {
        if s > MAX_CREATE_SECTORS {
            Err(Error::invalid(format!(
                "VHD images hold at most 2040 GiB; {requested} bytes requested"
            )))
        } else {
            Ok(())
        }
    };
    too_big(sectors)?;
    if force_size {
        return Ok((sectors * SECTOR, Geometry::MAX, *b"qem2"));
    }
    let g = Geometry::covering(sectors);
    let total = if g == Geometry::MAX {
        sectors
    } else {
        g.total_sectors()
    };
    too_big(total)?;
    Ok((total * SECTOR, g, *b"qemu"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_up_like_qemu_img() {
        // Sizes qemu-img 10 reported for `create -f vpc` of 100M, 1M, 64M, 1000 bytes, 127G.
        let cases = [
            (100 << 20, 104_865_792u64),
            (1 << 20, 1_079_296),
            (64 << 20, 67_125_248),
            (1000, 34_816),
            (127u64 << 30, 136_365_219_840),
            (130u64 << 30, 130u64 << 30),
            (0, 0),
        ];
        for (req, want) in cases {
            let (size, _, app) = plan_size(req, false).unwrap();
            assert_eq!(size, want, "requested {req}");
            assert_eq!(&app, b"qemu");
        }
        let (size, g, app) = plan_size(64 << 20, true).unwrap();
        assert_eq!((size, g, &app), (64 << 20, Geometry::MAX, b"qem2"));
        assert!(plan_size(2041u64 << 30, false).is_err());
        assert!(plan_size(2040u64 << 30, true).is_ok());
    }

    #[test]
    fn footer_round_trips_and_checksum_is_verified() {
        let f = Footer {
            features: 2,
            version: 0x0001_0000,
            data_offset: 512,
            timestamp: 7,
            creator_app: *b"win ",
            creator_version: 1,
            creator_os: *b"Wi2k",
            original_size: 1 << 20,
            current_size: (1 << 20) + 100,
            geometry: Geometry::for_sectors(2048),
            disk_type: DiskType::Dynamic,
            uuid: [9; 16],
            saved_state: 0,
        };
        let mut b = f.to_bytes();
        assert_eq!(Footer::parse(&b, 0).unwrap(), f);
        assert_eq!(f.virtual_size(), 1 << 20, "Hyper-V size from current_size");
        b[100] ^= 1;
        let e = Footer::parse(&b, 0).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
