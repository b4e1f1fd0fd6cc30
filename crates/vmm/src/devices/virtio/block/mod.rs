//! virtio-blk on a `paddock-disk` image: read, write, flush, discard, write-zeroes, GET_ID,
//! read-only disks. The device (`mod.rs`) owns identity, features and configuration; request
//! handling lives in `request.rs`, counters in `counters.rs`.

pub mod config;
pub mod counters;
pub mod guestio;
pub mod request;

use std::sync::Arc;

use paddock_disk::BlockImage;

use super::worker::QueueHandler;
use super::{VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
pub use config::DiskConfig;
pub use counters::BlockCounters;
use request::BlockHandler;

/// Feature: `size_max` is valid.
pub const F_SIZE_MAX: u32 = 1;
/// Feature: `seg_max` is valid.
pub const F_SEG_MAX: u32 = 2;
/// Feature: the disk is read-only.
pub const F_RO: u32 = 5;
/// Feature: `blk_size` is valid.
pub const F_BLK_SIZE: u32 = 6;
/// Feature: flush is supported.
pub const F_FLUSH: u32 = 9;
/// Feature: discard is supported.
pub const F_DISCARD: u32 = 13;
/// Feature: write-zeroes is supported.
pub const F_WRITE_ZEROES: u32 = 14;

/// Sector size of the protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data segment (bytes).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments in one request.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors one discard segment covers.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Most segments in one discard request.
pub const MAX_DISCARD_SEG: u32 = 1;
/// Discard alignment hint (sectors).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Most sectors one write-zeroes segment covers.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 21;
/// Most segments in one write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Length of the GET_ID serial.
pub const ID_LEN: usize = 20;
/// Bytes of the configuration structure we expose (through `write_zeroes_may_unmap`).
pub const CONFIG_LEN: u32 = 0x3c;
/// PCI class: mass storage, other.
pub const PCI_CLASS: u32 = 0x01_80_00;

/// A virtio-blk device.
pub struct Block {
    image: Arc<dyn BlockImage>,
    read_only: bool,
    serial: [u8; ID_LEN],
    counters: Arc<BlockCounters>,
    config: Vec<u8>,
}

impl Block {
    /// A device on `image`; `serial` is truncated to 20 bytes.
    pub fn new(image: Arc<dyn BlockImage>, read_only: bool, serial: &str) -> Self {
        let read_only = read_only || image.is_read_only();
        let mut id = [0u8; ID_LEN];
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let mut config = vec![0u8; CONFIG_LEN as usize];
        let mut put = |off: usize, b: &[u8]| config[off..off + b.len()].copy_from_slice(b);
        put(0x00, &(image.virtual_size() / SECTOR_SIZE).to_le_bytes());
        put(0x08, &SIZE_MAX.to_le_bytes());
        put(0x0c, &SEG_MAX.to_le_bytes());
        put(0x14, &(SECTOR_SIZE as u32).to_le_bytes());
        put(0x22, &1u16.to_le_bytes());
        put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(0x28, &MAX_DISCARD_SEG.to_le_bytes());
        put(0x2c, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
        put(0x30, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(0x34, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
        put(0x38, &[1]);
        Block {
            image,
            read_only,
            serial: id,
            counters: Arc::new(BlockCounters::default()),
            config,
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn name(&self) -> &str {
        "blk"
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << F_SIZE_MAX
            | 1 << F_SEG_MAX
            | 1 << F_BLK_SIZE
            | 1 << F_FLUSH
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        if self.read_only {
            f |= 1 << F_RO;
        } else {
            f |= 1 << F_DISCARD | 1 << F_WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN
    }

    fn activate(&mut self, acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        Ok(Box::new(BlockHandler {
            image: self.image.clone(),
            read_only: self.read_only,
            serial: self.serial,
            counters: self.counters.clone(),
            acked,
            scratch: Default::default(),
        }))
    }
}

#[cfg(test)]
mod tests;
