//! The fuzzing harness shared by the cargo-fuzz targets (`fuzz/`) and the regression tests
//! that replay their corpus: open untrusted bytes as a format and drive every read path,
//! then write to a copy and check it. Any panic, hang or unbounded allocation is a bug.

use crate::format::Format;
use crate::image::BlockImage;
use crate::open::{open_storage, OpenContext};
use crate::storage::MemStorage;

/// Most extents walked per image, so a hostile map cannot make one input take forever.
const MAX_EXTENTS: usize = 4096;
/// Bytes read per sampled position.
const SAMPLE: usize = 64 << 10;

/// Opens `data` as `format` (probing when `None`) and exercises reads, map, info, check,
/// and — on a private copy — writes, flush and a reopen. Errors are fine; panics are not.
pub fn exercise(format: Option<Format>, data: &[u8]) {
    let storage = MemStorage::read_only(data.to_vec());
    let ctx = OpenContext::isolated(false);
    if let Ok(img) = open_storage(Box::new(storage), format, &ctx) {
        read_paths(img.as_ref());
    }
    // Writable copy, allowed to grow by at most 16 MiB.
    let storage = MemStorage::new(data.to_vec(), data.len() as u64 + (16 << 20));
    let ctx = OpenContext::isolated(true);
    if let Ok(img) = open_storage(Box::new(storage), format, &ctx) {
        let size = img.virtual_size();
        if size > 0 {
            let seed = data
                .iter()
                .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
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
