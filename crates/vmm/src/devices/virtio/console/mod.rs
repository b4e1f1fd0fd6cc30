//! virtio-console (device type 3) with one port and no multiport control queue: guest output
//! goes to a file or stdout, host input (stdin, for `stdio`) to the guest.
//! `--console file=PATH|stdio|off`. The device (`mod.rs`) owns identity and configuration;
//! `handler.rs` moves the bytes.

pub mod handler;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::worker::QueueHandler;
use super::{VirtioDevice, VIRTIO_F_VERSION_1};
use handler::ConsoleHandler;

/// Virtio device type of a console.
pub const TYPE_CONSOLE: u16 = 3;
/// Queue size of each queue.
pub const QUEUE_SIZE: u16 = 64;
/// receiveq0 (host to guest).
pub const RX: usize = 0;
/// transmitq0 (guest to host).
pub const TX: usize = 1;
/// Bytes of the configuration (cols, rows, max_nr_ports, emerg_wr).
pub const CONFIG_LEN: u32 = 12;
/// PCI class: simple communication controller, other.
pub const PCI_CLASS: u32 = 0x07_80_00;

/// Where the console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// No console device.
    #[default]
    Off,
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
}

impl ConsoleConfig {
    /// Parses the value of `--console`.
    pub fn parse(s: &str) -> Result<ConsoleConfig, String> {
        match s {
            "off" => Ok(ConsoleConfig::Off),
            "stdio" => Ok(ConsoleConfig::Stdio),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(ConsoleConfig::File(p.into())),
                _ => Err(format!("'{s}': use file=PATH, stdio or off")),
            },
        }
    }

    /// The device, or `None` for `off`.
    pub fn build(&self) -> Result<Option<Console>, String> {
        match self {
            ConsoleConfig::Off => Ok(None),
            ConsoleConfig::Stdio => {
                let input = std::io::stdin()
                    .as_fd_dup()
                    .map_err(|e| format!("console stdin: {e}"))?;
                Ok(Some(Console::new(
                    Box::new(std::io::stdout()),
                    Some(Arc::new(input)),
                )))
            }
            ConsoleConfig::File(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("console file {}: {e}", p.display()))?;
                Ok(Some(Console::new(Box::new(f), None)))
            }
        }
    }
}

/// Duplicates a standard stream's descriptor into a `File` the handler can own.
trait AsFdDup {
    fn as_fd_dup(&self) -> std::io::Result<File>;
}

impl<T: std::os::fd::AsFd> AsFdDup for T {
    fn as_fd_dup(&self) -> std::io::Result<File> {
        Ok(File::from(self.as_fd().try_clone_to_owned()?))
    }
}

/// Shared output sink (kept across device resets).
pub type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// A virtio console.
pub struct Console {
    out: Output,
    input: Option<Arc<File>>,
    config: [u8; CONFIG_LEN as usize],
}

impl Console {
    /// A console writing to `out` and reading `input` (a pipe, tty or socket), if any.
    pub fn new(out: Box<dyn Write + Send>, input: Option<Arc<File>>) -> Console {
        let mut config = [0u8; CONFIG_LEN as usize];
        config[0..2].copy_from_slice(&80u16.to_le_bytes());
        config[2..4].copy_from_slice(&25u16.to_le_bytes());
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        Console {
            out: Arc::new(Mutex::new(out)),
            input,
            config,
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        TYPE_CONSOLE
    }

    fn name(&self) -> &str {
        "console"
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN
    }

    fn activate(&mut self, _acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        let h = ConsoleHandler::new(self.out.clone(), self.input.clone())
            .map_err(|e| format!("console: {e}"))?;
        Ok(Box::new(h))
    }
}

#[cfg(test)]
mod tests;
