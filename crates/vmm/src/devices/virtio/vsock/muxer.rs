//! The vsock queue handler: it runs the packet protocol between the guest's queues and Unix
//! sockets on the host, Firecracker-style. A guest connection to host port P connects to
//! `PATH_P`; a host client of `PATH` writes `CONNECT <port>\n`, the guest is asked, and on its
//! RESPONSE the client reads `OK <host port>\n`. Control packets (RESPONSE, RST, credit updates)
//! wait in a bounded queue for receive buffers; when it is full the transmit queue is left
//! alone until the guest takes them. All sockets are non-blocking and edge-triggered in an
//! epoll of the handler's own, which the worker watches.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::conn::{Conn, Forward, State};
use super::packet::*;
use super::{EVENT, RX, TX};
use crate::devices::virtio::queue::{ChainError, DescriptorChain, Queue, Segments};
use crate::devices::virtio::worker::{QueueHandler, WorkerQueue};
use crate::memory::GuestMem;

/// Largest payload of one packet either way.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Control packets that may wait for receive buffers before transmit processing pauses.
pub const MAX_CONTROL: usize = 256;
/// First host port handed to host-initiated connections.
pub const HOST_PORT_START: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_KICK: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 2;

/// A host client that has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The vsock handler of one device.
pub struct VsockHandler {
    cid: u64,
    uds_path: PathBuf,
    listener: Arc<UnixListener>,
    epoll: Epoll,
    kick: EventFd,
    conns: HashMap<(u32, u32), Conn>,
    tokens: HashMap<u64, (u32, u32)>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_host_port: u32,
    control: VecDeque<Header>,
    held: Option<DescriptorChain>,
    tx_paused: bool,
    buf: Vec<u8>,
}

fn malformed(m: impl Into<String>) -> ChainError {
    ChainError::Request(m.into())
}

