//! The root complex of bus 0: slots, configuration access through ports 0xcf8/0xcfc and
//! ECAM, BAR allocation in the 32-bit PCI window, and dispatch of BAR accesses, remapped
//! whenever the guest moves a BAR or toggles memory decoding.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::{COMMAND_MEMORY, NUM_BARS};
use super::host_bridge::HostBridge;
use super::PciDevice;
use crate::arch::x86_64::{PCI_MMIO_SIZE, PCI_MMIO_START};
use crate::bus::BusDevice;

/// Slots on bus 0.
pub const SLOTS: usize = 32;
/// Bytes of configuration space per function in ECAM.
pub const ECAM_FUNCTION_SIZE: u64 = 4096;

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Errors placing devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// Every slot is taken.
    #[error("no free PCI slot on bus 0")]
    NoSlot,
    /// The BARs do not fit the PCI MMIO window.
    #[error("PCI MMIO window is full (BAR of {0:#x} bytes)")]
    NoBarSpace(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    len: u64,
    slot: usize,
    bar: usize,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bus 0 and its devices.
pub struct PciRoot {
    slots: Vec<Option<SharedPciDevice>>,
    config_address: u32,
    mappings: BTreeMap<u64, Mapping>,
    decoded: HashMap<(usize, usize), u64>,
    next_bar: u64,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// Bus 0 with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        PciRoot {
            slots,
            config_address: 0,
            mappings: BTreeMap::new(),
            decoded: HashMap::new(),
            next_bar: PCI_MMIO_START,
        }
    }

    /// Places `dev` in the next free slot and programs its BARs from the PCI window (they
    /// decode once the guest sets memory decoding in the command register). Returns the slot.
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(|s| s.is_none())
            .ok_or(PciError::NoSlot)?;
        {
            let mut d = lock(&dev);
            let mut next = self.next_bar;
            let mut addrs = Vec::new();
            for bar in 0..NUM_BARS {
                let size = d.config().bar_size(bar);
                if size == 0 {
                    continue;
                }
                let base = next.next_multiple_of(size);
                if base + size > PCI_MMIO_START + PCI_MMIO_SIZE {
                    return Err(PciError::NoBarSpace(size));
                }
                addrs.push((bar, base));
                next = base + size;
            }
            for (bar, base) in addrs {
                let off = super::config::BAR0 + bar * 4;
                d.config_write(off, &(base as u32).to_le_bytes());
            }
            self.next_bar = next;
        }
        self.slots[slot] = Some(dev);
        Ok(slot as u8)
    }

    /// The device in `slot`.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots.get(slot as usize).cloned().flatten()
    }

    /// Configuration read of bus 0, `slot`, `func` at `offset`: all-ones where nothing is.
    pub fn config_read(&mut self, slot: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self
            .device(slot)
            .filter(|_| func == 0 && valid_access(offset, data.len()))
        {
            Some(d) => lock(&d).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write of bus 0, `slot`, `func` at `offset`.
    pub fn config_write(&mut self, slot: u8, func: u8, offset: usize, data: &[u8]) {
        if let Some(d) = self
            .device(slot)
            .filter(|_| func == 0 && valid_access(offset, data.len()))
        {
            lock(&d).config_write(offset, data);
            self.refresh(slot as usize, &d);
        }
    }

    /// Recomputes where the BARs of the device in `slot` decode, after a config write.
    fn refresh(&mut self, slot: usize, dev: &SharedPciDevice) {
        let mut d = lock(dev);
        let decoding = d.config().command() & COMMAND_MEMORY != 0;
        for bar in 0..NUM_BARS {
            let size = d.config().bar_size(bar);
            if size == 0 {
                continue;
            }
            let addr = d.config().bar_addr(bar);
            let old = self.decoded.get(&(slot, bar)).copied();
            if let Some(o) = old {
                self.mappings.remove(&o);
            }
            let inside = addr >= PCI_MMIO_START && addr + size <= PCI_MMIO_START + PCI_MMIO_SIZE;
            let new = (decoding && inside && !self.overlaps(addr, size)).then_some(addr);
            if decoding && addr != 0 && new.is_none() && old != Some(addr) {
                eprintln!(
                    "paddock-vmm: PCI 00:{slot:02x}.0 BAR{bar} at {addr:#x} is outside the PCI window or overlaps another BAR; it does not decode"
                );
            }
            match new {
                Some(a) => {
                    self.mappings.insert(
                        a,
                        Mapping {
                            len: size,
                            slot,
                            bar,
                        },
                    );
                    self.decoded.insert((slot, bar), a);
                }
                None => {
                    self.decoded.remove(&(slot, bar));
                }
            }
            if old != new {
                d.bar_moved(bar, old, new);
            }
        }
    }

    fn overlaps(&self, addr: u64, len: u64) -> bool {
        self.mappings
            .range(..addr + len)
            .next_back()
            .is_some_and(|(&b, m)| b + m.len > addr)
    }

    fn find(&self, addr: u64) -> Option<(u64, Mapping)> {
        let (&base, m) = self.mappings.range(..=addr).next_back()?;
        (addr - base < m.len).then_some((base, *m))
    }

    /// A guest access inside the PCI window at absolute address `addr`.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        match self
            .find(addr)
            .and_then(|(b, m)| Some((b, m, self.device(m.slot as u8)?)))
        {
            Some((base, m, d)) => lock(&d).bar_read(m.bar, addr - base, data),
            None => data.fill(0xff),
        }
    }

    /// A guest write inside the PCI window at absolute address `addr`.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if let Some((base, m, d)) = self
            .find(addr)
            .and_then(|(b, m)| Some((b, m, self.device(m.slot as u8)?)))
        {
            lock(&d).bar_write(m.bar, addr - base, data);
        }
    }
}

