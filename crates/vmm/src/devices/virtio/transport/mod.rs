//! The virtio 1.x PCI transport, modern only (vendor 0x1af4, device 0x1040 + type, revision
//! 1): vendor capabilities for the common, notify, ISR and device configuration in BAR0, with
//! the MSI-X table and PBA in the same BAR. Each queue's notify address is an ioeventfd.
//!
//! BAR0 layout (32 KiB, 32-bit memory):
//! `0x0000` common configuration, `0x1000` ISR, `0x2000` device configuration,
//! `0x3000` notify (4 bytes per queue), `0x4000` MSI-X table, `0x6000` MSI-X PBA.

pub mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::queue::Queue;
use super::worker::{Interrupt, Worker, WorkerQueue};
use super::{VirtioDevice, STATUS_DEVICE_NEEDS_RESET, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1};
use crate::memory::GuestMem;
use crate::pci::backend::{BackendError, VmBackend};
use crate::pci::config::{ConfigSpace, PciIds};
use crate::pci::msix::{self, Msix};
use crate::pci::PciDevice;
use common::{Action, CommonConfig, Vectors, COMMON_LEN};

/// Virtio's PCI vendor ID.
pub const VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the virtio device type.
pub const DEVICE_BASE: u16 = 0x1040;
/// Size of BAR0.
pub const BAR_SIZE: u32 = 0x8000;
/// Offset of the common configuration in BAR0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR byte in BAR0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in BAR0.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Offset of the notify area in BAR0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X PBA in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Vendor-specific capability ID.
pub const CAP_VENDOR: u8 = 0x09;
/// `cfg_type` values of the virtio capabilities.
pub const CFG_COMMON: u8 = 1;
/// Notify configuration.
pub const CFG_NOTIFY: u8 = 2;
/// ISR status.
pub const CFG_ISR: u8 = 3;
/// Device configuration.
pub const CFG_DEVICE: u8 = 4;
/// ISR bit: a queue was used.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
pub const ISR_CONFIG: u8 = 2;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Interrupts of one device: ISR bits, then the MSI-X vector the driver chose.
struct PciInterrupt {
    msix: Arc<Mutex<Msix>>,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
}

impl Interrupt for PciInterrupt {
    fn signal_queue(&self, index: usize) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if let Some(v) = self.vectors.queues.get(index) {
            lock(&self.msix).notify(v.load(Ordering::SeqCst));
        }
    }

    fn signal_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        lock(&self.msix).notify(self.vectors.config.load(Ordering::SeqCst));
    }
}

fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![
        CAP_VENDOR,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        0,
        0,
        0,
        0,
    ];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    msix_cap: usize,
    device: Box<dyn VirtioDevice>,
    common: CommonConfig,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
    needs_reset: Arc<AtomicBool>,
    msix: Arc<Mutex<Msix>>,
    queue_events: Vec<EventFd>,
    notify_base: Option<u64>,
    backend: Arc<dyn VmBackend>,
    mem: GuestMem,
    worker: Option<Worker>,
}

