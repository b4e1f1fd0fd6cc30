//! PCI configuration access for test guests: ECAM (MMIO at 0xe000_0000) and the legacy
//! 0xcf8/0xcfc ports, on bus 0; capability walking and BAR sizing.

use crate::io::{inl, outl};

/// ECAM base (paddock-vmm's `PCI_ECAM_START`).
pub const ECAM_BASE: u64 = 0xe000_0000;
/// Command register bit: memory decoding.
pub const CMD_MEMORY: u16 = 0x2;
/// Command register bit: bus master.
pub const CMD_BUS_MASTER: u16 = 0x4;

/// How configuration space is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Memory-mapped (ECAM).
    Ecam,
    /// Ports 0xcf8/0xcfc.
    Port,
}

fn ecam_addr(slot: u8, func: u8, reg: u16) -> u64 {
    ECAM_BASE | (slot as u64) << 15 | (func as u64) << 12 | reg as u64
}

fn cf8(slot: u8, func: u8, reg: u16) -> u32 {
    0x8000_0000 | (slot as u32) << 11 | (func as u32) << 8 | (reg as u32 & 0xfc)
}

/// Reads a dword of bus 0 `slot`.`func` at `reg` (dword aligned).
pub fn read32(m: Mechanism, slot: u8, func: u8, reg: u16) -> u32 {
    match m {
        // SAFETY: ECAM is identity-mapped device memory; an aligned 32-bit read exits to the VMM.
        Mechanism::Ecam => unsafe {
            core::ptr::read_volatile(ecam_addr(slot, func, reg) as *const u32)
        },
        Mechanism::Port => {
            outl(0xcf8, cf8(slot, func, reg));
            inl(0xcfc)
        }
    }
}

/// Writes a dword of bus 0 `slot`.`func` at `reg` (dword aligned).
pub fn write32(m: Mechanism, slot: u8, func: u8, reg: u16, v: u32) {
    match m {
        // SAFETY: as for `read32`.
        Mechanism::Ecam => unsafe {
            core::ptr::write_volatile(ecam_addr(slot, func, reg) as *mut u32, v)
        },
        Mechanism::Port => {
            outl(0xcf8, cf8(slot, func, reg));
            outl(0xcfc, v)
        }
    }
}

/// Reads a 16-bit register through ECAM.
pub fn read16(slot: u8, reg: u16) -> u16 {
    (read32(Mechanism::Ecam, slot, 0, reg & !3) >> ((reg & 2) * 8)) as u16
}

/// Writes a 16-bit register through ECAM (read-modify-write of the dword would clobber
/// neighbours, so this uses a 16-bit access).
pub fn write16(slot: u8, reg: u16, v: u16) {
    // SAFETY: as for `read32`, a 16-bit aligned access.
    unsafe { core::ptr::write_volatile(ecam_addr(slot, 0, reg) as *mut u16, v) }
}

/// Reads a byte through ECAM.
pub fn read8(slot: u8, reg: u16) -> u8 {
    (read32(Mechanism::Ecam, slot, 0, reg & !3) >> ((reg & 3) * 8)) as u8
}

/// Vendor and device ID, or `None` where no function answers.
pub fn ids(m: Mechanism, slot: u8) -> Option<(u16, u16)> {
    let v = read32(m, slot, 0, 0);
    (v & 0xffff != 0xffff).then_some((v as u16, (v >> 16) as u16))
}

/// Capabilities as (offset, id), in list order (at most 16).
pub fn capabilities(slot: u8) -> ([(u8, u8); 16], usize) {
    let mut out = [(0u8, 0u8); 16];
    let mut n = 0;
    if read16(slot, 0x06) & 0x10 == 0 {
        return (out, 0);
    }
    let mut ptr = read8(slot, 0x34);
    while ptr != 0 && n < 16 {
        out[n] = (ptr, read8(slot, ptr as u16));
        n += 1;
        ptr = read8(slot, ptr as u16 + 1);
    }
    (out, n)
}

/// Sizes BAR `i` with memory decoding off (write all-ones, read the mask, restore); returns
/// (address, size) of a 32-bit memory BAR, size 0 when absent.
pub fn bar(slot: u8, i: u8) -> (u32, u32) {
    let reg = 0x10 + 4 * i as u16;
    let cmd = read16(slot, 0x04);
    write16(slot, 0x04, cmd & !CMD_MEMORY);
    let orig = read32(Mechanism::Ecam, slot, 0, reg);
    write32(Mechanism::Ecam, slot, 0, reg, 0xffff_ffff);
    let mask = read32(Mechanism::Ecam, slot, 0, reg);
    write32(Mechanism::Ecam, slot, 0, reg, orig);
    write16(slot, 0x04, cmd);
    let size = if mask & !0xf == 0 {
        0
    } else {
        (!(mask & !0xf)).wrapping_add(1)
    };
    (orig & !0xf, size)
}
