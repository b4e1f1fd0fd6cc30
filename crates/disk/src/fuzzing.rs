//! The fuzzing harness shared by the cargo-fuzz targets (`fuzz/`) and the regression tests
//! that replay their corpus: open untrusted bytes as a format and drive every read path,
//! then write to a copy and check it. Any panic, hang or unbounded allocation is a bug.

use crate::format::Format;
use crate::image::BlockImage;
use crate::open::{open_storage, OpenContext};
use crate::storage::MemStorage;

/// Largest image an encoded input may describe.
pub const MAX_IMAGE: usize = 32 << 20;

/// Decodes a fuzz input into image bytes. Inputs are structured so that small inputs describe
/// large, mostly-zero images (real images are): `total_len: u32 LE`, then repeated
/// `gap: u32 LE, len: u16 LE, bytes[len]` segments placed one after another. The fuzzer then
/// mutates header fields and table entries directly, wherever they sit in the image.
pub fn decode(input: &[u8]) -> Vec<u8> {
    let Some((len, mut rest)) = input.split_first_chunk::<4>() else {
        return input.to_vec();
    };
    let total = (u32::from_le_bytes(*len) as usize).min(MAX_IMAGE);
    let mut image = vec![0u8; total];
    let mut at = 0usize;
    while let Some((hdr, tail)) = rest.split_first_chunk::<6>() {
        let gap = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let n = (u16::from_le_bytes([hdr[4], hdr[5]]) as usize).min(tail.len());
        at = at.saturating_add(gap);
        if at >= total {
            break;
        }
        let m = n.min(total - at);
        image[at..at + m].copy_from_slice(&tail[..m]);
        at += n;
        rest = &tail[n..];
    }
    image
}

/// Decodes `input` (see [`decode`]) and runs [`exercise`] on it.
pub fn exercise_encoded(format: Option<Format>, input: &[u8]) {
    run(format, || decode(input));
}

/// Most extents walked per image, so a hostile map cannot make one input take forever.
const MAX_EXTENTS: usize = 4096;
/// Bytes read per sampled position.
const SAMPLE: usize = 64 << 10;

/// Opens `data` as `format` (probing when `None`) and exercises reads, map, info, check,
/// and — on a private copy — writes, flush, a grow and a shrink. Errors are fine; panics are
/// not.
pub fn exercise(format: Option<Format>, data: &[u8]) {
    run(format, || data.to_vec());
}

/// Runs the read pass and the write pass, each on a fresh image from `make` (decoding twice
/// is cheaper than copying a large zero-filled image).
fn run(format: Option<Format>, make: impl Fn() -> Vec<u8>) {
    let storage = MemStorage::read_only(make());
    let ctx = OpenContext::isolated(false);
    if let Ok(img) = open_storage(Box::new(storage), format, &ctx) {
        read_paths(img.as_ref());
    }
    // Writable copy, allowed to grow by at most 16 MiB.
    let data = make();
    let cap = data.len() as u64 + (16 << 20);
    let seed = data
        .iter()
        .take(1 << 16)
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    let storage = MemStorage::new(data, cap);
    let ctx = OpenContext::isolated(true);
    if let Ok(img) = open_storage(Box::new(storage), format, &ctx) {
        let size = img.virtual_size();
        if size > 0 {
            let buf = vec![0xa5u8; 4096 + (seed % 8192) as usize];
            for off in [
                0,
                size / 3,
                size.saturating_sub(buf.len() as u64),
                seed % size,
            ] {
                let len = (buf.len() as u64).min(size - off.min(size)) as usize;
                let _ = img.write_at(&buf[..len], off.min(size));
            }
            let _ = img.write_zeroes(size / 2, (size / 2).min(1 << 20), true);
            let _ = img.flush();
            read_paths(img.as_ref());
            // Grow by up to 4 MiB, then shrink to half, where the format can.
            let grow = (seed >> 8) % (4 << 20) / 512 * 512 + 512;
            if img.resize(size.saturating_add(grow)).is_ok() {
                read_paths(img.as_ref());
            }
            if img.resize(size / 2 / 512 * 512).is_ok() {
                read_paths(img.as_ref());
            }
        }
    }
}

fn read_paths(img: &dyn BlockImage) {
    let info = img.info();
    let _ = serde_json::to_string(&info);
    let size = img.virtual_size();
    let mut at = 0;
    for _ in 0..MAX_EXTENTS {
        if at >= size {
            break;
        }
        match img.block_status(at, size - at) {
            Ok(e) if e.length > 0 && e.start == at => at = at.saturating_add(e.length),
            _ => break,
        }
    }
    let mut buf = vec![0u8; SAMPLE];
    for off in [0, size / 2, size.saturating_sub(SAMPLE as u64)] {
        let len = (SAMPLE as u64).min(size.saturating_sub(off)) as usize;
        let _ = img.read_at(&mut buf[..len], off);
    }
    let _ = img.check(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_places_segments_after_gaps_and_caps_size() {
        let mut input = 16u32.to_le_bytes().to_vec();
        input.extend(2u32.to_le_bytes());
        input.extend(3u16.to_le_bytes());
        input.extend(b"abc");
        input.extend(1u32.to_le_bytes());
        input.extend(2u16.to_le_bytes());
        input.extend(b"de");
        let img = decode(&input);
        assert_eq!(img.len(), 16);
        assert_eq!(&img[..8], b"\0\0abc\0de");
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(decode(&huge).len(), MAX_IMAGE);
    }
}
