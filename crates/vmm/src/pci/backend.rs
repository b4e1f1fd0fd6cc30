//! What PCI devices need from the hypervisor: GSIs with irqfds and MSI routes, and ioeventfds.
//! [`KvmBackend`] implements it on KVM; tests use [`RecordingBackend`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{IOAPIC_PINS, MSI_GSI_START};
use crate::kvm::KvmVm;

/// Errors from the hypervisor side of interrupts and notifications.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// KVM refused.
    #[error(transparent)]
    Kvm(#[from] crate::kvm::KvmError),
    /// No GSI left.
    #[error("no GSI left for {0} MSI vectors")]
    NoGsi(u32),
}

/// An MSI message: where the device writes and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (LAPIC window on x86).
    pub addr: u64,
    /// Message data (vector and delivery mode).
    pub data: u32,
}

/// Interrupt routes and doorbells, as a device sees them.
pub trait VmBackend: Send + Sync {
    /// Reserves `count` consecutive GSIs for MSI vectors; returns the first.
    fn allocate_gsis(&self, count: u32) -> Result<u32, BackendError>;
    /// Makes a write to `evt` inject `gsi`.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), BackendError>;
    /// Routes `gsi` to `msg`, or removes its route with `None`.
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), BackendError>;
    /// Makes guest writes to MMIO `addr` signal `evt` without a VM exit.
    fn register_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), BackendError>;
    /// Undoes [`VmBackend::register_ioeventfd`].
    fn unregister_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), BackendError>;
}

/// The GSI routing table: KVM's default IOAPIC (GSIs 0..24) and PIC (0..16) routes, then the
/// MSI routes, sorted by GSI.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut out = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
        e.u.irqchip.pin = gsi;
        out.push(e);
        if gsi < 16 {
            let mut p = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            p.u.irqchip.irqchip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            p.u.irqchip.pin = gsi % 8;
            out.push(p);
        }
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.addr as u32;
        e.u.msi.address_hi = (m.addr >> 32) as u32;
        e.u.msi.data = m.data;
        out.push(e);
    }
    out
}

/// Most GSIs KVM accepts in a routing table on x86.
pub const MAX_GSI: u32 = 1024;

/// The KVM implementation.
pub struct KvmBackend {
    vm: Arc<KvmVm>,
    next_gsi: AtomicU32,
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl KvmBackend {
    /// A backend on `vm`, handing out GSIs from [`MSI_GSI_START`].
    pub fn new(vm: Arc<KvmVm>) -> Self {
        KvmBackend {
            vm,
            next_gsi: AtomicU32::new(MSI_GSI_START),
            msi: Mutex::new(BTreeMap::new()),
        }
    }
}

impl VmBackend for KvmBackend {
    fn allocate_gsis(&self, count: u32) -> Result<u32, BackendError> {
        let first = self.next_gsi.fetch_add(count, Ordering::SeqCst);
        if first.checked_add(count).is_none_or(|end| end > MAX_GSI) {
            return Err(BackendError::NoGsi(count));
        }
        Ok(first)
    }

    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), BackendError> {
        Ok(self.vm.register_irqfd(evt, gsi)?)
    }

    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), BackendError> {
        let mut msi = self.msi.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match msg {
            Some(m) => msi.insert(gsi, m) != Some(m),
            None => msi.remove(&gsi).is_some(),
        };
        if changed {
            self.vm.set_gsi_routing(&routing_table(&msi))?;
        }
        Ok(())
    }

    fn register_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), BackendError> {
        Ok(self.vm.register_mmio_ioeventfd(evt, addr)?)
    }

    fn unregister_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), BackendError> {
        Ok(self.vm.unregister_mmio_ioeventfd(evt, addr)?)
    }
}

/// A backend for tests: records routes and doorbells, and keeps the irqfds' GSIs.
#[derive(Default)]
pub struct RecordingBackend {
    next_gsi: AtomicU32,
    /// Current MSI routes.
    pub routes: Mutex<BTreeMap<u32, MsiMessage>>,
    /// Registered ioeventfd addresses.
    pub ioeventfds: Mutex<Vec<u64>>,
    /// GSIs that got an irqfd.
    pub irqfds: Mutex<Vec<u32>>,
}

impl VmBackend for RecordingBackend {
    fn allocate_gsis(&self, count: u32) -> Result<u32, BackendError> {
        Ok(MSI_GSI_START + self.next_gsi.fetch_add(count, Ordering::SeqCst))
    }
    fn register_irqfd(&self, _evt: &EventFd, gsi: u32) -> Result<(), BackendError> {
        self.irqfds.lock().unwrap().push(gsi);
        Ok(())
    }
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), BackendError> {
        let mut r = self.routes.lock().unwrap();
        match msg {
            Some(m) => r.insert(gsi, m),
            None => r.remove(&gsi),
        };
        Ok(())
    }
    fn register_ioeventfd(&self, _evt: &EventFd, addr: u64) -> Result<(), BackendError> {
        self.ioeventfds.lock().unwrap().push(addr);
        Ok(())
    }
    fn unregister_ioeventfd(&self, _evt: &EventFd, addr: u64) -> Result<(), BackendError> {
        self.ioeventfds.lock().unwrap().retain(|&a| a != addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_the_irqchip_pins_and_adds_msi_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(
            MSI_GSI_START,
            MsiMessage {
                addr: 0xfee0_0000,
                data: 0x41,
            },
        );
        let t = routing_table(&msi);
        // 24 IOAPIC pins, 16 PIC pins, 1 MSI.
        assert_eq!(t.len(), 24 + 16 + 1);
        let ioapic: Vec<_> = t
            .iter()
            .filter(|e| {
                // SAFETY: irqchip is the active union member for IRQCHIP entries.
                e.type_ == KVM_IRQ_ROUTING_IRQCHIP
                    && unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC
            })
            .collect();
        assert_eq!(ioapic.len(), 24);
        for e in &ioapic {
            // SAFETY: as above.
            assert_eq!(unsafe { e.u.irqchip.pin }, e.gsi);
        }
        let last = t.last().unwrap();
        assert_eq!(last.type_, KVM_IRQ_ROUTING_MSI);
        assert_eq!(last.gsi, MSI_GSI_START);
        // SAFETY: msi is the active union member for MSI entries.
        let m = unsafe { last.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_0000, 0, 0x41));
    }
}
