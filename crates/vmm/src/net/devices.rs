//! The virtio devices that connect a guest to its host: NICs on TAPs, a vsock device, a
//! console. Their options travel together, and one builder appends them to the VM's devices.

use std::sync::Arc;

use crate::devices::virtio::console::ConsoleConfig;
use crate::devices::virtio::net::{Net, NetConfig, NetCounters};
use crate::devices::virtio::vsock::{Vsock, VsockConfig};
use crate::devices::virtio::VirtioDevice;

/// Host-facing devices of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDevices {
    /// virtio-net devices, in order.
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// The virtio console.
    pub console: ConsoleConfig,
}

impl HostDevices {
    /// Opens every backend (TAPs, the vsock socket, the console output) and appends the
    /// devices to `devices`: NICs, then vsock, then the console. Returns the NICs' counters.
    pub fn build(
        &self,
        devices: &mut Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Vec<Arc<NetCounters>>, String> {
        let mut counters = Vec::new();
        for n in &self.nets {
            let net = Net::open(n).map_err(|e| format!("--net tap={}: {e}", n.tap))?;
            counters.push(net.counters());
            devices.push(Box::new(net));
        }
        if let Some(v) = &self.vsock {
            devices.push(Box::new(Vsock::open(v)?));
        }
        if let Some(c) = self.console.build()? {
            devices.push(Box::new(c));
        }
        Ok(counters)
    }
}
