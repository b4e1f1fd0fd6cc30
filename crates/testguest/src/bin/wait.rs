//! A guest that never ends by itself: it prints a ready line, then spins in ring 3 forever,
//! counting loops into a port write every so often, so control-API tests (pause, resume,
//! stop, counters) have a running VM to act on.
#![no_std]
#![no_main]

use paddock_testguest::{entry, io, println, BootInfo};

entry!(main);

/// A port nothing is attached to: each write is one counted I/O exit.
const HEARTBEAT_PORT: u16 = 0x80;

fn main(_boot: &BootInfo) -> u32 {
    println!("wait guest ready");
    let mut n: u64 = 0;
    loop {
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 20) {
            io::outb(HEARTBEAT_PORT, n as u8);
        }
        core::hint::spin_loop();
    }
}
