//! Host networking and I/O for guest devices: TAP devices opened through `/dev/net/tun`, and
//! the set of host-facing virtio devices a VM is built with.

pub mod devices;
pub mod tap;

pub use devices::HostDevices;
pub use tap::{Tap, TapError, VNET_HDR_LEN};
