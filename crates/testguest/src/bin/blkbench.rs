//! virtio-blk throughput probe for `bench/vmm.sh`: reads the disk with one request in flight,
//! sequentially in 128 KiB requests or at random 4 KiB offsets, and prints `BENCH start` and
//! `BENCH done bytes=N` so the host can time the run from the serial output.
//!
//! Parameters: `blkbench.rand=1` (random 4 KiB reads; default sequential), `blkbench.mib=N`
//! (bytes to read, default 256 MiB).
#![no_std]
#![no_main]

use paddock_testguest::virtio::{self, Device, QueueMem, F_WRITE};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

const T_IN: u32 = 0;
const SEQ_REQ: usize = 128 * 1024;

static mut QUEUE: QueueMem = QueueMem::new();

#[repr(C, align(4096))]
struct Buffers {
    header: [u8; 16],
    status: u8,
    data: [u8; SEQ_REQ],
}

static mut BUF: Buffers = Buffers { header: [0; 16], status: 0, data: [0; SEQ_REQ] };

fn read(dev: &mut Device, sector: u64, len: usize) -> Result<(), &'static str> {
    // SAFETY: single-threaded guest; the device touches these buffers only inside `submit`.
    let b = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    b.header[..4].copy_from_slice(&T_IN.to_le_bytes());
    b.header[4..8].fill(0);
    b.header[8..].copy_from_slice(&sector.to_le_bytes());
    b.status = 0xff;
    let chain = [
        (b.header.as_ptr() as u64, 16, 0),
        (b.data.as_ptr() as u64, len as u32, F_WRITE),
        (core::ptr::addr_of!(b.status) as u64, 1, F_WRITE),
    ];
    dev.submit(&chain)?;
    // SAFETY: the request completed.
    match unsafe { core::ptr::read_volatile(core::ptr::addr_of!(b.status)) } {
        0 => Ok(()),
        _ => Err("read failed"),
    }
}

fn main(boot: &BootInfo) -> u32 {
    match run(boot) {
        Ok(()) => 0,
        Err(e) => {
            println!("blkbench: FAILED: {e}");
            1
        }
    }
}

fn run(boot: &BootInfo) -> Result<(), &'static str> {
    let cmd = boot.cmdline;
    let random = virtio::param_u64(cmd, "blkbench.rand") == Some(1);
    let mib = virtio::param_u64(cmd, "blkbench.mib").unwrap_or(256);
    let slot = virtio::find(0x1af4, 0x1042).ok_or("no virtio-blk device")?;
    let mut dev = Device::open(slot)?;
    dev.negotiate(1 << 2 | 1 << 1)?;
    let capacity = virtio::r32(dev.device_cfg) as u64 | (virtio::r32(dev.device_cfg + 4) as u64) << 32;
    dev.start(core::ptr::addr_of_mut!(QUEUE))?;
    let total = (mib << 20).min(capacity * 512);
    let req = if random { 4096 } else { SEQ_REQ };
    let count = total / req as u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    println!("BENCH start mode={} bytes={}", if random { "rand" } else { "seq" }, count * req as u64);
    for i in 0..count {
        let sector = if random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % (capacity / 8)) * 8
        } else {
            i * (req as u64 / 512)
        };
        read(&mut dev, sector, req)?;
    }
    println!("BENCH done bytes={}", count * req as u64);
    Ok(())
}
