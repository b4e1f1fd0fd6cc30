//! Cluster compression: raw deflate with a 4 KiB window (what QEMU reads back) and zstd.

use std::io::Read;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::Compression;
use crate::error::{Error, Result};
use crate::image::CompressionLevel;

/// Compresses one cluster. The output may be larger than the input (the caller then stores
/// the cluster uncompressed).
pub(crate) fn compress(kind: Compression, data: &[u8], level: CompressionLevel) -> Result<Vec<u8>> {
    match kind {
        Compression::Zlib => {
            // QEMU inflates with a 4 KiB window (windowBits -12), so deflate with one too.
            let mut c = Compress::new_with_window_bits(
                flate2::Compression::new(level.deflate()),
                false,
                12,
            );
            let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 64);
            loop {
                let before_in = c.total_in() as usize;
                let status = c
                    .compress_vec(&data[before_in..], &mut out, FlushCompress::Finish)
                    .map_err(|e| Error::invalid(format!("deflate failed: {e}")))?;
                match status {
                    Status::StreamEnd => return Ok(out),
                    _ => out.reserve(out.capacity().max(1024)),
                }
            }
        }
        Compression::Zstd => zstd::bulk::compress(data, level.zstd())
            .map_err(|e| Error::invalid(format!("zstd compression failed: {e}"))),
    }
}

/// Decompresses one cluster into `out` (exactly `out.len()` bytes must come out). `input` may
/// carry trailing bytes (the rest of the last sector).
pub(crate) fn decompress(kind: Compression, input: &[u8], out: &mut [u8], what: u64) -> Result<()> {
    let bad = |why: String| {
        Error::corrupt(format!(
            "compressed cluster at host offset {what:#x} does not decompress: {why}"
        ))
    };
    match kind {
        Compression::Zlib => {
            let mut d = Decompress::new(false);
            let r = d.decompress(input, out, FlushDecompress::Finish);
            match r {
                Ok(_) if d.total_out() as usize == out.len() => Ok(()),
                Ok(_) => Err(bad(format!("{} of {} bytes", d.total_out(), out.len()))),
                Err(e) => Err(bad(e.to_string())),
            }
        }
        Compression::Zstd => {
            let mut dec =
                zstd::stream::read::Decoder::with_buffer(input).map_err(|e| bad(e.to_string()))?;
            dec.read_exact(out).map_err(|e| bad(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_round_trip_with_trailing_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 300) as u8).collect();
        for kind in [Compression::Zlib, Compression::Zstd] {
            let mut c = compress(kind, &data, CompressionLevel::Fast).unwrap();
            assert!(c.len() < data.len() / 4);
            c.extend_from_slice(&[0xaa; 300]);
            let mut out = vec![0u8; data.len()];
            decompress(kind, &c, &mut out, 0).unwrap();
            assert_eq!(out, data);
            let mut short = vec![0u8; data.len()];
            assert!(decompress(kind, &c[..c.len() / 3], &mut short, 0).is_err());
        }
    }
}
