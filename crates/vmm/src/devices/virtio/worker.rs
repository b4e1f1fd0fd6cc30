//! The per-device worker thread: it sleeps in epoll on one eventfd per queue (signalled by
//! KVM ioeventfds or by the transport) and a stop eventfd, hands ready queues to the device's
//! [`QueueHandler`], and raises interrupts. A device with a host-side backend (a TAP, sockets)
//! also hands the worker one pollable descriptor ([`QueueHandler::backend_fd`]); when it is
//! ready the handler moves data with every queue at hand. A malformed chain marks the device as
//! needing a reset and stops its queues; nothing the guest writes can panic the thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::queue::{ChainError, Queue};
use crate::memory::GuestMem;

/// Processes a device's queues: the device logic, apart from the event loop.
pub trait QueueHandler: Send {
    /// Handles every available chain of queue `index`; returns whether any buffer was used.
    fn process(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMem,
    ) -> Result<bool, ChainError>;

    /// Whether the worker should drain this handler's queues with notifications suppressed:
    /// on a wake-up it sets VRING_USED_F_NO_NOTIFY (or leaves `avail_event` behind), calls
    /// [`QueueHandler::process`] until the avail ring is empty, and re-enables and re-checks
    /// before sleeping. Only for handlers whose `process` consumes every available chain
    /// (not receive queues that hold buffers for later); `false` by default.
    fn drains_queues(&self) -> bool {
        false
    }

    /// A descriptor that becomes readable when the backend has work (typically an epoll fd
    /// of the handler's own); `None` (the default) for devices driven by their queues only.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }

    /// The backend descriptor is ready: moves data between the backend and `queues`; returns
    /// the indices of the queues that got used buffers.
    fn process_backend(
        &mut self,
        queues: &mut [WorkerQueue],
        mem: &GuestMem,
    ) -> Result<Vec<usize>, ChainError> {
        let _ = (queues, mem);
        Ok(Vec::new())
    }
}

/// How a device raises interrupts through its transport.
pub trait Interrupt: Send + Sync {
    /// Used buffers in queue `index`.
    fn signal_queue(&self, index: usize);
    /// Configuration or status change (DEVICE_NEEDS_RESET).
    fn signal_config(&self);
}

/// Runs `fill` on the queue with `index` when the worker holds it (a backend that has data
/// for the guest fills its receive queue); answers `[index]` when buffers were used, for
/// [`QueueHandler::process_backend`] to report.
pub fn fill_queue(
    queues: &mut [WorkerQueue],
    index: usize,
    fill: impl FnOnce(&mut Queue) -> Result<bool, ChainError>,
) -> Result<Vec<usize>, ChainError> {
    let Some(q) = queues.iter_mut().find(|q| q.index == index) else {
        return Ok(Vec::new());
    };
    Ok(if fill(&mut q.queue)? {
        vec![index]
    } else {
        Vec::new()
    })
}

/// A queue handed to the worker with the eventfd that announces new buffers.
pub struct WorkerQueue {
    /// Queue index.
    pub index: usize,
    /// The queue.
    pub queue: Queue,
    /// Its notification eventfd.
    pub event: EventFd,
}

/// A running worker; stopping it (or dropping it) joins the thread.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

const STOP: u64 = u64::MAX;
/// Passes over a queue in one wake-up before the worker looks at its other events.
const DRAIN_PASSES: u32 = 64;
const BACKEND: u64 = u64::MAX - 1;

impl Worker {
    /// Starts the worker thread `name`.
    pub fn spawn(
        name: String,
        mut handler: Box<dyn QueueHandler>,
        mut queues: Vec<WorkerQueue>,
        mem: GuestMem,
        interrupt: Arc<dyn Interrupt>,
        needs_reset: Arc<AtomicBool>,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        for (i, q) in queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                q.event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        if let Some(fd) = handler.backend_fd() {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, BACKEND),
            )?;
        }
        let thread_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                if let Err(e) = crate::seccomp::enter_worker_thread() {
                    eprintln!("paddock-vmm: {name}: {e}");
                    return;
                }
                let mut events = vec![EpollEvent::default(); queues.len() + 2];
                let mut broken = false;
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            eprintln!("paddock-vmm: {name}: epoll failed: {e}");
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        if ev.data() == STOP {
                            return;
                        }
                        let result = if ev.data() == BACKEND {
                            if broken {
                                // Stop listening: a broken device moves no more data.
                                if let Some(fd) = handler.backend_fd() {
                                    let _ = epoll.ctl(
                                        ControlOperation::Delete,
                                        fd,
                                        EpollEvent::default(),
                                    );
                                }
                                continue;
                            }
                            handler
                                .process_backend(&mut queues, &mem)
                                .map_err(|e| ("backend".to_string(), e))
                        } else {
                            let Some(q) = queues.get_mut(ev.data() as usize) else {
                                continue;
                            };
                            let _ = q.event.read();
                            if broken {
                                continue;
                            }
                            let index = q.index;
                            if handler.drains_queues() {
                                drain(handler.as_mut(), q, &mem, interrupt.as_ref())
                                    .map(|()| Vec::new())
                            } else {
                                handler.process(index, &mut q.queue, &mem).map(|used| {
                                    if used {
                                        vec![index]
                                    } else {
                                        Vec::new()
                                    }
                                })
                            }
                            .map_err(|e| (format!("queue {index}"), e))
                        };
                        match result {
                            Ok(used) => {
                                for q in queues.iter_mut().filter(|q| used.contains(&q.index)) {
                                    if q.queue.needs_interrupt(&mem) {
                                        interrupt.signal_queue(q.index);
                                    }
                                }
                            }
                            Err((what, e)) => {
                                eprintln!(
                                    "paddock-vmm: {name}: {what}: {e}; the device needs a reset"
                                );
                                broken = true;
                                needs_reset.store(true, Ordering::SeqCst);
                                interrupt.signal_config();
                            }
                        }
                    }
                }
            })?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

/// Processes queue `q` until its avail ring stays empty with notifications re-enabled,
/// interrupting after each pass that used buffers (where the driver wants it). After
/// [`DRAIN_PASSES`] passes it re-arms the queue's own eventfd and returns, so a driver that
/// never stops feeding cannot keep the worker from other queues or from stopping.
fn drain(
    handler: &mut dyn QueueHandler,
    q: &mut WorkerQueue,
    mem: &GuestMem,
    interrupt: &dyn Interrupt,
) -> Result<(), ChainError> {
    q.queue.disable_notify(mem)?;
    for pass in 1.. {
        if handler.process(q.index, &mut q.queue, mem)? && q.queue.needs_interrupt(mem) {
            interrupt.signal_queue(q.index);
        }
        if q.queue.has_available(mem)? {
            if pass >= DRAIN_PASSES {
                let _ = q.event.write(1);
                return Ok(());
            }
            continue;
        }
        if !q.queue.enable_notify(mem)? {
            return Ok(());
        }
        q.queue.disable_notify(mem)?;
    }
    Ok(())
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
