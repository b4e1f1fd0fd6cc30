//! The only place that issues KVM ioctls: opening `/dev/kvm`, creating the VM with its
//! in-kernel irqchip and PIT, registering memory, irqfds, GSI routes and ioeventfds, and creating vCPUs.

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_pit_config, kvm_userspace_memory_region, CpuId, KvmIrqRouting,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{GuestMemory, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMem;

/// Errors from KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm (is KVM enabled and are you in the kvm group?): {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// An ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// Which operation.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, KvmError> {
    r.map_err(|source| KvmError::Ioctl { what, source })
}

/// Address of the three-page TSS region KVM needs on Intel hosts.
pub const TSS_ADDRESS: usize = 0xfffb_d000;

/// An open KVM VM.
pub struct KvmVm {
    /// The KVM system handle.
    pub kvm: Kvm,
    /// The VM handle.
    pub vm: VmFd,
    /// CPUID entries KVM supports on this host.
    pub supported_cpuid: CpuId,
}

impl KvmVm {
    /// Opens KVM and creates a VM with an in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
    pub fn create() -> Result<Self, KvmError> {
        let vm = Self::create_bare()?;
        vm.create_irqchip_and_pit()?;
        Ok(vm)
    }

    /// Like [`KvmVm::create`] with `mem` registered, before the irqchip and PIT exist: under
    /// nested KVM (PVM) the first memory slot of a VM that already has an in-kernel irqchip
    /// waits about 4 ms longer (measured: 3.9 ms for the whole set-up in this order, 7.9 ms
    /// the other way round).
    pub fn create_with_memory(mem: &GuestMem, dirty_log: bool) -> Result<Self, KvmError> {
        let vm = Self::create_bare()?;
        vm.register_memory(mem, dirty_log)?;
        vm.create_irqchip_and_pit()?;
        Ok(vm)
    }

