//! Builds and runs a VM: memory, KVM, legacy devices, PCI with its virtio devices, boot,
//! vCPU threads.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{
    cpuid, regs, ACPI_PM1A_EVT_PORT, ACPI_SCI_IRQ, BOOT_STACK, PCI_CONFIG_PORT, PCI_ECAM_SIZE,
    PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START,
};
use crate::boot::{self, BootConfig, Entry};
use crate::bus::Bus;
use crate::devices::legacy::{acpi_pm, debug_exit, i8042, serial};
use crate::devices::virtio::block::{Block, BlockCounters, DiskConfig};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::transport::VirtioPciDevice;
use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitSignal, ExitStatus};
use crate::kvm::KvmVm;
use crate::memory::{self, GuestMem};
use crate::pci::{KvmBackend, PciConfigIo, PciConfigMmio, PciMmioWindow, PciRoot, VmBackend};
use crate::vcpu::{self, Buses};

/// What a VM is made of.
pub struct VmConfig {
    /// Kernel, initramfs, command line.
    pub boot: BootConfig,
    /// vCPU count.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Where serial output goes.
    pub serial_out: Box<dyn Write + Send>,
    /// Provide the debug-exit port.
    pub debug_exit: bool,
    /// Track dirty pages in every region (for migration).
    pub dirty_log: bool,
    /// virtio-blk disks, in PCI slot order from 00:01.0.
    pub disks: Vec<DiskConfig>,
    /// Add a virtio-rng device after the disks.
    pub rng: bool,
    /// NICs, vsock and console, after the rng.
    pub host: crate::net::HostDevices,
    /// The host side of COM1's input (socket or pty), if any.
    pub serial_in: Option<serial::SerialInput>,
}

/// The PCI bus of a VM, the images its disks opened (flushed when the VM ends) and their
/// counters (for the control API).
struct Pci {
    root: Arc<Mutex<PciRoot>>,
    images: Vec<Arc<dyn paddock_disk::BlockImage>>,
    #[allow(dead_code)]
    counters: Vec<Arc<BlockCounters>>,
}

/// Builds bus 0: the host bridge, then one virtio-blk per disk, then virtio-rng.
fn build_pci(cfg: &VmConfig, mem: &GuestMem, kvm: &Arc<KvmVm>) -> Result<Pci, VmError> {
    let backend: Arc<dyn VmBackend> = Arc::new(KvmBackend::new(kvm.clone()));
    let mut root = PciRoot::new();
    let mut images = Vec::new();
    let mut counters = Vec::new();
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for d in &cfg.disks {
        let image = d.open().map_err(VmError::Device)?;
        images.push(image.clone());
        let block = Block::new(image, d.read_only, &d.serial);
        counters.push(block.counters());
        devices.push(Box::new(block));
    }
    if cfg.rng {
        devices.push(Box::new(Rng));
    }
    let _nic_counters = cfg.host.build(&mut devices).map_err(VmError::Device)?;
    for dev in devices {
        let name = dev.name().to_string();
        let pci = VirtioPciDevice::new(dev, mem.clone(), backend.clone())
            .map_err(|e| VmError::Device(format!("virtio-{name}: {e}")))?;
        root.add_device(Arc::new(Mutex::new(pci)))
            .map_err(|e| VmError::Device(format!("virtio-{name}: {e}")))?;
    }
    Ok(Pci {
        root: Arc::new(Mutex::new(root)),
        images,
        counters,
    })
}

/// Errors starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// KVM.
    #[error(transparent)]
    Kvm(#[from] crate::kvm::KvmError),
    /// Boot loading.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// vCPU setup.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Device setup.
    #[error("device setup: {0}")]
    Device(String),
}

