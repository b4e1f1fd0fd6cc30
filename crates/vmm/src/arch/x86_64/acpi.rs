//! ACPI tables for the guest (ACPI 6.5): RSDP, XSDT, FADT (with FACS), MADT, MCFG and a DSDT
//! holding the PCI host bridge, the processors and the `\_S5` sleep package.
//!
//! They are written from [`ACPI_RSDP_ADDR`] up, below 1 MiB, where Linux scans for the RSDP
//! when no EFI or PVH pointer gives it. The PM1a event and control blocks and the SCI line
//! named in the FADT are the fixed ports of the layout; the power button is a fixed feature
//! (PWRBTN_STS/EN in PM1a), and `\_S5` holds SLP_TYP 5.

pub mod aml;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::mptable::ioapic_id;
use super::{
    ACPI_PM1A_CNT_PORT, ACPI_PM1A_EVT_PORT, ACPI_RSDP_ADDR, ACPI_SCI_IRQ, HIMEM_START,
    IOAPIC_START, LAPIC_START, PCI_CONFIG_PORT, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_SIZE,
    PCI_MMIO_START,
};
use aml::res;

/// OEM ID in every table header.
pub const OEM_ID: &[u8; 6] = b"PADDCK";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: &[u8; 8] = b"PADDOCKV";
/// Creator ID in every table header.
pub const CREATOR_ID: &[u8; 4] = b"PDCK";
/// SLP_TYP value of the S5 (soft off) state, in `\_S5` and expected in PM1a_CNT.
pub const SLP_TYP_S5: u8 = 5;
/// Length of the PM1a event block (status and enable registers, 16 bits each).
pub const PM1_EVT_LEN: u8 = 4;
/// Length of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// Port of the reset register named in the FADT (the i8042 command port).
pub const RESET_PORT: u16 = 0x64;
/// Value written to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0xfe;
/// FADT length (revision 6).
pub const FADT_LEN: usize = 276;
/// FADT flags: WBINVD, PROC_C1, SLP_BUTTON (no sleep button), RESET_REG_SUP. PWR_BUTTON is
/// clear: the power button is a fixed feature.
pub const FADT_FLAGS: u32 = 1 | (1 << 2) | (1 << 5) | (1 << 10);
/// IA-PC boot architecture flag: an 8042 is present.
pub const IAPC_8042: u16 = 1 << 1;
/// IA-PC boot architecture flag: no VGA.
pub const IAPC_NO_VGA: u16 = 1 << 2;
/// IA-PC boot architecture flag: do not enable PCIe ASPM.
pub const IAPC_NO_ASPM: u16 = 1 << 4;
/// IA-PC boot architecture flag: no CMOS RTC.
pub const IAPC_NO_CMOS_RTC: u16 = 1 << 5;
/// MADT interrupt source override flags: active high, level triggered (the SCI).
pub const MPS_ACTIVE_HIGH_LEVEL: u16 = 0b1101;

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPU count (1..=254); APIC IDs and processor UIDs are 0..cpus.
    pub cpus: u8,
    /// ECAM window (start, size) of PCI segment 0, bus 0 up.
    pub pci_ecam: (u64, u64),
    /// 32-bit PCI MMIO window (start, size).
    pub pci_mmio: (u64, u64),
    /// 64-bit PCI MMIO window (start, size), if any.
    pub pci_mmio64: Option<(u64, u64)>,
    /// A CMOS RTC is at ports 0x70/0x71 (else the FADT says there is none).
    pub cmos_rtc: bool,
}

impl AcpiConfig {
    /// The fixed layout of `arch::x86_64` for `cpus` vCPUs.
    pub fn new(cpus: u8) -> Self {
        AcpiConfig {
            cpus,
            pci_ecam: (PCI_ECAM_START, PCI_ECAM_SIZE),
            pci_mmio: (PCI_MMIO_START, PCI_MMIO_SIZE),
            pci_mmio64: None,
            cmos_rtc: true,
        }
    }
}

