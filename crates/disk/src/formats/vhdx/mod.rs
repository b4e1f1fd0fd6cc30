//! The vhdx format (placeholder until its driver lands).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

/// The vhdx format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(b"vhdxfile")
    }

    fn open(&self, _storage: Box<dyn Storage>, _ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("vhdx images are not supported yet"))
    }

    fn create(&self, _path: &Path, _opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("vhdx images are not supported yet"))
    }
}
