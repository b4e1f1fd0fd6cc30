//! The vmdk format (placeholder until its driver lands).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::Format;
use crate::formats::FormatDriver;
use crate::image::BlockImage;
use crate::open::{CreateOptions, OpenContext};
use crate::storage::Storage;

/// The vmdk format driver.
pub struct Driver;

impl FormatDriver for Driver {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn probe(&self, head: &[u8]) -> bool {
        head.starts_with(b"KDMV") || probe_descriptor(head)
    }

    fn open(&self, _storage: Box<dyn Storage>, _ctx: &OpenContext) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("vmdk images are not supported yet"))
    }

    fn create(&self, _path: &Path, _opts: &CreateOptions) -> Result<Box<dyn BlockImage>> {
        Err(Error::unsupported("vmdk images are not supported yet"))
    }
}

/// True when `head` looks like a VMDK text descriptor.
fn probe_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&head[..head.len().min(1024)]);
    text.starts_with("# Disk DescriptorFile")
        || (text.contains("createType=") && text.contains("version="))
}