/// Where each table was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiTables {
    /// RSDP (the root the guest is given or finds).
    pub rsdp: u64,
    /// XSDT.
    pub xsdt: u64,
    /// FADT.
    pub fadt: u64,
    /// FACS.
    pub facs: u64,
    /// MADT.
    pub madt: u64,
    /// MCFG.
    pub mcfg: u64,
    /// DSDT.
    pub dsdt: u64,
    /// First byte after the last table.
    pub end: u64,
}

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count cannot be described.
    #[error("ACPI tables: {0} vCPUs is outside 1..=254")]
    BadCpuCount(u8),
    /// A window is empty, misaligned or overflows.
    #[error("ACPI tables: bad {0} window")]
    BadWindow(&'static str),
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables: {0} bytes do not fit below 1 MiB")]
    TooBig(u64),
    /// Guest memory could not be written.
    #[error("ACPI tables: cannot write the {0} into guest memory")]
    Memory(&'static str),
}

/// The byte that makes `bytes` sum to zero (mod 256).
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A system description table: 36-byte header (length and checksum set by [`Sdt::finish`]),
/// then the body.
struct Sdt(Vec<u8>);

impl Sdt {
    fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut h = Vec::with_capacity(256);
        h.extend_from_slice(signature);
        h.extend_from_slice(&[0; 4]); // length
        h.push(revision);
        h.push(0); // checksum
        h.extend_from_slice(OEM_ID);
        h.extend_from_slice(OEM_TABLE_ID);
        h.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        h.extend_from_slice(CREATOR_ID);
        h.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Sdt(h)
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// A Generic Address Structure in system I/O space.
fn gas_io(port: u16, bit_width: u8, access_size: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bit_width;
    g[3] = access_size;
    g[4..12].copy_from_slice(&(port as u64).to_le_bytes());
    g
}

/// RSDP revision 2 pointing at `xsdt`.
pub fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0; 4]); // extended checksum, reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// XSDT listing `tables`.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(b"XSDT", 1);
    for a in tables {
        t.put(&a.to_le_bytes());
    }
    t.finish()
}

/// FADT revision 6.5 with the PM1a blocks, SCI, reset register, FACS and DSDT.
pub fn fadt(cfg: &AcpiConfig, facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - 36];
    let mut at =
        |off: usize, bytes: &[u8]| b[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes);
    // FIRMWARE_CTRL and DSDT (32-bit) stay 0: X_FIRMWARE_CTRL and X_DSDT are used.
    at(46, &ACPI_SCI_IRQ.to_le_bytes());
    // SMI_CMD 0: no SMM, the platform is always in ACPI mode.
    at(56, &(ACPI_PM1A_EVT_PORT as u32).to_le_bytes());
    at(64, &(ACPI_PM1A_CNT_PORT as u32).to_le_bytes());
    at(88, &[PM1_EVT_LEN, PM1_CNT_LEN]);
    at(96, &101u16.to_le_bytes()); // P_LVL2_LAT > 100: no C2
    at(98, &1001u16.to_le_bytes()); // P_LVL3_LAT > 1000: no C3
    let mut iapc = IAPC_8042 | IAPC_NO_VGA | IAPC_NO_ASPM;
    if !cfg.cmos_rtc {
        iapc |= IAPC_NO_CMOS_RTC;
    }
    at(109, &iapc.to_le_bytes());
    at(112, &FADT_FLAGS.to_le_bytes());
    at(116, &gas_io(RESET_PORT, 8, 1));
    at(128, &[RESET_VALUE]);
    at(131, &[5]); // FADT minor version: 6.5
    at(132, &facs.to_le_bytes());
    at(140, &dsdt.to_le_bytes());
    at(148, &gas_io(ACPI_PM1A_EVT_PORT, PM1_EVT_LEN * 8, 2));
    at(172, &gas_io(ACPI_PM1A_CNT_PORT, PM1_CNT_LEN * 8, 2));
    let mut t = Sdt::new(b"FACP", 6);
    t.put(&b);
    t.finish()
}

