//! Hyper-V VHDX images (MS-VHDX), read and write.
//!
//! # Layout
//! The first MiB holds the file type identifier (`vhdxfile`), two 4 KiB headers at 64 KiB
//! and 128 KiB (the valid one with the higher sequence number is current; CRC-32C over the
//! 4 KiB with the checksum field zeroed) and two 64 KiB region tables at 192 KiB and 256 KiB
//! (CRC-32C; they locate the BAT and the metadata region; an unknown region marked required
//! is refused). The metadata region starts with a 64 KiB table of items: file parameters
//! (block size, leave-blocks-allocated, has-parent), virtual disk size, page 83 data,
//! logical and physical sector size, and the parent locator of differencing disks. The BAT
//! interleaves one sector bitmap entry after every `chunk ratio` payload entries, where
//! chunk ratio = 2^23 × logical sector size / block size. Payload blocks are MiB-aligned.
//!
//! # Opening
//! Every size, offset and count is checked before use (`format.rs`, `parse.rs`); the BAT
//! and the log are capped at 256 MiB and the virtual size at 64 TiB. A BAT entry that points
//! into the header section, log, BAT or metadata, or has an invalid state, marks the image
//! corrupt: it can be read, but writes are refused until `check --repair`.
//!
//! # Log
//! When the current header names a log GUID, the active log sequence is found and replayed
//! (`log.rs`): on a writable open it is applied to the file, synced, and both headers are
//! rewritten with a nil log GUID; on a read-only open nothing is written, the replayed state
//! is overlaid in memory and `info` reports the image dirty. Invalid entries (bad CRC,
//! signature, sequence, or GUID) are not part of any sequence and so are ignored, as the
//! specification requires.
//!
//! # Writing, and why it is crash consistent
//! Before the first write after open both headers are rewritten (new file and data write
//! GUIDs, newest last, each synced). New payload blocks go at the end of the file, past
//! every block and structure the file already has, MiB-aligned; the file is extended, the
//! data written, then the BAT entry changes in memory. `flush` syncs the data and only then
//! writes the changed BAT sectors in place and syncs again. We do not route BAT updates
//! through the log: every BAT change we make is either "unallocated → block whose data is
//! already durable" or "block → zero", so any mix of old and new entries on disk is a valid
//! image (at worst a leaked block), and an 8-byte entry cannot tear within a sector. A
//! SIGKILL at any point leaves a header with a nil log GUID and a BAT that points only at
//! written data, which `qemu-img check` accepts. The log writer (`log::write_entry`) exists
//! and is exercised by the replay tests.
//!
//! Differencing disks: reads follow the sector bitmap of partially present blocks and go to
//! the parent (opened through [`OpenContext::open_backing_file`], linkage GUID checked) for
//! absent data. The first write to a block that is not fully present copies the block from
//! the parent and makes it fully present, so sector bitmaps are never written.
//!
//! Refused: header or log versions other than 1/0, unknown required regions or metadata
//! items, block sizes outside 1–256 MiB or not powers of two, sector sizes other than 512
//! and 4096. `resize` is not implemented.

mod check;
mod create;
mod format;
mod image;
mod log;
mod parse;
#[cfg(test)]
mod tests;

use std::path::Path;

use crate::error::Result;
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

pub use image::VhdxImage;

/// The vhdx format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(b"vhdxfile")
    }

    fn open(&self, storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Ok(Box::new(parse::open(storage, ctx)?))
    }

    fn create(&self, path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        create::create(path, opts)
    }
}
