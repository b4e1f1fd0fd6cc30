//! `--config vm.json`: the shared [`VmSpec`], validated, turned into what the command line
//! would have said. A spec that asks for something paddock-vmm cannot run (firmware boot,
//! TCG, devices it does not have yet) is refused with the field named.

use std::path::{Path, PathBuf};

use paddock_spec::{Accel, BootSpec, SerialSpec, SpecError, VmSpec};

use crate::boot::{BootConfig, EntryChoice};
use crate::devices::legacy::serial::SerialConfig;
use crate::devices::virtio::block::DiskConfig;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;

/// A VM as the command line or a spec describes it, before any file is opened.
#[derive(Debug, Clone)]
pub struct VmDescription {
    /// Kernel, initramfs, command line, entry.
    pub boot: BootConfig,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Serial console.
    pub serial: SerialConfig,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// virtio-rng.
    pub rng: bool,
    /// virtio-net devices.
    pub nets: Vec<NetConfig>,
    /// virtio-vsock device.
    pub vsock: Option<VsockConfig>,
}

/// Errors reading a spec file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not a spec.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why (serde names the field and line).
        #[source]
        source: serde_json::Error,
    },
    /// A field is invalid or asks for something paddock-vmm cannot run.
    #[error("{path}: {source}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field and the reason.
        #[source]
        source: SpecError,
    },
}

/// Reads, validates and converts the spec at `path`.
pub fn load(path: &Path) -> Result<VmDescription, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let spec: VmSpec = serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })?;
    describe(&spec).map_err(|source| ConfigError::Field {
        path: path.into(),
        source,
    })
}

fn refuse(field: impl Into<String>, why: &str) -> SpecError {
    SpecError::new(field, format!("{why} (paddock-vmm cannot run this spec)"))
}

/// Validates `spec` and converts it; the first field that fails or is unsupported is named.
pub fn describe(spec: &VmSpec) -> Result<VmDescription, SpecError> {
    spec.validate()?;
    if let Some(field) = spec.unresolved_volume() {
        return Err(SpecError::new(field, paddock_spec::UNRESOLVED_VOLUME));
    }
    let boot = match &spec.boot {
        BootSpec::Kernel {
            kernel,
            initramfs,
            cmdline,
        } => BootConfig {
            kernel: kernel.clone(),
            initramfs: initramfs.clone(),
            cmdline: cmdline.clone(),
            entry: EntryChoice::Auto,
        },
        BootSpec::Firmware { .. } => {
            return Err(refuse(
                "boot.kind",
                "firmware boot needs the QEMU driver; paddock-vmm boots kernels directly",
            ))
        }
    };
    if spec.cpus.threads_per_core != 1 {
        return Err(refuse(
            "cpus.threads_per_core",
            "paddock-vmm presents one thread per core",
        ));
    }
    if spec.memory.shared {
        return Err(refuse("memory.shared", "guest memory is private"));
    }
    if matches!(spec.accel, Accel::Tcg) {
        return Err(refuse("accel", "paddock-vmm runs on KVM only"));
    }
    let mut nets = Vec::new();
    for (i, n) in spec.nics.iter().enumerate() {
        let Some(tap) = &n.tap else {
            return Err(SpecError::new(
                format!("nics[{i}].tap"),
                "paddock-vmm needs a TAP device; paddockd fills it in from the NIC's network",
            ));
        };
        let opts = match n.mac {
            Some(mac) => format!("tap={tap},mac={mac}"),
            None => format!("tap={tap}"),
        };
        nets.push(NetConfig::parse(&opts).map_err(|e| SpecError::new(format!("nics[{i}]"), e))?);
    }
    let vsock = spec.vsock.as_ref().map(|v| VsockConfig {
        cid: v.cid,
        socket: v.socket.clone(),
    });
    let serial = match &spec.serial {
        SerialSpec::Off => SerialConfig::Off,
        SerialSpec::Stdio => SerialConfig::Stdio,
        SerialSpec::File { path } => SerialConfig::File(path.clone()),
        SerialSpec::Socket { path, log } => SerialConfig::Socket {
            path: path.clone(),
            wait: false,
            log: log.clone(),
        },
        SerialSpec::Pty => SerialConfig::Pty,
    };
    let mut disks = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let format = d
            .format
            .parse()
            .map_err(|e| SpecError::new(format!("disks[{i}].format"), format!("{e}")))?;
        let serial = d.serial.clone().unwrap_or_default();
        if !serial.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SpecError::new(
                format!("disks[{i}].serial"),
                "printable ASCII without spaces",
            ));
        }
        disks.push(DiskConfig {
            path: d.path.clone(),
            format,
            read_only: d.readonly,
            serial,
        });
    }
    Ok(VmDescription {
        boot,
        // validate() bounds the count by MAX_VCPUS (254).
        cpus: u8::try_from(spec.cpus.count)
            .map_err(|_| SpecError::new("cpus.count", "must be 1 to 254"))?,
        memory: spec.memory.size_mib << 20,
        serial,
        disks,
        rng: spec.rng,
        nets,
        vsock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<VmDescription, SpecError> {
        let text = format!(
            r#"{{"name":"t","memory":{{"size_mib":64}},"boot":{{"kind":"kernel","kernel":"/k"}}{extra}}}"#
        );
        describe(&serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn a_kernel_spec_becomes_a_description() {
        let d = spec(
            r#","cpus":{"count":2},"rng":true,"serial":{"mode":"off"},
               "disks":[{"path":"/d.qcow2","format":"qcow2","readonly":true,"serial":"s1"}]"#,
        )
        .unwrap();
        assert_eq!(d.cpus, 2);
        assert_eq!(d.memory, 64 << 20);
        assert_eq!(d.serial, SerialConfig::Off);
        assert!(d.rng);
        assert_eq!(d.disks[0].format, paddock_disk::Format::Qcow2);
        assert!(d.disks[0].read_only);
        assert_eq!(d.boot.kernel, PathBuf::from("/k"));
    }

    #[test]
    fn unsupported_features_are_refused_by_field() {
        for (extra, field) in [
            (
                r#","cpus":{"count":2,"threads_per_core":2}"#,
                "cpus.threads_per_core",
            ),
            (r#","accel":"tcg""#, "accel"),
            (r#","nics":[{"network":"lan"}]"#, "nics[0].tap"),
            (
                r#","disks":[{"path":"/d","format":"raw","serial":"a b"}]"#,
                "disks[0].serial",
            ),
            (r#","cpus":{"count":0}"#, "cpus.count"),
        ] {
            assert_eq!(spec(extra).unwrap_err().field, field, "{extra}");
        }
        let e = spec(r#","disks":[{"volume":"pool/v"}]"#).unwrap_err();
        assert_eq!(e.field, "disks[0].volume");
        assert!(e.message.contains("resolved by paddockd"), "{e}");
        let fw: VmSpec = serde_json::from_str(
            r#"{"name":"t","memory":{"size_mib":64},"boot":{"kind":"firmware","firmware":"uefi"}}"#,
        )
        .unwrap();
        assert_eq!(describe(&fw).unwrap_err().field, "boot.kind");
        let shared: VmSpec = serde_json::from_str(
            r#"{"name":"t","memory":{"size_mib":64,"shared":true},"boot":{"kind":"kernel","kernel":"/k"}}"#,
        )
        .unwrap();
        assert_eq!(describe(&shared).unwrap_err().field, "memory.shared");
    }
}
