//! Split virtqueues: validated ring addresses, descriptor chains checked against guest memory
//! (loops, out-of-range buffers, readable after writable, indirect without the feature), and
//! the used ring. Any malformed chain is a [`ChainError`]: the device then needs a reset.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::memory::GuestMem;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Avail flag: the driver does not want interrupts.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used flag: the device does not want notifications (it is draining the queue).
pub const USED_F_NO_NOTIFY: u16 = 1;
/// Largest queue size of a split virtqueue.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// A malformed queue or chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Ring addresses misaligned or outside guest memory, or a bad size.
    #[error("queue layout is invalid: {0}")]
    BadQueue(String),
    /// The driver made more buffers available than the queue holds.
    #[error("avail index {avail} is {ahead} ahead of the device (queue size {size})")]
    AvailOverrun {
        /// Driver's avail index.
        avail: u16,
        /// How far ahead.
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// A descriptor index outside the table.
    #[error("descriptor index {0} is outside the queue")]
    BadIndex(u16),
    /// The chain is longer than the queue: a loop.
    #[error("descriptor chain from head {0} loops or exceeds the queue size")]
    Loop(u16),
    /// A buffer outside guest memory.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// An indirect descriptor, which the device did not offer.
    #[error("indirect descriptor in chain from head {0} without VIRTIO_RING_F_INDIRECT_DESC")]
    Indirect(u16),
    /// A device-readable buffer after a device-writable one.
    #[error("readable descriptor after a writable one in chain from head {0}")]
    ReadAfterWrite(u16),
    /// Buffers in the wrong direction or of the wrong size for the request.
    #[error("malformed request: {0}")]
    Request(String),
    /// The used ring could not be written.
    #[error("cannot write the used ring at {0:#x}")]
    UsedRing(u64),
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A validated chain: readable buffers first, then writable ones, all inside guest memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescriptorChain {
    /// Head index, returned in the used ring.
    pub head: u16,
    /// The buffers in order.
    pub descs: Vec<Descriptor>,
}

impl DescriptorChain {
    /// Where the writable buffers start (a validated chain has all readable ones first).
    fn split(&self) -> usize {
        self.descs
            .iter()
            .position(|d| d.writable)
            .unwrap_or(self.descs.len())
    }
    /// Device-readable buffers.
    pub fn readable(&self) -> std::slice::Iter<'_, Descriptor> {
        self.descs[..self.split()].iter()
    }
    /// Device-writable buffers.
    pub fn writable(&self) -> std::slice::Iter<'_, Descriptor> {
        self.descs[self.split()..].iter()
    }
    /// Total bytes of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable().map(|d| d.len as u64).sum()
    }
    /// Total bytes of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable().map(|d| d.len as u64).sum()
    }
}

/// A split virtqueue the device is processing.
#[derive(Debug, Clone)]
pub struct Queue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_avail: u16,
    next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated: `used_event`/`avail_event` replace the flags.
    event_idx: bool,
    /// The used index when the device last decided whether to interrupt (EVENT_IDX).
    signalled_used: u16,
}

fn in_mem(mem: &GuestMem, addr: GuestAddress, len: u64) -> bool {
    len == 0 || usize::try_from(len).is_ok_and(|l| mem.check_range(addr, l))
}