impl VirtioPciDevice {
    /// Wraps `device`; interrupts and doorbells go through `backend`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMem,
        backend: Arc<dyn VmBackend>,
    ) -> Result<Self, BackendError> {
        let nq = device.queue_max_sizes().len();
        let vectors = nq as u16 + 1;
        let mut config = ConfigSpace::new(PciIds {
            vendor: VENDOR,
            device: DEVICE_BASE + device.device_type(),
            class: device.pci_class(),
            revision: 1,
            subsystem_vendor: VENDOR,
            subsystem: 0x40,
        });
        config.add_mem32_bar(0, BAR_SIZE);
        let (cap, mask) =
            msix::capability(vectors, 0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(&cap, &mask);
        let caps = [
            virtio_cap(CFG_COMMON, COMMON_OFFSET, COMMON_LEN, &[]),
            virtio_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                nq as u64 * NOTIFY_MULTIPLIER as u64,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            virtio_cap(CFG_ISR, ISR_OFFSET, 1, &[]),
            virtio_cap(CFG_DEVICE, DEVICE_OFFSET, device.config_len() as u64, &[]),
        ];
        for c in caps {
            config.add_capability(&c, &vec![0; c.len()]);
        }
        let mut queue_events = Vec::new();
        for _ in 0..nq {
            queue_events.push(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| {
                BackendError::Kvm(crate::kvm::KvmError::Ioctl {
                    what: "eventfd for a virtqueue",
                    source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
                })
            })?);
        }
        Ok(VirtioPciDevice {
            config,
            msix_cap,
            common: CommonConfig::new(device.features(), device.queue_max_sizes(), vectors),
            device,
            vectors: Arc::new(Vectors::new(nq)),
            isr: Arc::new(AtomicU8::new(0)),
            needs_reset: Arc::new(AtomicBool::new(false)),
            msix: Arc::new(Mutex::new(Msix::new(vectors, backend.clone())?)),
            queue_events,
            notify_base: None,
            backend,
            mem,
            worker: None,
        })
    }

    /// The MSI-X state (tests wait on its irqfds).
    pub fn msix(&self) -> Arc<Mutex<Msix>> {
        self.msix.clone()
    }

    /// Whether the device has marked itself as needing a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn status(&self) -> u8 {
        self.common.status
            | if self.needs_reset() {
                STATUS_DEVICE_NEEDS_RESET
            } else {
                0
            }
    }

    fn fail(&mut self, why: &str) {
        eprintln!(
            "paddock-vmm: virtio-{}: {why}; the device needs a reset",
            self.device.name()
        );
        self.needs_reset.store(true, Ordering::SeqCst);
        PciInterrupt {
            msix: self.msix.clone(),
            vectors: self.vectors.clone(),
            isr: self.isr.clone(),
        }
        .signal_config();
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        self.common.reset(&self.vectors);
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        for e in &self.queue_events {
            let _ = e.read();
        }
    }

    fn features_ok(&mut self) {
        let acked = self.common.driver_features;
        let offered = self.common.device_features;
        if acked & !offered != 0 || acked & (1 << VIRTIO_F_VERSION_1) == 0 {
            eprintln!(
                "paddock-vmm: virtio-{}: driver features {acked:#x} refused (offered {offered:#x}, VERSION_1 required)",
                self.device.name()
            );
            self.common.status &= !STATUS_FEATURES_OK;
        }
    }

    fn activate(&mut self) {
        if self.worker.is_some() || self.common.status & STATUS_FEATURES_OK == 0 {
            if self.common.status & STATUS_FEATURES_OK == 0 {
                self.fail("DRIVER_OK without FEATURES_OK");
            }
            return;
        }
        let mut queues = Vec::new();
        for (i, regs) in self.common.queues.clone().iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            if regs.size > regs.max_size {
                return self.fail(&format!(
                    "queue {i} size {} exceeds {}",
                    regs.size, regs.max_size
                ));
            }
            let mut queue = match Queue::new(&self.mem, regs.size, regs.desc, regs.avail, regs.used)
            {
                Ok(q) => q,
                Err(e) => return self.fail(&format!("queue {i}: {e}")),
            };
            queue.set_event_idx(
                self.common.driver_features & (1 << super::VIRTIO_RING_F_EVENT_IDX) != 0,
            );
            let event = match self.queue_events[i].try_clone() {
                Ok(e) => e,
                Err(e) => return self.fail(&format!("queue {i} eventfd: {e}")),
            };
            queues.push(WorkerQueue {
                index: i,
                queue,
                event,
            });
        }
        let handler = match self.device.activate(self.common.driver_features) {
            Ok(h) => h,
            Err(e) => return self.fail(&e),
        };
        let interrupt = Arc::new(PciInterrupt {
            msix: self.msix.clone(),
            vectors: self.vectors.clone(),
            isr: self.isr.clone(),
        });
        match Worker::spawn(
            format!("virtio-{}", self.device.name()),
            handler,
            queues,
            self.mem.clone(),
            interrupt,
            self.needs_reset.clone(),
        ) {
            Ok(w) => self.worker = Some(w),
            Err(e) => self.fail(&format!("cannot start the worker: {e}")),
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data, &self.vectors) {
            Action::None => {}
            Action::Reset => self.reset(),
            Action::FeaturesOk => {
                self.features_ok();
                if self.common.status & super::STATUS_DRIVER_OK != 0 {
                    self.activate();
                }
            }
            Action::DriverOk => self.activate(),
        }
    }

    fn move_notify(&mut self, new_bar: Option<u64>) {
        if let Some(base) = self.notify_base.take() {
            for (i, e) in self.queue_events.iter().enumerate() {
                let addr = base + i as u64 * NOTIFY_MULTIPLIER as u64;
                if let Err(err) = self.backend.unregister_ioeventfd(e, addr) {
                    eprintln!("paddock-vmm: virtio-{}: {err}", self.device.name());
                }
            }
        }
        if let Some(bar) = new_bar {
            let base = bar + NOTIFY_OFFSET;
            for (i, e) in self.queue_events.iter().enumerate() {
                let addr = base + i as u64 * NOTIFY_MULTIPLIER as u64;
                if let Err(err) = self.backend.register_ioeventfd(e, addr) {
                    // Notifications still arrive as MMIO exits, handled in `bar_write`.
                    eprintln!("paddock-vmm: virtio-{}: {err}", self.device.name());
                }
            }
            self.notify_base = Some(base);
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let ctrl = self.msix_cap + 2;
        if offset < ctrl + 2 && offset + data.len() > ctrl {
            let v = self.config.read_u16(ctrl);
            lock(&self.msix).set_control(v);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => {
                let img = self
                    .common
                    .image(&self.vectors, self.status() & STATUS_DEVICE_NEEDS_RESET);
                super::read_config_bytes(&img, o, data);
            }
            ISR_OFFSET => data[0] = self.isr.swap(0, Ordering::SeqCst),
            o if (DEVICE_OFFSET..NOTIFY_OFFSET).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => lock(&self.msix).read_pba(o - MSIX_PBA_OFFSET, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => self.common_write(o, data),
            o if (DEVICE_OFFSET..NOTIFY_OFFSET).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                let q = ((o - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER as u64) as usize;
                if let Some(e) = self.queue_events.get(q) {
                    let _ = e.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, _old: Option<u64>, new: Option<u64>) {
        if bar == 0 {
            self.move_notify(new);
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests;
