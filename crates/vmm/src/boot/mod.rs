//! Linux direct boot on the x86 boot protocol: loads a bzImage or ELF kernel, the initramfs and
//! the command line, writes the MP and ACPI tables, and writes either `boot_params` (zero page,
//! e820 map) for the 64-bit entry or `hvm_start_info` (memory map, modules, RSDP) for the PVH
//! entry of ELF kernels with its note.

mod e820;
mod params;
mod pvh;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

pub use e820::{e820_map, low_ram_end, E820_RAM, E820_RESERVED};
pub use params::{
    build_boot_params, BOOT_FLAG, CAN_USE_HEAP, DEFAULT_INITRD_MAX, HDR_MAGIC, HEAP_END,
    LOADED_HIGH, LOADER_UNDEFINED, MIN_PROTOCOL, XLF_KERNEL_64,
};
pub use pvh::PVH_MAGIC;

use crate::arch::x86_64::acpi::{self, AcpiConfig};
use crate::arch::x86_64::{mptable, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, ZERO_PAGE_ADDR};
use crate::memory::GuestMem;

/// Offset of the 64-bit entry from the protected-mode code of a bzImage.
pub const BZIMAGE_ENTRY_64: u64 = 0x200;

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
    /// The bzImage cannot be entered in 64-bit mode.
    #[error("{0}: {1}")]
    No64BitEntry(PathBuf, String),
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
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// [`load_smp`] for a machine with one vCPU.
pub fn load(mem: &GuestMem, cfg: &BootConfig) -> Result<Entry, BootError> {
    load_smp(mem, cfg, 1)
}

/// Loads the kernel, initramfs and command line into `mem`, writes the MP table and the ACPI
/// tables describing `cpus` vCPUs and the fixed layout, then the boot structures of the entry.
pub fn load_smp(mem: &GuestMem, cfg: &BootConfig, cpus: u8) -> Result<Entry, BootError> {
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
    let cmdline_limit = loaded
        .setup_header
        .map(|h| h.cmdline_size as usize + 1)
        .unwrap_or(CMDLINE_MAX)
        .min(CMDLINE_MAX);
    let mut cmdline = Cmdline::new(cmdline_limit).map_err(|e| BootError::Cmdline(e.to_string()))?;
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
        .unwrap_or(DEFAULT_INITRD_MAX);
    // The initramfs stays clear of the kernel and, for a bzImage, of the buffer it
    // decompresses into (init_size bytes from its preferred address up).
    let kernel_floor = loaded
        .setup_header
        .map(|h| h.pref_address.max(loaded.kernel_load.raw_value()) + h.init_size as u64)
        .unwrap_or(0)
        .max(loaded.kernel_end);
    let initramfs = match &cfg.initramfs {
        Some(p) => Some(load_initramfs(mem, p, initrd_max, kernel_floor)?),
        None => None,
    };

    mptable::write(mem, cpus)?;
    let tables = acpi::write_tables(mem, &AcpiConfig::new(cpus))?;

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
        pvh::write_pvh_info(mem, cmdline_len, initramfs, Some(tables.rsdp))?;
        return Ok(Entry::Pvh {
            rip,
            start_info: crate::arch::x86_64::PVH_INFO_ADDR,
        });
    }
    if let Some(h) = loaded.setup_header {
        let (version, xloadflags) = (h.version, h.xloadflags);
        if version < MIN_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::No64BitEntry(
                cfg.kernel.clone(),
                format!(
                    "boot protocol {:#x}, xloadflags {:#x}: no 64-bit entry",
                    version, xloadflags
                ),
            ));
        }
    }
    let params = build_boot_params(mem, loaded.setup_header, initramfs);
    LinuxBootConfigurator::write_bootparams::<GuestMem>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|_| BootError::Write("boot_params"))?;
    // bzImage: the 64-bit entry is 0x200 past the protected-mode code.
    let rip = loaded.kernel_load.raw_value()
        + if loaded.setup_header.is_some() {
            BZIMAGE_ENTRY_64
        } else {
            0
        };
    Ok(Entry::Linux64 {
        rip,
        zero_page: ZERO_PAGE_ADDR,
    })
}

/// Places the initramfs as high as allowed (page aligned, at or below `max`, below the 32-bit
/// hole) and above `floor`.
fn load_initramfs(
    mem: &GuestMem,
    path: &Path,
    max: u64,
    floor: u64,
) -> Result<(u64, u64), BootError> {
    let mut f = open(path)?;
    let size = f
        .metadata()
        .map_err(|source| BootError::Read {
            path: path.into(),
            source,
        })?
        .len();
    let top = max.saturating_add(1).min(low_ram_end(mem));
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= floor.max(HIMEM_START));
    let addr = addr.ok_or(BootError::InitramfsTooBig(size, top))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|_| BootError::Write("initramfs"))?;
    Ok((addr, size))
}

/// Reads a plain-data structure back from guest memory (tests and diagnostics).
pub fn read_struct<T: vm_memory::ByteValued>(mem: &GuestMem, addr: u64) -> Option<T> {
    mem.read_obj(GuestAddress(addr)).ok()
}
