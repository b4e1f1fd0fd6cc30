//! What the host offers QEMU (KVM, PVM, vhost-vsock, firmware), and the accelerator choice.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use paddock_spec::Accel;

use crate::Error;

/// Candidate OVMF images (code and variables in one file, for `-bios`).
const OVMF_PATHS: [&str; 3] = [
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/OVMF/OVMF.fd",
    "/usr/share/qemu/OVMF.fd",
];

/// Facts about the host that decide what the QEMU driver can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `/dev/kvm` opens read-write: `Ok`, or why not.
    pub kvm: Result<(), String>,
    /// KVM is PVM's (`/sys/module/kvm_pvm` exists): nested KVM on which stock Linux guests die.
    pub pvm: bool,
    /// `/dev/vhost-vsock` opens read-write.
    pub vhost_vsock: bool,
    /// An OVMF image for UEFI boot, if installed.
    pub ovmf: Option<PathBuf>,
}

impl Host {
    /// Looks at this host.
    pub fn detect() -> Host {
        Host {
            kvm: open_rw(Path::new("/dev/kvm")),
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
            vhost_vsock: open_rw(Path::new("/dev/vhost-vsock")).is_ok(),
            ovmf: OVMF_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()),
        }
    }
}

fn open_rw(path: &Path) -> Result<(), String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The accelerator QEMU gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// `-accel kvm` with `-cpu host`.
    Kvm,
    /// `-accel tcg` with `-cpu max` (software CPU).
    Tcg,
}

impl AccelChoice {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        }
    }
}

/// Picks the accelerator for `requested` on `host`: `auto` takes KVM only where the host can
/// run the guest (usable `/dev/kvm`, not PVM), else TCG; `kvm` requires a usable `/dev/kvm`.
pub fn choose_accel(requested: Accel, host: &Host) -> Result<AccelChoice, Error> {
    match requested {
        Accel::Tcg => Ok(AccelChoice::Tcg),
        Accel::Auto if host.kvm.is_ok() && !host.pvm => Ok(AccelChoice::Kvm),
        Accel::Auto => Ok(AccelChoice::Tcg),
        Accel::Kvm => match &host.kvm {
            Ok(()) => Ok(AccelChoice::Kvm),
            Err(why) => Err(Error::Unsupported {
                feature: "accel kvm".into(),
                reason: format!("KVM is not usable here ({why}); use accel tcg or auto"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(kvm: bool, pvm: bool) -> Host {
        Host {
            kvm: if kvm {
                Ok(())
            } else {
                Err("/dev/kvm: No such file or directory (os error 2)".into())
            },
            pvm,
            vhost_vsock: false,
            ovmf: None,
        }
    }

    #[test]
    fn auto_takes_kvm_only_where_guests_can_run() {
        assert_eq!(
            choose_accel(Accel::Auto, &host(true, false)).unwrap(),
            AccelChoice::Kvm
        );
        assert_eq!(
            choose_accel(Accel::Auto, &host(true, true)).unwrap(),
            AccelChoice::Tcg
        );
        assert_eq!(
            choose_accel(Accel::Auto, &host(false, false)).unwrap(),
            AccelChoice::Tcg
        );
    }

    #[test]
    fn kvm_without_a_usable_device_is_a_clear_error() {
        let err = choose_accel(Accel::Kvm, &host(false, false)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("accel kvm") && text.contains("/dev/kvm"),
            "{text}"
        );
        assert_eq!(
            choose_accel(Accel::Kvm, &host(true, true)).unwrap(),
            AccelChoice::Kvm
        );
        assert_eq!(
            choose_accel(Accel::Tcg, &host(true, false)).unwrap(),
            AccelChoice::Tcg
        );
    }

    #[test]
    fn this_host_is_detected_as_it_is() {
        let h = Host::detect();
        assert_eq!(h.pvm, Path::new("/sys/module/kvm_pvm").exists());
        if h.pvm {
            assert_eq!(
                choose_accel(Accel::Auto, &h).unwrap(),
                AccelChoice::Tcg,
                "auto must not pick PVM's KVM"
            );
        }
    }
}
