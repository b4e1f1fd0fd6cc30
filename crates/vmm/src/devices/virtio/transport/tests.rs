use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::*;
use crate::devices::virtio::queue::{DESC_F_NEXT, DESC_F_WRITE};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::testdriver::Driver;
use crate::devices::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK};
use crate::pci::backend::RecordingBackend;
use crate::pci::config::CAP_PTR;
use crate::pci::msix::CTRL_ENABLE;

const BAR: u64 = 0xc000_0000;

struct Rig {
    dev: VirtioPciDevice,
    d: Driver,
    backend: Arc<RecordingBackend>,
}

fn rig() -> Rig {
    let d = Driver::new(16);
    let backend = Arc::new(RecordingBackend::default());
    let dev = VirtioPciDevice::new(Box::new(Rng), d.mem.clone(), backend.clone()).unwrap();
    Rig { dev, d, backend }
}

impl Rig {
    fn w(&mut self, off: u64, v: u64, len: usize) {
        self.dev.bar_write(0, off, &v.to_le_bytes()[..len]);
    }
    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn status(&mut self) -> u8 {
        self.r(0x14, 1) as u8
    }
    /// Negotiates `features`, returns the status read back after FEATURES_OK.
    fn negotiate(&mut self, features: u64) -> u8 {
        self.w(0x14, 0, 1);
        self.w(0x14, (STATUS_ACKNOWLEDGE | STATUS_DRIVER) as u64, 1);
        for sel in 0..2 {
            self.w(0x08, sel, 4);
            self.w(0x0c, (features >> (32 * sel)) & 0xffff_ffff, 4);
        }
        self.w(
            0x14,
            (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK) as u64,
            1,
        );
        self.status()
    }
    fn setup_queue(&mut self, size: u16, desc: u64, avail: u64, used: u64) {
        self.w(0x16, 0, 2);
        self.w(0x18, size as u64, 2);
        self.w(0x1a, 1, 2); // queue vector 1
        self.w(0x20, desc, 8);
        self.w(0x28, avail & 0xffff_ffff, 4);
        self.w(0x2c, avail >> 32, 4);
        self.w(0x30, used, 8);
        self.w(0x1c, 1, 2);
    }
    fn start(&mut self) {
        self.w(0x10, 0, 2); // config vector 0
        let (desc, avail, used) = (self.d.desc, self.d.avail, self.d.used);
        self.setup_queue(16, desc, avail, used);
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.w(0x14, st as u64, 1);
    }
    fn enable_msix(&mut self) {
        let cap = self.dev.msix_cap;
        self.dev.config_write(cap + 2, &CTRL_ENABLE.to_le_bytes());
        for v in 0..2u64 {
            self.dev
                .bar_write(0, MSIX_TABLE_OFFSET + v * 16, &0xfee0_0000u32.to_le_bytes());
            self.dev.bar_write(
                0,
                MSIX_TABLE_OFFSET + v * 16 + 8,
                &(0x40 + v as u32).to_le_bytes(),
            );
            self.dev
                .bar_write(0, MSIX_TABLE_OFFSET + v * 16 + 12, &0u32.to_le_bytes());
        }
    }
}

/// Waits (without sleeping) until the irqfd of `vector` fires.
fn wait_irq(dev: &VirtioPciDevice, vector: u16) {
    let msix = dev.msix();
    let fd = msix
        .lock()
        .unwrap()
        .irqfd(vector)
        .unwrap()
        .try_clone()
        .unwrap();
    let ep = Epoll::new().unwrap();
    ep.ctl(
        ControlOperation::Add,
        fd.as_raw_fd(),
        EpollEvent::new(EventSet::IN, 0),
    )
    .unwrap();
    let mut ev = [EpollEvent::default()];
    assert_eq!(
        ep.wait(20_000, &mut ev).unwrap(),
        1,
        "vector {vector} never fired"
    );
    assert!(fd.read().unwrap() >= 1);
}

#[test]
fn config_space_has_ids_and_virtio_capabilities() {
    let r = rig();
    let c = r.dev.config();
    assert_eq!(c.read_u32(0), 0x1044_1af4);
    assert_eq!(c.read_u32(8) & 0xff, 1, "revision 1: modern only");
    assert_eq!(c.read_u16(0x2e), 0x40);
    let mut ptr = c.read_u16(CAP_PTR) as usize & 0xff;
    let mut found = vec![];
    while ptr != 0 {
        let id = c.read_u16(ptr) as u8;
        if id == CAP_VENDOR {
            let ty = c.read_u16(ptr + 3) as u8;
            let off = c.read_u32(ptr + 8) as u64;
            found.push((ty, off));
            if ty == CFG_NOTIFY {
                assert_eq!(c.read_u32(ptr + 16), NOTIFY_MULTIPLIER);
            }
        } else {
            found.push((id, c.read_u32(ptr + 4) as u64));
        }
        ptr = (c.read_u16(ptr) >> 8) as usize;
    }
    assert_eq!(
        found,
        vec![
            (0x11, MSIX_TABLE_OFFSET),
            (CFG_COMMON, COMMON_OFFSET),
            (CFG_NOTIFY, NOTIFY_OFFSET),
            (CFG_ISR, ISR_OFFSET),
            (CFG_DEVICE, DEVICE_OFFSET),
        ]
    );
}

