//! The allocation map of an image through its backing chain, as `qemu-img map` prints it.

use serde::Serialize;

use crate::error::Result;
use crate::image::{BlockImage, ExtentKind};
use crate::ops::chain::chain_status;

/// One run of the map, with qemu-img's JSON field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Chain layer that supplies the data (0 = top).
    pub depth: u32,
    /// Allocated in some layer.
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Host offset of the data in the layer's file, when contiguous and uncompressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Maps the whole image, merging adjacent runs that look the same.
pub fn map(img: &dyn BlockImage) -> Result<Vec<MapEntry>> {
    let size = img.virtual_size();
    let mut out: Vec<MapEntry> = Vec::new();
    let mut at = 0;
    while at < size {
        let ce = chain_status(img, at, size - at)?;
        let e = ce.extent;
        let len = e.length.min(size - at);
        let entry = MapEntry {
            start: at,
            length: len,
            depth: ce.depth,
            present: e.kind != ExtentKind::Unallocated,
            zero: e.kind != ExtentKind::Data,
            data: e.kind == ExtentKind::Data,
            offset: e.host_offset,
        };
        match out.last_mut() {
            Some(last)
                if last.depth == entry.depth
                    && last.present == entry.present
                    && last.zero == entry.zero
                    && last.data == entry.data
                    && match (last.offset, entry.offset) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a + last.length == b,
                        _ => false,
                    } =>
            {
                last.length += len;
            }
            _ => out.push(entry),
        }
        at += len;
    }
    Ok(out)
}
