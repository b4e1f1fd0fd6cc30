//! The virtio PCI common configuration structure (virtio 1.x §4.1.4.3): feature windows,
//! device status, and the per-queue registers of the selected queue.

use std::sync::atomic::{AtomicU16, Ordering};

use crate::devices::virtio::{STATUS_DRIVER_OK, STATUS_FEATURES_OK};

/// Bytes of the structure.
pub const COMMON_LEN: u64 = 0x38;
/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

/// MSI-X vectors chosen by the driver, shared with the interrupt path.
pub struct Vectors {
    /// Configuration-change vector.
    pub config: AtomicU16,
    /// One per queue.
    pub queues: Vec<AtomicU16>,
}

impl Vectors {
    /// All set to [`NO_VECTOR`].
    pub fn new(queues: usize) -> Self {
        Vectors {
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        }
    }

    fn clear(&self) {
        self.config.store(NO_VECTOR, Ordering::SeqCst);
        for q in &self.queues {
            q.store(NO_VECTOR, Ordering::SeqCst);
        }
    }
}

/// What the driver programmed for one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRegs {
    /// Largest size the device allows.
    pub max_size: u16,
    /// Size chosen by the driver.
    pub size: u16,
    /// The driver enabled the queue.
    pub enabled: bool,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring ("driver area").
    pub avail: u64,
    /// Used ring ("device area").
    pub used: u64,
}

/// What a write asks the transport to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the register update.
    None,
    /// Status 0 was written: reset the device.
    Reset,
    /// The driver set FEATURES_OK: check the features it accepted.
    FeaturesOk,
    /// The driver set DRIVER_OK: start the device.
    DriverOk,
}

/// The common configuration state.
pub struct CommonConfig {
    /// Features the device offers.
    pub device_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    /// Device status as the driver wrote it (FEATURES_OK may be refused).
    pub status: u8,
    queue_select: u16,
    /// The queues.
    pub queues: Vec<QueueRegs>,
    msix_vectors: u16,
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl CommonConfig {
    /// Registers for a device offering `features` with queues of `max_sizes`, and
    /// `msix_vectors` vectors in its table.
    pub fn new(features: u64, max_sizes: &[u16], msix_vectors: u16) -> Self {
        CommonConfig {
            device_features: features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            status: 0,
            queue_select: 0,
            queues: max_sizes
                .iter()
                .map(|&m| QueueRegs {
                    max_size: m,
                    size: m,
                    ..Default::default()
                })
                .collect(),
            msix_vectors,
        }
    }

    /// Back to the state after power-on (the features offered stay).
    pub fn reset(&mut self, vectors: &Vectors) {
        *self = CommonConfig::new(
            self.device_features,
            &self.queues.iter().map(|q| q.max_size).collect::<Vec<_>>(),
            self.msix_vectors,
        );
        vectors.clear();
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(self.queue_select as usize)
    }

    /// The structure's bytes as the guest sees them now.
    pub fn image(&self, vectors: &Vectors, status_extra: u8) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        let window = |f: u64, sel: u32| if sel < 2 { (f >> (32 * sel)) as u32 } else { 0 };
        put(0x00, &self.device_feature_select.to_le_bytes());
        put(
            0x04,
            &window(self.device_features, self.device_feature_select).to_le_bytes(),
        );
        put(0x08, &self.driver_feature_select.to_le_bytes());
        put(
            0x0c,
            &window(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(0x10, &vectors.config.load(Ordering::SeqCst).to_le_bytes());
        put(0x12, &(self.queues.len() as u16).to_le_bytes());
        put(0x14, &[self.status | status_extra, 0]);
        put(0x16, &self.queue_select.to_le_bytes());
        if let Some(q) = self.selected() {
            let v = vectors.queues[self.queue_select as usize].load(Ordering::SeqCst);
            put(0x18, &q.size.to_le_bytes());
            put(0x1a, &v.to_le_bytes());
            put(0x1c, &(q.enabled as u16).to_le_bytes());
            put(0x1e, &self.queue_select.to_le_bytes());
            put(0x20, &q.desc.to_le_bytes());
            put(0x28, &q.avail.to_le_bytes());
            put(0x30, &q.used.to_le_bytes());
        }
        b
    }

    fn vector_or_none(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    /// A guest write at `offset`; returns what the transport must do next.
    pub fn write(&mut self, offset: u64, data: &[u8], vectors: &Vectors) -> Action {
        let v = le(data);
        let running = self.status & STATUS_DRIVER_OK != 0;
        let sel = self.queue_select as usize;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4)
                if self.status & STATUS_FEATURES_OK == 0 && self.driver_feature_select < 2 =>
            {
                let shift = 32 * self.driver_feature_select;
                self.driver_features =
                    (self.driver_features & !(0xffff_ffffu64 << shift)) | (v << shift);
            }
            (0x10, 2) => vectors
                .config
                .store(self.vector_or_none(v as u16), Ordering::SeqCst),
            (0x14, 1) => {
                let new = v as u8;
                if new == 0 {
                    return Action::Reset;
                }
                let old = self.status;
                self.status = new;
                if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
                    return Action::FeaturesOk;
                }
                if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
                    return Action::DriverOk;
                }
            }
            (0x16, 2) => self.queue_select = v as u16,
            (0x1a, 2) if sel < self.queues.len() => {
                let vec = self.vector_or_none(v as u16);
                vectors.queues[sel].store(vec, Ordering::SeqCst);
            }
            (off, len) if sel < self.queues.len() && !running => {
                let q = &mut self.queues[sel];
                let set64 = |field: &mut u64, hi: bool, val: u64| {
                    *field = if hi {
                        (*field & 0xffff_ffff) | (val << 32)
                    } else {
                        (*field & !0xffff_ffff) | (val & 0xffff_ffff)
                    }
                };
                match (off, len) {
                    (0x18, 2) if !q.enabled => {
                        // Sizes must be powers of two up to the maximum; others are refused
                        // when the queue is started.
                        q.size = v as u16;
                    }
                    (0x1c, 2) => q.enabled |= v == 1,
                    (0x20 | 0x28 | 0x30, 8) if !q.enabled => {
                        let field = match off {
                            0x20 => &mut q.desc,
                            0x28 => &mut q.avail,
                            _ => &mut q.used,
                        };
                        *field = v;
                    }
                    (0x20..=0x37, 4) if !q.enabled && off % 4 == 0 => {
                        let field = match off & !7 {
                            0x20 => &mut q.desc,
                            0x28 => &mut q.avail,
                            _ => &mut q.used,
                        };
                        set64(field, off % 8 == 4, v);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Action::None
    }
}