impl VsockHandler {
    /// A handler for guest `cid`, serving host clients on `listener` (bound at `uds_path`).
    pub fn new(cid: u64, uds_path: PathBuf, listener: Arc<UnixListener>) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let kick = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TOKEN_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_KICK),
        )?;
        Ok(VsockHandler {
            cid,
            uds_path,
            listener,
            epoll,
            kick,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_host_port: HOST_PORT_START,
            control: VecDeque::new(),
            held: None,
            tx_paused: false,
            buf: vec![0; MAX_PAYLOAD as usize],
        })
    }

    /// Open connections (tests and counters).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn watch(&mut self, stream: &UnixStream) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        match self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(ev, token),
        ) {
            Ok(()) => Some(token),
            Err(e) => {
                eprintln!("paddock-vmm: virtio-vsock: epoll: {e}");
                None
            }
        }
    }

    fn rst_to(&mut self, h: &Header) {
        if h.op != OP_RST {
            self.control
                .push_back(Header::to_guest(self.cid, h.dst_port, h.src_port, OP_RST));
        }
    }

    fn control_for(&mut self, key: (u32, u32), op: u16, flags: u32) {
        let cid = self.cid;
        if let Some(c) = self.conns.get_mut(&key) {
            let mut h = c.stamp(Header::to_guest(cid, key.0, key.1, op));
            h.flags = flags;
            self.control.push_back(h);
        }
    }

    fn remove(&mut self, key: (u32, u32)) {
        if let Some(c) = self.conns.remove(&key) {
            self.tokens.remove(&c.token);
        }
    }

    fn reset_conn(&mut self, key: (u32, u32)) {
        self.control_for(key, OP_RST, 0);
        self.remove(key);
    }

    /// The guest asks for host port `h.dst_port`: connect to `PATH_<port>`.
    fn guest_connect(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) {
            self.reset_conn(key);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => return self.rst_to(h),
        };
        let Some(token) = self.watch(&stream) else {
            return self.rst_to(h);
        };
        let mut c = Conn::new(stream, token, h.dst_port, h.src_port, State::Established);
        c.update_peer_credit(h);
        self.conns.insert(key, c);
        self.tokens.insert(token, key);
        self.control_for(key, OP_RESPONSE, 0);
    }

    /// Handles one packet from the guest.
    fn handle_guest_packet(&mut self, h: Header, data: &[u8]) {
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            eprintln!(
                "paddock-vmm: virtio-vsock: dropping a packet from CID {} to CID {}",
                h.src_cid, h.dst_cid
            );
            return;
        }
        if h.kind != TYPE_STREAM {
            return self.rst_to(&h);
        }
        let key = (h.dst_port, h.src_port);
        if h.op == OP_REQUEST {
            return self.guest_connect(&h);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return self.rst_to(&h);
        };
        c.update_peer_credit(&h);
        match (h.op, c.state) {
            (OP_RST, _) => self.remove(key),
            (OP_RESPONSE, State::Connecting) => {
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                // A fresh socket takes a short line whole; a client that does not is gone.
                if c.stream.write(ok.as_bytes()).ok() != Some(ok.len()) {
                    self.reset_conn(key);
                }
            }
            (OP_RW, State::Established) => match c.forward(data) {
                Forward::Ok => {
                    if c.wants_credit_update() {
                        self.control_for(key, OP_CREDIT_UPDATE, 0);
                    }
                }
                Forward::CreditViolation | Forward::Closed => self.reset_conn(key),
            },
            (OP_RW, State::Closing) => {}
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.control_for(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, _) => {
                c.guest_shutdown |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if c.guest_shutdown & SHUTDOWN_SEND != 0 {
                    let _ = c.flush();
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
                if c.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND || c.state == State::Closing {
                    self.reset_conn(key);
                }
            }
            _ => self.reset_conn(key),
        }
    }

    /// Takes packets from the transmit queue while control packets have room.
    pub fn transmit(&mut self, txq: &mut Queue, mem: &GuestMem) -> Result<bool, ChainError> {
        let mut used = false;
        while self.control.len() < MAX_CONTROL {
            let Some(chain) = txq.pop(mem)? else {
                break;
            };
            if chain.writable().next().is_some() {
                return Err(malformed("transmit buffers must be device-readable"));
            }
            let out = Segments::new(chain.readable());
            let mut raw = [0u8; HDR_LEN];
            if out.len() < HDR_LEN as u64 {
                return Err(malformed(format!("{} bytes: no packet header", out.len())));
            }
            out.read(mem, 0, &mut raw)?;
            let h = Header::from_bytes(&raw);
            if h.len > MAX_PAYLOAD || u64::from(h.len) > out.len() - HDR_LEN as u64 {
                return Err(malformed(format!(
                    "payload of {} bytes in a chain of {}",
                    h.len,
                    out.len()
                )));
            }
            let n = h.len as usize;
            let mut data = std::mem::take(&mut self.buf);
            out.read(mem, HDR_LEN as u64, &mut data[..n])?;
            self.handle_guest_packet(h, &data[..n]);
            self.buf = data;
            txq.add_used(mem, chain.head, 0)?;
            used = true;
        }
        self.tx_paused = self.control.len() >= MAX_CONTROL;
        if !self.control.is_empty() || self.conns.values().any(Conn::can_send) {
            let _ = self.kick.write(1);
        }
        Ok(used)
    }

    /// The next packet for the guest, with at most `room` payload bytes read into `buf`.
    fn next_packet(&mut self, room: usize) -> Option<Header> {
        if let Some(h) = self.control.pop_front() {
            return Some(h);
        }
        let keys: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.can_send())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let max = room.min(c.peer_credit() as usize).min(self.buf.len());
            match c.read(&mut self.buf[..max]) {
                None => continue,
                Some(0) => {
                    c.readable = false;
                    c.state = State::Closing;
                    let mut h = c.stamp(Header::to_guest(self.cid, key.0, key.1, OP_SHUTDOWN));
                    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    return Some(h);
                }
                Some(n) => {
                    c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                    let mut h = c.stamp(Header::to_guest(self.cid, key.0, key.1, OP_RW));
                    h.len = n as u32;
                    return Some(h);
                }
            }
        }
        None
    }

    /// Fills receive chains with control packets and socket data.
    pub fn receive(&mut self, rxq: &mut Queue, mem: &GuestMem) -> Result<bool, ChainError> {
        let mut used = false;
        loop {
            let chain = match self.held.take() {
                Some(c) => c,
                None => match rxq.pop(mem)? {
                    Some(c) => c,
                    None => break,
                },
            };
            if chain.readable().next().is_some() {
                return Err(malformed("receive buffers must be device-writable"));
            }
            let room = chain.writable_len();
            if room < HDR_LEN as u64 {
                return Err(malformed(format!("receive chain of {room} bytes")));
            }
            let payload_room = (room - HDR_LEN as u64).min(u64::from(MAX_PAYLOAD)) as usize;
            let Some(h) = self.next_packet(payload_room) else {
                self.held = Some(chain);
                break;
            };
            let w = Segments::new(chain.writable());
            w.write(mem, 0, &h.to_bytes())?;
            if h.op == OP_RW {
                w.write(mem, HDR_LEN as u64, &self.buf[..h.len as usize])?;
            }
            rxq.add_used(mem, chain.head, HDR_LEN as u32 + h.len)?;
            used = true;
        }
        Ok(used)
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if let Some(token) = self.watch(&s) {
                        self.handshakes.insert(
                            token,
                            Handshake {
                                stream: s,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn free_host_port(&mut self) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = self.next_host_port.wrapping_add(1).max(HOST_PORT_START);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// Reads a client's `CONNECT <port>\n` a byte at a time (nothing past the line is taken),
    /// then asks the guest.
    fn handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut b = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut b) {
                Ok(1) if b[0] == b'\n' => {
                    let line = String::from_utf8_lossy(&hs.line).to_string();
                    break line
                        .strip_prefix("CONNECT ")
                        .and_then(|p| p.trim().parse::<u32>().ok());
                }
                Ok(1) if hs.line.len() < MAX_LINE => hs.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                _ => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let Some(guest_port) = port else {
            return; // Dropping the stream closes it.
        };
        let host_port = self.free_host_port();
        let key = (host_port, guest_port);
        self.conns.insert(
            key,
            Conn::new(hs.stream, token, host_port, guest_port, State::Connecting),
        );
        self.tokens.insert(token, key);
        self.control_for(key, OP_REQUEST, 0);
    }

    fn socket_event(&mut self, token: u64, events: EventSet) {
        if self.handshakes.contains_key(&token) {
            return self.handshake(token);
        }
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            c.readable = true;
        }
        if events.contains(EventSet::OUT) {
            match c.flush() {
                Forward::Ok if c.wants_credit_update() => {
                    self.control_for(key, OP_CREDIT_UPDATE, 0)
                }
                Forward::Ok => {}
                _ => self.reset_conn(key),
            }
        }
    }
}

impl QueueHandler for VsockHandler {
    fn process(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMem,
    ) -> Result<bool, ChainError> {
        match index {
            RX => self.receive(queue, mem),
            TX => self.transmit(queue, mem),
            // The event queue only ever carries TRANSPORT_RESET, which we never send.
            EVENT => Ok(false),
            _ => Ok(false),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(
        &mut self,
        queues: &mut [WorkerQueue],
        mem: &GuestMem,
    ) -> Result<Vec<usize>, ChainError> {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_LISTENER => self.accept_clients(),
                    TOKEN_KICK => {
                        let _ = self.kick.read();
                    }
                    t => self.socket_event(t, ev.event_set()),
                }
            }
            // Sockets accepted above report their first data on the next round.
            if n == 0 {
                break;
            }
        }
        let mut used = Vec::new();
        for _ in 0..2 {
            if let Some(q) = queues.iter_mut().find(|q| q.index == RX) {
                if self.receive(&mut q.queue, mem)? && !used.contains(&RX) {
                    used.push(RX);
                }
            }
            if !self.tx_paused {
                break;
            }
            if let Some(q) = queues.iter_mut().find(|q| q.index == TX) {
                if self.transmit(&mut q.queue, mem)? && !used.contains(&TX) {
                    used.push(TX);
                }
            }
        }
        Ok(used)
    }
}
