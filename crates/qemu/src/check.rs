//! Whether this driver can run a spec on this host; a refusal names the feature.

use std::fs::File;
use std::path::Path;

use paddock_spec::{BootSpec, Firmware, VmSpec};

use crate::host::{choose_accel, AccelChoice, Host};
use crate::{vmdk, Error};

/// QEMU's block driver for a spec format (`vhd` is QEMU's `vpc`).
pub fn qemu_format(format: &str) -> Option<&'static str> {
    Some(match format {
        "raw" => "raw",
        "qcow2" => "qcow2",
        "vmdk" => "vmdk",
        "vpc" | "vhd" => "vpc",
        "vhdx" => "vhdx",
        "vdi" => "vdi",
        _ => return None,
    })
}

/// VMDK subformats QEMU opens but cannot write in place.
const VMDK_READ_ONLY: [&str; 2] = ["streamOptimized", "seSparse"];

fn unsupported(feature: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        feature: feature.into(),
        reason: reason.into(),
    }
}

/// Validates `spec`, then refuses what QEMU on `host` cannot run (UEFI without OVMF, vsock
/// without vhost-vsock, a NIC without a TAP device, a disk QEMU cannot write, a file that
/// cannot be opened, a path that is not UTF-8); returns the accelerator the VM will get.
pub fn check(spec: &VmSpec, host: &Host) -> Result<AccelChoice, Error> {
    spec.validate()?;
    if let Some(field) = spec.unresolved_volume() {
        return Err(paddock_spec::SpecError::new(field, paddock_spec::UNRESOLVED_VOLUME).into());
    }
    let accel = choose_accel(spec.accel, host)?;
    match &spec.boot {
        BootSpec::Kernel {
            kernel, initramfs, ..
        } => {
            readable("boot.kernel", kernel)?;
            if let Some(initrd) = initramfs {
                readable("boot.initramfs", initrd)?;
            }
        }
        BootSpec::Firmware {
            firmware: Firmware::Uefi,
        } if host.ovmf.is_none() => {
            return Err(unsupported(
                "boot.firmware uefi",
                "no OVMF image is installed (Debian package ovmf)",
            ));
        }
        BootSpec::Firmware { .. } => {}
    }
    for (i, d) in spec.disks.iter().enumerate() {
        let field = format!("disks[{i}]");
        readable(&format!("{field}.path"), &d.path)?;
        if qemu_format(&d.format).is_none() {
            return Err(unsupported(
                format!("{field}.format {}", d.format),
                "QEMU has no driver of that name",
            ));
        }
        if d.format == "vmdk" && !d.readonly {
            let kind = vmdk::create_type(&d.path).map_err(|source| Error::Io {
                path: d.path.clone(),
                source,
            })?;
            if let Some(kind) = kind.filter(|k| VMDK_READ_ONLY.contains(&k.as_str())) {
                return Err(unsupported(
                    format!("{field}: vmdk {kind} read-write"),
                    "QEMU can only read this VMDK subformat; attach it readonly or convert it \
                     (paddock image convert -O qcow2)",
                ));
            }
        }
    }
    for (i, n) in spec.nics.iter().enumerate() {
        if n.tap.is_none() {
            return Err(unsupported(
                format!("nics[{i}].network"),
                "the QEMU driver attaches NICs to TAP devices; set nics[i].tap (the daemon \
                 fills it from the network)",
            ));
        }
    }
    if let Some(v) = &spec.vsock {
        if !host.vhost_vsock {
            return Err(unsupported(
                "vsock",
                "QEMU's vsock is vhost-vsock and /dev/vhost-vsock is not usable here \
                 (modprobe vhost_vsock)",
            ));
        }
        utf8("vsock.socket", &v.socket)?;
    }
    match &spec.serial {
        paddock_spec::SerialSpec::File { path } => {
            utf8("serial.path", path)?;
        }
        paddock_spec::SerialSpec::Socket { path, log } => {
            utf8("serial.path", path)?;
            if let Some(log) = log {
                utf8("serial.log", log)?;
            }
        }
        _ => {}
    }
    Ok(accel)
}

/// The path as UTF-8 (QEMU options and QMP JSON carry text), or a refusal naming `field`.
pub(crate) fn utf8<'a>(field: &str, path: &'a Path) -> Result<&'a str, Error> {
    path.to_str().ok_or_else(|| {
        unsupported(
            field.to_string(),
            format!("{} is not UTF-8", path.display()),
        )
    })
}