#[test]
fn features_ok_needs_version_1_and_offered_bits() {
    let mut r = rig();
    assert_eq!(r.r(0x04, 4), 0);
    r.w(0x00, 1, 4);
    assert_eq!(r.r(0x04, 4), 1, "VERSION_1 in the high window");
    assert_eq!(r.r(0x12, 2), 1, "one queue");
    assert_eq!(r.negotiate(0) & STATUS_FEATURES_OK, 0, "no VERSION_1");
    assert_eq!(
        r.negotiate(1 << 32 | 1 << 5) & STATUS_FEATURES_OK,
        0,
        "unoffered bit"
    );
    assert_ne!(r.negotiate(1 << 32) & STATUS_FEATURES_OK, 0);
    // Driver features are frozen once FEATURES_OK is set.
    r.w(0x08, 0, 4);
    r.w(0x0c, 0xff, 4);
    assert_eq!(r.r(0x0c, 4), 0);
}

#[test]
fn queue_registers_and_vectors_read_back() {
    let mut r = rig();
    r.negotiate(1 << 32);
    r.setup_queue(8, 0x1000, 0x2_0000_1000, 0x3000);
    assert_eq!(r.r(0x18, 2), 8);
    assert_eq!(r.r(0x1a, 2), 1);
    assert_eq!(r.r(0x1c, 2), 1);
    assert_eq!(r.r(0x1e, 2), 0, "notify offset of queue 0");
    assert_eq!(r.r(0x20, 8), 0x1000);
    assert_eq!(r.r(0x28, 8), 0x2_0000_1000);
    // A vector beyond the table reads back as NO_VECTOR.
    r.w(0x10, 9, 2);
    assert_eq!(r.r(0x10, 2), 0xffff);
    // A queue past the last reads size 0.
    r.w(0x16, 5, 2);
    assert_eq!(r.r(0x18, 2), 0);
}

#[test]
fn a_notify_runs_the_worker_and_raises_the_queue_vector() {
    let mut r = rig();
    r.enable_msix();
    r.negotiate(1 << 32);
    r.start();
    assert_eq!(r.status() & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
    let buf = r.d.alloc(256, 0);
    r.d.push_chain(&[(buf, 256, true)]);
    r.w(NOTIFY_OFFSET, 0, 2);
    wait_irq(&r.dev, 1);
    assert_eq!(r.d.used_idx(), 1);
    assert_eq!(r.d.used_elem(0).1, 256);
    assert_eq!(r.r(ISR_OFFSET, 1) as u8 & ISR_QUEUE, ISR_QUEUE);
    assert_eq!(r.r(ISR_OFFSET, 1), 0, "ISR clears on read");
}

#[test]
fn a_malformed_chain_sets_needs_reset_and_reset_clears_it() {
    let mut r = rig();
    r.enable_msix();
    r.negotiate(1 << 32);
    r.start();
    let buf = r.d.alloc(64, 0);
    r.d.write_desc(0, buf, 64, DESC_F_WRITE | DESC_F_NEXT, 0);
    r.d.publish(0);
    r.w(NOTIFY_OFFSET, 0, 2);
    wait_irq(&r.dev, 0);
    assert!(r.dev.needs_reset());
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.r(ISR_OFFSET, 1) as u8 & ISR_CONFIG, ISR_CONFIG);
    r.w(0x14, 0, 1);
    assert_eq!(r.status(), 0);
    assert!(!r.dev.needs_reset());
    assert_eq!(r.r(0x1c, 2), 0, "queue disabled by reset");
}

#[test]
fn bad_queue_addresses_fail_at_driver_ok() {
    let mut r = rig();
    r.negotiate(1 << 32);
    r.setup_queue(16, 1 << 40, 0x2000, 0x3000);
    let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    r.w(0x14, st as u64, 1);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // DRIVER_OK without FEATURES_OK is refused the same way.
    let mut r = rig();
    r.w(
        0x14,
        (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK) as u64,
        1,
    );
    assert!(r.dev.needs_reset());
}

#[test]
fn ioeventfds_follow_the_bar() {
    let mut r = rig();
    r.dev.bar_moved(0, None, Some(BAR));
    assert_eq!(
        *r.backend.ioeventfds.lock().unwrap(),
        vec![BAR + NOTIFY_OFFSET]
    );
    r.dev.bar_moved(0, Some(BAR), Some(BAR + 0x10000));
    assert_eq!(
        *r.backend.ioeventfds.lock().unwrap(),
        vec![BAR + 0x10000 + NOTIFY_OFFSET]
    );
    r.dev.bar_moved(0, Some(BAR + 0x10000), None);
    assert!(r.backend.ioeventfds.lock().unwrap().is_empty());
    // Routes appear once MSI-X is enabled and vectors are unmasked.
    r.enable_msix();
    assert_eq!(r.backend.routes.lock().unwrap().len(), 2);
}