/// Boots the VM and blocks until it ends.
pub fn run(cfg: VmConfig) -> Result<ExitStatus, VmError> {
    let mem = memory::create(cfg.memory)?;
    let kvm = Arc::new(KvmVm::create()?);
    kvm.register_memory(&mem, cfg.dirty_log)?;
    regs::write_boot_tables(&mem)?;
    let entry = boot::load_smp(&mem, &cfg.boot, cfg.cpus)?;
    let pci = build_pci(&cfg, &mem, &kvm)?;

    let exit = ExitSignal::new().map_err(|e| VmError::Device(format!("exit eventfd: {e}")))?;
    let mut pio = Bus::new();
    let irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| VmError::Device(format!("serial irq: {e}")))?;
    kvm.register_irqfd(&irq, serial::COM1_IRQ)?;
    let com1 = Arc::new(Mutex::new(serial::SerialDevice::new(irq, cfg.serial_out)));
    if let Some(input) = cfg.serial_in {
        input
            .start(com1.clone())
            .map_err(|e| VmError::Device(format!("serial input: {e}")))?;
    }
    let dev = |e: crate::bus::BusError| VmError::Device(e.to_string());
    pio.insert(com1, serial::COM1, 8).map_err(dev)?;
    pio.insert(
        Arc::new(Mutex::new(i8042::I8042::new(exit.clone()))),
        i8042::BASE,
        5,
    )
    .map_err(dev)?;
    let sci = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(format!("SCI: {e}")))?;
    kvm.register_irqfd(&sci, u32::from(ACPI_SCI_IRQ))?;
    let pm = Arc::new(Mutex::new(acpi_pm::AcpiPm::new(sci, exit.clone())));
    pio.insert(pm, u64::from(ACPI_PM1A_EVT_PORT), acpi_pm::LEN)
        .map_err(dev)?;
    if cfg.debug_exit {
        pio.insert(
            Arc::new(Mutex::new(debug_exit::DebugExit::new(exit.clone()))),
            debug_exit::PORT,
            4,
        )
        .map_err(dev)?;
    }
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo(pci.root.clone()))),
        PCI_CONFIG_PORT,
        8,
    )
    .map_err(dev)?;
    let mut mmio = Bus::new();
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio(pci.root.clone()))),
        PCI_ECAM_START,
        PCI_ECAM_SIZE,
    )
    .map_err(dev)?;
    mmio.insert(
        Arc::new(Mutex::new(PciMmioWindow(pci.root.clone()))),
        PCI_MMIO_START,
        PCI_MMIO_SIZE,
    )
    .map_err(dev)?;
    let buses = Buses {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
    };

    let mut threads = Vec::new();
    for id in 0..cfg.cpus {
        let fd = kvm.create_vcpu(id as u64)?;
        crate::kvm::vcpu::set_cpuid(&fd, &cpuid::for_vcpu(&kvm.supported_cpuid, id, cfg.cpus, 1))?;
        regs::set_boot_msrs(&fd)?;
        regs::set_fpu(&fd)?;
        regs::set_lint(&fd)?;
        if id == 0 {
            match entry {
                Entry::Linux64 { rip, zero_page } => {
                    regs::set_long_mode_sregs(&fd)?;
                    regs::set_entry_regs(&fd, rip, BOOT_STACK, zero_page, 0)?;
                }
                Entry::Pvh { rip, start_info } => {
                    regs::set_pvh_sregs(&fd)?;
                    regs::set_entry_regs(&fd, rip, 0, 0, start_info)?;
                }
            }
        }
        let (b, e) = (buses.clone(), exit.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(id as u64, fd, b, e))
                .map_err(|e| VmError::Device(format!("vCPU thread: {e}")))?,
        );
    }
    // Wait for the first exit request.
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(exit.event()),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: polls one valid, owned eventfd descriptor; `pfd` lives across the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 || exit.status().is_some() {
            break;
        }
    }
    // Keep `mem` and `kvm` alive until here: vCPU threads may still be inside KVM_RUN; the
    // process exits right after, so they are not joined.
    let status = exit.status().unwrap_or(ExitStatus {
        code: 1,
        reason: "no exit status".into(),
    });
    drop(threads);
    for image in &pci.images {
        if let Err(e) = image.flush() {
            eprintln!("paddock-vmm: flushing a disk at exit: {e}");
        }
    }
    std::mem::forget(pci);
    std::mem::forget(kvm);
    std::mem::forget(mem);
    Ok(status)
}
