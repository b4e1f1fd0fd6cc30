//! A guest that crashes on purpose: `ud2` with no IDT installed triple-faults the vCPU. The
//! VMM must end with a non-zero status and a register dump, never status 0.
#![no_std]
#![no_main]

use paddock_testguest::{entry, println, BootInfo};

entry!(main);

fn main(_boot: &BootInfo) -> u32 {
    println!("crashing on purpose");
    // SAFETY: deliberately raises #UD; with no IDT the vCPU triple-faults.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}