/// FACS (64 bytes, no checksum): no waking vector, no global lock.
pub fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// MADT: one enabled local APIC per vCPU, the IOAPIC (GSI base 0), overrides IRQ 0 → GSI 2
/// and the SCI (active high, level), and LINT1 as NMI on every processor.
pub fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", 5);
    t.put(&(LAPIC_START as u32).to_le_bytes());
    t.put(&1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s present
    for id in 0..cfg.cpus {
        t.put(&[0, 8, id, id]).put(&1u32.to_le_bytes());
    }
    t.put(&[1, 12, ioapic_id(cfg.cpus), 0])
        .put(&(IOAPIC_START as u32).to_le_bytes())
        .put(&0u32.to_le_bytes());
    t.put(&[2, 10, 0, 0])
        .put(&2u32.to_le_bytes())
        .put(&0u16.to_le_bytes());
    let sci = ACPI_SCI_IRQ as u8;
    t.put(&[2, 10, 0, sci])
        .put(&(sci as u32).to_le_bytes())
        .put(&MPS_ACTIVE_HIGH_LEVEL.to_le_bytes());
    t.put(&[4, 6, 0xff, 0, 0, 1]); // all processors, flags 0, LINT1
    t.finish()
}

/// MCFG with one allocation: segment 0, buses covering the ECAM window.
pub fn mcfg(cfg: &AcpiConfig) -> Vec<u8> {
    let (base, size) = cfg.pci_ecam;
    let end_bus = ((size >> 20).clamp(1, 256) - 1) as u8;
    let mut t = Sdt::new(b"MCFG", 1);
    t.put(&[0; 8]);
    t.put(&base.to_le_bytes())
        .put(&0u16.to_le_bytes())
        .put(&[0, end_bus])
        .put(&[0; 4]);
    t.finish()
}

/// DSDT: `\_SB.PCI0` (PCIe host bridge with its bus, I/O and MMIO windows), one processor
/// device per vCPU, and `\_S5`.
pub fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let end_bus = ((cfg.pci_ecam.1 >> 20).clamp(1, 256) - 1) as u16;
    let (mmio, mmio_len) = cfg.pci_mmio;
    let mut crs = vec![
        res::word(res::Space::BusNumber, 0, 0, end_bus),
        res::io(PCI_CONFIG_PORT as u16, PCI_CONFIG_PORT as u16, 1, 8),
        res::word(
            res::Space::Io,
            res::IO_ENTIRE_RANGE,
            0,
            PCI_CONFIG_PORT as u16 - 1,
        ),
        res::word(res::Space::Io, res::IO_ENTIRE_RANGE, 0x0d00, 0xffff),
        res::dword(
            res::Space::Memory,
            res::MEM_RW_NONCACHEABLE,
            mmio as u32,
            (mmio + mmio_len - 1) as u32,
        ),
    ];
    if let Some((start, len)) = cfg.pci_mmio64 {
        crs.push(res::qword(
            res::Space::Memory,
            res::MEM_RW_NONCACHEABLE,
            start,
            start + len - 1,
        ));
    }
    let pci0 = aml::device(
        "PCI0",
        &[
            aml::name("_HID", &aml::eisa_id("PNP0A08")),
            aml::name("_CID", &aml::eisa_id("PNP0A03")),
            aml::name("_SEG", &aml::integer(0)),
            aml::name("_BBN", &aml::integer(0)),
            aml::name("_UID", &aml::integer(0)),
            aml::name("_CRS", &res::template(&crs)),
        ],
    );
    let mut sb = vec![pci0];
    for id in 0..cfg.cpus {
        sb.push(aml::device(
            &format!("C{id:03X}"),
            &[
                aml::name("_HID", &aml::string("ACPI0007")),
                aml::name("_UID", &aml::integer(id as u64)),
            ],
        ));
    }
    let s5 = aml::name(
        "\\_S5",
        &aml::package(&[
            aml::integer(SLP_TYP_S5 as u64),
            aml::integer(SLP_TYP_S5 as u64),
            aml::integer(0),
            aml::integer(0),
        ]),
    );
    let mut t = Sdt::new(b"DSDT", 2);
    t.put(&aml::scope("\\_SB", &sb)).put(&s5);
    t.finish()
}

fn check(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.cpus == 0 || cfg.cpus == 255 {
        return Err(AcpiError::BadCpuCount(cfg.cpus));
    }
    let (base, size) = cfg.pci_ecam;
    if !(1 << 20..=256 << 20).contains(&size) || size % (1 << 20) != 0 || base % (1 << 20) != 0 {
        return Err(AcpiError::BadWindow("ECAM"));
    }
    let (mmio, len) = cfg.pci_mmio;
    if len == 0 || mmio.checked_add(len).is_none_or(|e| e > 1 << 32) {
        return Err(AcpiError::BadWindow("32-bit PCI MMIO"));
    }
    if let Some((start, len)) = cfg.pci_mmio64 {
        if len == 0 || start.checked_add(len).is_none() {
            return Err(AcpiError::BadWindow("64-bit PCI MMIO"));
        }
    }
    Ok(())
}

