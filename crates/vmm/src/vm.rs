//! Builds and runs a VM: memory, KVM, legacy devices, PCI with its virtio devices, boot,
//! vCPU threads, the control API and seccomp; then tears it down in order (API thread, vCPU
//! threads, device workers, images flushed) and returns the exit status.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::api::{self, ApiServer, DeviceCounters, DeviceInfo, VmHandle, VmInfo};
use crate::arch::x86_64::{
    cpuid, regs, ACPI_PM1A_EVT_PORT, ACPI_SCI_IRQ, BOOT_STACK, PCI_CONFIG_PORT, PCI_ECAM_SIZE,
    PCI_ECAM_START, PCI_MMIO_SIZE, PCI_MMIO_START,
};
use crate::boot::{self, BootConfig, Entry};
use crate::bus::Bus;
use crate::devices::legacy::{acpi_pm, debug_exit, i8042, rtc, serial};
use crate::devices::virtio::block::{Block, DiskConfig};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::transport::VirtioPciDevice;
use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitSignal, ExitStatus};
use crate::kvm::KvmVm;
use crate::memory::{self, GuestMem};
use crate::pci::{KvmBackend, PciConfigIo, PciConfigMmio, PciMmioWindow, PciRoot, VmBackend};
use crate::seccomp::{self, Filters, ThreadKind};
use crate::vcpu::{Buses, VcpuStart, Vcpus};

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

/// How the VMM process around the VM behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Serve the control API on this Unix socket.
    pub api_socket: Option<PathBuf>,
    /// Install the seccomp filters (on by default; off only for debugging).
    pub seccomp: bool,
    /// Make the first thread of this kind call a forbidden syscall (tests of the filters).
    pub seccomp_selftest: Option<ThreadKind>,
    /// Destroy the VM in a helper process after this one exits ([`crate::teardown`]); the
    /// caller then calls [`crate::teardown::finish`] just before exiting.
    pub async_teardown: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            api_socket: None,
            seccomp: true,
            seccomp_selftest: None,
            async_teardown: false,
        }
    }
}

/// The PCI bus of a VM, the images its disks opened (flushed when the VM ends), and what the
/// control API shows of its devices.
struct Pci {
    root: Arc<Mutex<PciRoot>>,
    images: Vec<Arc<dyn paddock_disk::BlockImage>>,
    devices: Vec<DeviceInfo>,
    counters: Vec<DeviceCounters>,
}

