//! The i8042 keyboard controller, reduced to what a VM needs: its status port, and the CPU
//! reset command (0xfe on port 0x64), which ends the VM.

use crate::bus::BusDevice;
use crate::exit::ExitSignal;

/// Base port; the device spans 0x60..=0x64.
pub const BASE: u64 = 0x60;

/// The i8042 device.
pub struct I8042 {
    exit: ExitSignal,
}

impl I8042 {
    /// A controller whose reset line ends the VM through `exit`.
    pub fn new(exit: ExitSignal) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Output buffer empty, input buffer empty: nothing to read, ready for commands.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 && data.first() == Some(&0xfe) {
            self.exit.request(0, "guest reset through the i8042");
        }
    }
}
