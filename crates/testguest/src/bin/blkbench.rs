//! virtio-blk throughput probe for `bench/vmm.sh`: reads the disk with one request in flight,
//! sequentially in 128 KiB requests or at random 4 KiB offsets, and prints `BENCH start` and
//! `BENCH done bytes=N` so the host can time the run from the serial output.
//!
//! Parameters: `blkbench.rand=1` (random 4 KiB reads; default sequential), `blkbench.mib=N`
//! (bytes to read, default 256 MiB), `blkbench.qd=N` (requests in flight, 1 to 4, default 4).
#![no_std]
#![no_main]

use paddock_testguest::virtio::{self, Device, QueueMem, F_WRITE};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

const T_IN: u32 = 0;
const SEQ_REQ: usize = 128 * 1024;
/// Most requests in flight: three descriptors each must fit the 16-entry queue.
const MAX_QD: usize = 4;

static mut QUEUE: QueueMem = QueueMem::new();

#[repr(C, align(4096))]
struct Buffers {
    data: [[u8; SEQ_REQ]; MAX_QD],
    header: [[u8; 16]; MAX_QD],
    status: [u8; MAX_QD],
}

static mut BUF: Buffers = Buffers { data: [[0; SEQ_REQ]; MAX_QD], header: [[0; 16]; MAX_QD], status: [0; MAX_QD] };

/// Reads `len` bytes at each of `sectors`, all in flight at once.
fn read_batch(dev: &mut Device, sectors: &[u64], len: usize) -> Result<(), &'static str> {
    // SAFETY: single-threaded guest; the device touches these buffers only inside the submit.
    let b = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let mut chains = [[(0u64, 0u32, 0u16); 3]; MAX_QD];
    for (k, &sector) in sectors.iter().enumerate() {
        b.header[k][..4].copy_from_slice(&T_IN.to_le_bytes());
        b.header[k][4..8].fill(0);
        b.header[k][8..].copy_from_slice(&sector.to_le_bytes());
        b.status[k] = 0xff;
        chains[k] = [
            (b.header[k].as_ptr() as u64, 16, 0),
            (b.data[k].as_ptr() as u64, len as u32, F_WRITE),
            (core::ptr::addr_of!(b.status[k]) as u64, 1, F_WRITE),
        ];
    }
    let refs: [&[(u64, u32, u16)]; MAX_QD] = [&chains[0], &chains[1], &chains[2], &chains[3]];
    dev.submit_batch(&refs[..sectors.len()])?;
    for k in 0..sectors.len() {
        // SAFETY: the requests completed.
        if unsafe { core::ptr::read_volatile(core::ptr::addr_of!(b.status[k])) } != 0 {
            return Err("read failed");
        }
    }
    Ok(())
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
    let qd = (virtio::param_u64(cmd, "blkbench.qd").unwrap_or(MAX_QD as u64) as usize).clamp(1, MAX_QD) as u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    println!("BENCH start mode={} qd={qd} bytes={}", if random { "rand" } else { "seq" }, count * req as u64);
    let mut i = 0;
    while i < count {
        let n = qd.min(count - i);
        let mut sectors = [0u64; MAX_QD];
        for (k, s) in sectors.iter_mut().take(n as usize).enumerate() {
            *s = if random {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % (capacity / 8)) * 8
            } else {
                (i + k as u64) * (req as u64 / 512)
            };
        }
        read_batch(&mut dev, &sectors[..n as usize], req)?;
        i += n;
    }
    println!("BENCH done bytes={}", count * req as u64);
    Ok(())
}
