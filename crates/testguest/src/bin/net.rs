//! Drives a virtio-net device by polling: reads the MAC and link status, offers receive
//! buffers, broadcasts one Ethernet frame of the local experimental EtherType 0x88b5 carrying
//! `PADDOCK-PING`, and waits for a frame addressed to it that carries `PADDOCK-PONG` (other
//! frames, such as IPv6 neighbour discovery from the host, are skipped).
#![no_std]
#![no_main]

use paddock_testguest::virtio::{self, Device, QueueMem, F_WRITE};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

const HDR: usize = 12;
const ETHERTYPE: u16 = 0x88b5;
const RX_BUFS: usize = 8;
const BUF: usize = 2048;

static mut RXQ: QueueMem = QueueMem::new();
static mut TXQ: QueueMem = QueueMem::new();

#[repr(C, align(4096))]
struct Buffers {
    rx: [[u8; BUF]; RX_BUFS],
    tx: [u8; BUF],
}

static mut BUFS: Buffers = Buffers {
    rx: [[0; BUF]; RX_BUFS],
    tx: [0; BUF],
};

fn main(_boot: &BootInfo) -> u32 {
    match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("net: FAILED: {e}");
            1
        }
    }
}

fn run() -> Result<(), &'static str> {
    let slot = virtio::find(0x1af4, 0x1041).ok_or("no virtio-net device")?;
    let dev = Device::open(slot)?;
    let acked = dev.negotiate(1 << 5 | 1 << 16)?;
    if acked & (1 << 5) == 0 {
        return Err("VIRTIO_NET_F_MAC not offered");
    }
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = dev.config8(i as u64);
    }
    let link = dev.config8(6) as u16 | (dev.config8(7) as u16) << 8;
    println!(
        "net 00:{slot:02x}.0: mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} link={link}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    // SAFETY: RXQ is this guest's own static, used by nothing but this queue and the device.
    let mut rx = unsafe { dev.setup_queue(0, core::ptr::addr_of_mut!(RXQ)) }?;
    // SAFETY: TXQ is this guest's own static, used by nothing but this queue and the device.
    let mut tx = unsafe { dev.setup_queue(1, core::ptr::addr_of_mut!(TXQ)) }?;
    dev.driver_ok()?;
    // SAFETY: single-threaded guest; the device writes a receive buffer only between its
    // posting and its return in the used ring, and reads the transmit buffer likewise.
    let bufs = unsafe { &mut *core::ptr::addr_of_mut!(BUFS) };
    for i in 0..RX_BUFS {
        rx.post(
            i as u16,
            &[(bufs.rx[i].as_ptr() as u64, BUF as u32, F_WRITE)],
        );
    }

    let frame = &mut bufs.tx[..HDR + 60];
    frame.fill(0);
    frame[HDR..HDR + 6].fill(0xff);
    frame[HDR + 6..HDR + 12].copy_from_slice(&mac);
    frame[HDR + 12..HDR + 14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame[HDR + 14..HDR + 32].copy_from_slice(b"PADDOCK-PING seq=1");
    tx.post(0, &[(frame.as_ptr() as u64, frame.len() as u32, 0)]);
    tx.wait(1_000_000_000)?;
    println!("net: sent ping");

    for _ in 0..64 {
        let (head, len) = rx.wait(4_000_000_000)?;
        let i = head as usize % RX_BUFS;
        let len = (len as usize).min(BUF);
        let pkt = &bufs.rx[i][..len];
        let ok = len >= HDR + 14 + 12
            && pkt[HDR..HDR + 6] == mac
            && pkt[HDR + 12..HDR + 14] == ETHERTYPE.to_be_bytes()
            && &pkt[HDR + 14..HDR + 26] == b"PADDOCK-PONG";
        if ok {
            let text = &pkt[HDR + 14..];
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            let s = core::str::from_utf8(&text[..end]).unwrap_or("?");
            println!("net: got reply '{s}' num_buffers={}", pkt[10]);
            println!("net ok");
            return Ok(());
        }
        println!("net: skipped a frame of {} bytes", len - HDR);
        rx.post(
            i as u16,
            &[(bufs.rx[i].as_ptr() as u64, BUF as u32, F_WRITE)],
        );
    }
    Err("no reply among 64 frames")
}
