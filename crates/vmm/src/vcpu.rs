//! vCPU threads: each runs KVM_RUN in a loop and dispatches its exits to the buses. A fatal
//! exit (triple fault, internal error, failed entry) ends the VM with a register dump.
//!
//! Pause, resume and teardown go through [`Vcpus`]: the controller records the wanted state,
//! sets `immediate_exit` in each vCPU's `kvm_run` (so a KVM_RUN about to start returns at once)
//! and sends the thread [`kick_signal`], whose handler is empty (so one already in the guest
//! returns `EINTR`). A paused vCPU parks on a condition variable; resume releases it; stop ends
//! its thread, which hands its `VcpuFd` back to the joiner.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::exit::ExitSignal;
use crate::kvm::{self, vcpu, VcpuExit, VcpuKick};

/// Exit status for a guest that crashed (triple fault, KVM internal error).
pub const GUEST_CRASH_STATUS: i32 = 3;

/// The buses a vCPU dispatches to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// Memory-mapped I/O.
    pub mmio: Arc<Bus>,
}

/// Formats the vCPU's registers for the log.
pub fn register_dump(fd: &VcpuFd) -> String {
    let mut out = String::new();
    if let Ok(r) = vcpu::regs(fd) {
        out += &format!(
            "rip={:#018x} rsp={:#018x} rflags={:#x}\nrax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
        );
    }
    if let Ok(s) = vcpu::sregs(fd) {
        out += &format!(
            "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(l={} dpl={}) ss={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.l, s.cs.dpl, s.ss.selector
        );
    }
    out
}

/// The real-time signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the empty handler for [`kick_signal`] (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// VM exits of one vCPU, by reason.
#[derive(Debug, Default)]
pub struct ExitCounters {
    io_in: AtomicU64,
    io_out: AtomicU64,
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    hlt: AtomicU64,
    shutdown: AtomicU64,
    system_event: AtomicU64,
    internal_error: AtomicU64,
    fail_entry: AtomicU64,
    interrupted: AtomicU64,
    other: AtomicU64,
}

impl ExitCounters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by name (`io_in`, `io_out`, `mmio_read`, `mmio_write`, `hlt`, `shutdown`,
    /// `system_event`, `internal_error`, `fail_entry`, `interrupted` (kicks and signals),
    /// `other`).
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("io_in", get(&self.io_in)),
            ("io_out", get(&self.io_out)),
            ("mmio_read", get(&self.mmio_read)),
            ("mmio_write", get(&self.mmio_write)),
            ("hlt", get(&self.hlt)),
            ("shutdown", get(&self.shutdown)),
            ("system_event", get(&self.system_event)),
            ("internal_error", get(&self.internal_error)),
            ("fail_entry", get(&self.fail_entry)),
            ("interrupted", get(&self.interrupted)),
            ("other", get(&self.other)),
        ])
    }
}

/// What the controller wants the vCPUs to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Run the guest.
    Running,
    /// Park until resumed.
    Paused,
    /// Leave the run loop for good.
    Stopping,
}

/// Errors changing the run state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The transition is not allowed from the current state.
    #[error("the VM is {0:?}")]
    Illegal(RunState),
    /// Not every vCPU parked in time.
    #[error("{parked} of {alive} vCPUs stopped within {waited:?}")]
    Timeout {
        /// vCPUs parked.
        parked: usize,
        /// vCPUs still running their loop.
        alive: usize,
        /// How long the controller waited.
        waited: Duration,
    },
}

struct Shared {
    state: RunState,
    parked: usize,
    alive: usize,
}

