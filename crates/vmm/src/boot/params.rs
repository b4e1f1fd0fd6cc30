//! The zero page (`boot_params`) of the 64-bit boot protocol.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::e820_map;
use crate::arch::x86_64::{CMDLINE_ADDR, CMDLINE_MAX};
use crate::memory::GuestMem;

/// `boot_params.hdr.header`: "HdrS".
pub const HDR_MAGIC: u32 = 0x5372_6448;
/// `boot_params.hdr.boot_flag`.
pub const BOOT_FLAG: u16 = 0xaa55;
/// Oldest boot protocol with a 64-bit entry we accept (2.12: `xloadflags`).
pub const MIN_PROTOCOL: u16 = 0x020c;
/// `xloadflags`: the kernel has the 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags`: protected-mode code loaded at 1 MiB or above.
pub const LOADED_HIGH: u8 = 0x01;
/// `loadflags`: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 0x80;
/// `heap_end_ptr`: end of the setup heap, relative to the real-mode code.
pub const HEAP_END: u16 = 0xfe00;
/// Default `initrd_addr_max` for headers that give none.
pub const DEFAULT_INITRD_MAX: u64 = 0x37ff_ffff;

/// Builds the zero page for the 64-bit entry: the kernel's setup header (or a minimal one for
/// ELF kernels) with the loader's fields filled in, and the e820 map. `cmdline_size` is the
/// kernel's limit and stays as the image states it; the command line itself is NUL-terminated.
pub fn build_boot_params(
    mem: &GuestMem,
    header: Option<setup_header>,
    initramfs: Option<(u64, u64)>,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = header {
        p.hdr = h;
    } else {
        p.hdr.boot_flag = BOOT_FLAG;
        p.hdr.header = HDR_MAGIC;
        p.hdr.kernel_alignment = 0x100_0000;
        // The kernel states cmdline_size; for an ELF kernel, our buffer's limit.
        p.hdr.cmdline_size = (CMDLINE_MAX - 1) as u32;
    }
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    p.hdr.heap_end_ptr = HEAP_END;
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    if let Some((addr, size)) = initramfs {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    for (i, (addr, size, ty)) in e820_map(mem)
        .into_iter()
        .enumerate()
        .take(p.e820_table.len())
    {
        p.e820_table[i] = boot_e820_entry {
            addr,
            size,
            type_: ty,
        };
        p.e820_entries = i as u8 + 1;
    }
    p
}
