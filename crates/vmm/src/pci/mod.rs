//! PCI: a host bridge on bus 0 with configuration space through ports 0xcf8/0xcfc (type 1)
//! and ECAM, BARs allocated in the 32-bit PCI window and moved by the guest, capabilities, and
//! MSI-X delivered through irqfds and KVM MSI routes.
//!
//! The host bridge at 00:00.0 uses Intel's vendor ID with device ID 0x0d57, as other rust-vmm
//! VMMs do, class 0x060000 (host bridge). Devices take slots 1, 2, ... in the order they are
//! added; only function 0 of each slot exists.

pub mod backend;
pub mod config;
pub mod host_bridge;
pub mod msix;
pub mod root;

pub use backend::{KvmBackend, VmBackend};
pub use config::{ConfigSpace, PciIds};
pub use root::{PciConfigIo, PciConfigMmio, PciMmioWindow, PciRoot};

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    /// Its configuration space.
    fn config(&self) -> &ConfigSpace;
    /// Guest read of configuration space at `offset` (within 4 KiB).
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// Guest write of configuration space at `offset`.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// Guest read at `offset` inside BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Guest write at `offset` inside BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// BAR `bar` now decodes at `new` (`None`: not decoded), instead of `old`.
    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        let _ = (bar, old, new);
    }
}
