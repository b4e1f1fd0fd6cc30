//! The VM specification: plain data that says what a VM is (CPUs, memory, boot, disks, NICs,
//! devices), with [`VmSpec::validate`] and no I/O, so the VMM, the daemon, the API, the CLI
//! and the descriptor converters all share one definition.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most vCPUs a spec may ask for.
pub const MAX_VCPUS: u32 = 254;
/// Least guest memory, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Most guest memory, in MiB (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 16 << 20;

/// A whole VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Name, unique on a host: letters, digits, `-`, `_`, `.`; 1 to 64 characters.
    pub name: String,
    /// Virtual CPUs.
    #[serde(default)]
    pub cpus: CpuSpec,
    /// Guest memory.
    pub memory: MemorySpec,
    /// How the guest starts.
    pub boot: BootSpec,
    /// Block devices, in guest order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Network interfaces, in guest order.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Serial console (COM1).
    #[serde(default)]
    pub serial: SerialSpec,
    /// A virtio entropy device.
    #[serde(default)]
    pub rng: bool,
    /// A virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockSpec>,
    /// Accelerator choice for drivers that have one (QEMU).
    #[serde(default)]
    pub accel: Accel,
}

/// vCPU count and topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Number of vCPUs.
    pub count: u32,
    /// Threads per core (1 or 2).
    #[serde(default = "one")]
    pub threads_per_core: u32,
}

fn one() -> u32 {
    1
}

impl Default for CpuSpec {
    fn default() -> Self {
        CpuSpec {
            count: 1,
            threads_per_core: 1,
        }
    }
}

/// Guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// Size in MiB.
    pub size_mib: u64,
    /// Back guest memory with shared mappings (needed by vhost-user and some migration paths).
    #[serde(default)]
    pub shared: bool,
}

/// How the guest starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BootSpec {
    /// Linux direct boot: a bzImage or ELF vmlinux, an optional initramfs and a command line.
    Kernel {
        /// Kernel image.
        kernel: PathBuf,
        /// Initial RAM filesystem.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initramfs: Option<PathBuf>,
        /// Kernel command line.
        #[serde(default)]
        cmdline: String,
    },
    /// Firmware boot from the first disk (BIOS or UEFI; QEMU driver only).
    Firmware {
        /// Firmware type.
        firmware: Firmware,
    },
}

