//! VHD images (qemu-img's `vpc`; the CLI also accepts `vhd`): Virtual PC / Hyper-V disks.
//!
//! # Layout
//! Every VHD ends with a 512-byte big-endian footer ("conectix", one's-complement
//! checksum over its bytes) giving the disk type, the size, a CHS geometry, the creator
//! application and a UUID.
//! - **Fixed**: guest bytes from offset 0, the footer after them. Nothing else.
//! - **Dynamic**: a footer copy at offset 0, a 1024-byte dynamic header ("cxsparse", its own
//!   checksum) at the footer's data offset, then the block allocation table (BAT) of
//!   big-endian u32 sector numbers (0xFFFFFFFF = unallocated). Each allocated block is a
//!   sector bitmap (one bit per 512-byte sector, most significant bit first, padded to 512
//!   bytes) followed by the block's data (2 MiB by default). A sector whose bit is clear
//!   reads as zeroes.
//! - **Differencing**: a dynamic disk whose clear bits read from a parent VHD, found through
//!   the header's parent locators (W2ru relative, then W2ku absolute UTF-16LE Windows paths,
//!   then the parent's Unicode name), always inside the allowed directories
//!   (`OpenContext::open_backing_file`); the parent's UUID must match the header.
//!
//! # Guest size
//! As qemu 10: the CHS geometry when the creator is "vpc " or "qemu" (unless the geometry is
//! the maximum 65535/16/255), `current_size` otherwise (Hyper-V "win ", Disk2vhd, XenServer,
//! Azure, qemu's `force_size` "qem2"...). `create` rounds the size up to a CHS geometry like
//! Hyper-V and qemu-img, writing "qemu"; with `force_size=on` it keeps the exact size,
//! writes the maximum geometry and "qem2", so Azure gets a whole number of MiB.
//!
//! # Writes and crash order
//! Fixed disks write in place. In a dynamic disk, writes to a block whose bitmap is full go
//! straight to the file in parallel; others take the metadata lock. A new block takes the
//! place of the trailing footer: first the footer is written at the new end of the file,
//! then the block's data, then its bitmap (over the old footer; bits set only for written
//! sectors, the rest of the block is a hole that reads as zeroes), and last the BAT entry.
//! At every step the file ends with a valid footer and the BAT points only at complete
//! blocks; a crash before the BAT write leaves an unreferenced block (a leak). qemu and this
//! driver read the footer copy at offset 0 first; `check --repair` rewrites a
//! missing trailing footer. `flush` syncs the file. Partial sectors not yet present are
//! completed from the parent (or zeroes) before they are written.
//!
//! # Refused
//! Bad checksums, BAT or blocks past the end of the file, block sizes that are not a power
//! of two between 512 bytes and 256 MiB, BATs over 256 MiB, virtual sizes over 64 TiB, a
//! BAT too small for the disk, disk types other than 2/3/4, blocks overlapping each other
//! or the metadata (when opened for writing), and differencing disks whose parent cannot
//! be found or has another UUID. `create` refuses sizes over 2040 GiB (as qemu-img).

mod bat;
mod check;
mod create;
mod dynheader;
mod footer;
mod image;
mod parse;
mod resize;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::error::Result;
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

pub use image::VpcImage;

/// Whether `tail`, the last 512 bytes of a file, is a VHD footer: such a file with no header
/// is a fixed VHD (which probing reads as raw).
pub(crate) fn is_footer(tail: &[u8]) -> bool {
    footer::Footer::has_cookie(tail)
}

/// The vpc format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Vpc
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(b"conectix")
    }

    fn open(&self, storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Ok(Box::new(parse::open(storage, ctx)?))
    }

    fn create(&self, path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        create::create(path, opts)
    }
}
