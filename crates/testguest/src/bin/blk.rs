//! Drives a virtio-blk device by polling: negotiates features, sets up a queue in its own
//! memory, reads the serial and the first sectors, checks the pattern the host wrote, writes
//! its own pattern, flushes, reads it back, and prints a checksum of what it saw.
//!
//! Parameters (kernel command line): `blk.slot=N` (PCI slot, default: first virtio-blk),
//! `blk.seed=N` (pattern seed), `blk.sectors=N` (sectors checked and written, at most 64),
//! `blk.ro=1` (expect a read-only disk: the write must fail with IOERR), `blk.malformed=1`
//! (first send a looping chain, expect DEVICE_NEEDS_RESET, reset and start again).
#![no_std]
#![no_main]

use paddock_testguest::virtio::{self, Device, QueueMem, F_WRITE};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
/// Sector where the guest writes its pattern.
const WRITE_AT: u64 = 64;
const MAX_SECTORS: usize = 64;

static mut QUEUE: QueueMem = QueueMem::new();

#[repr(C, align(4096))]
struct Buffers {
    header: [u8; 16],
    status: u8,
    id: [u8; 20],
    data: [u8; MAX_SECTORS * 512],
}

static mut BUF: Buffers = Buffers {
    header: [0; 16],
    status: 0,
    id: [0; 20],
    data: [0; MAX_SECTORS * 512],
};

/// The host's pattern for byte `i` of sector `s` (the test writes the same).
fn host_pattern(seed: u64, s: u64, i: usize) -> u8 {
    (s.wrapping_mul(31).wrapping_add(i as u64).wrapping_add(seed)) as u8
}

/// The guest's pattern (the test checks the image for it).
fn guest_pattern(seed: u64, s: u64, i: usize) -> u8 {
    (s.wrapping_mul(17)
        .wrapping_add(3 * i as u64)
        .wrapping_add(seed) as u8)
        ^ 0x5a
}

fn fnv(h: &mut u32, bytes: &[u8]) {
    for &b in bytes {
        *h = (*h ^ b as u32).wrapping_mul(16_777_619);
    }
}

/// One request: header, optional data (device-writable for reads), status.
fn request(
    dev: &mut Device,
    kind: u32,
    sector: u64,
    data_len: usize,
    data_writable: bool,
) -> Result<(u8, u32), &'static str> {
    // SAFETY: single-threaded guest; the device reads and writes these buffers only while
    // `submit` polls for completion.
    let b = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    b.header[..4].copy_from_slice(&kind.to_le_bytes());
    b.header[4..8].fill(0);
    b.header[8..].copy_from_slice(&sector.to_le_bytes());
    b.status = 0xff;
    let mut chain = [(0u64, 0u32, 0u16); 3];
    let mut n = 0;
    chain[n] = (b.header.as_ptr() as u64, 16, 0);
    n += 1;
    if data_len > 0 {
        let addr = if kind == T_GET_ID {
            b.id.as_ptr() as u64
        } else {
            b.data.as_ptr() as u64
        };
        chain[n] = (
            addr,
            data_len as u32,
            if data_writable { F_WRITE } else { 0 },
        );
        n += 1;
    }
    chain[n] = (core::ptr::addr_of!(b.status) as u64, 1, F_WRITE);
    n += 1;
    let used = dev.submit(&chain[..n])?;
    // SAFETY: the device has completed the request.
    let st = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(b.status)) };
    Ok((st, used))
}

fn main(boot: &BootInfo) -> u32 {
    match run(boot) {
        Ok(()) => 0,
        Err(e) => {
            println!("blk: FAILED: {e}");
            1
        }
    }
}

