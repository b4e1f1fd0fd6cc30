//! One module per image format, each exposing a [`FormatDriver`].

use std::path::Path;

use crate::error::Result;
use crate::format::Format;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

pub mod qcow2;
pub mod raw;
pub mod vdi;
pub mod vhdx;
pub mod vmdk;
pub mod vpc;

/// What every format offers the engine: recognising, opening and creating images.
pub trait FormatDriver: Sync {
    /// The format this driver handles.
    fn format(&self) -> Format;

    /// True when `head` (the first bytes of a file, possibly fewer than 4096) carries this
    /// format's signature.
    fn probe(&self, head: &[u8]) -> bool;

    /// Opens an image stored in `storage`; side files (backing, extents) come through `ctx`.
    fn open(&self, storage: Box<dyn Storage>, ctx: &OpenContext) -> Result<Box<dyn BlockImage>>;

    /// Creates a new image file at `path` and returns it open for writing.
    fn create(&self, path: &Path, opts: &CreateOptions) -> Result<Box<dyn BlockImage>>;
}

/// The driver for `format`.
pub fn driver(format: Format) -> &'static dyn FormatDriver {
    match format {
        Format::Raw => &raw::Driver,
        Format::Qcow2 => &qcow2::Driver,
        Format::Vmdk => &vmdk::Driver,
        Format::Vpc => &vpc::Driver,
        Format::Vhdx => &vhdx::Driver,
        Format::Vdi => &vdi::Driver,
    }
}
