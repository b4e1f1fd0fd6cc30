//! The host bridge at 00:00.0: identification only, no BARs.

use super::config::{ConfigSpace, PciIds};
use super::PciDevice;

/// Vendor ID of the host bridge (Intel).
pub const VENDOR: u16 = 0x8086;
/// Device ID of the host bridge.
pub const DEVICE: u16 = 0x0d57;
/// Class code: bridge, host bridge.
pub const CLASS: u32 = 0x06_00_00;

/// The host bridge.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// A host bridge.
    pub fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(PciIds {
                vendor: VENDOR,
                device: DEVICE,
                class: CLASS,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}