struct Gate {
    shared: Mutex<Shared>,
    cond: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One vCPU thread and what the controller needs to reach it.
struct Handle {
    thread: Option<JoinHandle<VcpuFd>>,
    kick: VcpuKick,
}

/// The VM's vCPU threads: pause, resume, stop and join, and their exit counters.
pub struct Vcpus {
    gate: Arc<Gate>,
    handles: Mutex<Vec<Handle>>,
    counters: Vec<Arc<ExitCounters>>,
}

/// One vCPU ready to start: its fd and its kick handle.
pub struct VcpuStart {
    /// vCPU index.
    pub id: u64,
    /// The vCPU, registers set.
    pub fd: VcpuFd,
    /// Its kick handle (from [`crate::kvm::KvmVm::vcpu_kick`]).
    pub kick: VcpuKick,
}

impl Vcpus {
    /// Starts one thread per vCPU. `on_start` runs first in each thread (it installs the
    /// thread's seccomp filter); if it fails, the VM ends with its message.
    pub fn start<F>(
        vcpus: Vec<VcpuStart>,
        buses: Buses,
        exit: ExitSignal,
        on_start: F,
    ) -> std::io::Result<Vcpus>
    where
        F: Fn(u64) -> Result<(), String> + Send + Sync + 'static,
    {
        install_kick_handler()?;
        let gate = Arc::new(Gate {
            shared: Mutex::new(Shared {
                state: RunState::Running,
                parked: 0,
                alive: 0,
            }),
            cond: Condvar::new(),
        });
        let on_start = Arc::new(on_start);
        let mut this = Vcpus {
            gate: gate.clone(),
            handles: Mutex::new(Vec::new()),
            counters: Vec::new(),
        };
        for v in vcpus {
            let c = Arc::new(ExitCounters::default());
            let ctx = Ctx {
                id: v.id,
                buses: buses.clone(),
                exit: exit.clone(),
                gate: gate.clone(),
                counters: c.clone(),
            };
            let on_start = on_start.clone();
            gate.lock().alive += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{}", v.id))
                .spawn(move || {
                    let mut fd = v.fd;
                    match on_start(ctx.id) {
                        Ok(()) => ctx.run(&mut fd),
                        Err(e) => {
                            ctx.exit.request(1, format!("vCPU {}: {e}", ctx.id));
                            ctx.leave();
                        }
                    }
                    fd
                });
            match spawned {
                Ok(t) => {
                    this.counters.push(c);
                    this.handles
                        .get_mut()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Handle {
                            thread: Some(t),
                            kick: v.kick,
                        });
                }
                Err(e) => {
                    gate.lock().alive -= 1;
                    this.stop_and_join();
                    return Err(e);
                }
            }
        }
        Ok(this)
    }

    /// Exit counters, one entry per vCPU in id order.
    pub fn counters(&self) -> &[Arc<ExitCounters>] {
        &self.counters
    }

    /// The state the controller last set.
    pub fn state(&self) -> RunState {
        self.gate.lock().state
    }

    fn kick_all(&self) {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        for h in handles.iter() {
            h.kick.set_immediate_exit();
            if let Some(t) = &h.thread {
                // A thread that already left its loop has nothing to interrupt.
                let _ = t.kill(kick_signal());
            }
        }
    }

