use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use vmm_sys_util::eventfd::EventFd;

use super::conn::BUF_ALLOC;
use super::muxer::{VsockHandler, HOST_PORT_START};
use super::packet::*;
use super::*;
use crate::devices::virtio::queue::ChainError;
use crate::devices::virtio::testdriver::Driver;
use crate::devices::virtio::worker::{QueueHandler, WorkerQueue};

const CID: u64 = 3;

struct Rig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    h: VsockHandler,
    tx: Driver,
    txq: crate::devices::virtio::Queue,
    /// The receive queue, as the worker holds it (its memory is `rx`'s).
    rx: Driver,
    rxq: Vec<WorkerQueue>,
    /// Receive buffers by chain head.
    bufs: std::collections::HashMap<u32, u64>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let dev = Vsock::open(&VsockConfig {
        cid: CID,
        socket: path.clone(),
    })
    .unwrap();
    let h = VsockHandler::new(CID, path.clone(), dev.listener.clone()).unwrap();
    let tx = Driver::new(64);
    let rx = Driver::new(64);
    let (txq, q) = (tx.queue(), rx.queue());
    Rig {
        _dir: dir,
        path,
        h,
        tx,
        txq,
        rxq: vec![WorkerQueue {
            index: RX,
            queue: q,
            event: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }],
        rx,
        bufs: Default::default(),
    }
}

fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 0,
    }
}

impl Rig {
    /// The guest sends `h` with `data`.
    fn send(&mut self, h: Header, data: &[u8]) {
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        let a = self.tx.alloc_bytes(&bytes);
        self.tx.push_chain(&[(a, bytes.len() as u32, false)]);
        self.h.process(TX, &mut self.txq, &self.tx.mem).unwrap();
    }

    /// Offers one receive buffer, runs the backend, and returns the packet if one came.
    fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let before = self.rx.used_idx();
        let a = self.rx.alloc(4096, 0);
        let head = self.rx.push_chain(&[(a, 4096, true)]);
        self.bufs.insert(head as u32, a);
        self.h.process_backend(&mut self.rxq, &self.rx.mem).unwrap();
        if self.rx.used_idx() == before {
            return None;
        }
        // A buffer offered earlier and held by the device may be the one used.
        let (id, len) = self.rx.used_elem(before);
        let raw = self.rx.read(self.bufs[&id], len as usize);
        let h = Header::from_bytes(raw[..HDR_LEN].try_into().unwrap());
        Some((h, raw[HDR_LEN..].to_vec()))
    }
}

#[test]
fn guest_connects_to_a_host_port_and_data_flows_both_ways() {
    let mut r = rig();
    let mut p = r.path.clone().into_os_string();
    p.push("_1234");
    let service = UnixListener::bind(&p).unwrap();
    r.send(guest_hdr(OP_REQUEST, 5000, 1234, 0), &[]);
    let (mut host, _) = service.accept().unwrap();
    let (h, _) = r.recv().expect("a response");
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (OP_RESPONSE, HOST_CID, CID, 1234, 5000)
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    r.send(guest_hdr(OP_RW, 5000, 1234, 4), b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    let (h, data) = r.recv().expect("data for the guest");
    assert_eq!((h.op, h.len, h.fwd_cnt), (OP_RW, 4, 4));
    assert_eq!(data, b"pong");
    assert!(r.recv().is_none(), "nothing more");
    // The guest shuts down both ways: the host sees the end, the guest gets RST.
    r.send(
        Header {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..guest_hdr(OP_SHUTDOWN, 5000, 1234, 0)
        },
        &[],
    );
    let (h, _) = r.recv().expect("RST");
    assert_eq!(h.op, OP_RST);
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(r.h.connections(), 0);
}

#[test]
fn host_client_connects_to_a_guest_port() {
    let mut r = rig();
    let mut client = UnixStream::connect(&r.path).unwrap();
    client.write_all(b"CONNECT 5000\nearly").unwrap();
    let (h, _) = r.recv().expect("a request");
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (OP_REQUEST, HOST_CID, CID, HOST_PORT_START, 5000)
    );
    let mut resp = guest_hdr(OP_RESPONSE, 5000, HOST_PORT_START, 0);
    resp.buf_alloc = 4096;
    r.send(resp, &[]);
    let mut line = String::new();
    BufReader::new(&client).read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {HOST_PORT_START}\n"));
    // Bytes the client wrote right after its line reach the guest.
    let (h, data) = r.recv().expect("data");
    assert_eq!(h.op, OP_RW);
    assert_eq!(data, b"early");
    // The client closes: the guest is told with SHUTDOWN, and its RST ends the connection.
    drop(client);
    let (h, _) = r.recv().expect("shutdown");
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
    r.send(guest_hdr(OP_RST, 5000, HOST_PORT_START, 0), &[]);
    assert_eq!(r.h.connections(), 0);
}

