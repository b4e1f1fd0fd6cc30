//! virtio-vsock (device type 19) with the host side on Unix sockets, Firecracker-style:
//! `--vsock cid=N,socket=PATH`. The device (`mod.rs`) owns identity, features, the guest CID
//! and the listening socket; `packet.rs` the header; `conn.rs` one connection and its credit;
//! `muxer.rs` the protocol between the queues and the sockets.

pub mod conn;
pub mod muxer;
pub mod packet;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use super::worker::QueueHandler;
use super::{VirtioDevice, VIRTIO_F_VERSION_1};
use muxer::VsockHandler;

/// Virtio device type of a socket device.
pub const TYPE_VSOCK: u16 = 19;
/// Queue size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue (device to driver).
pub const RX: usize = 0;
/// Transmit queue (driver to device).
pub const TX: usize = 1;
/// Event queue.
pub const EVENT: usize = 2;
/// Bytes of the configuration (`guest_cid`).
pub const CONFIG_LEN: u32 = 8;
/// PCI class: communication controller, other.
pub const PCI_CLASS: u32 = 0x07_80_00;

/// `--vsock cid=N,socket=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (3 and up).
    pub cid: u64,
    /// Host socket path: host clients connect here; guest connections to port P go to
    /// `PATH_P`.
    pub socket: PathBuf,
}

impl VsockConfig {
    /// Parses the value of `--vsock`.
    pub fn parse(s: &str) -> Result<VsockConfig, String> {
        let (mut cid, mut socket) = (None, None);
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("cid", v)) => {
                    let c: u64 = v
                        .parse()
                        .map_err(|_| format!("cid '{v}' is not a number"))?;
                    if !(3..u64::from(u32::MAX)).contains(&c) {
                        return Err(format!("cid {c}: 0 to 2 and 2^32-1 are reserved"));
                    }
                    cid = Some(c);
                }
                Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown option '{kv}' (use cid=N,socket=PATH)")),
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or("cid=N is required")?,
            socket: socket.ok_or("socket=PATH is required")?,
        })
    }
}

/// A vsock device.
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: Arc<UnixListener>,
}

impl Vsock {
    /// Binds the host socket of `cfg` (replacing a stale socket file, never another file).
    pub fn open(cfg: &VsockConfig) -> Result<Vsock, String> {
        let what = |e: std::io::Error| format!("vsock socket {}: {e}", cfg.socket.display());
        if let Ok(m) = std::fs::symlink_metadata(&cfg.socket) {
            if !m.file_type().is_socket() {
                return Err(format!(
                    "vsock socket {}: exists and is not a socket",
                    cfg.socket.display()
                ));
            }
            std::fs::remove_file(&cfg.socket).map_err(what)?;
        }
        let listener = UnixListener::bind(&cfg.socket).map_err(what)?;
        listener.set_nonblocking(true).map_err(what)?;
        Ok(Vsock {
            cid: cfg.cid,
            path: cfg.socket.clone(),
            listener: Arc::new(listener),
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u16 {
        TYPE_VSOCK
    }

    fn name(&self) -> &str {
        "vsock"
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN
    }

    fn activate(&mut self, _acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        let h = VsockHandler::new(self.cid, self.path.clone(), self.listener.clone())
            .map_err(|e| format!("vsock: {e}"))?;
        Ok(Box::new(h))
    }
}

#[cfg(test)]
mod tests;
