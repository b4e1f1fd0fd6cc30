//! A guest driver for unit tests: lays out a split virtqueue in a `GuestMemoryMmap`, writes
//! descriptor chains (well-formed or not) and reads the used ring back.

use vm_memory::{Bytes, GuestAddress};

use super::queue::{Queue, DESC_F_NEXT, DESC_F_WRITE};
use crate::memory::{self, GuestMem};

/// Start of the area data buffers are allocated from.
const DATA_START: u64 = 0x10_0000;

/// The test driver of one queue.
pub struct Driver {
    /// Guest memory (16 MiB).
    pub mem: GuestMem,
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Avail ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    data_next: u64,
}

impl Driver {
    /// A queue of `size` entries in fresh memory.
    pub fn new(size: u16) -> Driver {
        let mem = memory::create(16 << 20).unwrap();
        let desc = 0x1000;
        let avail = desc + 16 * size as u64;
        let used = (avail + 6 + 2 * size as u64).next_multiple_of(4096);
        Driver {
            mem,
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            data_next: DATA_START,
        }
    }

    /// The device side of the queue.
    pub fn queue(&self) -> Queue {
        Queue::new(&self.mem, self.size, self.desc, self.avail, self.used).unwrap()
    }

    /// A fresh buffer of `len` bytes filled with `fill`.
    pub fn alloc(&mut self, len: usize, fill: u8) -> u64 {
        let a = self.data_next;
        self.mem
            .write_slice(&vec![fill; len], GuestAddress(a))
            .unwrap();
        self.data_next = (a + len as u64 + 15) & !15;
        a
    }

    /// A buffer holding `bytes`.
    pub fn alloc_bytes(&mut self, bytes: &[u8]) -> u64 {
        let a = self.alloc(bytes.len(), 0);
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        a
    }

    /// Writes descriptor `idx` as given.
    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, GuestAddress(self.desc + 16 * idx as u64))
            .unwrap();
    }

    /// Writes a chain of `(addr, len, writable)` buffers in consecutive descriptors and makes
    /// it available; returns its head.
    pub fn push_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if w { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.write_desc(idx, addr, len, flags, (idx + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` in the avail ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let slot = (self.avail_idx % self.size) as u64;
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Address of avail ring entry `i`.
    pub fn avail_ring_slot(&self, i: u16) -> GuestAddress {
        GuestAddress(self.avail + 4 + 2 * (i % self.size) as u64)
    }

    /// Overwrites the avail index (malformed-ring tests).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The used index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let a = self.used + 4 + 8 * (i % self.size) as u64;
        (
            self.mem.read_obj(GuestAddress(a)).unwrap(),
            self.mem.read_obj(GuestAddress(a + 4)).unwrap(),
        )
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}
