//! The PVH `hvm_start_info` (version 1): memory map, command line, initramfs module and the
//! RSDP address.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::{e820_map, BootError};
use crate::arch::x86_64::{CMDLINE_ADDR, PVH_INFO_ADDR};
use crate::memory::GuestMem;

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;

/// Writes the start info at [`PVH_INFO_ADDR`], its memory map right after it and the module
/// list after the map.
pub(super) fn write_pvh_info(
    mem: &GuestMem,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    let map = e820_map(mem);
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: if cmdline_len > 0 { CMDLINE_ADDR } else { 0 },
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let memmap_addr = PVH_INFO_ADDR + std::mem::size_of::<hvm_start_info>() as u64;
    info.memmap_paddr = memmap_addr;
    let entries: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut modules = Vec::new();
    if let Some((addr, size)) = initramfs {
        info.nr_modules = 1;
        info.modlist_paddr =
            memmap_addr + (entries.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        modules.push(hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        });
    }
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections::<hvm_memmap_table_entry>(&entries, GuestAddress(memmap_addr));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(info.modlist_paddr));
    }
    PvhBootConfigurator::write_bootparams::<GuestMem>(&params, mem)
        .map_err(|_| BootError::Write("PVH start info"))
}
