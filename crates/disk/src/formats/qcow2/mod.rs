//! The qcow2 format (placeholder until its driver lands).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

/// The qcow2 format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.len() >= 8 && head[..4] == *b"QFI\xfb"
    }

    fn open(&self, _storage: Box<dyn Storage>, _ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("qcow2 images are not supported yet"))
    }

    fn create(&self, _path: &Path, _opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("qcow2 images are not supported yet"))
    }
}
