//! The smallest guest: says hello on COM1, reports how it was booted, and exits 0.
#![no_std]
#![no_main]

use paddock_testguest::{entry, println, BootInfo};

entry!(main);

fn main(boot: &BootInfo) -> u32 {
    println!("Hello from the Paddock test guest");
    println!(
        "entry={:?} ram={} MiB regions={}",
        boot.kind,
        boot.ram_total() >> 20,
        boot.ram_count
    );
    if let Ok(cmd) = core::str::from_utf8(boot.cmdline) {
        println!("cmdline={cmd}");
    }
    0
}
