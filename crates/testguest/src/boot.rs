//! What the VMM told the guest: the memory map, from Linux `boot_params` (64-bit entry) or
//! the PVH `hvm_start_info` (32-bit entry).

/// Most memory-map entries kept.
pub const MAX_REGIONS: usize = 32;

/// How the guest was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// 64-bit entry with `boot_params` in `rsi`.
    Linux64,
    /// PVH 32-bit entry with `hvm_start_info` in `ebx`.
    Pvh,
    /// Unknown.
    Unknown,
}

/// A usable RAM region.
#[derive(Debug, Clone, Copy, Default)]
pub struct Region {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The guest's view of its boot.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// Entry path taken.
    pub kind: EntryKind,
    /// Usable RAM (e820 type 1 / PVH type 1).
    pub ram: [Region; MAX_REGIONS],
    /// Number of valid entries in `ram`.
    pub ram_count: usize,
    /// Kernel command line, when given.
    pub cmdline: &'static [u8],
}

fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the address comes from the VMM's boot structures inside identity-mapped RAM.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

impl BootInfo {
    /// Parses the boot structure at `info` for the entry `kind` (1 = Linux64, 2 = PVH).
    pub fn parse(info: u64, kind: u64) -> BootInfo {
        let mut b = BootInfo {
            kind: EntryKind::Unknown,
            ram: [Region::default(); MAX_REGIONS],
            ram_count: 0,
            cmdline: &[],
        };
        if info == 0 {
            return b;
        }
        match kind {
            1 => {
                b.kind = EntryKind::Linux64;
                let entries = read::<u8>(info + 0x1e8) as usize;
                for i in 0..entries.min(128) {
                    let e = info + 0x2d0 + i as u64 * 20;
                    let (addr, size, ty) =
                        (read::<u64>(e), read::<u64>(e + 8), read::<u32>(e + 16));
                    b.push(ty, addr, size);
                }
                let cmd = read::<u32>(info + 0x228) as u64;
                let len = read::<u32>(info + 0x238) as usize;
                if cmd != 0 {
                    b.cmdline = c_str(cmd, len.clamp(1, 4096));
                }
            }
            2 => {
                b.kind = EntryKind::Pvh;
                // hvm_start_info: magic 0x336ec578, version, flags, nr_modules, modlist_paddr,
                // cmdline_paddr (u64 at 24), rsdp (32), memmap_paddr (40), memmap_entries (48).
                if read::<u32>(info) == 0x336e_c578 {
                    let cmd = read::<u64>(info + 24);
                    if cmd != 0 {
                        b.cmdline = c_str(cmd, 4096);
                    }
                    let map = read::<u64>(info + 40);
                    let n = read::<u32>(info + 48) as usize;
                    for i in 0..n.min(128) {
                        let e = map + i as u64 * 24;
                        b.push(read::<u32>(e + 16), read::<u64>(e), read::<u64>(e + 8));
                    }
                }
            }
            _ => {}
        }
        b
    }

    fn push(&mut self, ty: u32, start: u64, len: u64) {
        if ty == 1 && self.ram_count < MAX_REGIONS {
            self.ram[self.ram_count] = Region { start, len };
            self.ram_count += 1;
        }
    }

    /// Usable RAM regions.
    pub fn ram(&self) -> &[Region] {
        &self.ram[..self.ram_count]
    }

    /// Total usable RAM.
    pub fn ram_total(&self) -> u64 {
        self.ram().iter().map(|r| r.len).sum()
    }
}

fn c_str(addr: u64, max: usize) -> &'static [u8] {
    let mut n = 0;
    while n < max && read::<u8>(addr + n as u64) != 0 {
        n += 1;
    }
    // SAFETY: the bytes were just read one by one from identity-mapped guest memory.
    unsafe { core::slice::from_raw_parts(addr as *const u8, n) }
}