/// Firmware kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF.
    Uefi,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Image file. Give either this or [`DiskSpec::volume`]; paddockd fills it in from a
    /// volume reference.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub path: PathBuf,
    /// Image format (`raw`, `qcow2`, ...); probed when absent is *not* allowed for VMs: a
    /// guest-writable raw disk must never be re-read as another format. Empty with a volume
    /// reference (paddockd takes the volume's format).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    /// A storage volume of paddockd, `"pool/volume"`, instead of a path. paddockd resolves it
    /// to `path` and `format` when the VM is defined and keeps the reference; VMMs run only
    /// resolved disks (see [`VmSpec::runnable`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Expose the disk read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Serial number the guest sees (up to 20 bytes, virtio-blk's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Host TAP device name (the daemon fills it in from a network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Managed network the NIC joins (daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Guest MAC address; allocated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// A vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// Guest context ID (3 or more).
    pub cid: u64,
    /// Host Unix socket that guest connections reach.
    pub socket: PathBuf,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum SerialSpec {
    /// Nowhere.
    Off,
    /// The VMM's standard input and output.
    #[default]
    Stdio,
    /// Appended to a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// A Unix socket the VMM listens on.
    Socket {
        /// The socket path.
        path: PathBuf,
        /// A file that also gets all output, appended, whether or not a client is connected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<PathBuf>,
    },
    /// A pseudo-terminal.
    Pty,
}

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where the host can run the guest, else TCG.
    #[default]
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (QEMU only).
    Tcg,
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether the address is a unicast address (bit 0 of the first byte clear).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || {
            SpecError::new(
                "mac",
                format!("'{s}' is not a MAC address like 52:54:00:12:34:56"),
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A spec that does not hold: the field at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the field (`disks[1].serial`).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl SpecError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl VmSpec {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !self.name.starts_with('.');
        if !name_ok {
            return Err(SpecError::new(
                "name",
                "use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'",
            ));
        }
        if self.cpus.count == 0 || self.cpus.count > MAX_VCPUS {
            return Err(SpecError::new(
                "cpus.count",
                format!("must be 1 to {MAX_VCPUS}"),
            ));
        }
        if !matches!(self.cpus.threads_per_core, 1 | 2)
            || self.cpus.count % self.cpus.threads_per_core != 0
        {
            return Err(SpecError::new(
                "cpus.threads_per_core",
                "must be 1 or 2 and divide cpus.count",
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory.size_mib) {
            return Err(SpecError::new(
                "memory.size_mib",
                format!("must be {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB"),
            ));
        }
        if let BootSpec::Kernel {
            kernel, cmdline, ..
        } = &self.boot
        {
            if kernel.as_os_str().is_empty() {
                return Err(SpecError::new("boot.kernel", "give the kernel image path"));
            }
            if cmdline.len() > 4095 || cmdline.contains('\0') {
                return Err(SpecError::new(
                    "boot.cmdline",
                    "must be under 4096 bytes, without NUL",
                ));
            }
        }
        let mut paths = HashSet::new();
        let mut volumes = HashSet::new();
        for (i, d) in self.disks.iter().enumerate() {
            let has_path = !d.path.as_os_str().is_empty();
            match (&d.volume, has_path) {
                (None, false) => {
                    return Err(SpecError::new(
                        format!("disks[{i}].path"),
                        "give the image path, or a storage volume as \"volume\": \"pool/volume\"",
                    ))
                }
                (Some(_), true) => {
                    return Err(SpecError::new(
                        format!("disks[{i}].volume"),
                        "give either a path or a volume, not both",
                    ))
                }
                (Some(v), false) => {
                    if !volume_ref_ok(v) {
                        return Err(SpecError::new(
                            format!("disks[{i}].volume"),
                            format!("'{v}' is not \"pool/volume\""),
                        ));
                    }
                    if !volumes.insert(v) {
                        return Err(SpecError::new(
                            format!("disks[{i}].volume"),
                            "the same volume is attached twice",
                        ));
                    }
                    if !d.format.is_empty() {
                        return Err(SpecError::new(
                            format!("disks[{i}].format"),
                            "leave it out with a volume: the volume's format is used",
                        ));
                    }
                }
                (None, true) => {}
            }
            if d.volume.is_some() {
                if let Some(s) = &d.serial {
                    if s.len() > 20 || !s.is_ascii() {
                        return Err(SpecError::new(
                            format!("disks[{i}].serial"),
                            "at most 20 ASCII characters",
                        ));
                    }
                }
                continue;
            }
            if !paths.insert(&d.path) {
                return Err(SpecError::new(
                    format!("disks[{i}].path"),
                    "the same image is attached twice",
                ));
            }
            const FORMATS: [&str; 7] = ["raw", "qcow2", "vmdk", "vpc", "vhd", "vhdx", "vdi"];
            if !FORMATS.contains(&d.format.as_str()) {
                return Err(SpecError::new(
                    format!("disks[{i}].format"),
                    format!("'{}' is not one of {}", d.format, FORMATS.join(", ")),
                ));
            }
            if let Some(s) = &d.serial {
                if s.len() > 20 || !s.is_ascii() {
                    return Err(SpecError::new(
                        format!("disks[{i}].serial"),
                        "at most 20 ASCII characters",
                    ));
                }
            }
        }
        let mut macs = HashSet::new();
        for (i, n) in self.nics.iter().enumerate() {
            if n.tap.is_none() && n.network.is_none() {
                return Err(SpecError::new(
                    format!("nics[{i}]"),
                    "give a tap device or a network",
                ));
            }
            if let Some(tap) = &n.tap {
                if tap.is_empty() || tap.len() > 15 || tap.contains('/') {
                    return Err(SpecError::new(
                        format!("nics[{i}].tap"),
                        "interface names are 1 to 15 characters",
                    ));
                }
            }
            if let Some(mac) = n.mac {
                if !mac.is_unicast() || mac.0 == [0; 6] {
                    return Err(SpecError::new(
                        format!("nics[{i}].mac"),
                        format!("{mac} is not a unicast address"),
                    ));
                }
                if !macs.insert(mac) {
                    return Err(SpecError::new(
                        format!("nics[{i}].mac"),
                        format!("{mac} is used twice"),
                    ));
                }
            }
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid > u32::MAX as u64 {
                return Err(SpecError::new(
                    "vsock.cid",
                    "must be 3 to 4294967295 (0-2 are reserved)",
                ));
            }
        }
        Ok(())
    }

    /// The spec a VMM runs: disks whose volume reference paddockd has resolved (a path is
    /// set) lose the reference, so the spec validates again. Unresolved references stay,
    /// and VMMs refuse them.
    pub fn runnable(&self) -> VmSpec {
        let mut s = self.clone();
        for d in &mut s.disks {
            if !d.path.as_os_str().is_empty() {
                d.volume = None;
            }
        }
        s
    }

    /// The first disk that still names a volume instead of a path, as its field name.
    pub fn unresolved_volume(&self) -> Option<String> {
        self.disks
            .iter()
            .position(|d| d.volume.is_some() && d.path.as_os_str().is_empty())
            .map(|i| format!("disks[{i}].volume"))
    }
}

/// Whether `v` reads `pool/volume` with two non-empty plain names.
fn volume_ref_ok(v: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(v.split_once('/'), Some((p, n)) if plain(p) && plain(n))
}

/// The message VMMs give for a disk whose volume reference was not resolved.
pub const UNRESOLVED_VOLUME: &str =
    "volume references are resolved by paddockd; give a path and a format to run this spec directly";

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        serde_json::from_str(
            r#"{"name":"web-1","cpus":{"count":2},"memory":{"size_mib":512},
                "boot":{"kind":"kernel","kernel":"/k/bzImage","cmdline":"console=ttyS0"},
                "disks":[{"path":"/p/a.qcow2","format":"qcow2","serial":"disk0"}],
                "nics":[{"tap":"tap0","mac":"52:54:00:12:34:56"}],"rng":true,
                "vsock":{"cid":3,"socket":"/run/v.sock"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_good_spec_validates_and_round_trips() {
        let s = spec();
        s.validate().unwrap();
        let back: VmSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<VmSpec>(r#"{"name":"a","memory":{"size_mib":64},"boot":{"kind":"firmware","firmware":"bios"},"cpu":4}"#)
            .unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|s| s.name = "bad name!".into())),
            ("cpus.count", Box::new(|s| s.cpus.count = 0)),
            ("memory.size_mib", Box::new(|s| s.memory.size_mib = 1)),
            (
                "disks[0].format",
                Box::new(|s| s.disks[0].format = "iso".into()),
            ),
            (
                "disks[0].serial",
                Box::new(|s| s.disks[0].serial = Some("x".repeat(21))),
            ),
            (
                "nics[0].mac",
                Box::new(|s| s.nics[0].mac = Some(MacAddr([1, 0, 0, 0, 0, 1]))),
            ),
            ("vsock.cid", Box::new(|s| s.vsock.as_mut().unwrap().cid = 2)),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn a_disk_names_exactly_one_of_path_and_volume() {
        let mut s = spec();
        s.disks[0].path = PathBuf::new();
        s.disks[0].format = String::new();
        assert_eq!(s.validate().unwrap_err().field, "disks[0].path");
        s.disks[0].volume = Some("pool/v1".into());
        s.validate().unwrap();
        assert_eq!(s.unresolved_volume().as_deref(), Some("disks[0].volume"));
        let json = serde_json::to_value(&s.disks[0]).unwrap();
        assert_eq!(json["volume"], "pool/v1");
        assert!(json.get("path").is_none() && json.get("format").is_none());
        for bad in ["pool", "/v", "p/", "p/../x", "a/b/c", "../v"] {
            s.disks[0].volume = Some(bad.into());
            assert_eq!(s.validate().unwrap_err().field, "disks[0].volume", "{bad}");
        }
        // Resolved by paddockd: both set; the runnable spec drops the reference.
        s.disks[0].volume = Some("pool/v1".into());
        s.disks[0].path = "/pools/pool/v1".into();
        s.disks[0].format = "qcow2".into();
        assert_eq!(s.validate().unwrap_err().field, "disks[0].volume");
        let r = s.runnable();
        r.validate().unwrap();
        assert_eq!(r.disks[0].volume, None);
        assert_eq!(r.unresolved_volume(), None);
    }

    #[test]
    fn a_socket_console_log_is_optional() {
        let bare: SerialSpec =
            serde_json::from_str(r#"{"mode":"socket","path":"/r/c.sock"}"#).unwrap();
        assert_eq!(
            bare,
            SerialSpec::Socket {
                path: "/r/c.sock".into(),
                log: None
            }
        );
        assert!(!serde_json::to_string(&bare).unwrap().contains("log"));
        let logged = SerialSpec::Socket {
            path: "/r/c.sock".into(),
            log: Some("/s/console.log".into()),
        };
        let text = serde_json::to_string(&logged).unwrap();
        assert_eq!(serde_json::from_str::<SerialSpec>(&text).unwrap(), logged);
    }

    #[test]
    fn mac_addresses_parse_strictly() {
        assert_eq!(
            "52:54:00:ab:cd:ef".parse::<MacAddr>().unwrap().to_string(),
            "52:54:00:ab:cd:ef"
        );
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:efg",
            "zz:54:00:ab:cd:ef",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
