//! Split virtqueues of any power-of-two size `N` (up to 256 here) for drivers that keep many
//! requests in flight: descriptors come from a free list and return to it when the device uses
//! the chain, chains are published without waiting, and the driver notifies only when the
//! device asks for it (VRING_USED_F_NO_NOTIFY, or `avail_event` with
//! VIRTIO_RING_F_EVENT_IDX). The driver polls the used ring; it asks for no interrupts
//! (VRING_AVAIL_F_NO_INTERRUPT, or a `used_event` it never moves with EVENT_IDX).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use super::{r16, w16, w32, Desc, Device, F_NEXT};

/// Feature bit: `used_event`/`avail_event` replace the ring flags.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// Most buffers in one chain added with [`Queue::add`].
pub const MAX_CHAIN: usize = 40;
/// Avail flag: the driver does not want interrupts.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used flag: the device does not want notifications.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// The driver's avail ring.
#[repr(C)]
struct Avail<const N: usize> {
    flags: u16,
    idx: u16,
    ring: [u16; N],
    used_event: u16,
}

/// One used element.
#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

/// The device's used ring, on its own page.
#[repr(C, align(4096))]
struct Used<const N: usize> {
    flags: u16,
    idx: u16,
    ring: [UsedElem; N],
    avail_event: u16,
}

/// The memory of one queue of `N` entries: descriptor table and avail ring, then the used
/// ring page-aligned.
#[repr(C, align(4096))]
pub struct Ring<const N: usize> {
    desc: [Desc; N],
    avail: Avail<N>,
    used: Used<N>,
}

impl<const N: usize> Ring<N> {
    /// An empty ring.
    pub const fn new() -> Self {
        Ring {
            desc: [Desc {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            }; N],
            avail: Avail {
                flags: 0,
                idx: 0,
                ring: [0; N],
                used_event: 0,
            },
            used: Used {
                flags: 0,
                idx: 0,
                ring: [UsedElem { id: 0, len: 0 }; N],
                avail_event: 0,
            },
        }
    }
}

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an index moving from `old` to `new` passed `event` (virtio `vring_need_event`).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A driver-side queue over a [`Ring`].
pub struct Queue<const N: usize> {
    ring: *mut Ring<N>,
    notify: u64,
    index: u16,
    event_idx: bool,
    next_avail: u16,
    kicked: u16,
    last_used: u16,
    free: [u16; N],
    nfree: usize,
    /// Notifications written (each one a guest exit).
    pub notifies: u64,
}

impl Device {
    /// Sets up queue `index` of `N` entries in `ring` (after [`Device::negotiate`], before
    /// [`Device::driver_ok`]); `event_idx` says whether VIRTIO_RING_F_EVENT_IDX was accepted.
    ///
    /// # Safety
    /// `ring` must point to a ring that lives for the rest of the program (a static) and that
    /// nothing but the returned queue and the device touches from now on.
    pub unsafe fn setup_ring<const N: usize>(
        &self,
        index: u16,
        ring: *mut Ring<N>,
        event_idx: bool,
    ) -> Result<Queue<N>, &'static str> {
        if !N.is_power_of_two() || N > 32768 {
            return Err("queue size is not a power of two up to 32768");
        }
        // SAFETY: the ring is the guest's own static, idle until the queue is enabled.
        unsafe { write_volatile(ring, Ring::new()) };
        let c = self.common;
        w16(c + 0x16, index);
        if (r16(c + 0x18) as usize) < N {
            return Err("the device's queue is smaller than the driver's");
        }
        w16(c + 0x18, N as u16);
        // SAFETY: only addresses are taken.
        let (desc, avail, used) = unsafe {
            (
                addr_of!((*ring).desc) as u64,
                addr_of!((*ring).avail) as u64,
                addr_of!((*ring).used) as u64,
            )
        };
        for (off, v) in [(0x20, desc), (0x28, avail), (0x30, used)] {
            w32(c + off, v as u32);
            w32(c + off + 4, (v >> 32) as u32);
        }
        let notify_off = r16(c + 0x1e) as u64;
        w16(c + 0x1c, 1);
        if !event_idx {
            // SAFETY: the guest's own ring; the device only reads the avail flags.
            unsafe { write_volatile(addr_of_mut!((*ring).avail.flags), AVAIL_F_NO_INTERRUPT) };
        }
        let mut free = [0u16; N];
        for (i, f) in free.iter_mut().enumerate() {
            *f = (N - 1 - i) as u16;
        }
        Ok(Queue {
            ring,
            notify: self.notify + notify_off * self.notify_mul as u64,
            index,
            event_idx,
            next_avail: 0,
            kicked: 0,
            last_used: 0,
            free,
            nfree: N,
            notifies: 0,
        })
    }
}

