//! Register state for the two entry paths: 64-bit long mode (Linux boot protocol, test guests)
//! and 32-bit protected mode with paging off (PVH).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::{GDT_ADDR, PML4_ADDR};
use crate::kvm::{vcpu, KvmError};
use crate::memory::GuestMem;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Writing boot tables to guest memory failed.
    #[error("cannot write {0} into guest memory")]
    Memory(&'static str),
}

/// GDT entries with the selectors the 64-bit boot protocol names: `__BOOT_CS` = 0x10 and
/// `__BOOT_DS` = 0x18, then a TSS placeholder at 0x20.
pub const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, selector 0x10
    gdt_entry(0xc093, 0, 0xfffff), // data, selector 0x18
    gdt_entry(0x808b, 0, 0xfffff), // TSS, selector 0x20
];

/// Boot code selector.
pub const BOOT_CS: u16 = 0x10;
/// Boot data selector.
pub const BOOT_DS: u16 = 0x18;

/// Encodes a GDT descriptor from flags (access byte in the low 8 bits, flags in bits 12-15).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// The KVM segment a GDT entry describes, for `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let flags = (entry >> 40) & 0xf0ff;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: {
            let l = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
            if (flags >> 15) & 1 == 1 {
                (l << 12) | 0xfff
            } else {
                l
            }
        },
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: ((flags >> 15) & 1) as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: if (flags >> 7) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the boot GDT and a 1 GiB identity map (2 MiB pages) into guest memory.
pub fn write_boot_tables(mem: &GuestMem) -> Result<(), RegsError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(|_| RegsError::Memory("GDT"))?;
    }
    let pdpt = PML4_ADDR + 0x1000;
    let pd = PML4_ADDR + 0x2000;
    mem.write_obj(pdpt | 0x3, GuestAddress(PML4_ADDR))
        .map_err(|_| RegsError::Memory("PML4"))?;
    mem.write_obj(pd | 0x3, GuestAddress(pdpt))
        .map_err(|_| RegsError::Memory("PDPT"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(pd + i * 8))
            .map_err(|_| RegsError::Memory("PD"))?;
    }
    Ok(())
}

/// Long-mode special registers: flat segments from the boot GDT, paging on the identity map.
pub fn set_long_mode_sregs(fd: &VcpuFd) -> Result<(), RegsError> {
    let mut s = vcpu::sregs(fd)?;
    let code = segment_from_gdt(GDT[2], BOOT_CS);
    let data = segment_from_gdt(GDT[3], BOOT_DS);
    let tss = segment_from_gdt(GDT[4], 0x20);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    s.cr3 = PML4_ADDR;
    s.cr4 |= CR4_PAE;
    s.cr0 |= CR0_PE | CR0_PG | CR0_ET;
    s.efer |= EFER_LME | EFER_LMA;
    vcpu::set_sregs(fd, &s)?;
    Ok(())
}

/// PVH special registers: 32-bit flat protected mode, paging off.
pub fn set_pvh_sregs(fd: &VcpuFd) -> Result<(), RegsError> {
    let mut s = vcpu::sregs(fd)?;
    let code = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 0x08);
    let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 0x10);
    let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), 0x18);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    s.cr0 = CR0_PE | CR0_ET;
    s.cr4 = 0;
    s.efer = 0;
    vcpu::set_sregs(fd, &s)?;
    Ok(())
}

/// General registers for an entry at `rip`: `rsi` carries boot_params (64-bit protocol),
/// `rbx` the PVH start info.
pub fn set_entry_regs(
    fd: &VcpuFd,
    rip: u64,
    rsp: u64,
    rsi: u64,
    rbx: u64,
) -> Result<(), RegsError> {
    let r = kvm_regs {
        rflags: 0x2,
        rip,
        rsp,
        rbp: rsp,
        rsi,
        rbx,
        ..Default::default()
    };
    vcpu::set_regs(fd, &r)?;
    Ok(())
}

/// FPU in its reset state with SSE exceptions masked.
pub fn set_fpu(fd: &VcpuFd) -> Result<(), RegsError> {
    let f = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu::set_fpu(fd, &f)?;
    Ok(())
}

/// Boot MSRs: SYSENTER/SYSCALL cleared, TSC 0, fast strings on, MTRRs write-back by default.
pub fn set_boot_msrs(fd: &VcpuFd) -> Result<(), RegsError> {
    let entries = [
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0082, 0),       // LSTAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0x10, 0),              // TSC
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    let msrs: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&msrs).map_err(|_| RegsError::Memory("MSR list"))?;
    vcpu::set_msrs(fd, &msrs)?;
    Ok(())
}

/// Local APIC: LINT0 as ExtINT (the PIC), LINT1 as NMI, as a PC BIOS leaves them.
pub fn set_lint(fd: &VcpuFd) -> Result<(), RegsError> {
    let mut l = vcpu::lapic(fd)?;
    let set = |regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32| {
        let mut v = u32::from_le_bytes([
            regs[off] as u8,
            regs[off + 1] as u8,
            regs[off + 2] as u8,
            regs[off + 3] as u8,
        ]);
        v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *b as std::os::raw::c_char;
        }
    };
    set(&mut l.regs, 0x350, 0x7); // LVT LINT0: ExtINT
    set(&mut l.regs, 0x360, 0x4); // LVT LINT1: NMI
    vcpu::set_lapic(fd, &l)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let cs = segment_from_gdt(GDT[2], BOOT_CS);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.s, cs.type_, cs.g),
            (1, 0, 1, 1, 0xb, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(GDT[3], BOOT_DS);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        assert_eq!(GDT[2], 0x00af_9b00_0000_ffff);
    }
}
