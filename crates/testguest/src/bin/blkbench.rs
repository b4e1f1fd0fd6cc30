//! virtio-blk throughput probe for `bench/vmm.sh`: reads the disk sequentially in 128 KiB
//! requests or at random 4 KiB offsets, keeping N requests in flight all the time (each
//! completion is replaced at once), and prints `BENCH start`, a short `BENCH done` the moment
//! the last request completes, then `BENCH result ... bytes=N`, so the host can time the run
//! from the serial output (every serial byte is a VM exit: the figures come after the mark,
//! not inside the timed span).
//!
//! The queue has 256 entries; a request is two descriptors (the 16-byte header, then one
//! device-writable buffer holding the data followed by the status byte), so up to 128 fit.
//! The guest polls the used ring, asks for no interrupts, and notifies only when the device
//! asks for it (EVENT_IDX where offered, else the used ring's NO_NOTIFY flag).
//!
//! Parameters: `blkbench.rand=1` (random 4 KiB reads; default sequential), `blkbench.mib=N`
//! (bytes to read, default 256 MiB), `blkbench.qd=N` (requests in flight, 1 to 128, fewer
//! for sequential reads where the buffers run out; default 32), `blkbench.eventidx=0` (do not
//! accept VIRTIO_RING_F_EVENT_IDX), `blkbench.check=1` (check that every sector read starts
//! with its own number as a little-endian u64, as the test disks are written),
//! `blkbench.segs=N` (split each data buffer into N descriptors, 1 to 32, as a Linux guest's
//! 128 KiB request arrives in 32 pages; fewer requests then fit in the queue).
#![no_std]
#![no_main]

use paddock_testguest::virtio::ring::{Queue, Ring, F_EVENT_IDX, MAX_CHAIN};
use paddock_testguest::virtio::{self, Device, F_WRITE, NEEDS_RESET};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

const T_IN: u32 = 0;
const SEQ_REQ: usize = 128 * 1024;
/// Queue entries.
const QSIZE: usize = 256;
/// Most requests in flight: two descriptors each.
const MAX_QD: usize = QSIZE / 2;
/// Room after each data buffer for the status byte (keeps buffers 64-byte aligned).
const TAIL: usize = 64;
/// The data area: 64 sequential requests, or 128 random ones.
const AREA: usize = 64 * (SEQ_REQ + TAIL);

static mut RING: Ring<QSIZE> = Ring::new();

#[repr(C, align(4096))]
struct Buffers {
    data: [u8; AREA],
    header: [[u8; 16]; MAX_QD],
}

static mut BUF: Buffers = Buffers {
    data: [0; AREA],
    header: [[0; 16]; MAX_QD],
};

fn main(boot: &BootInfo) -> u32 {
    match run(boot) {
        Ok(()) => 0,
        Err(e) => {
            println!("blkbench: FAILED: {e}");
            1
        }
    }
}

/// Where request slot `k` of `req` bytes keeps its data (the status byte follows it).
fn data(k: usize, req: usize) -> *mut u8 {
    // SAFETY: `k * (req + TAIL) + req + 1` stays inside the area (checked by the caller's qd).
    unsafe {
        core::ptr::addr_of_mut!(BUF.data)
            .cast::<u8>()
            .add(k * (req + TAIL))
    }
}

