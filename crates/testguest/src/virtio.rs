//! A polling virtio 1.x PCI driver for test guests: finds the virtio capabilities, negotiates
//! features, sets up one split virtqueue in the guest's own memory, submits chains and polls
//! the used ring with volatile reads (no interrupts). Also: `key=value` guest parameters from
//! the kernel command line.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::pci;

pub mod ring;

/// Status bits.
pub const ACKNOWLEDGE: u8 = 1;
/// The guest has a driver.
pub const DRIVER: u8 = 2;
/// The driver is ready.
pub const DRIVER_OK: u8 = 4;
/// Features negotiated.
pub const FEATURES_OK: u8 = 8;
/// The device needs a reset.
pub const NEEDS_RESET: u8 = 64;
/// Descriptor flags.
pub const F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const F_WRITE: u16 = 2;
/// Entries in the guest's queue.
pub const QSIZE: usize = 16;

/// The value of `key=` on the command line.
pub fn param<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a str> {
    let s = core::str::from_utf8(cmdline).ok()?;
    s.split(' ')
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// A decimal parameter.
pub fn param_u64(cmdline: &[u8], key: &str) -> Option<u64> {
    param(cmdline, key)?.parse().ok()
}

/// One descriptor.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

/// The memory of one queue: descriptor table, avail ring, and the used ring on its own page.
#[repr(C, align(4096))]
pub struct QueueMem {
    desc: [Desc; QSIZE],
    avail_flags: u16,
    avail_idx: u16,
    avail_ring: [u16; QSIZE],
    used_event: u16,
    _pad: [u8; 4096 - 16 * QSIZE - 6 - 2 * QSIZE],
    used_flags: u16,
    used_idx: u16,
    used_ring: [(u32, u32); QSIZE],
}

impl QueueMem {
    /// An empty queue.
    pub const fn new() -> Self {
        QueueMem {
            desc: [Desc {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            }; QSIZE],
            avail_flags: 0,
            avail_idx: 0,
            avail_ring: [0; QSIZE],
            used_event: 0,
            _pad: [0; 4096 - 16 * QSIZE - 6 - 2 * QSIZE],
            used_flags: 0,
            used_idx: 0,
            used_ring: [(0, 0); QSIZE],
        }
    }
}

impl Default for QueueMem {
    fn default() -> Self {
        Self::new()
    }
}

/// A virtio PCI function with its configuration structures located.
pub struct Device {
    /// PCI slot.
    pub slot: u8,
    common: u64,
    notify: u64,
    notify_mul: u32,
    /// Device-specific configuration.
    pub device_cfg: u64,
    isr: u64,
    queue: *mut QueueMem,
    next_avail: u16,
    last_used: u16,
}

fn r8(a: u64) -> u8 {
    // SAFETY: BAR addresses are identity-mapped device memory; accesses exit to the VMM.
    unsafe { read_volatile(a as *const u8) }
}
fn r16(a: u64) -> u16 {
    // SAFETY: as for `r8`.
    unsafe { read_volatile(a as *const u16) }
}
/// A 32-bit read of device memory.
pub fn r32(a: u64) -> u32 {
    // SAFETY: as for `r8`.
    unsafe { read_volatile(a as *const u32) }
}
fn w8(a: u64, v: u8) {
    // SAFETY: as for `r8`.
    unsafe { write_volatile(a as *mut u8, v) }
}
fn w16(a: u64, v: u16) {
    // SAFETY: as for `r8`.
    unsafe { write_volatile(a as *mut u16, v) }
}
fn w32(a: u64, v: u32) {
    // SAFETY: as for `r8`.
    unsafe { write_volatile(a as *mut u32, v) }
}

/// Finds the first function with `vendor:device` on bus 0.
pub fn find(vendor: u16, device: u16) -> Option<u8> {
    (0..32).find(|&s| pci::ids(pci::Mechanism::Ecam, s) == Some((vendor, device)))
}

impl Device {
    /// Locates the virtio structures of `slot` (through BAR0..5) and enables memory decoding
    /// and bus mastering.
    pub fn open(slot: u8) -> Result<Device, &'static str> {
        let cmd = pci::read16(slot, 0x04);
        pci::write16(slot, 0x04, cmd | pci::CMD_MEMORY | pci::CMD_BUS_MASTER);
        let (caps, n) = pci::capabilities(slot);
        let mut d = Device {
            slot,
            common: 0,
            notify: 0,
            notify_mul: 0,
            device_cfg: 0,
            isr: 0,
            queue: core::ptr::null_mut(),
            next_avail: 0,
            last_used: 0,
        };
        for &(off, id) in &caps[..n] {
            if id != 0x09 {
                continue;
            }
            let off = off as u16;
            let ty = pci::read8(slot, off + 3);
            let bar = pci::read8(slot, off + 4);
            let base =
                pci::read32(pci::Mechanism::Ecam, slot, 0, 0x10 + 4 * bar as u16) as u64 & !0xf;
            let at = base + pci::read32(pci::Mechanism::Ecam, slot, 0, off + 8) as u64;
            match ty {
                1 => d.common = at,
                2 => {
                    d.notify = at;
                    d.notify_mul = pci::read32(pci::Mechanism::Ecam, slot, 0, off + 16);
                }
                3 => d.isr = at,
                4 => d.device_cfg = at,
                _ => {}
            }
        }
        if d.common == 0 || d.notify == 0 || d.isr == 0 {
            return Err("virtio capabilities missing");
        }
        Ok(d)
    }

    /// Device status.
    pub fn status(&self) -> u8 {
        r8(self.common + 0x14)
    }

    /// Writes the device status.
    pub fn set_status(&self, s: u8) {
        w8(self.common + 0x14, s)
    }

    /// The 64 offered feature bits.
    pub fn device_features(&self) -> u64 {
        w32(self.common, 0);
        let lo = r32(self.common + 4) as u64;
        w32(self.common, 1);
        lo | (r32(self.common + 4) as u64) << 32
    }

    /// Resets, acknowledges, and accepts `wanted & offered` (VERSION_1 must be offered);
    /// returns the accepted features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, &'static str> {
        self.set_status(0);
        if self.status() != 0 {
            return Err("reset did not clear the status");
        }
        self.set_status(ACKNOWLEDGE);
        self.set_status(ACKNOWLEDGE | DRIVER);
        let offered = self.device_features();
        if offered & (1 << 32) == 0 {
            return Err("VIRTIO_F_VERSION_1 not offered");
        }
        let acked = offered & (wanted | 1 << 32);
        for sel in 0..2u32 {
            w32(self.common + 8, sel);
            w32(self.common + 0xc, (acked >> (32 * sel)) as u32);
        }
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.status() & FEATURES_OK == 0 {
            return Err("FEATURES_OK refused");
        }
        Ok(acked)
    }

    /// Sets up queue 0 in `mem` and sets DRIVER_OK.
    ///
    /// # Safety
    /// `mem` must point to queue memory that lives for the rest of the program (a static) and
    /// that nothing but this device and its driver touches from now on.
    pub unsafe fn start(&mut self, mem: *mut QueueMem) -> Result<(), &'static str> {
        self.queue = mem;
        self.next_avail = 0;
        self.last_used = 0;
        // SAFETY: the queue memory is the guest's own static, idle while the device is reset.
        unsafe { write_volatile(mem, QueueMem::new()) };
        let c = self.common;
        w16(c + 0x16, 0);
        let max = r16(c + 0x18);
        if (max as usize) < QSIZE {
            return Err("queue 0 is smaller than the driver's");
        }
        w16(c + 0x18, QSIZE as u16);
        // SAFETY: only addresses are taken; the queue memory is a static owned by the guest.
        let (desc, avail, used) = unsafe {
            (
                core::ptr::addr_of!((*mem).desc) as u64,
                core::ptr::addr_of!((*mem).avail_flags) as u64,
                core::ptr::addr_of!((*mem).used_flags) as u64,
            )
        };
        w32(c + 0x20, desc as u32);
        w32(c + 0x24, (desc >> 32) as u32);
        w32(c + 0x28, avail as u32);
        w32(c + 0x2c, (avail >> 32) as u32);
        w32(c + 0x30, used as u32);
        w32(c + 0x34, (used >> 32) as u32);
        w16(c + 0x1c, 1);
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        if self.status() & NEEDS_RESET != 0 {
            return Err("device needs reset after DRIVER_OK");
        }
        Ok(())
    }

    /// Submits a chain of `(addr, len, flags)` buffers and polls until the device uses it;
    /// returns the used length.
    pub fn submit(&mut self, bufs: &[(u64, u32, u16)]) -> Result<u32, &'static str> {
        if bufs.is_empty() || bufs.len() > QSIZE {
            return Err("bad chain length");
        }
        let q = self.queue;
        // SAFETY: the queue memory is the guest's own static; the device only touches the
        // used ring, which is read with volatile reads below.
        unsafe {
            for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                let next = if i + 1 < bufs.len() { F_NEXT } else { 0 };
                write_volatile(
                    core::ptr::addr_of_mut!((*q).desc[i]),
                    Desc {
                        addr,
                        len,
                        flags: flags | next,
                        next: i as u16 + 1,
                    },
                );
            }
            let slot = self.next_avail as usize % QSIZE;
            write_volatile(core::ptr::addr_of_mut!((*q).avail_ring[slot]), 0);
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(core::ptr::addr_of_mut!((*q).avail_idx), self.next_avail);
            fence(Ordering::SeqCst);
        }
        w16(self.notify, 0);
        let mut spins = 0u64;
        loop {
            // SAFETY: as above.
            let idx = unsafe { read_volatile(core::ptr::addr_of!((*q).used_idx)) };
            if idx != self.last_used {
                break;
            }
            spins += 1;
            if spins > 2_000_000_000 {
                return Err("device never used the chain");
            }
            if spins.is_multiple_of(1_000_000) && self.status() & NEEDS_RESET != 0 {
                return Err("device needs reset");
            }
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        let slot = self.last_used as usize % QSIZE;
        // SAFETY: as above.
        let (id, len) = unsafe { read_volatile(core::ptr::addr_of!((*q).used_ring[slot])) };
        self.last_used = self.last_used.wrapping_add(1);
        if id != 0 {
            return Err("used ring returned another head");
        }
        Ok(len)
    }

    /// Submits several chains at once (one notification) and polls until the device has used
    /// all of them: queue depth greater than one. Each chain's descriptors are laid out one
    /// after another in the table.
    pub fn submit_batch(&mut self, chains: &[&[(u64, u32, u16)]]) -> Result<(), &'static str> {
        let total: usize = chains.iter().map(|c| c.len()).sum();
        if chains.is_empty() || total > QSIZE || chains.iter().any(|c| c.is_empty()) {
            return Err("bad batch");
        }
        let q = self.queue;
        let mut d = 0usize;
        // SAFETY: as in `submit`.
        unsafe {
            for chain in chains {
                let head = d;
                for (i, &(addr, len, flags)) in chain.iter().enumerate() {
                    let next = if i + 1 < chain.len() { F_NEXT } else { 0 };
                    write_volatile(
                        core::ptr::addr_of_mut!((*q).desc[d]),
                        Desc {
                            addr,
                            len,
                            flags: flags | next,
                            next: d as u16 + 1,
                        },
                    );
                    d += 1;
                }
                let slot = self.next_avail as usize % QSIZE;
                write_volatile(core::ptr::addr_of_mut!((*q).avail_ring[slot]), head as u16);
                self.next_avail = self.next_avail.wrapping_add(1);
            }
            fence(Ordering::SeqCst);
            write_volatile(core::ptr::addr_of_mut!((*q).avail_idx), self.next_avail);
            fence(Ordering::SeqCst);
        }
        w16(self.notify, 0);
        let want = self.last_used.wrapping_add(chains.len() as u16);
        let mut spins = 0u64;
        // SAFETY: as above.
        while unsafe { read_volatile(core::ptr::addr_of!((*q).used_idx)) } != want {
            spins += 1;
            if spins > 2_000_000_000 {
                return Err("device never used the batch");
            }
            if spins.is_multiple_of(1_000_000) && self.status() & NEEDS_RESET != 0 {
                return Err("device needs reset");
            }
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        self.last_used = want;
        Ok(())
    }

    /// Makes a chain whose only descriptor points back at itself available, notifies, and
    /// polls the status until the device reports DEVICE_NEEDS_RESET.
    pub fn submit_looping_chain(&mut self, buf: u64) -> Result<(), &'static str> {
        let q = self.queue;
        // SAFETY: as in `submit`.
        unsafe {
            write_volatile(
                core::ptr::addr_of_mut!((*q).desc[0]),
                Desc {
                    addr: buf,
                    len: 16,
                    flags: F_NEXT,
                    next: 0,
                },
            );
            write_volatile(
                core::ptr::addr_of_mut!((*q).avail_ring[self.next_avail as usize % QSIZE]),
                0,
            );
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(core::ptr::addr_of_mut!((*q).avail_idx), self.next_avail);
            fence(Ordering::SeqCst);
        }
        w16(self.notify, 0);
        for _ in 0..1_000_000_000u64 {
            if self.status() & NEEDS_RESET != 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err("the device never reported DEVICE_NEEDS_RESET")
    }

    /// Reads the ISR byte (read clears it).
    pub fn isr(&self) -> u8 {
        r8(self.isr)
    }
}