fn readable(field: &str, path: &Path) -> Result<(), Error> {
    utf8(field, path)?;
    File::open(path).map(drop).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_spec::{Accel, DiskSpec, NicSpec, VsockSpec};

    fn host() -> Host {
        Host {
            kvm: Ok(()),
            pvm: false,
            vhost_vsock: false,
            ovmf: None,
        }
    }

    fn spec(dir: &Path) -> VmSpec {
        let kernel = dir.join("bzImage");
        std::fs::write(&kernel, b"k").unwrap();
        serde_json::from_value(serde_json::json!({
            "name": "vm1", "memory": {"size_mib": 128},
            "boot": {"kind": "kernel", "kernel": kernel, "cmdline": "console=ttyS0"},
        }))
        .unwrap()
    }

    fn feature(e: Error) -> String {
        match e {
            Error::Unsupported { feature, .. } => feature,
            e => panic!("expected Unsupported, got {e:?}"),
        }
    }

    #[test]
    fn a_plain_spec_passes_with_the_chosen_accelerator() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        assert_eq!(check(&s, &host()).unwrap(), AccelChoice::Kvm);
        s.accel = Accel::Tcg;
        assert_eq!(check(&s, &host()).unwrap(), AccelChoice::Tcg);
    }

    #[test]
    fn each_refusal_names_its_feature() {
        let dir = tempfile::tempdir().unwrap();
        let base = spec(dir.path());

        let mut s = base.clone();
        s.boot = BootSpec::Firmware {
            firmware: Firmware::Uefi,
        };
        assert_eq!(
            feature(check(&s, &host()).unwrap_err()),
            "boot.firmware uefi"
        );

        let mut s = base.clone();
        s.vsock = Some(VsockSpec {
            cid: 3,
            socket: dir.path().join("v.sock"),
        });
        assert_eq!(feature(check(&s, &host()).unwrap_err()), "vsock");

        let mut s = base.clone();
        s.nics.push(NicSpec {
            tap: None,
            network: Some("default".into()),
            mac: None,
        });
        assert_eq!(feature(check(&s, &host()).unwrap_err()), "nics[0].network");

        // A streamOptimized VMDK read-write; readonly is fine.
        let vmdk = dir.path().join("so.vmdk");
        std::fs::write(
            &vmdk,
            "# Disk DescriptorFile\ncreateType=\"streamOptimized\"\n",
        )
        .unwrap();
        let mut s = base.clone();
        s.disks.push(DiskSpec {
            volume: None,
            path: vmdk,
            format: "vmdk".into(),
            readonly: false,
            serial: None,
        });
        assert_eq!(
            feature(check(&s, &host()).unwrap_err()),
            "disks[0]: vmdk streamOptimized read-write"
        );
        s.disks[0].readonly = true;
        check(&s, &host()).unwrap();

        let mut s = base.clone();
        s.accel = Accel::Kvm;
        let mut no_kvm = host();
        no_kvm.kvm = Err("/dev/kvm: Permission denied".into());
        assert_eq!(feature(check(&s, &no_kvm).unwrap_err()), "accel kvm");
    }

    #[test]
    fn missing_files_and_invalid_specs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.disks.push(DiskSpec {
            volume: None,
            path: dir.path().join("absent.qcow2"),
            format: "qcow2".into(),
            readonly: false,
            serial: None,
        });
        match check(&s, &host()).unwrap_err() {
            Error::Io { path, .. } => assert!(path.ends_with("absent.qcow2")),
            e => panic!("{e:?}"),
        }
        s.disks[0].path = Default::default();
        s.disks[0].format = String::new();
        s.disks[0].volume = Some("pool/v".into());
        match check(&s, &host()).unwrap_err() {
            Error::Spec(e) => assert!(
                e.field == "disks[0].volume" && e.message.contains("resolved by paddockd"),
                "{e}"
            ),
            e => panic!("{e:?}"),
        }
        s.disks.clear();
        s.cpus.count = 0;
        assert!(matches!(check(&s, &host()), Err(Error::Spec(_))));
    }

    #[test]
    fn formats_map_to_qemu_drivers() {
        assert_eq!(qemu_format("vhd"), Some("vpc"));
        assert_eq!(qemu_format("qcow2"), Some("qcow2"));
        assert_eq!(qemu_format("iso"), None);
    }
}