    /// Parks every vCPU and waits until each has left KVM_RUN (or ended), up to `timeout`.
    pub fn pause(&self, timeout: Duration) -> Result<(), StateError> {
        {
            let mut s = self.gate.lock();
            if s.state != RunState::Running {
                return Err(StateError::Illegal(s.state));
            }
            s.state = RunState::Paused;
        }
        self.kick_all();
        let start = Instant::now();
        let mut s = self.gate.lock();
        while s.parked < s.alive && s.state == RunState::Paused {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(StateError::Timeout {
                    parked: s.parked,
                    alive: s.alive,
                    waited: timeout,
                });
            }
            s = self
                .gate
                .cond
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Releases paused vCPUs.
    pub fn resume(&self) -> Result<(), StateError> {
        let mut s = self.gate.lock();
        if s.state != RunState::Paused {
            return Err(StateError::Illegal(s.state));
        }
        s.state = RunState::Running;
        self.gate.cond.notify_all();
        Ok(())
    }

    /// Ends every vCPU thread (running, parked or in KVM_RUN) and joins them; returns the
    /// vCPU fds so the caller decides when they close.
    pub fn stop_and_join(&self) -> Vec<VcpuFd> {
        {
            let mut s = self.gate.lock();
            s.state = RunState::Stopping;
            self.gate.cond.notify_all();
        }
        self.kick_all();
        let threads: Vec<JoinHandle<VcpuFd>> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .filter_map(|h| h.thread.take())
            .collect();
        threads.into_iter().filter_map(|t| t.join().ok()).collect()
    }
}

/// What a vCPU thread carries.
struct Ctx {
    id: u64,
    buses: Buses,
    exit: ExitSignal,
    gate: Arc<Gate>,
    counters: Arc<ExitCounters>,
}

impl Ctx {
    /// Parks while paused; returns false when the thread must end.
    fn gate(&self) -> bool {
        let mut s = self.gate.lock();
        match s.state {
            RunState::Running => true,
            RunState::Stopping => false,
            RunState::Paused => {
                s.parked += 1;
                self.gate.cond.notify_all();
                while s.state == RunState::Paused {
                    s = self.gate.cond.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.parked -= 1;
                s.state == RunState::Running
            }
        }
    }

    /// Marks this vCPU as gone so a pause does not wait for it.
    fn leave(&self) {
        let mut s = self.gate.lock();
        s.alive -= 1;
        self.gate.cond.notify_all();
    }

    fn run(&self, fd: &mut VcpuFd) {
        crate::seccomp::selftest_point(crate::seccomp::ThreadKind::Vcpu);
        while self.gate() && self.exit.status().is_none() {
            if let Some((code, reason)) = self.step(fd) {
                if code != 0 {
                    eprintln!(
                        "paddock-vmm: vCPU {}: {reason}\n{}",
                        self.id,
                        register_dump(fd)
                    );
                }
                self.exit
                    .request(code, format!("vCPU {}: {reason}", self.id));
                break;
            }
        }
        self.leave();
    }

    /// Runs the guest until one exit and handles it; returns a status to end the VM with.
    fn step(&self, fd: &mut VcpuFd) -> Option<(i32, String)> {
        let c = &*self.counters;
        let r = fd.run();
        match r {
            Ok(VcpuExit::IoOut(port, data)) => {
                ExitCounters::bump(&c.io_out);
                self.buses.pio.write(port as u64, data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                ExitCounters::bump(&c.io_in);
                self.buses.pio.read(port as u64, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ExitCounters::bump(&c.mmio_read);
                self.buses.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ExitCounters::bump(&c.mmio_write);
                self.buses.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => {
                ExitCounters::bump(&c.hlt);
                Some((0, "vCPU halted with interrupts off".to_string()))
            }
            Ok(VcpuExit::Shutdown) => {
                ExitCounters::bump(&c.shutdown);
                Some((GUEST_CRASH_STATUS, "triple fault".to_string()))
            }
            Ok(VcpuExit::InternalError) => {
                ExitCounters::bump(&c.internal_error);
                Some((GUEST_CRASH_STATUS, "KVM internal error".to_string()))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                ExitCounters::bump(&c.fail_entry);
                Some((
                    GUEST_CRASH_STATUS,
                    format!("VM entry failed (reason {reason:#x}) on host CPU {cpu}"),
                ))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                ExitCounters::bump(&c.system_event);
                match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                        Some((0, "guest powered off".to_string()))
                    }
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some((0, "guest reset".to_string())),
                    other => Some((GUEST_CRASH_STATUS, format!("system event {other}"))),
                }
            }
            Ok(other) => {
                ExitCounters::bump(&c.other);
                Some((GUEST_CRASH_STATUS, format!("unexpected exit {other:?}")))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ExitCounters::bump(&c.interrupted);
                // Clear the kick before looking at why we were kicked (see the module doc).
                kvm::clear_immediate_exit(fd);
                None
            }
            Err(e) => Some((GUEST_CRASH_STATUS, format!("KVM_RUN failed: {e}"))),
        }
    }
}