fn run(boot: &BootInfo) -> Result<(), &'static str> {
    let cmd = boot.cmdline;
    let random = virtio::param_u64(cmd, "blkbench.rand") == Some(1);
    let mib = virtio::param_u64(cmd, "blkbench.mib").unwrap_or(256);
    let want_event_idx = virtio::param_u64(cmd, "blkbench.eventidx") != Some(0);
    let check = virtio::param_u64(cmd, "blkbench.check") == Some(1);
    let slot = virtio::find(0x1af4, 0x1042).ok_or("no virtio-blk device")?;
    let dev = Device::open(slot)?;
    let wanted = 1 << 2 | 1 << 1 | if want_event_idx { F_EVENT_IDX } else { 0 };
    let acked = dev.negotiate(wanted)?;
    let event_idx = acked & F_EVENT_IDX != 0;
    let capacity =
        virtio::r32(dev.device_cfg) as u64 | (virtio::r32(dev.device_cfg + 4) as u64) << 32;
    // SAFETY: RING is this guest's own static, used by nothing but this queue and the device.
    let mut q: Queue<QSIZE> =
        unsafe { dev.setup_ring(0, core::ptr::addr_of_mut!(RING), event_idx) }?;
    dev.driver_ok()?;
    let total = (mib << 20).min(capacity * 512);
    let req = if random { 4096 } else { SEQ_REQ };
    let count = total / req as u64;
    let segs = (virtio::param_u64(cmd, "blkbench.segs").unwrap_or(1) as usize).clamp(1, 32);
    let fit = (AREA / (req + TAIL)).min(MAX_QD).min(QSIZE / (1 + segs));
    let qd = (virtio::param_u64(cmd, "blkbench.qd").unwrap_or(32) as usize).clamp(1, fit);
    // SAFETY: single-threaded guest; the device touches a header only while its request is
    // in flight.
    let headers = unsafe { &mut *core::ptr::addr_of_mut!(BUF.header) };
    let mut free = [0u16; MAX_QD];
    for (i, f) in free.iter_mut().enumerate().take(qd) {
        *f = i as u16;
    }
    let mut nfree = qd;
    let mut slot_of = [0u16; QSIZE];
    let mut sector_of = [0u64; MAX_QD];
    let mut checked = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    println!(
        "BENCH start mode={} qd={qd} segs={segs} event_idx={} bytes={}",
        if random { "rand" } else { "seq" },
        event_idx as u8,
        count * req as u64
    );
    let (mut issued, mut done, mut idle) = (0u64, 0u64, 0u64);
    while done < count {
        while issued < count && nfree > 0 {
            nfree -= 1;
            let k = free[nfree] as usize;
            let sector = if random {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % (capacity / 8)) * 8
            } else {
                issued * (req as u64 / 512)
            };
            headers[k][..4].copy_from_slice(&T_IN.to_le_bytes());
            headers[k][4..8].fill(0);
            headers[k][8..].copy_from_slice(&sector.to_le_bytes());
            let buf = data(k, req);
            // SAFETY: the status byte right after the data buffer, inside the area.
            unsafe { core::ptr::write_volatile(buf.add(req), 0xff) };
            // The header, then the data in `segs` pieces; the status byte ends the last one.
            let mut chain = [(0u64, 0u32, 0u16); MAX_CHAIN];
            chain[0] = (headers[k].as_ptr() as u64, 16, 0);
            let piece = req / segs;
            for (i, c) in chain[1..=segs].iter_mut().enumerate() {
                let extra = if i + 1 == segs {
                    req - piece * segs + 1
                } else {
                    0
                };
                *c = (
                    buf as u64 + (i * piece) as u64,
                    (piece + extra) as u32,
                    F_WRITE,
                );
            }
            sector_of[k] = sector;
            let head = q.add(&chain[..=segs]).ok_or("no free descriptors")?;
            slot_of[head as usize] = k as u16;
            issued += 1;
        }
        q.kick();
        let mut progress = false;
        while let Some((head, len)) = q.poll() {
            let k = slot_of[head as usize] as usize;
            // SAFETY: the request completed; the device wrote its status byte.
            if unsafe { core::ptr::read_volatile(data(k, req).add(req)) } != 0
                || len != req as u32 + 1
            {
                return Err("read failed");
            }
            if check {
                for s in 0..req / 512 {
                    // SAFETY: inside the completed request's data buffer.
                    let got = unsafe {
                        core::ptr::read_unaligned(data(k, req).add(s * 512).cast::<u64>())
                    };
                    if got != sector_of[k] + s as u64 {
                        println!("blkbench: sector {} read as {got}", sector_of[k] + s as u64);
                        return Err("wrong data");
                    }
                    checked += 1;
                }
            }
            free[nfree] = k as u16;
            nfree += 1;
            done += 1;
            progress = true;
        }
        if progress {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle > 2_000_000_000 {
            return Err("the device stopped using requests");
        }
        if idle.is_multiple_of(1_000_000) && dev.status() & NEEDS_RESET != 0 {
            return Err("device needs reset");
        }
        core::hint::spin_loop();
    }
    println!("BENCH done");
    println!(
        "BENCH result notifies={} checked={checked} bytes={}",
        q.notifies,
        count * req as u64
    );
    Ok(())
}
