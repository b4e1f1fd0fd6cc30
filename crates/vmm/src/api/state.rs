//! What the control API sees of a running VM: its fixed description, its vCPUs, its power
//! button, its exit signal and the counters its devices keep.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::devices::legacy::acpi_pm::AcpiPm;
use crate::devices::virtio::block::BlockCounters;
use crate::exit::ExitSignal;
use crate::vcpu::{RunState, Vcpus};

/// A device as `GET /api/v1/vm` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Name, unique in the VM (`com1`, `virtio-blk0`).
    pub name: String,
    /// Kind (`serial`, `virtio-blk`, ...).
    pub kind: String,
    /// Where the guest finds it (`pio 0x3f8`, `pci 00:01.0`).
    pub location: String,
}

/// A device that keeps counters the API reports.
pub trait CounterSource: Send + Sync {
    /// Counter values by name.
    fn counters(&self) -> BTreeMap<&'static str, u64>;
}

impl CounterSource for BlockCounters {
    fn counters(&self) -> BTreeMap<&'static str, u64> {
        let g = BlockCounters::get;
        BTreeMap::from([
            ("read_requests", g(&self.read_requests)),
            ("write_requests", g(&self.write_requests)),
            ("flush_requests", g(&self.flush_requests)),
            ("discard_requests", g(&self.discard_requests)),
            ("read_bytes", g(&self.read_bytes)),
            ("write_bytes", g(&self.write_bytes)),
            ("errors", g(&self.errors)),
        ])
    }
}

/// Counters of one device, named as in [`DeviceInfo::name`].
#[derive(Clone)]
pub struct DeviceCounters {
    /// Device name.
    pub name: String,
    /// The counters.
    pub source: Arc<dyn CounterSource>,
}

/// The fixed description of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// vCPU count.
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// How the kernel was entered (`linux64` or `pvh`).
    pub boot_entry: &'static str,
    /// Devices in bus order.
    pub devices: Vec<DeviceInfo>,
}

/// Everything the API acts on.
pub struct VmHandle {
    /// Ends the VM.
    pub exit: ExitSignal,
    /// Pause, resume, exit counters.
    pub vcpus: Arc<Vcpus>,
    /// The ACPI PM block with the power button.
    pub acpi: Arc<Mutex<AcpiPm>>,
    /// The fixed description.
    pub info: VmInfo,
    /// Device counters.
    pub counters: Vec<DeviceCounters>,
    /// When the vCPUs started.
    pub started: Instant,
}

impl VmHandle {
    /// `running`, `paused` or `shutting-down`.
    pub fn state(&self) -> &'static str {
        if self.exit.status().is_some() {
            return "shutting-down";
        }
        match self.vcpus.state() {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopping => "shutting-down",
        }
    }
}
