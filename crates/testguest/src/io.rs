//! Port I/O, the COM1 console and the debug-exit port.

use core::fmt;

/// COM1 base port.
pub const COM1: u16 = 0x3f8;
/// Debug-exit port: writing a status ends the VM with it.
pub const DEBUG_EXIT: u16 = 0xf4;

/// Writes a byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; IOPL 3 allows it from ring 3.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack))
    }
}

/// Reads a byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) }
    v
}

/// Writes a 32-bit value to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack))
    }
}

/// Reads a 32-bit value from an I/O port.
#[inline]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack)) }
    v
}

/// Bytes the 16550 transmit FIFO takes once the line status says it is empty.
const TX_FIFO: u32 = 16;

static TX_CREDIT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Writes a byte to COM1. Like Linux's 8250 driver, it checks the line status only when its
/// credit of FIFO slots runs out: once THRE says the FIFO is empty, 16 bytes may follow. Each
/// port access is a VM exit, so this halves the exits per character.
pub fn serial_byte(b: u8) {
    use core::sync::atomic::Ordering::Relaxed;
    if TX_CREDIT.load(Relaxed) == 0 {
        let mut spins = 0u32;
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        TX_CREDIT.store(TX_FIFO, Relaxed);
    }
    TX_CREDIT.fetch_sub(1, Relaxed);
    outb(COM1, b);
}

/// The COM1 console as a `fmt::Write`.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                serial_byte(b'\r');
            }
            serial_byte(b);
        }
        Ok(())
    }
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::io::Serial, $($arg)*);
    }};
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{ $crate::print!($($arg)*); $crate::print!("\n"); }};
}

/// ACPI PM1a control port (paddock-vmm's FADT names it).
pub const PM1A_CNT: u16 = 0x604;

/// Ends the VM with `status` through the debug-exit port. A VMM without that port gets an
/// ACPI power-off (SLP_TYP 5 with SLP_EN on PM1a), so the guest never spins forever.
pub fn exit(status: u32) -> ! {
    outl(DEBUG_EXIT, status);
    // Still running: there is no debug-exit device.
    let s5 = (5u16 << 10) | (1 << 13);
    // SAFETY: port I/O has no memory effects.
    unsafe {
        core::arch::asm!("out dx, ax", in("dx") PM1A_CNT, in("ax") s5, options(nomem, nostack))
    }
    loop {
        core::hint::spin_loop();
    }
}
