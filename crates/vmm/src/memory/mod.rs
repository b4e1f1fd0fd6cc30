//! Guest memory: anonymous mappings laid out around the 32-bit MMIO hole, with an optional
//! dirty bitmap per region for migration.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory with a dirty-page bitmap per region.
pub type GuestMem = GuestMemoryMmap<AtomicBitmap>;

/// Start of the 32-bit MMIO hole (PCI BARs, ECAM, IOAPIC, LAPIC).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole: RAM resumes at 4 GiB.
pub const MMIO_HOLE_END: u64 = 1 << 32;

/// Errors building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is unusable.
    #[error("guest memory of {0} bytes is not a whole number of 4 KiB pages or is zero")]
    BadSize(u64),
    /// mmap failed.
    #[error("cannot map guest memory: {0}")]
    Map(String),
}

/// The RAM regions for `size` bytes: below the hole, then from 4 GiB up.
pub fn layout(size: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if size == 0 || size % 4096 != 0 {
        return Err(MemoryError::BadSize(size));
    }
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > low {
        regions.push((GuestAddress(MMIO_HOLE_END), (size - low) as usize));
    }
    Ok(regions)
}

/// Maps `size` bytes of guest RAM.
pub fn create(size: u64) -> Result<GuestMem, MemoryError> {
    let regions = layout(size)?;
    GuestMemoryMmap::from_ranges(&regions).map_err(|e| MemoryError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_hole_starts_at_4g() {
        let r = layout(4 << 30).unwrap();
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]
        );
        assert_eq!(layout(512 << 20).unwrap().len(), 1);
        assert!(layout(0).is_err());
        assert!(layout(4097).is_err());
    }
}