/// A queue set up with [`Device::setup_queue`], for devices with several queues: chains are
/// made available without waiting, and used elements are polled for.
pub struct Vq {
    q: *mut QueueMem,
    notify: u64,
    index: u16,
    next_avail: u16,
    last_used: u16,
}

impl Device {
    /// Sets up queue `index` in `mem` (after [`Device::negotiate`], before
    /// [`Device::driver_ok`]).
    ///
    /// # Safety
    /// As for [`Device::start`]: `mem` must be a static that only the returned queue and the
    /// device touch from now on.
    pub unsafe fn setup_queue(&self, index: u16, mem: *mut QueueMem) -> Result<Vq, &'static str> {
        // SAFETY: the queue memory is the guest's own static, idle until the queue is enabled.
        unsafe { write_volatile(mem, QueueMem::new()) };
        let c = self.common;
        w16(c + 0x16, index);
        let max = r16(c + 0x18);
        if (max as usize) < QSIZE {
            return Err("a queue is smaller than the driver's");
        }
        w16(c + 0x18, QSIZE as u16);
        // SAFETY: only addresses are taken.
        let (desc, avail, used) = unsafe {
            (
                core::ptr::addr_of!((*mem).desc) as u64,
                core::ptr::addr_of!((*mem).avail_flags) as u64,
                core::ptr::addr_of!((*mem).used_flags) as u64,
            )
        };
        for (off, v) in [(0x20, desc), (0x28, avail), (0x30, used)] {
            w32(c + off, v as u32);
            w32(c + off + 4, (v >> 32) as u32);
        }
        let notify_off = r16(c + 0x1e) as u64;
        w16(c + 0x1c, 1);
        Ok(Vq {
            q: mem,
            notify: self.notify + notify_off * self.notify_mul as u64,
            index,
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Sets DRIVER_OK once the queues are set up.
    pub fn driver_ok(&self) -> Result<(), &'static str> {
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        if self.status() & NEEDS_RESET != 0 {
            return Err("device needs reset after DRIVER_OK");
        }
        Ok(())
    }

    /// Reads byte `off` of the device configuration.
    pub fn config8(&self, off: u64) -> u8 {
        r8(self.device_cfg + off)
    }
}

impl Vq {
    /// Writes a chain of `(addr, len, flags)` into descriptors `first..first + bufs.len()`
    /// (the caller keeps chains in flight apart), makes it available and notifies.
    pub fn post(&mut self, first: u16, bufs: &[(u64, u32, u16)]) {
        let q = self.q;
        // SAFETY: the queue memory is the guest's own static; the device reads descriptors and
        // the avail ring only after the index below publishes them.
        unsafe {
            for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                let idx = (first as usize + i) % QSIZE;
                let next = if i + 1 < bufs.len() { F_NEXT } else { 0 };
                write_volatile(
                    core::ptr::addr_of_mut!((*q).desc[idx]),
                    Desc {
                        addr,
                        len,
                        flags: flags | next,
                        next: ((idx + 1) % QSIZE) as u16,
                    },
                );
            }
            let slot = self.next_avail as usize % QSIZE;
            write_volatile(core::ptr::addr_of_mut!((*q).avail_ring[slot]), first);
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(core::ptr::addr_of_mut!((*q).avail_idx), self.next_avail);
            fence(Ordering::SeqCst);
        }
        w16(self.notify, self.index);
    }

    /// The next used element `(head, len)`, if the device returned one.
    pub fn poll(&mut self) -> Option<(u32, u32)> {
        let q = self.q;
        // SAFETY: volatile reads of the used ring the device writes.
        let idx = unsafe { read_volatile(core::ptr::addr_of!((*q).used_idx)) };
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = self.last_used as usize % QSIZE;
        // SAFETY: as above.
        let e = unsafe { read_volatile(core::ptr::addr_of!((*q).used_ring[slot])) };
        self.last_used = self.last_used.wrapping_add(1);
        Some(e)
    }

    /// Polls for the next used element, giving up after `spins` tries.
    pub fn wait(&mut self, spins: u64) -> Result<(u32, u32), &'static str> {
        for _ in 0..spins {
            if let Some(e) = self.poll() {
                return Ok(e);
            }
            core::hint::spin_loop();
        }
        Err("the device never used a buffer")
    }
}
