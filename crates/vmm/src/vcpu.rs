//! vCPU threads: each runs KVM_RUN in a loop and dispatches its exits to the buses. A fatal
//! exit (triple fault, internal error, failed entry) ends the VM with a register dump.

use std::sync::Arc;

use kvm_ioctls::VcpuFd;

use crate::bus::Bus;
use crate::exit::ExitSignal;
use crate::kvm::{vcpu, VcpuExit};

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

/// Runs vCPU `id` until the VM ends.
pub fn run(id: u64, mut fd: VcpuFd, buses: Buses, exit: ExitSignal) {
    loop {
        if exit.status().is_some() {
            return;
        }
        let fatal = match fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                buses.pio.write(port as u64, data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                buses.pio.read(port as u64, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                buses.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                buses.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some((0, "vCPU halted with interrupts off".to_string())),
            Ok(VcpuExit::Shutdown) => Some((GUEST_CRASH_STATUS, "triple fault".to_string())),
            Ok(VcpuExit::InternalError) => {
                Some((GUEST_CRASH_STATUS, "KVM internal error".to_string()))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some((
                GUEST_CRASH_STATUS,
                format!("VM entry failed (reason {reason:#x}) on host CPU {cpu}"),
            )),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                    exit.request(0, "guest powered off");
                    return;
                }
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    exit.request(0, "guest reset");
                    return;
                }
                other => Some((GUEST_CRASH_STATUS, format!("system event {other}"))),
            },
            Ok(other) => Some((GUEST_CRASH_STATUS, format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some((GUEST_CRASH_STATUS, format!("KVM_RUN failed: {e}"))),
        };
        if let Some((code, reason)) = fatal {
            if code != 0 {
                eprintln!("paddock-vmm: vCPU {id}: {reason}\n{}", register_dump(&fd));
            }
            exit.request(code, format!("vCPU {id}: {reason}"));
            return;
        }
    }
}
