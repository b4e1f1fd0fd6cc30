//! The in-memory block allocation table and the cache of per-block sector bitmaps.

use std::collections::HashMap;

use crate::error::{IoContext, Result};
use crate::storage::Storage;

/// BAT value of a block that is not allocated.
pub const UNALLOCATED: u32 = u32::MAX;

/// What is known about a block's sector bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Not read yet.
    Unknown,
    /// Every sector is present in this file (what qemu-img writes).
    Full,
    /// No sector is present.
    Empty,
    /// Some are: the bitmap is in the cache, or must be read again.
    Mixed,
}

/// A block's sector bitmap as the I/O paths need it.
#[derive(Debug, Clone)]
pub enum Bits {
    /// All sectors present.
    Full,
    /// No sector present.
    Empty,
    /// The bitmap bytes (bit 7 of byte 0 is the first sector).
    Mixed(Vec<u8>),
}

impl Bits {
    /// The bitmap as bytes of `len`.
    pub fn into_bytes(self, len: usize) -> Vec<u8> {
        match self {
            Bits::Full => vec![0xff; len],
            Bits::Empty => vec![0; len],
            Bits::Mixed(b) => b,
        }
    }

    /// Length of the run of sectors from `start` (below `end`) with the same presence, and
    /// that presence.
    pub fn run(&self, start: u64, end: u64) -> (bool, u64) {
        match self {
            Bits::Full => (true, end - start),
            Bits::Empty => (false, end - start),
            Bits::Mixed(b) => {
                let v = bit(b, start);
                let mut i = start + 1;
                while i < end && bit(b, i) == v {
                    i += 1;
                }
                (v, i - start)
            }
        }
    }
}

/// Whether bit `i` (most significant bit first) is set.
pub fn bit(b: &[u8], i: u64) -> bool {
    b[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
}

/// Sets or clears bits `start..end`.
pub fn set_bits(b: &mut [u8], start: u64, end: u64, value: bool) {
    for i in start..end {
        let m = 0x80u8 >> (i % 8);
        if value {
            b[(i / 8) as usize] |= m;
        } else {
            b[(i / 8) as usize] &= !m;
        }
    }
}

/// Where the BAT lives and what the file's metadata occupies (a resize may move the BAT).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// File offset of the BAT.
    pub bat_offset: u64,
    /// Entries the BAT's space in the file holds (its bytes rounded up to a sector).
    pub capacity: u64,
    /// The dynamic header's `max_table_entries`.
    pub max_table_entries: u32,
    /// Metadata areas (footer copy, header, BAT, locator data): `(start, end, what)`.
    pub regions: Vec<(u64, u64, String)>,
}

/// The block table, bitmap knowledge and allocation cursor of a dynamic image.
#[derive(Debug)]
pub struct Meta {
    /// BAT entries: sector number of each block's bitmap, or [`UNALLOCATED`].
    pub bat: Vec<u32>,
    /// Where the BAT lives.
    pub layout: Layout,
    fill: Vec<Fill>,
    cache: HashMap<u32, Vec<u8>>,
    cache_cap: usize,
    /// File offset where the next block (bitmap first) goes; the trailing footer follows
    /// the last block.
    pub next_block: u64,
    /// Current file length as this image last wrote or saw it.
    pub file_len: u64,
    /// Sectors per block.
    pub spb: u64,
    /// Bytes of each bitmap.
    pub bitmap_size: u64,
}

impl Meta {
    /// A table with every block's bitmap still unknown.
    pub fn new(bat: Vec<u32>, next_block: u64, file_len: u64, spb: u64, bitmap_size: u64) -> Self {
        let n = bat.len();
        Meta {
            bat,
            layout: Layout::default(),
            fill: vec![Fill::Unknown; n],
            cache: HashMap::new(),
            cache_cap: ((4 << 20) / bitmap_size.max(1) as usize).max(16),
            next_block,
            file_len,
            spb,
            bitmap_size,
        }
    }

    /// Adds `more` unallocated entries at the end of the table (a grown disk).
    pub fn grow(&mut self, more: usize) {
        self.bat.extend(std::iter::repeat_n(UNALLOCATED, more));
        self.fill.extend(std::iter::repeat_n(Fill::Empty, more));
    }

    /// The bitmap of allocated block `b`, from the cache or from the file.
    pub fn bits(&mut self, storage: &dyn Storage, b: usize) -> Result<Bits> {
        match self.fill[b] {
            Fill::Full => return Ok(Bits::Full),
            Fill::Empty => return Ok(Bits::Empty),
            Fill::Mixed => {
                if let Some(v) = self.cache.get(&(b as u32)) {
                    return Ok(Bits::Mixed(v.clone()));
                }
            }
            Fill::Unknown => {}
        }
        let at = u64::from(self.bat[b]) * 512;
        let mut v = vec![0u8; self.bitmap_size as usize];
        storage
            .read_exact_at(&mut v, at)
            .ctx(|| format!("reading the sector bitmap of block {b} at offset {at:#x}"))?;
        Ok(self.store(b, v))
    }

    /// Records the bitmap of block `b` and returns it classified.
    pub fn store(&mut self, b: usize, v: Vec<u8>) -> Bits {
        let n = self.spb;
        let all = |want: bool| (0..n).all(|i| bit(&v, i) == want);
        // Whole bytes first, so the common cases cost a byte scan, not a bit loop.
        let full = if n % 8 == 0 {
            v[..(n / 8) as usize].iter().all(|&x| x == 0xff)
        } else {
            all(true)
        };
        let empty = !full
            && if n % 8 == 0 {
                v[..(n / 8) as usize].iter().all(|&x| x == 0)
            } else {
                all(false)
            };
        self.cache.remove(&(b as u32));
        if full {
            self.fill[b] = Fill::Full;
            Bits::Full
        } else if empty {
            self.fill[b] = Fill::Empty;
            Bits::Empty
        } else {
            self.fill[b] = Fill::Mixed;
            if self.cache.len() >= self.cache_cap {
                self.cache.clear();
            }
            self.cache.insert(b as u32, v.clone());
            Bits::Mixed(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn bitmaps_classify_and_runs_split() {
        let s = MemStorage::new(vec![0u8; 4096], 1 << 20);
        let mut m = Meta::new(vec![0, 1, 2], 4096, 4096, 16, 512);
        let mut v = vec![0u8; 512];
        set_bits(&mut v, 0, 16, true);
        assert!(matches!(m.store(0, v.clone()), Bits::Full));
        set_bits(&mut v, 3, 5, false);
        let b = m.store(1, v);
        assert_eq!(b.run(0, 16), (true, 3));
        assert_eq!(b.run(3, 16), (false, 2));
        assert_eq!(b.run(5, 16), (true, 11));
        assert!(matches!(m.bits(&s, 2).unwrap(), Bits::Empty));
        assert!(matches!(m.bits(&s, 1).unwrap(), Bits::Mixed(_)));
        // Bits past the block's sectors (padding) do not matter.
        let mut m = Meta::new(vec![0], 512, 512, 2, 512);
        let mut v = vec![0u8; 512];
        v[0] = 0xc0;
        assert!(matches!(m.store(0, v), Bits::Full));
    }
}
