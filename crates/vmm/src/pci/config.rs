//! A type-0 PCI configuration header with write masks: BARs size themselves through their
//! masks (write all-ones, read back the size mask), and capabilities are chained from 0x40.

/// Bytes of conventional configuration space (ECAM exposes 4 KiB; the rest reads as zero).
pub const CONFIG_SIZE: usize = 256;
/// Offset of the vendor ID.
pub const VENDOR_ID: usize = 0x00;
/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Offset of the status register.
pub const STATUS: usize = 0x06;
/// Offset of the first BAR.
pub const BAR0: usize = 0x10;
/// Offset of the capability pointer.
pub const CAP_PTR: usize = 0x34;
/// Command bit: memory space decoding.
pub const COMMAND_MEMORY: u16 = 0x2;
/// Command bit: bus mastering.
pub const COMMAND_BUS_MASTER: u16 = 0x4;
/// Status bit: a capability list is present.
pub const STATUS_CAP_LIST: u16 = 0x10;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
/// First offset capabilities are placed at.
pub const CAP_START: usize = 0x40;

/// Identity of a PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code, subclass and programming interface (24 bits).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// The configuration space of one function.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bar_sizes: [u64; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl ConfigSpace {
    /// A header with `ids`; only the command, cache-line, latency and interrupt-line
    /// registers are writable until BARs and capabilities are added.
    pub fn new(ids: PciIds) -> Self {
        let mut c = ConfigSpace {
            regs: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bar_sizes: [0; NUM_BARS],
            last_cap: None,
            next_cap: CAP_START,
        };
        c.put(VENDOR_ID, &ids.vendor.to_le_bytes());
        c.put(0x02, &ids.device.to_le_bytes());
        c.regs[0x08] = ids.revision;
        c.put(0x09, &ids.class.to_le_bytes()[..3]);
        c.put(0x2c, &ids.subsystem_vendor.to_le_bytes());
        c.put(0x2e, &ids.subsystem.to_le_bytes());
        // I/O, memory, bus master; INTx disable.
        c.wmask[COMMAND] = 0x07;
        c.wmask[COMMAND + 1] = 0x04;
        c.wmask[0x0c] = 0xff; // cache line size
        c.wmask[0x0d] = 0xff; // latency timer
        c.wmask[0x3c] = 0xff; // interrupt line
        c
    }

    fn put(&mut self, offset: usize, bytes: &[u8]) {
        self.regs[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Declares BAR `index` as a 32-bit non-prefetchable memory BAR of `size` bytes (a power
    /// of two, at least 16).
    pub fn add_mem32_bar(&mut self, index: usize, size: u32) {
        assert!(index < NUM_BARS && size.is_power_of_two() && size >= 16);
        let off = BAR0 + index * 4;
        self.bar_sizes[index] = size as u64;
        self.wmask[off..off + 4].copy_from_slice(&(!(size - 1)).to_le_bytes());
        // Flag bits (memory, 32-bit, non-prefetchable) are zero and read-only.
        self.put(off, &[0; 4]);
    }

    /// Size of BAR `index` (0 when absent).
    pub fn bar_size(&self, index: usize) -> u64 {
        self.bar_sizes.get(index).copied().unwrap_or(0)
    }

    /// Address programmed into BAR `index`.
    pub fn bar_addr(&self, index: usize) -> u64 {
        (self.read_u32(BAR0 + index * 4) & !0xf) as u64
    }

    /// Programs BAR `index` (the VMM's initial allocation).
    pub fn set_bar_addr(&mut self, index: usize, addr: u32) {
        let off = BAR0 + index * 4;
        let mask = u32::from_le_bytes(self.wmask[off..off + 4].try_into().unwrap_or([0; 4]));
        let v = (self.read_u32(off) & !mask) | (addr & mask);
        self.put(off, &v.to_le_bytes());
    }

    /// Appends a capability: `body` starts with the ID byte and a placeholder next byte;
    /// `wmask` (same length) says which bits the guest may write. Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> usize {
        assert!(body.len() >= 2 && wmask.len() == body.len());
        let off = self.next_cap;
        assert!(
            off + body.len() <= CONFIG_SIZE,
            "capabilities overflow config space"
        );
        self.put(off, body);
        self.regs[off + 1] = 0;
        self.wmask[off..off + body.len()].copy_from_slice(wmask);
        match self.last_cap {
            Some(prev) => self.regs[prev + 1] = off as u8,
            None => {
                self.regs[CAP_PTR] = off as u8;
                let st = self.read_u16(STATUS) | STATUS_CAP_LIST;
                self.put(STATUS, &st.to_le_bytes());
            }
        }
        self.last_cap = Some(off);
        self.next_cap = (off + body.len() + 3) & !3;
        off
    }

    /// Reads `data.len()` bytes at `offset` (beyond 256 bytes reads as zero).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.regs.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Guest write: only the bits in the write mask change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let o = offset + i;
            if o < CONFIG_SIZE {
                let m = self.wmask[o];
                self.regs[o] = (self.regs[o] & !m) | (b & m);
            }
        }
    }

    /// A little-endian 16-bit register.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// A little-endian 32-bit register.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x018000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn header_fields_and_read_only_ids() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(8), 0x0180_0001);
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), 0x0407);
        let mut big = [0u8; 4];
        c.read(0x800, &mut big);
        assert_eq!(big, [0; 4]);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = ConfigSpace::new(ids());
        c.add_mem32_bar(0, 0x8000);
        c.set_bar_addr(0, 0xc000_8000);
        assert_eq!(c.bar_addr(0), 0xc000_8000);
        c.write(BAR0, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0), 0xffff_8000);
        c.write(BAR0, &0xc001_0000u32.to_le_bytes());
        assert_eq!(c.bar_addr(0), 0xc001_0000);
        // An absent BAR reads zero whatever is written.
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0 + 4), 0);
    }

    #[test]
    fn capabilities_chain_from_the_pointer() {
        let mut c = ConfigSpace::new(ids());
        let a = c.add_capability(&[0x11, 0xee, 1, 2], &[0, 0, 0xff, 0]);
        let b = c.add_capability(&[0x09, 0, 16], &[0; 3]);
        assert_eq!(c.read_u16(STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(c.regs[CAP_PTR] as usize, a);
        assert_eq!(c.regs[a + 1] as usize, b);
        assert_eq!(c.regs[b + 1], 0);
        c.write(a, &[0xff, 0xff, 0x55, 0x55]);
        assert_eq!(&c.regs[a..a + 4], &[0x11, b as u8, 0x55, 2]);
    }
}