/// Builds bus 0: the host bridge, then one virtio-blk per disk, then virtio-rng.
fn build_pci(cfg: &VmConfig, mem: &GuestMem, kvm: &Arc<KvmVm>) -> Result<Pci, VmError> {
    let backend: Arc<dyn VmBackend> = Arc::new(KvmBackend::new(kvm.clone()));
    let mut root = PciRoot::new();
    let mut images = Vec::new();
    let mut counters = Vec::new();
    let mut devices: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let image = d.open().map_err(VmError::Device)?;
        images.push(image.clone());
        let block = Block::new(image, d.read_only, &d.serial);
        let name = format!("virtio-blk{i}");
        counters.push(DeviceCounters {
            name: name.clone(),
            source: block.counters(),
        });
        devices.push((name, Box::new(block)));
    }
    if cfg.rng {
        devices.push(("virtio-rng0".into(), Box::new(Rng)));
    }
    let mut host_devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let nic_counters = cfg.host.build(&mut host_devices).map_err(VmError::Device)?;
    // Names count per kind (virtio-net0, virtio-net1, virtio-vsock0, ...); NICs come first,
    // in the order of their counters.
    let mut per_kind: std::collections::BTreeMap<String, usize> = Default::default();
    for dev in host_devices {
        let n = per_kind.entry(dev.name().to_string()).or_default();
        let name = format!("virtio-{}{n}", dev.name());
        *n += 1;
        devices.push((name, dev));
    }
    for (i, c) in nic_counters.into_iter().enumerate() {
        counters.push(DeviceCounters {
            name: format!("virtio-net{i}"),
            source: c,
        });
    }
    let mut infos = vec![DeviceInfo {
        name: "host-bridge".into(),
        kind: "pci-host-bridge".into(),
        location: "pci 00:00.0".into(),
    }];
    for (name, dev) in devices {
        let kind = format!("virtio-{}", dev.name());
        let pci = VirtioPciDevice::new(dev, mem.clone(), backend.clone())
            .map_err(|e| VmError::Device(format!("{kind}: {e}")))?;
        let slot = root
            .add_device(Arc::new(Mutex::new(pci)))
            .map_err(|e| VmError::Device(format!("{kind}: {e}")))?;
        infos.push(DeviceInfo {
            name,
            kind,
            location: format!("pci 00:{slot:02x}.0"),
        });
    }
    Ok(Pci {
        root: Arc::new(Mutex::new(root)),
        images,
        devices: infos,
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
    /// Seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The control API socket.
    #[error("--api-socket {path}: {source}")]
    Api {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Threads.
    #[error("starting threads: {0}")]
    Thread(#[source] std::io::Error),
}

/// The port and MMIO buses with the legacy devices and PCI's config and BAR windows.
struct Legacy {
    buses: Buses,
    acpi: Arc<Mutex<acpi_pm::AcpiPm>>,
    devices: Vec<DeviceInfo>,
}

fn build_buses(
    cfg: &mut VmConfig,
    kvm: &KvmVm,
    exit: &ExitSignal,
    pci: &Pci,
) -> Result<Legacy, VmError> {
    let dev = |e: crate::bus::BusError| VmError::Device(e.to_string());
    let mut infos = Vec::new();
    let mut info = |name: &str, kind: &str, port: u64| {
        infos.push(DeviceInfo {
            name: name.into(),
            kind: kind.into(),
            location: format!("pio {port:#x}"),
        })
    };
    let mut pio = Bus::new();
    let irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| VmError::Device(format!("serial irq: {e}")))?;
    kvm.register_irqfd(&irq, serial::COM1_IRQ)?;
    let out = std::mem::replace(&mut cfg.serial_out, Box::new(std::io::sink()));
    let com1 = Arc::new(Mutex::new(serial::SerialDevice::new(irq, out)));
    if let Some(input) = cfg.serial_in.take() {
        input
            .start(com1.clone())
            .map_err(|e| VmError::Device(format!("serial input: {e}")))?;
    }
    pio.insert(com1, serial::COM1, 8).map_err(dev)?;
    info("com1", "serial", serial::COM1);
    pio.insert(
        Arc::new(Mutex::new(i8042::I8042::new(exit.clone()))),
        i8042::BASE,
        5,
    )
    .map_err(dev)?;
    info("i8042", "i8042", i8042::BASE);
    pio.insert(Arc::new(Mutex::new(rtc::Rtc::new())), rtc::BASE, 2)
        .map_err(dev)?;
    info("rtc", "cmos-rtc", rtc::BASE);
    let sci = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(format!("SCI: {e}")))?;
    kvm.register_irqfd(&sci, u32::from(ACPI_SCI_IRQ))?;
    let acpi = Arc::new(Mutex::new(acpi_pm::AcpiPm::new(sci, exit.clone())));
    pio.insert(acpi.clone(), u64::from(ACPI_PM1A_EVT_PORT), acpi_pm::LEN)
        .map_err(dev)?;
    info("acpi-pm", "acpi-pm1a", u64::from(ACPI_PM1A_EVT_PORT));
    if cfg.debug_exit {
        pio.insert(
            Arc::new(Mutex::new(debug_exit::DebugExit::new(exit.clone()))),
            debug_exit::PORT,
            4,
        )
        .map_err(dev)?;
        info("debug-exit", "debug-exit", debug_exit::PORT);
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
    Ok(Legacy {
        buses: Buses {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
        },
        acpi,
        devices: infos,
    })
}

/// Creates the vCPUs and sets their boot state (vCPU 0 gets the entry point).
fn create_vcpus(cfg: &VmConfig, kvm: &KvmVm, entry: Entry) -> Result<Vec<VcpuStart>, VmError> {
    let mut out = Vec::new();
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
        let kick = kvm.vcpu_kick(&fd)?;
        out.push(VcpuStart {
            id: id as u64,
            fd,
            kick,
        });
    }
    Ok(out)
}

/// Blocks until the first exit request.
fn wait_for_exit(exit: &ExitSignal) -> ExitStatus {
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(exit.event()),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        if let Some(s) = exit.status() {
            return s;
        }
        // SAFETY: polls one valid, owned eventfd descriptor; `pfd` lives across the call.
        unsafe { libc::poll(&mut pfd, 1, -1) };
    }
}

