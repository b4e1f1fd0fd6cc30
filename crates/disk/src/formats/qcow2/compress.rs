//! Cluster compression: raw deflate with a 4 KiB window (what QEMU reads back) and zstd.

use std::cell::RefCell;
use std::io::Read;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use super::header::Compression;
use crate::error::{Error, Result};
use crate::image::CompressionLevel;

thread_local! {
    /// This thread's deflate stream and its level: creating one per cluster costs as much as
    /// compressing a small cluster.
    static DEFLATE: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    /// This thread's zstd context and its level (same reason: a fresh context per 64 KiB
    /// cluster was a tenth of a compressed conversion's CPU time).
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

/// Compresses one cluster. The output may be larger than the input (the caller then stores
/// the cluster uncompressed). Each thread keeps its compression context between calls.
pub(crate) fn compress(kind: Compression, data: &[u8], level: CompressionLevel) -> Result<Vec<u8>> {
    match kind {
        Compression::Zlib => DEFLATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let l = level.deflate();
            let c = match &mut *slot {
                Some((have, c)) if *have == l => {
                    c.reset();
                    c
                }
                _ => {
                    // QEMU inflates with a 4 KiB window (windowBits -12), so deflate with one
                    // too.
                    let c = Compress::new_with_window_bits(flate2::Compression::new(l), false, 12);
                    &mut slot.insert((l, c)).1
                }
            };
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
        }),
        Compression::Zstd => ZSTD.with(|cell| {
            let failed =
                |e: std::io::Error| Error::invalid(format!("zstd compression failed: {e}"));
            let mut slot = cell.borrow_mut();
            let l = level.zstd();
            let c = match &mut *slot {
                Some((have, c)) if *have == l => c,
                _ => {
                    &mut slot
                        .insert((l, zstd::bulk::Compressor::new(l).map_err(failed)?))
                        .1
                }
            };
            c.compress(data).map_err(failed)
        }),
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
