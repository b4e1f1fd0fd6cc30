//! Writes an address-derived pattern over all usable RAM the VMM announced (every region,
//! including above 4 GiB), then reads it back. Prints MiB tested per region; exits 0 when every
//! word matched, 1 with the first bad address otherwise.
#![no_std]
#![no_main]

use paddock_testguest::{entry, println, BootInfo};

entry!(main);

extern "C" {
    static __image_end: u8;
}

fn pattern(addr: u64, pass: u64) -> u64 {
    (addr ^ 0x9e37_79b9_7f4a_7c15).rotate_left((pass * 13 + 7) as u32) ^ pass
}

fn main(boot: &BootInfo) -> u32 {
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let skip_below = (image_end + 0x1f_ffff) & !0x1f_ffff;
    let mapped = (paddock_testguest::MAPPED_GIB as u64) << 30;
    let mut total = 0u64;
    for r in boot.ram() {
        let start = r.start.max(skip_below).max(0x10_0000);
        let end = (r.start + r.len).min(mapped);
        if start >= end {
            continue;
        }
        for pass in 0..2u64 {
            let mut a = start;
            while a + 8 <= end {
                // SAFETY: `a` lies in RAM the VMM announced, above this guest's image.
                unsafe { core::ptr::write_volatile(a as *mut u64, pattern(a, pass)) };
                a += 8;
            }
            let mut a = start;
            while a + 8 <= end {
                // SAFETY: as above.
                let v = unsafe { core::ptr::read_volatile(a as *const u64) };
                if v != pattern(a, pass) {
                    println!("MEM FAIL at {a:#x}: read {v:#x}");
                    return 1;
                }
                a += 8;
            }
        }
        println!(
            "MEM region {:#x}-{:#x} ok ({} MiB)",
            start,
            end,
            (end - start) >> 20
        );
        total += end - start;
    }
    println!("MEM PASS {} MiB", total >> 20);
    0
}
