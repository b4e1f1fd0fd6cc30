//! x86_64 machine setup: the fixed guest layout, long-mode and PVH entry state, CPUID, MSRs,
//! FPU and local APIC setup for each vCPU.

pub mod acpi;
pub mod cpuid;
pub mod mptable;
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

/// Start of the 32-bit PCI MMIO window (BARs are allocated here, below ECAM).
pub const PCI_MMIO_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration space (ECAM / MMCONFIG), one 4 KiB page per function.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size: 256 buses × 32 devices × 8 functions × 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// Legacy PCI configuration ports (address at 0xcf8, data at 0xcfc..0xcff).
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Number of IOAPIC pins (GSIs 0..24 are wired to legacy and INTx lines).
pub const IOAPIC_PINS: u32 = 24;
/// First GSI handed out for MSI/MSI-X routes.
pub const MSI_GSI_START: u32 = 24;
/// Port of the ACPI PM1a event block (status/enable), described in the FADT.
pub const ACPI_PM1A_EVT_PORT: u16 = 0x600;
/// Port of the ACPI PM1a control block: writing SLP_EN with SLP_TYP 5 powers off.
pub const ACPI_PM1A_CNT_PORT: u16 = 0x604;
/// SCI interrupt line announced in the FADT.
pub const ACPI_SCI_IRQ: u16 = 9;
/// Guest-physical address where the ACPI tables are written (RSDP at the start, in the BIOS
/// area that Linux scans when no EFI system table gives it).
pub const ACPI_RSDP_ADDR: u64 = 0xe0000;
