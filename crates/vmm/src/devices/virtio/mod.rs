//! Virtio 1.x devices: split virtqueues (`queue`), the per-device epoll worker (`worker`),
//! the modern PCI transport (`transport`), and the devices, one folder each.

pub mod block;
pub mod console;
pub mod net;
pub mod queue;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod worker;

#[cfg(test)]
pub mod testdriver;

pub use queue::{ChainError, DescriptorChain, Queue};
pub use worker::QueueHandler;

/// Feature bit: the device conforms to virtio 1.x (required, modern transport only).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: indirect descriptors (not offered).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/avail event index (offered by virtio-blk).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Device status: the driver gave up.
pub const STATUS_FAILED: u8 = 128;

/// Virtio device type of a block device.
pub const TYPE_BLOCK: u16 = 2;
/// Virtio device type of an entropy source.
pub const TYPE_RNG: u16 = 4;

/// A virtio device behind some transport: its identity, features, configuration, and a
/// queue handler built when the driver sets DRIVER_OK.
pub trait VirtioDevice: Send {
    /// Virtio device type.
    fn device_type(&self) -> u16;
    /// Short name for logs and thread names.
    fn name(&self) -> &str;
    /// PCI class code (24 bits) the transport announces.
    fn pci_class(&self) -> u32;
    /// Largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered features, VIRTIO_F_VERSION_1 included.
    fn features(&self) -> u64;
    /// Guest read of the device configuration.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Guest write of the device configuration (ignored by default).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Length of the device configuration.
    fn config_len(&self) -> u32;
    /// Builds the handler that processes the queues with the `acked` features.
    fn activate(&mut self, acked: u64) -> Result<Box<dyn QueueHandler>, String>;
}

/// Reads `data` out of a little-endian configuration image at `offset`, zero past its end.
pub fn read_config_bytes(image: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| image.get(o + i))
            .copied()
            .unwrap_or(0);
    }
}