fn valid_access(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset % len == 0 && offset < ECAM_FUNCTION_SIZE as usize
}

/// Ports 0xcf8 (address) and 0xcfc..0xcff (data): configuration mechanism #1.
pub struct PciConfigIo(pub Arc<Mutex<PciRoot>>);

/// Decodes a 0xcf8 address: enabled, bus 0 only; returns slot, function, register.
fn decode_cf8(a: u32) -> Option<(u8, u8, usize)> {
    let enabled = a & 0x8000_0000 != 0;
    let bus = (a >> 16) & 0xff;
    (enabled && bus == 0).then_some((
        ((a >> 11) & 0x1f) as u8,
        ((a >> 8) & 7) as u8,
        (a & 0xfc) as usize,
    ))
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut root = lock(&self.0);
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&root.config_address.to_le_bytes());
            return;
        }
        match (offset >= 4)
            .then(|| decode_cf8(root.config_address))
            .flatten()
        {
            Some((slot, func, reg)) => {
                root.config_read(slot, func, reg + (offset as usize - 4), data)
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut root = lock(&self.0);
        if offset == 0 && data.len() == 4 {
            root.config_address = u32::from_le_bytes(data.try_into().unwrap_or([0; 4]));
            return;
        }
        if let Some((slot, func, reg)) = (offset >= 4)
            .then(|| decode_cf8(root.config_address))
            .flatten()
        {
            root.config_write(slot, func, reg + (offset as usize - 4), data);
        }
    }
}

/// ECAM: one 4 KiB page per function at `PCI_ECAM_START + (bus << 20 | dev << 15 | fn << 12)`.
pub struct PciConfigMmio(pub Arc<Mutex<PciRoot>>);

fn decode_ecam(offset: u64) -> Option<(u8, u8, usize)> {
    let bus = offset >> 20;
    (bus == 0).then_some((
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 7) as u8,
        (offset & 0xfff) as usize,
    ))
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match decode_ecam(offset) {
            Some((s, f, r)) => lock(&self.0).config_read(s, f, r, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((s, f, r)) = decode_ecam(offset) {
            lock(&self.0).config_write(s, f, r, data);
        }
    }
}

/// The 32-bit PCI MMIO window: BAR accesses go to whichever device decodes there now.
pub struct PciMmioWindow(pub Arc<Mutex<PciRoot>>);

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).mmio_read(PCI_MMIO_START + offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).mmio_write(PCI_MMIO_START + offset, data);
    }
}

#[cfg(test)]
mod tests;