fn run(boot: &BootInfo) -> Result<(), &'static str> {
    let cmd = boot.cmdline;
    let seed = virtio::param_u64(cmd, "blk.seed").unwrap_or(0);
    let sectors = (virtio::param_u64(cmd, "blk.sectors").unwrap_or(8) as usize).min(MAX_SECTORS);
    let expect_ro = virtio::param_u64(cmd, "blk.ro") == Some(1);
    let slot = match virtio::param_u64(cmd, "blk.slot") {
        Some(s) => s as u8,
        None => virtio::find(0x1af4, 0x1042).ok_or("no virtio-blk device")?,
    };
    let mut dev = Device::open(slot)?;
    // FLUSH (9), RO (5), BLK_SIZE (6), SEG_MAX (2), SIZE_MAX (1).
    let acked = dev.negotiate(1 << 9 | 1 << 5 | 1 << 6 | 1 << 2 | 1 << 1)?;
    let ro = acked & (1 << 5) != 0;
    let capacity =
        virtio::r32(dev.device_cfg) as u64 | (virtio::r32(dev.device_cfg + 4) as u64) << 32;
    let seg_max = virtio::r32(dev.device_cfg + 0x0c);
    println!(
        "blk 00:{slot:02x}.0 capacity={capacity} sectors ro={} flush={} seg_max={seg_max}",
        ro as u8,
        (acked >> 9) & 1
    );
    if ro != expect_ro {
        return Err("read-only flag differs from blk.ro");
    }
    // The queue memory is used only by this driver and the device.
    // SAFETY: QUEUE is this guest's own static, used by nothing but this queue and the device.
    unsafe { dev.start(core::ptr::addr_of_mut!(QUEUE)) }?;
    if virtio::param_u64(cmd, "blk.malformed") == Some(1) {
        dev.submit_looping_chain(core::ptr::addr_of!(BUF) as u64)?;
        println!("looping chain: DEVICE_NEEDS_RESET");
        dev.negotiate(acked)?;
        // SAFETY: QUEUE is this guest's own static, used by nothing but this queue and the device.
        unsafe { dev.start(core::ptr::addr_of_mut!(QUEUE)) }?;
        if dev.status() & virtio::NEEDS_RESET != 0 {
            return Err("DEVICE_NEEDS_RESET survived the reset");
        }
        println!("reset and restarted");
    }

    let (st, used) = request(&mut dev, T_GET_ID, 0, 20, true)?;
    // SAFETY: completed request.
    let id = unsafe { &(*core::ptr::addr_of!(BUF)).id };
    let idlen = id.iter().position(|&b| b == 0).unwrap_or(20);
    println!(
        "serial={} status={st} used={used}",
        core::str::from_utf8(&id[..idlen]).unwrap_or("?")
    );

    let len = sectors * 512;
    let (st, used) = request(&mut dev, T_IN, 0, len, true)?;
    if st != 0 || used as usize != len + 1 {
        return Err("read of the first sectors failed");
    }
    // SAFETY: completed request.
    let data = unsafe { &mut (*core::ptr::addr_of_mut!(BUF)).data };
    for s in 0..sectors {
        for i in 0..512 {
            if data[s * 512 + i] != host_pattern(seed, s as u64, i) {
                println!(
                    "pattern mismatch at sector {s} byte {i}: {:#x}",
                    data[s * 512 + i]
                );
                return Err("host pattern not found");
            }
        }
    }
    println!("read {sectors} sectors: host pattern ok");
    let mut sum = 0x811c_9dc5u32;
    fnv(&mut sum, &data[..len]);

    for s in 0..sectors {
        for i in 0..512 {
            data[s * 512 + i] = guest_pattern(seed, WRITE_AT + s as u64, i);
        }
    }
    let (st, _) = request(&mut dev, T_OUT, WRITE_AT, len, false)?;
    if expect_ro {
        if st != 1 {
            return Err("write to a read-only disk did not fail with IOERR");
        }
        println!("write refused: IOERR");
    } else {
        if st != 0 {
            return Err("write failed");
        }
        let (st, _) = request(&mut dev, T_FLUSH, 0, 0, false)?;
        if st != 0 {
            return Err("flush failed");
        }
        data[..len].fill(0);
        let (st, _) = request(&mut dev, T_IN, WRITE_AT, len, true)?;
        if st != 0
            || (0..len)
                .any(|k| data[k] != guest_pattern(seed, WRITE_AT + (k / 512) as u64, k % 512))
        {
            return Err("read-back of the written sectors differs");
        }
        println!("wrote {sectors} sectors at {WRITE_AT}, flushed, read back ok");
        fnv(&mut sum, &data[..len]);
    }
    // A read past the end fails with IOERR and does not break the device.
    let (st, _) = request(&mut dev, T_IN, capacity, 512, true)?;
    if st != 1 {
        return Err("read past the end did not fail with IOERR");
    }
    println!("checksum={sum:08x}");
    Ok(())
}
