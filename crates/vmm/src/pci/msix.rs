//! MSI-X: the capability, the vector table and the pending-bit array (both in a BAR), masking,
//! and delivery through one irqfd and one KVM MSI route per vector.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::backend::{BackendError, MsiMessage, VmBackend};

/// Capability ID of MSI-X.
pub const CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control: masked.
pub const VECTOR_MASKED: u32 = 1;

/// The capability body (12 bytes) and its write mask: table and PBA in `bar` at the offsets.
pub fn capability(vectors: u16, bar: u8, table_off: u32, pba_off: u32) -> ([u8; 12], [u8; 12]) {
    let mut b = [0u8; 12];
    b[0] = CAP_ID;
    b[2..4].copy_from_slice(&(vectors - 1).to_le_bytes());
    b[4..8].copy_from_slice(&(table_off | bar as u32).to_le_bytes());
    b[8..12].copy_from_slice(&(pba_off | bar as u32).to_le_bytes());
    let mut m = [0u8; 12];
    m[3] = 0xc0; // enable and function mask
    (b, m)
}

#[derive(Clone, Copy, Default)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Entry {
    fn msg(&self) -> MsiMessage {
        MsiMessage {
            addr: (self.addr_hi as u64) << 32 | self.addr_lo as u64,
            data: self.data,
        }
    }
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_mask: bool,
    irqfds: Vec<EventFd>,
    first_gsi: u32,
    backend: Arc<dyn VmBackend>,
}

impl Msix {
    /// `vectors` vectors, all masked, each with a GSI and an irqfd registered on `backend`.
    pub fn new(vectors: u16, backend: Arc<dyn VmBackend>) -> Result<Self, BackendError> {
        let first_gsi = backend.allocate_gsis(vectors as u32)?;
        let mut irqfds = Vec::new();
        for i in 0..vectors as u32 {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| {
                BackendError::Kvm(crate::kvm::KvmError::Ioctl {
                    what: "eventfd for MSI-X",
                    source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
                })
            })?;
            backend.register_irqfd(&evt, first_gsi + i)?;
            irqfds.push(evt);
        }
        Ok(Msix {
            entries: vec![
                Entry {
                    ctrl: VECTOR_MASKED,
                    ..Default::default()
                };
                vectors as usize
            ],
            pending: vec![false; vectors as usize],
            enabled: false,
            function_mask: false,
            irqfds,
            first_gsi,
            backend,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The GSI of `vector`.
    pub fn gsi(&self, vector: u16) -> u32 {
        self.first_gsi + vector as u32
    }

    /// The irqfd of `vector` (tests wait on it).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.irqfds.get(vector as usize)
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending.get(vector as usize).copied().unwrap_or(false)
    }

    fn masked(&self, v: usize) -> bool {
        self.function_mask || self.entries[v].ctrl & VECTOR_MASKED != 0
    }

    /// Applies a new message-control value from the capability.
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_mask = ctrl & CTRL_FUNCTION_MASK != 0;
        for v in 0..self.entries.len() {
            self.update_route(v);
            self.deliver_pending(v);
        }
    }

    fn update_route(&self, v: usize) {
        let msg = (self.enabled && self.entries[v].ctrl & VECTOR_MASKED == 0)
            .then(|| self.entries[v].msg());
        if let Err(e) = self.backend.set_msi_route(self.first_gsi + v as u32, msg) {
            eprintln!("paddock-vmm: MSI-X vector {v}: cannot set its route: {e}");
        }
    }

    fn deliver_pending(&mut self, v: usize) {
        if self.enabled && self.pending[v] && !self.masked(v) {
            self.pending[v] = false;
            self.fire(v);
        }
    }

    fn fire(&self, v: usize) {
        if let Err(e) = self.irqfds[v].write(1) {
            eprintln!("paddock-vmm: MSI-X vector {v}: irqfd write failed: {e}");
        }
    }

    /// Raises `vector`: delivered now, or left pending while masked. Returns false when MSI-X
    /// is off or the vector does not exist.
    pub fn notify(&mut self, vector: u16) -> bool {
        let v = vector as usize;
        if !self.enabled || v >= self.entries.len() {
            return false;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.fire(v);
        }
        true
    }

