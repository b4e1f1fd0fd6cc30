//! An interactive COM1 guest: prints `echo guest ready`, then sends back every byte it reads
//! on COM1 upper-cased (polling the line status register) until it reads `q`; then it prints
//! `echo guest bye` and exits 0 through debug-exit.
#![no_std]
#![no_main]

use paddock_testguest::io::{inb, serial_byte, COM1};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

/// Line status register: bit 0 is "data ready".
const LSR: u16 = COM1 + 5;

fn main(_boot: &BootInfo) -> u32 {
    println!("echo guest ready");
    loop {
        if inb(LSR) & 1 == 0 {
            core::hint::spin_loop();
            continue;
        }
        let b = inb(COM1);
        if b == b'q' {
            break;
        }
        serial_byte(b.to_ascii_uppercase());
    }
    println!();
    println!("echo guest bye");
    0
}
