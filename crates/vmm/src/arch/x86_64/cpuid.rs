//! CPUID as the guest sees it: what KVM supports, with each vCPU's APIC ID and topology, the
//! hypervisor bit, and KVM's paravirtual leaves.

use kvm_bindings::CpuId;

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn for_vcpu(cpuid: &CpuId, id: u8, count: u8, threads_per_core: u8) -> CpuId {
    let mut c = cpuid.clone();
    let cores = (count / threads_per_core.max(1)).max(1);
    for e in c.as_mut_slice() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | ((id as u32) << 24) | ((count as u32) << 16);
                e.ecx |= 1 << 31; // hypervisor present
                e.edx |= 1 << 28; // HTT: the package field above is valid
            }
            4 => {
                // EAX[31:26] cores per package - 1.
                e.eax = (e.eax & 0x03ff_ffff) | (((cores as u32).saturating_sub(1) & 0x3f) << 26);
            }
            0xb => {
                // Extended topology: level 0 SMT, level 1 core; EDX = x2APIC ID.
                e.edx = id as u32;
                match e.index {
                    0 => {
                        e.eax = bits_for(threads_per_core as u32);
                        e.ebx = threads_per_core as u32;
                        e.ecx = 0x100;
                    }
                    1 => {
                        e.eax = bits_for(count as u32);
                        e.ebx = count as u32;
                        e.ecx = 0x201;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    c
}

fn bits_for(n: u32) -> u32 {
    32 - n.max(1).saturating_sub(1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_and_hypervisor_bit_are_set() {
        let c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xdead_beef,
            ..Default::default()
        }])
        .unwrap();
        let out = for_vcpu(&c, 3, 4, 1);
        let e = out.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xbeef);
        assert_ne!(e.ecx & (1 << 31), 0);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
