//! The Intel MultiProcessor table (MP spec 1.4): a floating pointer at [`MPTABLE_START`] (in
//! the last KiB of base memory, which Linux scans) and the configuration table right after it,
//! listing the processors, the ISA bus, the IOAPIC, the ISA interrupt routing and the local
//! interrupts. Linux uses it when ACPI is off; with ACPI the MADT says the same.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{ACPI_SCI_IRQ, IOAPIC_START, LAPIC_START, MPTABLE_START};

/// Floating pointer signature.
pub const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
/// Configuration table signature.
pub const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP spec revision 1.4.
pub const MP_SPEC_REV: u8 = 4;
/// Configuration table header length.
pub const MPC_HEADER_LEN: usize = 44;
/// Entry type: processor (20 bytes).
pub const MP_PROCESSOR: u8 = 0;
/// Entry type: bus (8 bytes).
pub const MP_BUS: u8 = 1;
/// Entry type: IOAPIC (8 bytes).
pub const MP_IOAPIC: u8 = 2;
/// Entry type: I/O interrupt assignment (8 bytes).
pub const MP_INTSRC: u8 = 3;
/// Entry type: local interrupt assignment (8 bytes).
pub const MP_LINTSRC: u8 = 4;
/// Interrupt type: vectored interrupt.
pub const MP_INT: u8 = 0;
/// Interrupt type: NMI.
pub const MP_NMI: u8 = 1;
/// Interrupt type: external (8259) interrupt.
pub const MP_EXTINT: u8 = 3;
/// Processor flag: enabled.
pub const CPU_ENABLED: u8 = 1;
/// Processor flag: bootstrap processor.
pub const CPU_BSP: u8 = 2;
/// Local APIC version announced (integrated APIC).
pub const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version announced (that of KVM's IOAPIC).
pub const IOAPIC_VERSION: u8 = 0x11;
/// The ISA bus ID.
pub const ISA_BUS_ID: u8 = 0;
/// Interrupt flags: active high, level triggered.
pub const ACTIVE_HIGH_LEVEL: u16 = 0b1101;
/// CPU signature in processor entries: family 6.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX features in processor entries: FPU, APIC.
const CPU_FEATURES: u32 = 1 | (1 << 9);

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// The vCPU count cannot be described.
    #[error("MP table: {0} vCPUs is outside 1..=254")]
    BadCpuCount(u8),
    /// Guest memory could not be written.
    #[error("MP table: cannot write it into guest memory")]
    Memory,
}

/// The IOAPIC's ID: the first APIC ID after the processors' (IDs are one namespace in MP).
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn intsrc(kind: u8, flags: u16, irq: u8, ioapic: u8, pin: u8) -> [u8; 8] {
    let f = flags.to_le_bytes();
    [MP_INTSRC, kind, f[0], f[1], ISA_BUS_ID, irq, ioapic, pin]
}

/// The configuration table (header and entries) for `cpus` vCPUs, with its checksum.
pub fn config_table(cpus: u8) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    let ioapic = ioapic_id(cpus);
    entries.extend_from_slice(&[MP_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 2;
    // ISA IRQs: the 8259 cascade on pin 0, the timer (IRQ 0) on pin 2, IRQ n on pin n
    // otherwise; the SCI is level triggered, active high.
    entries.extend_from_slice(&intsrc(MP_EXTINT, 0, 0, ioapic, 0));
    count += 1;
    for irq in (0u8..16).filter(|&i| i != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        let flags = if irq as u16 == ACPI_SCI_IRQ {
            ACTIVE_HIGH_LEVEL
        } else {
            0
        };
        entries.extend_from_slice(&intsrc(MP_INT, flags, irq, ioapic, pin));
        count += 1;
    }
    // Local interrupts of every processor: LINT0 from the 8259, LINT1 NMI.
    for (kind, lint) in [(MP_EXTINT, 0u8), (MP_NMI, 1)] {
        entries.extend_from_slice(&[MP_LINTSRC, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }

    let len = (MPC_HEADER_LEN + entries.len()) as u16;
    let mut t = Vec::with_capacity(len as usize);
    t.extend_from_slice(MPC_SIGNATURE);
    t.extend_from_slice(&len.to_le_bytes());
    t.push(MP_SPEC_REV);
    t.push(0); // checksum
    t.extend_from_slice(b"PADDOCK ");
    t.extend_from_slice(b"PADDOCK-VMM ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    t.extend_from_slice(&[0; 4]); // extended table length and checksum, reserved
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// The 16-byte floating pointer for a configuration table at `table`.
pub fn floating_pointer(table: u32) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[..4].copy_from_slice(MPF_SIGNATURE);
    f[4..8].copy_from_slice(&table.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = MP_SPEC_REV;
    // Feature bytes all 0: a configuration table is present; virtual wire mode (no IMCR).
    f[10] = checksum(&f);
    f
}

/// Writes the floating pointer at [`MPTABLE_START`] and the configuration table after it;
/// returns the end of what was written. Past 40 vCPUs the table runs beyond the last KiB of
/// base memory into the legacy video hole, which Linux keeps reserved.
pub fn write<M: GuestMemory>(mem: &M, cpus: u8) -> Result<u64, MpTableError> {
    if cpus == 0 || cpus == 255 {
        return Err(MpTableError::BadCpuCount(cpus));
    }
    let table_at = MPTABLE_START + 16;
    let table = config_table(cpus);
    mem.write_slice(
        &floating_pointer(table_at as u32),
        GuestAddress(MPTABLE_START),
    )
    .map_err(|_| MpTableError::Memory)?;
    mem.write_slice(&table, GuestAddress(table_at))
        .map_err(|_| MpTableError::Memory)?;
    Ok(table_at + table.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_entry_count_hold_for_one_and_many_cpus() {
        for cpus in [1u8, 2, 40, 254] {
            let t = config_table(cpus);
            assert_eq!(sum(&t), 0);
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
            let entries = u16::from_le_bytes([t[34], t[35]]) as usize;
            // processors + bus + IOAPIC + 16 ISA sources + 2 local.
            assert_eq!(entries, cpus as usize + 2 + 16 + 2);
            assert_eq!(t.len(), MPC_HEADER_LEN + 20 * cpus as usize + 8 * 20);
        }
        let f = floating_pointer(0x9fc10);
        assert_eq!(sum(&f), 0);
        assert_eq!(&f[..4], b"_MP_");
    }

    #[test]
    fn forty_cpus_fit_in_the_last_kib_of_base_memory() {
        assert!(16 + config_table(40).len() <= 1024);
    }
}