impl<const N: usize> Queue<N> {
    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.nfree
    }

    /// Writes a chain of up to [`MAX_CHAIN`] `(addr, len, flags)` buffers and publishes it
    /// (without notifying: see [`Queue::kick`]); returns its head, or `None` when too few
    /// descriptors are free.
    pub fn add(&mut self, bufs: &[(u64, u32, u16)]) -> Option<u16> {
        let n = bufs.len();
        if n == 0 || n > MAX_CHAIN || n > self.nfree {
            return None;
        }
        let ring = self.ring;
        let mut ids = [0u16; MAX_CHAIN];
        for id in ids.iter_mut().take(n) {
            self.nfree -= 1;
            *id = self.free[self.nfree];
        }
        // SAFETY: the ring is the guest's own static; the device reads descriptors and the
        // avail entry only after the index store below publishes them.
        unsafe {
            for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                let last = i + 1 == n;
                let next = if last { 0 } else { ids[i + 1] };
                let flags = flags | if last { 0 } else { F_NEXT };
                write_volatile(
                    addr_of_mut!((*ring).desc[ids[i] as usize]),
                    Desc {
                        addr,
                        len,
                        flags,
                        next,
                    },
                );
            }
            let slot = self.next_avail as usize % N;
            write_volatile(addr_of_mut!((*ring).avail.ring[slot]), ids[0]);
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(addr_of_mut!((*ring).avail.idx), self.next_avail);
        }
        Some(ids[0])
    }

    /// Notifies the device of the chains added since the last kick, unless it asked not to be
    /// (it is still draining the queue); returns whether it notified.
    pub fn kick(&mut self) -> bool {
        if self.kicked == self.next_avail {
            return false;
        }
        fence(Ordering::SeqCst);
        let ring = self.ring;
        // SAFETY: volatile reads of fields the device writes.
        let want = unsafe {
            if self.event_idx {
                need_event(
                    read_volatile(addr_of!((*ring).used.avail_event)),
                    self.next_avail,
                    self.kicked,
                )
            } else {
                read_volatile(addr_of!((*ring).used.flags)) & USED_F_NO_NOTIFY == 0
            }
        };
        self.kicked = self.next_avail;
        if want {
            w16(self.notify, self.index);
            self.notifies += 1;
        }
        want
    }

    /// The next used element `(head, len)`, if the device returned one; its descriptors
    /// go back to the free list.
    pub fn poll(&mut self) -> Option<(u16, u32)> {
        let ring = self.ring;
        // SAFETY: volatile reads of the used ring the device writes, and of our own
        // descriptors, which the device no longer uses once the chain is in the used ring.
        unsafe {
            if read_volatile(addr_of!((*ring).used.idx)) == self.last_used {
                return None;
            }
            fence(Ordering::SeqCst);
            let e = read_volatile(addr_of!((*ring).used.ring[self.last_used as usize % N]));
            self.last_used = self.last_used.wrapping_add(1);
            let head = (e.id as usize % N) as u16;
            let mut id = head;
            for _ in 0..N {
                self.free[self.nfree] = id;
                self.nfree += 1;
                let d = read_volatile(addr_of!((*ring).desc[id as usize]));
                if d.flags & F_NEXT == 0 || self.nfree == N {
                    break;
                }
                id = d.next;
            }
            Some((head, e.len))
        }
    }
}