    fn create_bare() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let vm = ioctl("KVM_CREATE_VM", kvm.create_vm())?;
        ioctl("KVM_SET_TSS_ADDR", vm.set_tss_address(TSS_ADDRESS))?;
        let supported_cpuid = ioctl(
            "KVM_GET_SUPPORTED_CPUID",
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        )?;
        Ok(KvmVm {
            kvm,
            vm,
            supported_cpuid,
        })
    }

    fn create_irqchip_and_pit(&self) -> Result<(), KvmError> {
        ioctl("KVM_CREATE_IRQCHIP", self.vm.create_irq_chip())?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        ioctl("KVM_CREATE_PIT2", self.vm.create_pit2(pit))
    }

    /// Registers every region of `mem` as a KVM memory slot, with dirty logging if asked.
    pub fn register_memory(&self, mem: &GuestMem, dirty_log: bool) -> Result<(), KvmError> {
        for slot in 0..mem.num_regions() {
            self.set_dirty_logging(mem, slot, dirty_log)?;
        }
        Ok(())
    }

    /// (Re)registers region `slot` of `mem` with dirty-page logging on or off: regions are
    /// switched one at a time, so a migration can track the large regions it copies in rounds.
    pub fn set_dirty_logging(
        &self,
        mem: &GuestMem,
        slot: usize,
        enabled: bool,
    ) -> Result<(), KvmError> {
        let dirty_log = enabled;
        if let Some((slot, region)) = mem.iter().enumerate().nth(slot) {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| KvmError::Ioctl {
                    what: "memory region lookup",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if dirty_log {
                    kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM (the VM
            // struct holds both and drops the VM fd first), and regions do not overlap.
            ioctl("KVM_SET_USER_MEMORY_REGION", unsafe {
                self.vm.set_user_memory_region(r)
            })?;
        }
        Ok(())
    }

    /// Fetches and clears KVM's dirty bitmap for region `slot` (one bit per 4 KiB page, as
    /// 64-bit words); the region must have dirty logging on.
    pub fn dirty_log(&self, mem: &GuestMem, slot: usize) -> Result<Vec<u64>, KvmError> {
        let len = mem
            .iter()
            .nth(slot)
            .map(|r| r.len() as usize)
            .ok_or(KvmError::Ioctl {
                what: "KVM_GET_DIRTY_LOG",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
        ioctl("KVM_GET_DIRTY_LOG", self.vm.get_dirty_log(slot as u32, len))
    }

    /// Routes `evt` to interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmError> {
        ioctl("KVM_IRQFD", self.vm.register_irqfd(evt, gsi))
    }

    /// Stops routing `evt` to `gsi`.
    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmError> {
        ioctl("KVM_IRQFD (deassign)", self.vm.unregister_irqfd(evt, gsi))
    }

    /// Replaces the whole GSI routing table with `entries` (KVM_SET_GSI_ROUTING).
    pub fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), KvmError> {
        let table = KvmIrqRouting::from_entries(entries).map_err(|_| KvmError::Ioctl {
            what: "KVM_SET_GSI_ROUTING (table size)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        ioctl("KVM_SET_GSI_ROUTING", self.vm.set_gsi_routing(&table))
    }

    /// Signals `evt` on any guest write to the MMIO address `addr`, without an exit.
    pub fn register_mmio_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), KvmError> {
        ioctl(
            "KVM_IOEVENTFD",
            self.vm
                .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch),
        )
    }

    /// Removes an ioeventfd registered with [`KvmVm::register_mmio_ioeventfd`].
    pub fn unregister_mmio_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), KvmError> {
        ioctl(
            "KVM_IOEVENTFD (deassign)",
            self.vm
                .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch),
        )
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<VcpuFd, KvmError> {
        ioctl("KVM_CREATE_VCPU", self.vm.create_vcpu(id))
    }

    /// A handle that makes vCPU `fd` leave `KVM_RUN` from any thread (see [`VcpuKick`]).
    pub fn vcpu_kick(&self, fd: &VcpuFd) -> Result<VcpuKick, KvmError> {
        VcpuKick::new(fd, self.vm.run_size())
    }
}

/// A second, independent mapping of one vCPU's shared `kvm_run` page, through which another
/// thread sets `immediate_exit`: a `KVM_RUN` that is about to start then returns `EINTR` at
/// once, and a signal delivered to the vCPU thread ends one that is already running. The
/// mapping is owned here, so it stays valid whatever happens to the vCPU's own handle.
pub struct VcpuKick {
    run: std::ptr::NonNull<kvm_bindings::kvm_run>,
    len: usize,
}

// SAFETY: the mapping is shared memory owned by this struct; the only access is a volatile
// byte store to `immediate_exit`, which KVM and the vCPU thread read as plain memory.
unsafe impl Send for VcpuKick {}
// SAFETY: as for `Send`: concurrent byte stores to the same field are benign.
unsafe impl Sync for VcpuKick {}

impl VcpuKick {
    fn new(fd: &VcpuFd, len: usize) -> Result<Self, KvmError> {
        use std::os::fd::AsRawFd;
        if len < std::mem::size_of::<kvm_bindings::kvm_run>() {
            return Err(KvmError::Ioctl {
                what: "kvm_run mapping size",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        // SAFETY: maps `len` bytes of the vCPU fd at offset 0, which is how KVM exposes the
        // `kvm_run` page; the result is checked, and unmapped only in `Drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(KvmError::Ioctl {
                what: "mmap of kvm_run",
                source: kvm_ioctls::Error::last(),
            });
        }
        let run = std::ptr::NonNull::new(p.cast()).ok_or(KvmError::Ioctl {
            what: "mmap of kvm_run",
            source: kvm_ioctls::Error::new(libc::ENOMEM),
        })?;
        Ok(VcpuKick { run, len })
    }

    /// Sets `immediate_exit`: the vCPU's next (or current, once signalled) `KVM_RUN` returns
    /// `EINTR`. The vCPU thread clears it with [`clear_immediate_exit`].
    pub fn set_immediate_exit(&self) {
        // SAFETY: `run` points at the live `kvm_run` mapping owned by `self`; the field is a
        // plain byte that KVM reads on entry.
        unsafe {
            std::ptr::addr_of_mut!((*self.run.as_ptr()).immediate_exit).write_volatile(1);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for VcpuKick {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing else references.
        unsafe {
            libc::munmap(self.run.as_ptr().cast(), self.len);
        }
    }
}

/// Clears `immediate_exit` on the vCPU's own mapping (its thread calls this after a kick,
/// before it looks at why it was kicked).
pub fn clear_immediate_exit(fd: &mut VcpuFd) {
    fd.set_kvm_immediate_exit(0);
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Request numbers of the KVM ioctls the seccomp filters allow after start-up (the filters
/// compare `ioctl`'s second argument with these).
pub mod ioctl_numbers {
    #![allow(non_snake_case, missing_docs)]
    use kvm_bindings::{kvm_ioeventfd, kvm_irq_routing, kvm_irqfd, kvm_regs, kvm_sregs};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

    const KVMIO: u32 = 0xAE;
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
    ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
}

pub use kvm_ioctls::VcpuExit;

/// vCPU register and state ioctls, kept here with the rest.
pub mod vcpu {
    use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs, CpuId, Msrs};
    use kvm_ioctls::VcpuFd;

    use super::{ioctl, KvmError};

    /// Sets CPUID.
    pub fn set_cpuid(fd: &VcpuFd, cpuid: &CpuId) -> Result<(), KvmError> {
        ioctl("KVM_SET_CPUID2", fd.set_cpuid2(cpuid))
    }
    /// Reads general registers.
    pub fn regs(fd: &VcpuFd) -> Result<kvm_regs, KvmError> {
        ioctl("KVM_GET_REGS", fd.get_regs())
    }
    /// Writes general registers.
    pub fn set_regs(fd: &VcpuFd, r: &kvm_regs) -> Result<(), KvmError> {
        ioctl("KVM_SET_REGS", fd.set_regs(r))
    }
    /// Reads special registers.
    pub fn sregs(fd: &VcpuFd) -> Result<kvm_sregs, KvmError> {
        ioctl("KVM_GET_SREGS", fd.get_sregs())
    }
    /// Writes special registers.
    pub fn set_sregs(fd: &VcpuFd, r: &kvm_sregs) -> Result<(), KvmError> {
        ioctl("KVM_SET_SREGS", fd.set_sregs(r))
    }
    /// Writes FPU state.
    pub fn set_fpu(fd: &VcpuFd, f: &kvm_fpu) -> Result<(), KvmError> {
        ioctl("KVM_SET_FPU", fd.set_fpu(f))
    }
    /// Writes MSRs; returns how many were written.
    pub fn set_msrs(fd: &VcpuFd, m: &Msrs) -> Result<usize, KvmError> {
        ioctl("KVM_SET_MSRS", fd.set_msrs(m))
    }
    /// Reads the local APIC.
    pub fn lapic(fd: &VcpuFd) -> Result<kvm_lapic_state, KvmError> {
        ioctl("KVM_GET_LAPIC", fd.get_lapic())
    }
    /// Writes the local APIC.
    pub fn set_lapic(fd: &VcpuFd, l: &kvm_lapic_state) -> Result<(), KvmError> {
        ioctl("KVM_SET_LAPIC", fd.set_lapic(l))
    }
}
