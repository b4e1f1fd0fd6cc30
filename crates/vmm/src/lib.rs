//! `paddock-vmm`: Paddock's VMM on KVM, one process per VM.
//!
//! Layout: `kvm/` is the only module that issues KVM ioctls; `memory/` maps guest RAM;
//! `arch/x86_64/` sets up CPU state and tables; `boot/` implements Linux direct boot;
//! `bus/` dispatches port and MMIO exits; `devices/` holds the emulated devices; `api/` is the
//! control API on a Unix socket; `seccomp/` the per-thread syscall filters.

pub mod api;
pub mod arch;
pub mod boot;
pub mod bus;
pub mod devices;
pub mod exit;
pub mod kvm;
pub mod memory;
pub mod net;
pub mod pci;
pub mod seccomp;
pub mod teardown;
pub mod vcpu;
pub mod vm;
