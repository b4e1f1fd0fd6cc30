//! Writes a line to a virtio console by polling, and with `console.echo=1` reads one line of
//! host input from it and writes it back. With `serial.echo=1` it first reads one line from
//! COM1 (polling the line status register) and prints it back on COM1.
#![no_std]
#![no_main]

use paddock_testguest::io::{inb, COM1};
use paddock_testguest::virtio::{self, param_u64, Device, QueueMem, F_WRITE};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

static mut RXQ: QueueMem = QueueMem::new();
static mut TXQ: QueueMem = QueueMem::new();

#[repr(C, align(4096))]
struct Buffers {
    rx: [u8; 256],
    tx: [u8; 512],
}

static mut BUFS: Buffers = Buffers {
    rx: [0; 256],
    tx: [0; 512],
};

fn main(boot: &BootInfo) -> u32 {
    match run(boot) {
        Ok(()) => 0,
        Err(e) => {
            println!("console: FAILED: {e}");
            1
        }
    }
}

/// Reads a line from COM1 (up to `buf.len()` bytes, without the newline).
fn serial_line(buf: &mut [u8]) -> Result<usize, &'static str> {
    let mut n = 0;
    for _ in 0..4_000_000_000u64 {
        if inb(COM1 + 5) & 1 == 0 {
            core::hint::spin_loop();
            continue;
        }
        let b = inb(COM1);
        if b == b'\n' || b == b'\r' {
            return Ok(n);
        }
        if n < buf.len() {
            buf[n] = b;
            n += 1;
        }
    }
    Err("no line on COM1")
}

fn run(boot: &BootInfo) -> Result<(), &'static str> {
    if param_u64(boot.cmdline, "serial.echo") == Some(1) {
        println!("serial: type a line");
        let mut line = [0u8; 128];
        let n = serial_line(&mut line)?;
        println!(
            "serial got: {}",
            core::str::from_utf8(&line[..n]).unwrap_or("?")
        );
    }
    let slot = virtio::find(0x1af4, 0x1043).ok_or("no virtio-console device")?;
    let dev = Device::open(slot)?;
    dev.negotiate(0)?;
    let ports = u32::from_le_bytes([
        dev.config8(4),
        dev.config8(5),
        dev.config8(6),
        dev.config8(7),
    ]);
    println!("console 00:{slot:02x}.0: max_nr_ports={ports}");
    // SAFETY: RXQ is this guest's own static, used by nothing but this queue and the device.
    let mut rx = unsafe { dev.setup_queue(0, core::ptr::addr_of_mut!(RXQ)) }?;
    // SAFETY: TXQ is this guest's own static, used by nothing but this queue and the device.
    let mut tx = unsafe { dev.setup_queue(1, core::ptr::addr_of_mut!(TXQ)) }?;
    dev.driver_ok()?;
    // SAFETY: single-threaded guest; the device touches a buffer only while it is posted.
    let bufs = unsafe { &mut *core::ptr::addr_of_mut!(BUFS) };
    let msg = b"Hello from the virtio console guest\n";
    bufs.tx[..msg.len()].copy_from_slice(msg);
    tx.post(0, &[(bufs.tx.as_ptr() as u64, msg.len() as u32, 0)]);
    tx.wait(1_000_000_000)?;
    println!("console: wrote {} bytes", msg.len());

    if param_u64(boot.cmdline, "console.echo") == Some(1) {
        let mut line = [0u8; 200];
        let mut n = 0;
        while n == 0 || line[n - 1] != b'\n' {
            rx.post(
                0,
                &[(bufs.rx.as_ptr() as u64, bufs.rx.len() as u32, F_WRITE)],
            );
            let (_, len) = rx.wait(4_000_000_000)?;
            let len = (len as usize).min(line.len() - n);
            line[n..n + len].copy_from_slice(&bufs.rx[..len]);
            n += len;
            if n == line.len() {
                return Err("input line too long");
            }
        }
        let prefix = b"console got: ";
        bufs.tx[..prefix.len()].copy_from_slice(prefix);
        bufs.tx[prefix.len()..prefix.len() + n].copy_from_slice(&line[..n]);
        tx.post(
            0,
            &[(bufs.tx.as_ptr() as u64, (prefix.len() + n) as u32, 0)],
        );
        tx.wait(1_000_000_000)?;
        println!("console: echoed {n} bytes");
    }
    println!("console ok");
    Ok(())
}
