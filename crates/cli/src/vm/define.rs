//! `paddock vm define`: a VM from a spec file (JSON or YAML) or from flags that mirror
//! `paddock-vmm`'s. Either way the daemon receives JSON and judges it as written (unknown
//! fields, invalid values), so the errors are the API's.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Map, Value};

/// What `paddock vm define` takes.
#[derive(Args, Debug)]
pub struct DefineArgs {
    /// A spec file, JSON or YAML (`.yaml`/`.yml`, or any file not starting with `{`);
    /// `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with_all = ["name", "kernel"])]
    file: Option<PathBuf>,
    /// The VM's name (with flags instead of a file).
    #[arg(required_unless_present = "file", requires = "kernel")]
    name: Option<String>,
    /// Kernel to boot directly (bzImage or ELF vmlinux).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    cmdline: Option<String>,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Memory: MiB, or with a M or G suffix (512M, 2G).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_mib)]
    memory: u64,
    /// A disk: `volume=POOL/VOL` or `path=FILE,format=FMT`, with `,readonly=on` and
    /// `,serial=TEXT`; repeat for more disks.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<Value>,
    /// A NIC: `network=NAME` (the daemon makes its TAP) or `tap=DEV`, with `,mac=MAC`;
    /// repeat for more NICs.
    #[arg(long, value_name = "SPEC", value_parser = parse_nic)]
    nic: Vec<Value>,
    /// A virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// The driver: paddock-vmm (default) or qemu.
    #[arg(long, value_name = "NAME")]
    driver: Option<String>,
    /// Accelerator: auto (default), kvm or tcg (QEMU only).
    #[arg(long, value_name = "NAME")]
    accel: Option<String>,
}

impl DefineArgs {
    /// The request body: the file's JSON as written, YAML turned into JSON, or the flags.
    pub fn body(&self) -> Result<Vec<u8>, String> {
        match &self.file {
            Some(file) => {
                let text = read(file)?;
                if is_yaml(file, &text) {
                    yaml_to_json(&text).map_err(|e| format!("{}: {e}", file.display()))
                } else {
                    Ok(text)
                }
            }
            None => Ok(self.spec_from_flags().to_string().into_bytes()),
        }
    }

    fn spec_from_flags(&self) -> Value {
        let mut boot = Map::new();
        boot.insert("kind".into(), json!("kernel"));
        boot.insert("kernel".into(), json!(self.kernel));
        if let Some(i) = &self.initramfs {
            boot.insert("initramfs".into(), json!(i));
        }
        if let Some(c) = &self.cmdline {
            boot.insert("cmdline".into(), json!(c));
        }
        let mut spec = json!({
            "name": self.name,
            "cpus": { "count": self.cpus },
            "memory": { "size_mib": self.memory },
            "boot": boot,
        });
        let o = spec.as_object_mut().expect("an object");
        if !self.disk.is_empty() {
            o.insert("disks".into(), json!(self.disk));
        }
        if !self.nic.is_empty() {
            o.insert("nics".into(), json!(self.nic));
        }
        if self.rng {
            o.insert("rng".into(), json!(true));
        }
        if let Some(a) = &self.accel {
            o.insert("accel".into(), json!(a));
        }
        if let Some(d) = &self.driver {
            o.insert("driver".into(), json!(d));
        }
        spec
    }
}

fn read(file: &PathBuf) -> Result<Vec<u8>, String> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("standard input: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))
    }
}

/// YAML by extension, else by content: JSON specs start with `{`.
fn is_yaml(file: &std::path::Path, text: &[u8]) -> bool {
    match file.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => true,
        Some("json") => false,
        _ => text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{'),
    }
}

/// A YAML document as JSON text.
fn yaml_to_json(text: &[u8]) -> Result<Vec<u8>, String> {
    let v: Value = serde_yaml_ng::from_slice(text).map_err(|e| format!("not valid YAML: {e}"))?;
    if !v.is_object() {
        return Err("a spec is a mapping (name, cpus, memory, boot, ...)".into());
    }
    Ok(v.to_string().into_bytes())
}

/// `512`, `512M`, `2G` → MiB.
fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'M' | 'm')) => (&t[..i], 1),
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{s}' is not a memory size like 512M or 2G"))
}

/// `key=value,key=value` pairs; `keys` are the ones allowed.
fn pairs(s: &str, keys: &[&str]) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}': expected key=value ({})", keys.join(", ")))?;
        if !keys.contains(&k) {
            return Err(format!("unknown key '{k}'; use {}", keys.join(", ")));
        }
        let value = match (k, v) {
            ("readonly", "on" | "true" | "yes") => json!(true),
            ("readonly", "off" | "false" | "no") => json!(false),
            ("readonly", _) => return Err(format!("readonly={v}: use on or off")),
            _ => json!(v),
        };
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

fn parse_disk(s: &str) -> Result<Value, String> {
    let m = pairs(s, &["path", "format", "volume", "readonly", "serial"])?;
    match (m.contains_key("path"), m.contains_key("volume")) {
        (true, true) | (false, false) => Err("a disk takes volume=POOL/VOL or path=FILE".into()),
        (true, false) if !m.contains_key("format") => {
            Err("path= needs format= (raw, qcow2, ...): a disk is never probed".into())
        }
        _ => Ok(Value::Object(m)),
    }
}

fn parse_nic(s: &str) -> Result<Value, String> {
    let m = pairs(s, &["network", "tap", "mac"])?;
    if m.contains_key("network") == m.contains_key("tap") {
        return Err("a NIC takes network=NAME or tap=DEV".into());
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("2G"), Ok(2048));
        assert!(parse_mib("0").is_err());
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("99999999999999999G").is_err());
    }

    #[test]
    fn disks_and_nics() {
        assert_eq!(
            parse_disk("volume=p/v,serial=D1,readonly=on").unwrap(),
            json!({"volume": "p/v", "serial": "D1", "readonly": true})
        );
        assert_eq!(
            parse_disk("path=/d.qcow2,format=qcow2").unwrap(),
            json!({"path": "/d.qcow2", "format": "qcow2"})
        );
        assert!(parse_disk("path=/d.img").unwrap_err().contains("format="));
        assert!(parse_disk("volume=p/v,path=/x,format=raw").is_err());
        assert!(parse_disk("size=1G").unwrap_err().contains("unknown key"));
        assert!(parse_disk("volume=p/v,readonly=maybe").is_err());
        assert_eq!(
            parse_nic("network=lan,mac=02:50:44:00:00:01").unwrap(),
            json!({"network": "lan", "mac": "02:50:44:00:00:01"})
        );
        assert!(parse_nic("mac=02:00:00:00:00:01").is_err());
    }

    #[test]
    fn yaml_becomes_the_same_json() {
        let yaml = b"name: web\ncpus: {count: 2}\nmemory:\n  size_mib: 256\nboot:\n  kind: kernel\n  kernel: /k\n";
        let v: Value = serde_json::from_slice(&yaml_to_json(yaml).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"name": "web", "cpus": {"count": 2}, "memory": {"size_mib": 256},
                   "boot": {"kind": "kernel", "kernel": "/k"}})
        );
        assert!(yaml_to_json(b"- a\n- b\n").is_err());
        assert!(yaml_to_json(b"name: [unclosed").is_err());
        let p = std::path::Path::new;
        assert!(is_yaml(p("x.yaml"), b"{}"));
        assert!(!is_yaml(p("x.json"), b"name: x"));
        assert!(!is_yaml(p("-"), b"  {\"name\": 1}"));
        assert!(is_yaml(p("-"), b"name: x"));
    }
}
