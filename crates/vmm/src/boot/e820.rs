//! The guest memory map, shared by the e820 table of `boot_params` and the PVH memory map.

use vm_memory::{Address, GuestMemory, GuestMemoryRegion};

use crate::arch::x86_64::{EBDA_START, HIMEM_START, PCI_ECAM_SIZE, PCI_ECAM_START};
use crate::memory::{GuestMem, MMIO_HOLE_END, MMIO_HOLE_START};

/// e820 type for usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type for reserved ranges.
pub const E820_RESERVED: u32 = 2;

/// End of RAM below the 32-bit hole.
pub fn low_ram_end(mem: &GuestMem) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|&e| e <= MMIO_HOLE_START)
        .max()
        .unwrap_or(0)
}

/// The memory map for `mem`, sorted by address, as (start, size, type): low RAM below the
/// EBDA, RAM from 1 MiB to the hole, the PCI ECAM window reserved (Linux accepts MMCONFIG
/// only when its range is reserved), and RAM above 4 GiB.
pub fn e820_map(mem: &GuestMem) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    let low_end = low_ram_end(mem);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    let high_end = mem.last_addr().raw_value() + 1;
    if high_end > MMIO_HOLE_END {
        map.push((MMIO_HOLE_END, high_end - MMIO_HOLE_END, E820_RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn map_is_sorted_disjoint_and_keeps_ram_out_of_the_hole() {
        for size in [64u64 << 20, 3 << 30, 5 << 30] {
            let mem = memory::create(size).unwrap();
            let map = e820_map(&mem);
            for w in map.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "{map:x?}");
            }
            for &(start, len, ty) in &map {
                if ty == E820_RAM {
                    assert!(start + len <= MMIO_HOLE_START || start >= MMIO_HOLE_END);
                }
            }
            assert!(map.contains(&(PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED)));
            let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
            assert_eq!(ram, size - (HIMEM_START - EBDA_START));
        }
    }
}
