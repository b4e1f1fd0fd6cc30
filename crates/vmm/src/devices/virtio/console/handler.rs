//! Moving console bytes: every transmit chain's readable bytes go to the output, in order;
//! input read from the host descriptor (when it is readable, so a blocking pipe or tty never
//! blocks the worker) waits in a small buffer for receive chains. Buffers in the wrong
//! direction are malformed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{Output, RX, TX};
use crate::devices::virtio::queue::{ChainError, Queue, Segments};
use crate::devices::virtio::worker::{fill_queue, QueueHandler, WorkerQueue};
use crate::memory::GuestMem;

/// Most input bytes held for the guest.
pub const INPUT_BUFFER: usize = 4096;
/// Bytes copied at a time from a transmit chain.
const CHUNK: usize = 4096;

/// The console's queue handler.
pub struct ConsoleHandler {
    out: Output,
    input: Option<Arc<File>>,
    epoll: Epoll,
    pending: VecDeque<u8>,
}

fn malformed(m: impl Into<String>) -> ChainError {
    ChainError::Request(m.into())
}

/// Whether `fd` has data (or an end) to read right now.
fn ready(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one descriptor the handler holds open, with no timeout; `p` lives across
    // the call.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents != 0
}

impl ConsoleHandler {
    /// A handler writing to `out` and reading `input`.
    pub fn new(out: Output, input: Option<Arc<File>>) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        if let Some(f) = &input {
            let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0);
            if let Err(e) = epoll.ctl(ControlOperation::Add, f.as_raw_fd(), ev) {
                // Regular files cannot be polled; the console then has output only.
                eprintln!("paddock-vmm: virtio-console: input not pollable ({e}); output only");
            }
        }
        Ok(ConsoleHandler {
            out,
            input,
            epoll,
            pending: VecDeque::new(),
        })
    }

    /// Writes every available transmit chain to the output.
    pub fn transmit(&mut self, txq: &mut Queue, mem: &GuestMem) -> Result<bool, ChainError> {
        let mut used = false;
        let mut buf = [0u8; CHUNK];
        while let Some(chain) = txq.pop(mem)? {
            if chain.writable().next().is_some() {
                return Err(malformed("transmit buffers must be device-readable"));
            }
            let data = Segments::new(chain.readable());
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            let mut at = 0;
            while at < data.len() {
                let n = (data.len() - at).min(CHUNK as u64) as usize;
                data.read(mem, at, &mut buf[..n])?;
                if let Err(e) = out.write_all(&buf[..n]) {
                    eprintln!("paddock-vmm: virtio-console: output: {e}");
                }
                at += n as u64;
            }
            let _ = out.flush();
            drop(out);
            txq.add_used(mem, chain.head, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn read_input(&mut self) {
        let Some(f) = self.input.clone() else {
            return;
        };
        let mut buf = [0u8; 1024];
        while self.pending.len() < INPUT_BUFFER && ready(f.as_raw_fd()) {
            let room = (INPUT_BUFFER - self.pending.len()).min(buf.len());
            match (&*f).read(&mut buf[..room]) {
                Ok(0) | Err(_) => {
                    // End of input (or an error): stop watching it.
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        f.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    self.input = None;
                    return;
                }
                Ok(n) => self.pending.extend(&buf[..n]),
            }
        }
    }

    /// Reads host input and hands it to receive chains.
    pub fn receive(&mut self, rxq: &mut Queue, mem: &GuestMem) -> Result<bool, ChainError> {
        let mut used = false;
        loop {
            self.read_input();
            if self.pending.is_empty() {
                break;
            }
            let Some(chain) = rxq.pop(mem)? else {
                break;
            };
            if chain.readable().next().is_some() {
                return Err(malformed("receive buffers must be device-writable"));
            }
            let w = Segments::new(chain.writable());
            let n = (w.len() as usize).min(self.pending.len());
            let bytes: Vec<u8> = self.pending.drain(..n).collect();
            w.write(mem, 0, &bytes)?;
            rxq.add_used(mem, chain.head, n as u32)?;
            used = true;
        }
        Ok(used)
    }
}

impl QueueHandler for ConsoleHandler {
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
        let mut events = [EpollEvent::default(); 2];
        let _ = self.epoll.wait(0, &mut events);
        fill_queue(queues, RX, |q| self.receive(q, mem))
    }
}
