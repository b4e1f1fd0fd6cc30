//! virtio-net (device type 1) on a TAP device: one receive and one transmit queue, the MAC
//! address and link status in the configuration, no offloads (plain 12-byte header). The device
//! (`mod.rs`) owns identity, features and configuration; `config.rs` the `--net` options;
//! `handler.rs` moves frames; `counters.rs` the statistics.

pub mod config;
pub mod counters;
pub mod handler;

use std::sync::Arc;

use super::worker::QueueHandler;
use super::{VirtioDevice, VIRTIO_F_VERSION_1};
use crate::net::Tap;
pub use config::NetConfig;
pub use counters::NetCounters;
use handler::{FrameBackend, NetHandler};

/// Virtio device type of a network card.
pub const TYPE_NET: u16 = 1;
/// Feature: the configuration holds the MAC address.
pub const F_MAC: u32 = 5;
/// Feature: the configuration holds the link status.
pub const F_STATUS: u32 = 16;
/// Link status: up.
pub const STATUS_LINK_UP: u16 = 1;
/// Queue size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX: usize = 0;
/// Index of the transmit queue.
pub const TX: usize = 1;
/// Bytes of the configuration we expose (mac, status).
pub const CONFIG_LEN: u32 = 8;
/// PCI class: network controller, Ethernet.
pub const PCI_CLASS: u32 = 0x02_00_00;

/// A virtio-net device on a TAP.
pub struct Net {
    backend: Arc<dyn FrameBackend>,
    backend_name: String,
    config: [u8; CONFIG_LEN as usize],
    counters: Arc<NetCounters>,
}

impl Net {
    /// Opens the TAP of `cfg`.
    pub fn open(cfg: &NetConfig) -> Result<Net, String> {
        let tap = Tap::open(&cfg.tap).map_err(|e| e.to_string())?;
        Ok(Net::new(Arc::new(tap), &cfg.tap, cfg.mac))
    }

    /// A device on an open `backend` (named `name` in logs) with `mac`.
    pub fn new(backend: Arc<dyn FrameBackend>, name: &str, mac: [u8; 6]) -> Net {
        let mut config = [0u8; CONFIG_LEN as usize];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        Net {
            backend,
            backend_name: name.into(),
            config,
            counters: Arc::new(NetCounters::default()),
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn name(&self) -> &str {
        "net"
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1 | 1 << F_MAC | 1 << F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN
    }

    fn activate(&mut self, _acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        let handler = NetHandler::new(self.backend.clone(), self.counters.clone())
            .map_err(|e| format!("TAP {}: {e}", self.backend_name))?;
        Ok(Box::new(handler))
    }
}

#[cfg(test)]
mod tests;
