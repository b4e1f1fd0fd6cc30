//! VDI images (VirtualBox).
//!
//! # Layout
//! A 64-byte text pre-header, the signature 0xbeda107f at 0x40 and a version 1.1 header
//! (little-endian): image type (1 dynamic, 2 static), offsets of the block map and of the
//! data area, sector size 512, disk size, block size (1 MiB), blocks in the image, blocks
//! allocated and UUIDs. The block map holds one u32 per block: the index of its data block
//! in the data area, 0xFFFFFFFF (unallocated: zeroes) or 0xFFFFFFFE (a zero block).
//!
//! # Writes and crash order
//! Writes to allocated blocks go straight to the file, in parallel. A new block takes the
//! next index (past every index in use and the header's count): its data is written first
//! (the rest of the block is a hole and reads as zeroes), then the header's allocated-block
//! count, then the map entry. A crash in between leaves an unreferenced block (a leak that
//! `qemu-img check` reports as a count mismatch), never a map entry without data, and the
//! count never drops below an index in use, so the next allocation (ours or qemu-img's)
//! cannot overwrite a referenced block. `write_zeroes` and `discard` punch holes in
//! allocated blocks and keep them allocated; `block_status` reports those holes, zero blocks
//! and unallocated blocks. `flush` syncs the file.
//!
//! # Refused
//! Versions other than 1.1, undo and differencing images (types 3 and 4, link or parent
//! UUIDs), block sizes other than 1 MiB, extra block data, sector sizes other than 512,
//! misaligned offsets, a block map over 256 MiB, outside the file or running into the data,
//! disk sizes over 64 TiB or larger than the map covers, data blocks past the end of the
//! file, and (when opened for writing) map entries out of range or used twice.

mod create;
mod header;
mod image;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::error::Result;
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

pub use image::VdiImage;

/// The vdi format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Vdi
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.len() >= 0x44 && head[0x40..0x44] == 0xbeda107fu32.to_le_bytes()
    }

    fn open(&self, storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Ok(Box::new(image::open(storage, ctx)?))
    }

    fn create(&self, path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        create::create(path, opts)
    }
}
