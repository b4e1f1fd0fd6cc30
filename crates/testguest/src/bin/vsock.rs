//! Drives virtio-vsock by polling. First the guest connects to host port 1234, sends a line,
//! expects it echoed, and shuts the stream down (expecting RST). Then, with `vsock.listen=P`,
//! it accepts a host-initiated connection to port P and echoes one line back before the host
//! closes it.
#![no_std]
#![no_main]

use paddock_testguest::virtio::{self, param_u64, Device, QueueMem, Vq, F_WRITE};
use paddock_testguest::{entry, println, BootInfo};

entry!(main);

const HDR: usize = 44;
const RX_BUFS: usize = 8;
const BUF: usize = 4096;
const HOST_CID: u64 = 2;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const BUF_ALLOC: u32 = 64 * 1024;
const MESSAGE: &[u8] = b"hello from the vsock guest\n";
const GUEST_PORT: u32 = 5000;

static mut RXQ: QueueMem = QueueMem::new();
static mut TXQ: QueueMem = QueueMem::new();
static mut EVQ: QueueMem = QueueMem::new();

#[repr(C, align(4096))]
struct Buffers {
    rx: [[u8; BUF]; RX_BUFS],
    tx: [u8; BUF],
}

static mut BUFS: Buffers = Buffers {
    rx: [[0; BUF]; RX_BUFS],
    tx: [0; BUF],
};

#[derive(Clone, Copy, Default)]
struct Hdr {
    src_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
}

struct Vsock {
    cid: u64,
    rx: Vq,
    tx: Vq,
    /// Payload bytes consumed on the current connection.
    fwd_cnt: u32,
    /// A connection request from the host that arrived while another stream was busy.
    request: Option<Hdr>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Vsock {
    fn bufs() -> &'static mut Buffers {
        // SAFETY: single-threaded guest; the device touches a buffer only while it is posted.
        unsafe { &mut *core::ptr::addr_of_mut!(BUFS) }
    }

    fn send(
        &mut self,
        op: u16,
        src_port: u32,
        dst_port: u32,
        flags: u32,
        data: &[u8],
    ) -> Result<(), &'static str> {
        let b = &mut Self::bufs().tx;
        b[..HDR].fill(0);
        b[0..8].copy_from_slice(&self.cid.to_le_bytes());
        b[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
        b[16..20].copy_from_slice(&src_port.to_le_bytes());
        b[20..24].copy_from_slice(&dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&(data.len() as u32).to_le_bytes());
        b[28..30].copy_from_slice(&1u16.to_le_bytes());
        b[30..32].copy_from_slice(&op.to_le_bytes());
        b[32..36].copy_from_slice(&flags.to_le_bytes());
        b[36..40].copy_from_slice(&BUF_ALLOC.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b[HDR..HDR + data.len()].copy_from_slice(data);
        self.tx
            .post(0, &[(b.as_ptr() as u64, (HDR + data.len()) as u32, 0)]);
        self.tx.wait(1_000_000_000).map(|_| ())
    }

    /// The next packet: header, and its payload copied into `data`.
    fn recv(&mut self, data: &mut [u8]) -> Result<Hdr, &'static str> {
        let (head, len) = self.rx.wait(4_000_000_000)?;
        let i = head as usize % RX_BUFS;
        let p = &Self::bufs().rx[i];
        if (len as usize) < HDR {
            return Err("short packet");
        }
        let h = Hdr {
            src_cid: u64::from(le32(p, 0)) | u64::from(le32(p, 4)) << 32,
            src_port: le32(p, 16),
            dst_port: le32(p, 20),
            len: le32(p, 24),
            op: u16::from_le_bytes([p[30], p[31]]),
            flags: le32(p, 32),
        };
        let n = (h.len as usize).min(data.len()).min(len as usize - HDR);
        data[..n].copy_from_slice(&p[HDR..HDR + n]);
        if h.op == OP_RW {
            self.fwd_cnt = self.fwd_cnt.wrapping_add(h.len);
        }
        let addr = Self::bufs().rx[i].as_ptr() as u64;
        self.rx.post(i as u16, &[(addr, BUF as u32, F_WRITE)]);
        if h.src_cid != HOST_CID {
            return Err("packet not from the host");
        }
        if h.op == OP_REQUEST {
            self.request = Some(h);
        }
        Ok(h)
    }
}

fn main(boot: &BootInfo) -> u32 {
    match run(boot) {
        Ok(()) => 0,
        Err(e) => {
            println!("vsock: FAILED: {e}");
            1
        }
    }
}