/// Builds every table and writes them from [`ACPI_RSDP_ADDR`] up; returns where each went.
pub fn write_tables<M: GuestMemory>(mem: &M, cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    check(cfg)?;
    let align = |a: u64, to: u64| a.div_ceil(to) * to;
    let rsdp_at = ACPI_RSDP_ADDR;
    let xsdt_at = align(rsdp_at + 36, 16);
    let xsdt_len = 36 + 3 * 8;
    let fadt_at = align(xsdt_at + xsdt_len, 16);
    let facs_at = align(fadt_at + FADT_LEN as u64, 64);
    let madt_bytes = madt(cfg);
    let madt_at = align(facs_at + 64, 16);
    let mcfg_bytes = mcfg(cfg);
    let mcfg_at = align(madt_at + madt_bytes.len() as u64, 16);
    let dsdt_bytes = dsdt(cfg);
    let dsdt_at = align(mcfg_at + mcfg_bytes.len() as u64, 16);
    let end = dsdt_at + dsdt_bytes.len() as u64;
    if end > HIMEM_START {
        return Err(AcpiError::TooBig(end - rsdp_at));
    }
    let tables = [
        ("RSDP", rsdp_at, rsdp(xsdt_at)),
        ("XSDT", xsdt_at, xsdt(&[fadt_at, madt_at, mcfg_at])),
        ("FADT", fadt_at, fadt(cfg, facs_at, dsdt_at)),
        ("FACS", facs_at, facs()),
        ("MADT", madt_at, madt_bytes),
        ("MCFG", mcfg_at, mcfg_bytes),
        ("DSDT", dsdt_at, dsdt_bytes),
    ];
    // Clear the whole area first so no stale bytes sit between tables.
    mem.write_slice(&vec![0u8; (end - rsdp_at) as usize], GuestAddress(rsdp_at))
        .map_err(|_| AcpiError::Memory("ACPI area"))?;
    for (what, at, bytes) in tables {
        mem.write_slice(&bytes, GuestAddress(at))
            .map_err(|_| AcpiError::Memory(what))?;
    }
    Ok(AcpiTables {
        rsdp: rsdp_at,
        xsdt: xsdt_at,
        fadt: fadt_at,
        facs: facs_at,
        madt: madt_at,
        mcfg: mcfg_at,
        dsdt: dsdt_at,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn every_table_sums_to_zero_and_states_its_length() {
        let cfg = AcpiConfig::new(4);
        for t in [
            xsdt(&[1, 2, 3]),
            fadt(&cfg, 0x1000, 0x2000),
            madt(&cfg),
            mcfg(&cfg),
            dsdt(&cfg),
        ] {
            assert_eq!(sum(&t), 0, "{:?}", &t[..4]);
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
        }
        let r = rsdp(0xe0040);
        assert_eq!((sum(&r[..20]), sum(&r), r.len()), (0, 0, 36));
        assert_eq!(fadt(&cfg, 0, 0).len(), FADT_LEN);
    }

    #[test]
    fn madt_has_one_local_apic_per_cpu_and_both_overrides() {
        let m = madt(&AcpiConfig::new(3));
        // 44 header+fields, 3 × 8 LAPIC, 12 IOAPIC, 2 × 10 overrides, 6 NMI.
        assert_eq!(m.len(), 44 + 24 + 12 + 20 + 6);
        assert_eq!(&m[44..52], &[0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&m[60..62], &[0, 8]);
        assert_eq!(m[62], 2);
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = AcpiConfig::new(0);
        assert!(matches!(check(&c), Err(AcpiError::BadCpuCount(0))));
        c.cpus = 2;
        c.pci_ecam = (PCI_ECAM_START, 0x1234);
        assert!(matches!(check(&c), Err(AcpiError::BadWindow("ECAM"))));
        c = AcpiConfig::new(2);
        c.pci_mmio = (0xffff_f000, 0x2000);
        assert!(check(&c).is_err());
    }
}