#[test]
fn a_port_nobody_serves_is_reset() {
    let mut r = rig();
    r.send(guest_hdr(OP_REQUEST, 5000, 77, 0), &[]);
    let (h, _) = r.recv().expect("RST");
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 77, 5000));
    // Data on a connection that does not exist is reset too.
    r.send(guest_hdr(OP_RW, 5001, 78, 1), b"x");
    assert_eq!(r.recv().unwrap().0.op, OP_RST);
    assert_eq!(r.h.connections(), 0);
}

#[test]
fn the_guests_credit_limits_what_it_is_sent() {
    let mut r = rig();
    let mut p = r.path.clone().into_os_string();
    p.push("_9");
    let service = UnixListener::bind(&p).unwrap();
    let mut req = guest_hdr(OP_REQUEST, 5000, 9, 0);
    req.buf_alloc = 3;
    r.send(req, &[]);
    let (mut host, _) = service.accept().unwrap();
    assert_eq!(r.recv().unwrap().0.op, OP_RESPONSE);
    host.write_all(b"abcdefg").unwrap();
    assert_eq!(r.recv().unwrap().1, b"abc");
    assert!(r.recv().is_none(), "credit exhausted");
    let mut upd = guest_hdr(OP_CREDIT_UPDATE, 5000, 9, 0);
    upd.buf_alloc = 3;
    upd.fwd_cnt = 3;
    r.send(upd, &[]);
    assert_eq!(r.recv().unwrap().1, b"def");
}

#[test]
fn malformed_transmit_chains_are_errors() {
    let cases: Vec<Vec<(u64, u32, bool)>> =
        vec![vec![(0x20_0000, 64, true)], vec![(0x20_0000, 20, false)]];
    for bufs in cases {
        let mut r = rig();
        r.tx.push_chain(&bufs);
        assert!(
            matches!(
                r.h.process(TX, &mut r.txq, &r.tx.mem),
                Err(ChainError::Request(_))
            ),
            "{bufs:?}"
        );
    }
    // A payload length beyond the chain.
    let mut r = rig();
    let a = r.tx.alloc_bytes(&guest_hdr(OP_RW, 1, 2, 100).to_bytes());
    r.tx.push_chain(&[(a, HDR_LEN as u32 + 10, false)]);
    assert!(r.h.process(TX, &mut r.txq, &r.tx.mem).is_err());
    // Receive buffers the device may not write.
    let mut r = rig();
    r.send(guest_hdr(OP_REQUEST, 5000, 77, 0), &[]);
    let a = r.rx.alloc(4096, 0);
    r.rx.push_chain(&[(a, 4096, false)]);
    assert!(r.h.process_backend(&mut r.rxq, &r.rx.mem).is_err());
}

#[test]
fn config_and_options() {
    let c = VsockConfig::parse("cid=3,socket=/tmp/v.sock").unwrap();
    assert_eq!((c.cid, c.socket.to_str().unwrap()), (3, "/tmp/v.sock"));
    for bad in [
        "cid=2,socket=/x",
        "cid=3",
        "socket=/x",
        "cid=x,socket=/y",
        "cid=3,socket=/x,a=b",
    ] {
        assert!(VsockConfig::parse(bad).is_err(), "{bad}");
    }
    let r = rig();
    let dev = Vsock::open(&VsockConfig {
        cid: 42,
        socket: r.path.with_extension("two"),
    })
    .unwrap();
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 42);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    // A path that is not a socket is never replaced.
    let file = r.path.with_extension("file");
    std::fs::write(&file, b"keep").unwrap();
    assert!(Vsock::open(&VsockConfig {
        cid: 3,
        socket: file.clone()
    })
    .is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}