impl Queue {
    /// Checks the layout the driver programmed: a power-of-two size, aligned rings, all
    /// inside guest memory.
    pub fn new(
        mem: &GuestMem,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<Queue, ChainError> {
        let bad = |m: String| Err(ChainError::BadQueue(m));
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return bad(format!("size {size} is not a power of two up to 32768"));
        }
        let n = size as u64;
        for (what, addr, align, len) in [
            ("descriptor table", desc, 16, 16 * n),
            ("avail ring", avail, 2, 6 + 2 * n),
            ("used ring", used, 4, 6 + 8 * n),
        ] {
            if addr % align != 0 {
                return bad(format!("{what} at {addr:#x} is not {align}-byte aligned"));
            }
            // Inside one RAM region: the rings are then read through one mapping.
            if mem.get_slice(GuestAddress(addr), len as usize).is_err() {
                return bad(format!(
                    "{what} at {addr:#x}+{len:#x} is not inside one region of guest memory"
                ));
            }
        }
        Ok(Queue {
            size,
            desc: GuestAddress(desc),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            next_avail: 0,
            next_used: 0,
            event_idx: false,
            signalled_used: 0,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn read_u16(&self, mem: &GuestMem, addr: GuestAddress) -> Result<u16, ChainError> {
        // Ring fields are naturally aligned (checked by `Queue::new`): one load.
        mem.load::<u16>(addr, Ordering::Relaxed)
            .map_err(|_| ChainError::BadQueue(format!("cannot read {:#x}", addr.0)))
    }

    /// Takes the next available chain, validated; `None` when the driver has made none.
    pub fn pop(&mut self, mem: &GuestMem) -> Result<Option<DescriptorChain>, ChainError> {
        let mut chain = DescriptorChain {
            head: 0,
            descs: Vec::new(),
        };
        Ok(self.pop_into(mem, &mut chain)?.then_some(chain))
    }

    /// Like [`Queue::pop`], but fills `chain`, reusing its allocation; returns whether a
    /// chain was available.
    pub fn pop_into(
        &mut self,
        mem: &GuestMem,
        chain: &mut DescriptorChain,
    ) -> Result<bool, ChainError> {
        let avail_idx = self.read_u16(mem, self.avail.unchecked_add(2))?;
        let ahead = avail_idx.wrapping_sub(self.next_avail);
        if ahead == 0 {
            return Ok(false);
        }
        if ahead > self.size {
            return Err(ChainError::AvailOverrun {
                avail: avail_idx,
                ahead,
                size: self.size,
            });
        }
        // Read ring entries only after seeing the index that publishes them.
        fence(Ordering::Acquire);
        let slot = (self.next_avail % self.size) as u64;
        let head = self.read_u16(mem, self.avail.unchecked_add(4 + 2 * slot))?;
        chain.head = head;
        self.walk(mem, head, &mut chain.descs)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(true)
    }

    fn walk(
        &self,
        mem: &GuestMem,
        head: u16,
        descs: &mut Vec<Descriptor>,
    ) -> Result<(), ChainError> {
        descs.clear();
        let mut idx = head;
        let mut seen_write = false;
        // One lookup for the whole table (checked to lie in one region by `Queue::new`).
        let table = mem
            .get_slice(self.desc, 16 * self.size as usize)
            .map_err(|_| ChainError::BadIndex(head))?;
        loop {
            if idx >= self.size {
                return Err(ChainError::BadIndex(idx));
            }
            if descs.len() >= self.size as usize {
                return Err(ChainError::Loop(head));
            }
            // Two aligned 8-byte loads (the table is 16-byte aligned): cheaper than a copy.
            let at = 16 * idx as usize;
            let load = |off: usize| {
                table
                    .load::<u64>(at + off, Ordering::Relaxed)
                    .map_err(|_| ChainError::BadIndex(idx))
            };
            let addr = load(0)?;
            let rest = load(8)?;
            let len = rest as u32;
            let flags = (rest >> 32) as u16;
            let next = (rest >> 48) as u16;
            if flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::Indirect(head));
            }
            let writable = flags & DESC_F_WRITE != 0;
            if seen_write && !writable {
                return Err(ChainError::ReadAfterWrite(head));
            }
            seen_write |= writable;
            if !in_mem(mem, GuestAddress(addr), len as u64) {
                return Err(ChainError::OutOfRange { addr, len });
            }
            descs.push(Descriptor {
                addr: GuestAddress(addr),
                len,
                writable,
            });
            if flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = next;
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMem, head: u16, len: u32) -> Result<(), ChainError> {
        self.push_used(mem, head, len)?;
        self.publish_used(mem)
    }

    /// Writes the used element for chain `head` without publishing it: the driver sees it
    /// after the next [`Queue::publish_used`] (one index store for a batch).
    pub fn push_used(&mut self, mem: &GuestMem, head: u16, len: u32) -> Result<(), ChainError> {
        let slot = (self.next_used % self.size) as u64;
        let elem = self.used.unchecked_add(4 + 8 * slot);
        // The used ring is only 4-byte aligned: two 4-byte stores.
        let store = |v: u32, at: GuestAddress| {
            mem.store(v.to_le(), at, Ordering::Relaxed)
                .map_err(|_| ChainError::UsedRing(at.0))
        };
        store(head as u32, elem)?;
        store(len, elem.unchecked_add(4))?;
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Publishes every used element pushed so far with one store of the used index.
    pub fn publish_used(&mut self, mem: &GuestMem) -> Result<(), ChainError> {
        // The elements must be visible before the index that publishes them.
        fence(Ordering::Release);
        mem.write_obj(self.next_used, self.used.unchecked_add(2))
            .map_err(|_| ChainError::UsedRing(self.used.0 + 2))
    }
}

/// Copies between guest buffers and host memory as one contiguous stream.
pub struct Segments<'a> {
    descs: &'a [Descriptor],
}

impl<'a> Segments<'a> {
    /// The stream over `descs` (from [`DescriptorChain::readable`] or `writable`).
    pub fn new(descs: std::slice::Iter<'a, Descriptor>) -> Self {
        Segments {
            descs: descs.as_slice(),
        }
    }

    /// Total length.
    pub fn len(&self) -> u64 {
        self.descs.iter().map(|d| d.len as u64).sum()
    }

    /// Calls `f(guest address, offset in the range, length)` for each piece of the bytes
    /// `[offset, offset + len)` of the stream.
    pub fn for_range(
        &self,
        mut offset: u64,
        mut len: u64,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        let mut done = 0usize;
        for d in self.descs {
            if len == 0 {
                break;
            }
            let dl = d.len as u64;
            if offset >= dl {
                offset -= dl;
                continue;
            }
            let n = (dl - offset).min(len);
            f(d.addr.unchecked_add(offset), done, n as usize)?;
            done += n as usize;
            len -= n;
            offset = 0;
        }
        if len != 0 {
            return Err(ChainError::Request(
                "buffers are shorter than the request".into(),
            ));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at stream `offset`.
    pub fn read(&self, mem: &GuestMem, offset: u64, buf: &mut [u8]) -> Result<(), ChainError> {
        self.for_range(offset, buf.len() as u64, |a, at, n| {
            mem.read_slice(&mut buf[at..at + n], a)
                .map_err(|_| ChainError::OutOfRange {
                    addr: a.0,
                    len: n as u32,
                })
        })
    }

    /// Writes `buf` at stream `offset`.
    pub fn write(&self, mem: &GuestMem, offset: u64, buf: &[u8]) -> Result<(), ChainError> {
        self.for_range(offset, buf.len() as u64, |a, at, n| {
            mem.write_slice(&buf[at..at + n], a)
                .map_err(|_| ChainError::OutOfRange {
                    addr: a.0,
                    len: n as u32,
                })
        })
    }
}

mod notify;
#[cfg(test)]
mod tests;