/// Boots the VM with default options (seccomp on, no API) and blocks until it ends.
pub fn run(cfg: VmConfig) -> Result<ExitStatus, VmError> {
    run_with(cfg, RunOptions::default())
}

/// Boots the VM and blocks until it ends; every thread it started is joined before it
/// returns.
pub fn run_with(mut cfg: VmConfig, opts: RunOptions) -> Result<ExitStatus, VmError> {
    let filters = if opts.seccomp {
        Some(Filters::build()?)
    } else {
        None
    };
    if let Some(kind) = opts.seccomp_selftest {
        seccomp::set_selftest(kind);
    }
    let listener = match &opts.api_socket {
        Some(path) => Some(api::bind(path).map_err(|source| VmError::Api {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let mem = if cfg.dirty_log {
        memory::create_with_dirty_bitmap(cfg.memory)?
    } else {
        memory::create(cfg.memory)?
    };
    let kvm = Arc::new(KvmVm::create_with_memory(&mem, cfg.dirty_log)?);
    if opts.async_teardown {
        if let Err(e) = crate::teardown::start(std::os::fd::AsRawFd::as_raw_fd(&kvm.vm)) {
            eprintln!("paddock-vmm: no asynchronous teardown: {e}");
        }
    }
    regs::write_boot_tables(&mem)?;
    let entry = boot::load_smp(&mem, &cfg.boot, cfg.cpus)?;
    let pci = build_pci(&cfg, &mem, &kvm)?;
    let exit = ExitSignal::new().map_err(|e| VmError::Device(format!("exit eventfd: {e}")))?;
    let legacy = build_buses(&mut cfg, &kvm, &exit, &pci)?;
    let starts = create_vcpus(&cfg, &kvm, entry)?;

    if let Some(f) = &filters {
        // Workers start later, from vCPU threads (DRIVER_OK).
        seccomp::set_worker_filter(f.get(ThreadKind::Worker).clone());
    }
    let vcpu_filter = filters.as_ref().map(|f| f.get(ThreadKind::Vcpu).clone());
    let vcpus = Arc::new(
        Vcpus::start(
            starts,
            legacy.buses.clone(),
            exit.clone(),
            move |_| match &vcpu_filter {
                Some(f) => seccomp::install(ThreadKind::Vcpu, f).map_err(|e| e.to_string()),
                None => Ok(()),
            },
        )
        .map_err(VmError::Thread)?,
    );
    let mut devices = legacy.devices;
    devices.extend(pci.devices.iter().cloned());
    let handle = VmHandle {
        exit: exit.clone(),
        vcpus: vcpus.clone(),
        acpi: legacy.acpi.clone(),
        info: VmInfo {
            vcpus: cfg.cpus,
            memory_bytes: cfg.memory,
            boot_entry: match entry {
                Entry::Linux64 { .. } => "linux64",
                Entry::Pvh { .. } => "pvh",
            },
            devices,
        },
        counters: pci.counters.clone(),
        started: Instant::now(),
    };
    let api = match listener {
        Some(socket) => {
            let f = filters.as_ref().map(|f| f.get(ThreadKind::Api).clone());
            match ApiServer::start(socket, handle, f) {
                Ok(a) => Some(a),
                Err(e) => {
                    exit.request(1, format!("cannot start the API thread: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    if let Some(f) = &filters {
        if let Err(e) = seccomp::install(ThreadKind::Main, f.get(ThreadKind::Main)) {
            exit.request(1, e.to_string());
        }
    }
    seccomp::selftest_point(ThreadKind::Main);

    let status = wait_for_exit(&exit);
    teardown(api, &vcpus, legacy.buses, pci);
    drop(kvm);
    drop(mem);
    Ok(status)
}

/// Stops the API, then the vCPUs, then the device workers; flushes the disk images.
fn teardown(api: Option<ApiServer>, vcpus: &Vcpus, buses: Buses, pci: Pci) {
    if let Some(mut a) = api {
        a.stop();
    }
    let fds = vcpus.stop_and_join();
    drop(fds);
    drop(buses);
    for image in &pci.images {
        if let Err(e) = image.flush() {
            eprintln!("paddock-vmm: flushing a disk at exit: {e}");
        }
    }
    // Dropping the root drops the virtio devices, which stop and join their workers.
    drop(pci);
}
