//! The image formats the engine knows, named as `qemu-img` names them.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A disk-image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Plain bytes, sparse where the filesystem allows.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware virtual disk.
    Vmdk,
    /// Microsoft Virtual PC / Hyper-V VHD (qemu-img's `vpc`).
    Vpc,
    /// Hyper-V VHDX.
    Vhdx,
    /// VirtualBox VDI.
    Vdi,
}

impl Format {
    /// Every format, in the order probing tries them.
    pub const ALL: [Format; 6] = [
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhdx,
        Format::Vpc,
        Format::Vdi,
        Format::Raw,
    ];

    /// The name `qemu-img` uses for this format.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vpc => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            "vpc" | "vhd" => Ok(Format::Vpc),
            "vhdx" => Ok(Format::Vhdx),
            "vdi" => Ok(Format::Vdi),
            other => Err(Error::invalid(format!(
                "unknown format '{other}': use raw, qcow2, vmdk, vpc (or vhd), vhdx or vdi"
            ))),
        }
    }
}

impl serde::Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_vhd_is_vpc() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert_eq!("vhd".parse::<Format>().unwrap(), Format::Vpc);
        assert!("qcow3".parse::<Format>().is_err());
    }
}
