//! x86_64 machine setup: the fixed guest layout, long-mode and PVH entry state, CPUID, MSRs,
//! FPU and local APIC setup for each vCPU.

pub mod cpuid;
pub mod regs;

/// GDT written for the 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack top for the boot vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 of the boot identity map (PDPT and PD follow in the next pages).
pub const PML4_ADDR: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line we place.
pub const CMDLINE_MAX: usize = 4096;
/// Start of the extended BIOS data area: low RAM ends here in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// bzImage protected-mode code loads here (the conventional 16 MiB is for ELF kernels).
pub const KERNEL_START: u64 = 0x100_0000;
/// MP table location (in the BIOS area scanned by Linux).
pub const MPTABLE_START: u64 = 0x9fc00;