    /// Guest read of the table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let (v, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get(v) else {
            data.fill(0);
            return;
        };
        let words = [e.addr_lo, e.addr_hi, e.data, e.ctrl];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = field as usize;
        let end = (start + data.len()).min(16);
        data.fill(0);
        data[..end - start].copy_from_slice(&bytes[start..end]);
    }

    /// Guest write to the table at `offset` (4- or 8-byte aligned accesses).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (v, field) = (
            (offset / ENTRY_SIZE) as usize,
            (offset % ENTRY_SIZE) as usize,
        );
        if v >= self.entries.len() || field + data.len() > 16 || data.len() % 4 != 0 {
            return;
        }
        let was_masked = self.entries[v].ctrl & VECTOR_MASKED != 0;
        for (i, chunk) in data.chunks(4).enumerate() {
            let w = u32::from_le_bytes(chunk.try_into().unwrap_or([0; 4]));
            let e = &mut self.entries[v];
            match (field / 4) + i {
                0 => e.addr_lo = w,
                1 => e.addr_hi = w,
                2 => e.data = w,
                _ => e.ctrl = w & VECTOR_MASKED,
            }
        }
        let masked = self.entries[v].ctrl & VECTOR_MASKED != 0;
        if field >= 12 || !masked {
            if was_masked != masked || !masked {
                self.update_route(v);
            }
            self.deliver_pending(v);
        }
    }

    /// Guest read of the pending-bit array at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let base = (offset as usize + i) * 8;
            *b = (0..8)
                .filter(|bit| self.pending.get(base + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | 1 << bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::backend::RecordingBackend;

    fn msix(n: u16) -> (Msix, Arc<RecordingBackend>) {
        let b = Arc::new(RecordingBackend::default());
        (Msix::new(n, b.clone()).unwrap(), b)
    }

    fn program(m: &mut Msix, v: u64, addr: u32, data: u32, masked: bool) {
        m.write_table(v * 16, &addr.to_le_bytes());
        m.write_table(v * 16 + 4, &0u32.to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
        m.write_table(v * 16 + 12, &(masked as u32).to_le_bytes());
    }

    #[test]
    fn capability_layout() {
        let (b, m) = capability(3, 0, 0x4000, 0x6000);
        assert_eq!(b[0], 0x11);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 2);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 0x6000);
        assert_eq!(m[3], 0xc0);
    }

    #[test]
    fn vectors_start_masked_and_routes_follow_the_table() {
        let (mut m, b) = msix(2);
        assert_eq!(*b.irqfds.lock().unwrap(), vec![24, 25]);
        let mut d = [0u8; 4];
        m.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        m.set_control(CTRL_ENABLE);
        program(&mut m, 1, 0xfee0_0000, 0x4041, false);
        assert_eq!(
            b.routes.lock().unwrap().get(&25),
            Some(&MsiMessage {
                addr: 0xfee0_0000,
                data: 0x4041
            })
        );
        assert!(!b.routes.lock().unwrap().contains_key(&24));
        m.read_table(16 + 8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x4041);
        m.set_control(0);
        assert!(b.routes.lock().unwrap().is_empty());
    }

    #[test]
    fn masked_vectors_set_the_pending_bit_and_fire_on_unmask() {
        let (mut m, _b) = msix(2);
        assert!(!m.notify(0), "MSI-X off: nothing delivered");
        m.set_control(CTRL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 0x30, true);
        assert!(m.notify(0));
        assert!(m.is_pending(0));
        let mut p = [0u8; 1];
        m.read_pba(0, &mut p);
        assert_eq!(p[0], 1);
        assert!(
            m.irqfd(0).unwrap().read().is_err(),
            "no interrupt while masked"
        );
        m.write_table(12, &0u32.to_le_bytes());
        assert!(!m.is_pending(0));
        assert_eq!(m.irqfd(0).unwrap().read().unwrap(), 1);
        // Function mask holds everything back too.
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        m.notify(0);
        assert!(m.is_pending(0));
        m.set_control(CTRL_ENABLE);
        assert_eq!(m.irqfd(0).unwrap().read().unwrap(), 1);
        // Out-of-range vectors and bad accesses are ignored.
        assert!(!m.notify(7));
        m.write_table(0x100, &[1, 2, 3, 4]);
        m.write_table(1, &[1, 2, 3]);
    }
}
