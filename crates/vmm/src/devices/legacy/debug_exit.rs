//! The debug-exit port (0xf4): a guest writes a status and the VM ends with it. Test guests
//! use it; like QEMU's `isa-debug-exit`, it exists only when asked for (`--debug-exit`).

use crate::bus::BusDevice;
use crate::exit::ExitSignal;

/// Port of the device.
pub const PORT: u64 = 0xf4;

/// The debug-exit device.
pub struct DebugExit {
    exit: ExitSignal,
}

impl DebugExit {
    /// A device that ends the VM through `exit`.
    pub fn new(exit: ExitSignal) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            let mut v = [0u8; 4];
            let n = data.len().min(4);
            v[..n].copy_from_slice(&data[..n]);
            let status = u32::from_le_bytes(v).min(255) as i32;
            self.exit.request(status, "guest wrote the debug-exit port");
        }
    }
}
