//! Linux direct boot on the x86 boot protocol: loads a bzImage or ELF kernel, the initramfs and
//! the command line, and writes either `boot_params` (zero page, e820 map) for the 64-bit entry
//! or `hvm_start_info` (memory map, modules) for the PVH entry of ELF kernels with its note.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::arch::x86_64::{
    CMDLINE_ADDR, CMDLINE_MAX, EBDA_START, HIMEM_START, PVH_INFO_ADDR, ZERO_PAGE_ADDR,
};
use crate::memory::{GuestMem, MMIO_HOLE_END, MMIO_HOLE_START};

/// e820 type for usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type for reserved ranges.
pub const E820_RESERVED: u32 = 2;

/// `boot_params.hdr.header`: "HdrS".
pub const HDR_MAGIC: u32 = 0x5372_6448;
/// `boot_params.hdr.boot_flag`.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags`: protected-mode code loaded at 1 MiB or above.
pub const LOADED_HIGH: u8 = 0x01;
/// `loadflags`: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 0x80;
/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;

/// Which entry point to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntryChoice {
    /// PVH when the ELF kernel has the note, else the 64-bit entry.
    #[default]
    Auto,
    /// The 64-bit boot protocol entry.
    Linux64,
    /// The PVH entry (ELF kernels with the note only).
    Pvh,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Initial RAM filesystem.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Entry point choice.
    pub entry: EntryChoice,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit long mode at `rip`, `rsi` = zero page.
    Linux64 {
        /// Entry address.
        rip: u64,
        /// `boot_params` address.
        zero_page: u64,
    },
    /// 32-bit protected mode at `rip`, `rbx` = start info.
    Pvh {
        /// Entry address.
        rip: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
}

/// Errors loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither a bzImage nor an ELF.
    #[error("{0}: not a bzImage or ELF kernel ({1})")]
    NotAKernel(PathBuf, String),
    /// The command line does not fit.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initramfs does not fit below the kernel's limit.
    #[error("initramfs of {0} bytes does not fit in guest memory below {1:#x}")]
    InitramfsTooBig(u64, u64),
    /// PVH was asked for a kernel without the note.
    #[error("the kernel has no PVH entry note; use the 64-bit entry")]
    NoPvh,
    /// Writing a boot structure failed.
    #[error("cannot write {0} into guest memory")]
    Write(&'static str),
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the kernel, initramfs and command line into `mem` and writes the boot structures.
pub fn load(mem: &GuestMem, cfg: &BootConfig) -> Result<Entry, BootError> {
    let mut kernel = open(&cfg.kernel)?;
    let loaded: KernelLoaderResult =
        match Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))) {
            Ok(r) => r,
            Err(elf_err) => BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
                .map_err(|bz_err| {
                    BootError::NotAKernel(
                        cfg.kernel.clone(),
                        format!("ELF: {elf_err}; bzImage: {bz_err}"),
                    )
                })?,
        };
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !cfg.cmdline.is_empty() {
        cmdline
            .insert_str(&cfg.cmdline)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);

    let initrd_max = loaded
        .setup_header
        .map(|h| h.initrd_addr_max as u64)
        .filter(|&m| m != 0)
        .unwrap_or(0x37ff_ffff);
    let initramfs = match &cfg.initramfs {
        Some(p) => Some(load_initramfs(mem, p, initrd_max, loaded.kernel_end)?),
        None => None,
    };

    let pvh = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
        _ => None,
    };
    let use_pvh = match cfg.entry {
        EntryChoice::Auto => pvh.is_some() && loaded.setup_header.is_none(),
        EntryChoice::Linux64 => false,
        EntryChoice::Pvh => true,
    };
    if use_pvh {
        let rip = pvh.ok_or(BootError::NoPvh)?;
        write_pvh_info(mem, cmdline_len, initramfs)?;
        return Ok(Entry::Pvh {
            rip,
            start_info: PVH_INFO_ADDR,
        });
    }
    let params = build_boot_params(mem, loaded.setup_header, cmdline_len, initramfs);
    LinuxBootConfigurator::write_bootparams::<GuestMem>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|_| BootError::Write("boot_params"))?;
    // bzImage: the 64-bit entry is 0x200 past the protected-mode code.
    let rip = loaded.kernel_load.raw_value()
        + if loaded.setup_header.is_some() {
            0x200
        } else {
            0
        };
    Ok(Entry::Linux64 {
        rip,
        zero_page: ZERO_PAGE_ADDR,
    })
}

/// Places the initramfs as high as allowed (page aligned, below `max` and the 32-bit hole).
fn load_initramfs(
    mem: &GuestMem,
    path: &Path,
    max: u64,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut f = open(path)?;
    let size = f
        .metadata()
        .map_err(|source| BootError::Read {
            path: path.into(),
            source,
        })?
        .len();
    let low_end = low_ram_end(mem);
    let top = max.saturating_add(1).min(low_end);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end.max(HIMEM_START));
    let addr = addr.ok_or(BootError::InitramfsTooBig(size, top))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|_| BootError::Write("initramfs"))?;
    Ok((addr, size))
}

/// End of RAM below the 32-bit hole.
pub fn low_ram_end(mem: &GuestMem) -> u64 {
    mem.iter()
        .map(|r| {
            vm_memory::GuestMemoryRegion::start_addr(r).raw_value()
                + vm_memory::GuestMemoryRegion::len(r)
        })
        .filter(|&e| e <= MMIO_HOLE_START)
        .max()
        .unwrap_or(0)
}

/// The e820 map for `mem`: low RAM below the EBDA, RAM from 1 MiB to the hole, RAM above 4 GiB.
pub fn e820_map(mem: &GuestMem) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    let low_end = low_ram_end(mem);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    let high_end = mem.last_addr().raw_value() + 1;
    if high_end > MMIO_HOLE_END {
        map.push((MMIO_HOLE_END, high_end - MMIO_HOLE_END, E820_RAM));
    }
    map
}

/// Builds the zero page for the 64-bit entry.
pub fn build_boot_params(
    mem: &GuestMem,
    header: Option<setup_header>,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = header {
        p.hdr = h;
    } else {
        p.hdr.boot_flag = BOOT_FLAG;
        p.hdr.header = HDR_MAGIC;
        p.hdr.kernel_alignment = 0x100_0000;
    }
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    p.hdr.heap_end_ptr = 0xfe00;
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
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

fn write_pvh_info(
    mem: &GuestMem,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map = e820_map(mem);
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: if cmdline_len > 0 { CMDLINE_ADDR } else { 0 },
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

/// Reads a plain-data structure back from guest memory (tests and diagnostics).
pub fn read_struct<T: vm_memory::ByteValued>(mem: &GuestMem, addr: u64) -> Option<T> {
    mem.read_obj(GuestAddress(addr)).ok()
}
