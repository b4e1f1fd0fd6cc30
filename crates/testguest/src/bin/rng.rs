//! Reads 4 KiB from virtio-rng by polling and checks it is neither all zero nor constant.
#![no_std]
#![no_main]

use paddock_testguest::virtio::{self, Device, QueueMem, F_WRITE};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

static mut QUEUE: QueueMem = QueueMem::new();

#[repr(C, align(4096))]
struct Page([u8; 4096]);

static mut PAGE: Page = Page([0; 4096]);

fn main(_boot: &BootInfo) -> u32 {
    match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("rng: FAILED: {e}");
            1
        }
    }
}

fn run() -> Result<(), &'static str> {
    let slot = virtio::find(0x1af4, 0x1044).ok_or("no virtio-rng device")?;
    let mut dev = Device::open(slot)?;
    dev.negotiate(0)?;
    // The queue memory is used only by this driver and the device.
    // SAFETY: QUEUE is this guest's own static, used by nothing but this queue and the device.
    unsafe { dev.start(core::ptr::addr_of_mut!(QUEUE)) }?;
    let addr = core::ptr::addr_of!(PAGE) as u64;
    let used = dev.submit(&[(addr, 4096, F_WRITE)])?;
    // SAFETY: the device has completed the request.
    let bytes = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(PAGE)) };
    let mut seen = [false; 256];
    for &b in &bytes.0 {
        seen[b as usize] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    let zero = bytes.0.iter().all(|&b| b == 0);
    println!("rng 00:{slot:02x}.0: used={used} distinct={distinct} all_zero={zero}");
    if used != 4096 || zero || distinct < 2 {
        return Err("entropy looks wrong");
    }
    println!("rng ok");
    Ok(())
}
