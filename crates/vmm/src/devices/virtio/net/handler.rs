//! Moving frames between the TAP and the guest's queues. Receive: a frame read from the TAP
//! (edge-triggered, read until it would block) goes into the next receive chain behind a
//! zeroed header with `num_buffers = 1`; a frame that does not fit the chain is dropped and the
//! chain kept for the next one; frames wait in the TAP while the guest has no buffers.
//! Transmit: each chain's header is zeroed (no offloads were offered) and the frame written to
//! the TAP; the TAP refusing it drops it. Buffers in the wrong direction, a chain shorter than
//! the header or longer than [`MAX_FRAME`] plus the header are malformed.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::counters::NetCounters;
use super::{RX, TX};
use crate::devices::virtio::queue::{ChainError, DescriptorChain, Queue, Segments};
use crate::devices::virtio::worker::{fill_queue, QueueHandler, WorkerQueue};
use crate::memory::GuestMem;
use crate::net::{Tap, VNET_HDR_LEN};

/// Largest frame (without the header) either way: 64 KiB, as no segmentation offload exists.
pub const MAX_FRAME: usize = 65535;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Where frames come from and go to: a TAP, or a datagram socket in tests. Each read or write
/// is one frame with its virtio-net header.
pub trait FrameBackend: Send + Sync {
    /// Reads one frame; `WouldBlock` when none is queued.
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&self, buf: &[u8]) -> std::io::Result<usize>;
    /// The descriptor that becomes readable when a frame is queued.
    fn fd(&self) -> RawFd;
}

impl FrameBackend for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&self, buf: &[u8]) -> std::io::Result<usize> {
        Tap::write_frame(self, buf)
    }
    fn fd(&self) -> RawFd {
        Tap::fd(self)
    }
}

impl FrameBackend for UnixDatagram {
    fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.recv(buf)
    }
    fn write_frame(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.send(buf)
    }
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// The queue handler of one virtio-net device.
pub struct NetHandler {
    backend: Arc<dyn FrameBackend>,
    counters: Arc<NetCounters>,
    epoll: Epoll,
    /// The backend may hold frames (an edge was seen and no read has blocked since).
    readable: bool,
    /// Length of a frame in `rx_buf` that waits for a receive chain.
    pending: Option<usize>,
    /// A receive chain popped but not used (the last frame did not fit it).
    held: Option<DescriptorChain>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

fn malformed(m: impl Into<String>) -> ChainError {
    ChainError::Request(m.into())
}

impl NetHandler {
    /// A handler on `backend`, watching it with an epoll of its own.
    pub fn new(
        backend: Arc<dyn FrameBackend>,
        counters: Arc<NetCounters>,
    ) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            backend.fd(),
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0),
        )?;
        Ok(NetHandler {
            backend,
            counters,
            epoll,
            readable: true,
            pending: None,
            held: None,
            rx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME],
            tx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME],
        })
    }

    /// Reads the next frame into `rx_buf` unless one is pending; false when none is queued.
    fn fill_pending(&mut self) -> bool {
        while self.pending.is_none() {
            if !self.readable {
                return false;
            }
            match self.backend.read_frame(&mut self.rx_buf) {
                Ok(n) if n > VNET_HDR_LEN => self.pending = Some(n),
                Ok(_) => NetCounters::add(&self.counters.rx_dropped, 1),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        eprintln!("paddock-vmm: virtio-net: reading the TAP: {e}");
                    }
                    self.readable = false;
                }
            }
        }
        true
    }

    /// Takes the edges the epoll has seen: the backend has new frames.
    fn poll_backend(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        if matches!(self.epoll.wait(0, &mut events), Ok(n) if n > 0) {
            self.readable = true;
        }
    }

    /// Delivers queued frames into receive chains; returns whether any chain was used.
    pub fn receive(&mut self, rxq: &mut Queue, mem: &GuestMem) -> Result<bool, ChainError> {
        self.poll_backend();
        let mut used = false;
        while self.fill_pending() {
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
            if room < VNET_HDR_LEN as u64 {
                return Err(malformed(format!(
                    "receive chain of {room} bytes cannot hold the header"
                )));
            }
            let n = self.pending.take().unwrap_or(0);
            if n as u64 > room {
                NetCounters::add(&self.counters.rx_dropped, 1);
                self.held = Some(chain);
                continue;
            }
            let frame = &mut self.rx_buf[..n];
            frame[..VNET_HDR_LEN].fill(0);
            frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            Segments::new(chain.writable()).write(mem, 0, frame)?;
            rxq.add_used(mem, chain.head, n as u32)?;
            NetCounters::add(&self.counters.rx_packets, 1);
            NetCounters::add(&self.counters.rx_bytes, (n - VNET_HDR_LEN) as u64);
            used = true;
        }
        Ok(used)
    }

    /// Sends every available transmit chain to the backend; returns whether any was used.
    pub fn transmit(&mut self, txq: &mut Queue, mem: &GuestMem) -> Result<bool, ChainError> {
        let mut used = false;
        while let Some(chain) = txq.pop(mem)? {
            if chain.writable().next().is_some() {
                return Err(malformed("transmit buffers must be device-readable"));
            }
            let len = chain.readable_len();
            if len < VNET_HDR_LEN as u64 || len > (VNET_HDR_LEN + MAX_FRAME) as u64 {
                return Err(malformed(format!(
                    "transmit chain of {len} bytes (header plus 0 to {MAX_FRAME})"
                )));
            }
            let frame = &mut self.tx_buf[..len as usize];
            Segments::new(chain.readable()).read(mem, 0, frame)?;
            frame[..VNET_HDR_LEN].fill(0);
            match self.backend.write_frame(frame) {
                Ok(_) if len > VNET_HDR_LEN as u64 => {
                    NetCounters::add(&self.counters.tx_packets, 1);
                    NetCounters::add(&self.counters.tx_bytes, len - VNET_HDR_LEN as u64);
                }
                // A header-only frame, or the TAP refused it.
                _ => NetCounters::add(&self.counters.tx_dropped, 1),
            }
            txq.add_used(mem, chain.head, 0)?;
            used = true;
        }
        Ok(used)
    }
}

impl QueueHandler for NetHandler {
    fn process(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMem,
    ) -> Result<bool, ChainError> {
        match index {
            RX => self.receive(queue, mem),
            TX => self.transmit(queue, mem),
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
        self.poll_backend();
        fill_queue(queues, RX, |q| self.receive(q, mem))
    }
}