fn run(boot: &BootInfo) -> Result<(), &'static str> {
    let slot = virtio::find(0x1af4, 0x1053).ok_or("no virtio-vsock device")?;
    let dev = Device::open(slot)?;
    dev.negotiate(0)?;
    let mut cid = 0u64;
    for i in 0..8 {
        cid |= u64::from(dev.config8(i)) << (8 * i);
    }
    println!("vsock 00:{slot:02x}.0: cid={cid}");
    // SAFETY: RXQ is this guest's own static, used by nothing but this queue and the device.
    let rx = unsafe { dev.setup_queue(0, core::ptr::addr_of_mut!(RXQ)) }?;
    // SAFETY: TXQ is this guest's own static, used by nothing but this queue and the device.
    let tx = unsafe { dev.setup_queue(1, core::ptr::addr_of_mut!(TXQ)) }?;
    // SAFETY: EVQ is this guest's own static, used by nothing but this queue and the device.
    unsafe { dev.setup_queue(2, core::ptr::addr_of_mut!(EVQ)) }?;
    dev.driver_ok()?;
    let mut v = Vsock {
        cid,
        rx,
        tx,
        fwd_cnt: 0,
        request: None,
    };
    for i in 0..RX_BUFS {
        let addr = Vsock::bufs().rx[i].as_ptr() as u64;
        v.rx.post(i as u16, &[(addr, BUF as u32, F_WRITE)]);
    }
    let mut data = [0u8; BUF];

    // Guest-initiated: connect to host port 1234, send a line, read it back.
    v.send(OP_REQUEST, GUEST_PORT, 1234, 0, &[])?;
    let h = v.recv(&mut data)?;
    if h.op != OP_RESPONSE || h.src_port != 1234 || h.dst_port != GUEST_PORT {
        println!("vsock: op={} from port {}", h.op, h.src_port);
        return Err("connection to host port 1234 refused");
    }
    println!("vsock: connected to host port 1234");
    v.send(OP_RW, GUEST_PORT, 1234, 0, MESSAGE)?;
    let mut echo = [0u8; 64];
    let mut got = 0;
    while got < MESSAGE.len() {
        let h = v.recv(&mut data)?;
        match h.op {
            OP_RW => {
                let n = (h.len as usize).min(echo.len() - got);
                echo[got..got + n].copy_from_slice(&data[..n]);
                got += n;
            }
            OP_RST | OP_SHUTDOWN => return Err("the host closed before echoing"),
            _ => {}
        }
    }
    if &echo[..got] != MESSAGE {
        return Err("the echo differs");
    }
    println!("vsock: echo ok ({got} bytes)");
    v.send(OP_SHUTDOWN, GUEST_PORT, 1234, 3, &[])?;
    loop {
        if v.recv(&mut data)?.op == OP_RST {
            break;
        }
    }
    println!("vsock: closed");

    // Host-initiated: accept a connection to port P and echo one line.
    let Some(port) = param_u64(boot.cmdline, "vsock.listen") else {
        return Ok(());
    };
    let port = port as u32;
    let req = loop {
        if let Some(h) = v.request.take().filter(|h| h.dst_port == port) {
            break h;
        }
        v.recv(&mut data)?;
    };
    let host_port = req.src_port;
    // Credit counters are per connection.
    v.fwd_cnt = 0;
    v.send(OP_RESPONSE, port, host_port, 0, &[])?;
    println!("vsock: accepted host port {host_port} on port {port}");
    let mut line = [0u8; 256];
    let mut got = 0;
    while got == 0 || line[got - 1] != b'\n' {
        let h = v.recv(&mut data)?;
        match h.op {
            OP_RW => {
                let n = (h.len as usize).min(line.len() - got);
                line[got..got + n].copy_from_slice(&data[..n]);
                got += n;
                if got == line.len() {
                    return Err("line too long");
                }
            }
            OP_RST | OP_SHUTDOWN => return Err("the host closed before sending a line"),
            _ => {}
        }
    }
    v.send(OP_RW, port, host_port, 0, &line[..got])?;
    println!("vsock: echoed {got} bytes to the host");
    loop {
        let h = v.recv(&mut data)?;
        if h.op == OP_SHUTDOWN || h.op == OP_RST {
            if h.op == OP_SHUTDOWN {
                v.send(OP_RST, port, host_port, 0, &[])?;
            }
            println!("vsock: host closed (flags {})", h.flags);
            break;
        }
    }
    println!("vsock ok");
    Ok(())
}
