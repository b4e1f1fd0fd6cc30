//! virtio-rng: fills every device-writable buffer the guest offers with bytes from the
//! kernel's random source (getrandom(2)).

use super::queue::{ChainError, Queue, Segments};
use super::worker::QueueHandler;
use super::{VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::memory::GuestMem;

/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes served per chain (larger buffers are filled up to this).
pub const MAX_CHAIN_BYTES: u64 = 64 * 1024;
/// PCI class: unassigned ("device does not fit any defined class").
pub const PCI_CLASS: u32 = 0xff_00_00;

/// The entropy device.
#[derive(Default)]
pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        TYPE_RNG
    }
    fn name(&self) -> &str {
        "rng"
    }
    fn pci_class(&self) -> u32 {
        PCI_CLASS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_len(&self) -> u32 {
        0
    }
    fn activate(&mut self, _acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        Ok(Box::new(RngHandler))
    }
}

/// Fills `buf` from getrandom(2).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the valid, owned slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Serves the request queue.
pub struct RngHandler;

impl QueueHandler for RngHandler {
    fn process(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMem,
    ) -> Result<bool, ChainError> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            if chain.readable().next().is_some() {
                return Err(ChainError::Request(
                    "virtio-rng buffers must be device-writable".into(),
                ));
            }
            let out = Segments::new(chain.writable());
            let n = out.len().min(MAX_CHAIN_BYTES) as usize;
            let mut buf = vec![0u8; n];
            let written = match fill_random(&mut buf) {
                Ok(()) => {
                    out.write(mem, 0, &buf)?;
                    n as u32
                }
                Err(e) => {
                    eprintln!("paddock-vmm: virtio-rng: getrandom: {e}");
                    0
                }
            };
            queue.add_used(mem, chain.head, written)?;
            used = true;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests;
