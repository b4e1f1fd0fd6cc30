//! The vdi format (placeholder until its driver lands).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

/// The vdi format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Vdi
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.len() >= 0x44 && head[0x40..0x44] == 0xbeda107fu32.to_le_bytes()
    }

    fn open(&self, _storage: Box<dyn Storage>, _ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("vdi images are not supported yet"))
    }

    fn create(&self, _path: &Path, _opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("vdi images are not supported yet"))
    }
}
