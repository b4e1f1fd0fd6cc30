//! Format detection by magic numbers.
//!
//! Probing only ever looks at signatures at fixed places in the first bytes of a file. A file
//! that matches nothing is raw. Callers that declare a format skip probing entirely, so a raw
//! disk whose guest wrote a qcow2 header into its first sector is still read as raw.

use crate::error::{IoContext, Result};
use crate::format::Format;
use crate::formats;
use crate::storage::Storage;

/// How many leading bytes probing looks at.
pub const PROBE_LEN: usize = 4096;

/// Detects the format of `head` (the first bytes of a file, up to [`PROBE_LEN`]).
pub fn probe_bytes(head: &[u8]) -> Format {
    Format::ALL
        .into_iter()
        .filter(|&f| f != Format::Raw)
        .find(|&f| formats::driver(f).probe(head))
        .unwrap_or(Format::Raw)
}

/// Detects the format of the image in `storage`.
pub fn probe_storage(storage: &dyn Storage) -> Result<Format> {
    let mut head = vec![0u8; PROBE_LEN];
    storage
        .read_zero_padded(&mut head, 0)
        .ctx(|| "reading header for probing".to_string())?;
    let len = storage.len().ctx(|| "reading file size".to_string())? as usize;
    head.truncate(len.min(PROBE_LEN));
    Ok(probe_bytes(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_bytes_are_raw() {
        assert_eq!(probe_bytes(&[]), Format::Raw);
        assert_eq!(probe_bytes(&[0xaa; 4096]), Format::Raw);
    }
}
