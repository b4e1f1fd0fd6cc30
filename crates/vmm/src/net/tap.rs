//! A TAP device attached through `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: every
//! frame read or written carries the 12-byte `virtio_net_hdr` (virtio 1.x layout, with
//! `num_buffers`) in front. No offloads are enabled, so the kernel hands us whole, checksummed
//! frames and expects the same.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Length of the virtio-net header on the TAP (and in the guest's buffers).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name (IFNAMSIZ minus the NUL).
pub const IFNAME_MAX: usize = 15;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Errors opening a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or not plain ASCII.
    #[error("TAP name '{0}' is invalid (1 to 15 ASCII characters, no '/' or spaces)")]
    Name(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] std::io::Error),
    /// A TUN ioctl failed.
    #[error("TAP {name}: {what} failed: {source}")]
    Ioctl {
        /// Interface.
        name: String,
        /// Which ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// `struct ifreq` with the name and flags the TUN ioctls use.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP queue (non-blocking).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Tap {
    /// Attaches to TAP interface `name` (creating it when absent and allowed), with the
    /// virtio-net header on and every offload off.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let tap = Tap {
            file,
            name: name.into(),
        };
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`, which `req` is in
        // layout and size (40 bytes); the fd is ours.
        let r = unsafe { libc::ioctl(tap.fd(), TUNSETIFF, &mut req as *mut IfReq) };
        tap.check(r, "TUNSETIFF")?;
        let hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which lives across the call.
        let r = unsafe { libc::ioctl(tap.fd(), TUNSETVNETHDRSZ, &hdr as *const libc::c_int) };
        tap.check(r, "TUNSETVNETHDRSZ")?;
        // SAFETY: TUNSETOFFLOAD takes its argument by value; 0 turns every offload off.
        let r = unsafe { libc::ioctl(tap.fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) };
        tap.check(r, "TUNSETOFFLOAD")?;
        Ok(tap)
    }

    fn check(&self, r: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if r < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor, for epoll.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, buf: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_ioctl() {
        for bad in ["", "a/b", "sixteen-chars-xx", "with space", "x:y"] {
            assert!(matches!(Tap::open(bad), Err(TapError::Name(_))), "{bad:?}");
        }
        assert!(valid_name("tap0"));
        assert!(valid_name("fifteen-chars-x"));
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
