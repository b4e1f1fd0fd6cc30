//! Reads the CMOS RTC through ports 0x70/0x71 in its BCD, 24-hour mode, as PC firmware and
//! Linux do, and prints the date and time; then checks that CMOS memory keeps a byte.
#![no_std]
#![no_main]

use paddock_testguest::io::{inb, outb};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

fn cmos(index: u8) -> u8 {
    outb(0x70, index);
    inb(0x71)
}

fn bcd(v: u8) -> u32 {
    u32::from(v >> 4) * 10 + u32::from(v & 0x0f)
}

fn main(_boot: &BootInfo) -> u32 {
    // Wait out an update in progress, as readers of the chip must.
    let mut spins = 0u32;
    while cmos(0x0a) & 0x80 != 0 {
        spins += 1;
        if spins > 100_000 {
            println!("RTC update never ends (no RTC at 0x70?)");
            return 1;
        }
        core::hint::spin_loop();
    }
    let (s, mi, h) = (bcd(cmos(0x00)), bcd(cmos(0x02)), bcd(cmos(0x04)));
    let (d, mo, y, c) = (
        bcd(cmos(0x07)),
        bcd(cmos(0x08)),
        bcd(cmos(0x09)),
        bcd(cmos(0x32)),
    );
    println!(
        "RTC {:02}{:02}-{:02}-{:02} {:02}:{:02}:{:02} mode={:#04x} valid={}",
        c,
        y,
        mo,
        d,
        h,
        mi,
        s,
        cmos(0x0b),
        cmos(0x0d) >> 7
    );
    outb(0x70, 0x40);
    outb(0x71, 0xa5);
    if cmos(0x40) != 0xa5 {
        println!("CMOS memory lost a byte");
        return 1;
    }
    0
}
