//! The configuration of one disk (`--disk path=...,format=...,readonly=on|off,serial=ID`),
//! plain data with its parser, and opening its image.

use std::path::PathBuf;
use std::sync::Arc;

use paddock_disk::{BlockImage, Format, OpenOptions};

use super::ID_LEN;

/// One disk as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Image file.
    pub path: PathBuf,
    /// Declared format; the image is never probed (raw when not given).
    pub format: Format,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO) and open the image read-only.
    pub read_only: bool,
    /// GET_ID serial (at most 20 bytes).
    pub serial: String,
}

impl DiskConfig {
    /// Parses `path=FILE[,format=raw|qcow2|vmdk|vpc|vhdx|vdi][,readonly=on|off][,serial=ID]`.
    pub fn parse(s: &str) -> Result<DiskConfig, String> {
        let (mut path, mut format, mut read_only, mut serial) = (None, Format::Raw, false, None);
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not KEY=VALUE"))?;
            match k {
                "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
                "format" => format = v.parse().map_err(|e| format!("{e}"))?,
                "readonly" => {
                    read_only = match v {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(format!("readonly='{v}': use on or off")),
                    }
                }
                "serial" => {
                    if v.len() > ID_LEN || !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(format!(
                            "serial='{v}': at most {ID_LEN} printable ASCII characters"
                        ));
                    }
                    serial = Some(v.to_string());
                }
                _ => return Err(format!("unknown or empty disk option '{part}'")),
            }
        }
        Ok(DiskConfig {
            path: path.ok_or("path=FILE is required")?,
            format,
            read_only,
            serial: serial.unwrap_or_default(),
        })
    }

    /// Opens the image with its declared format, writable unless read-only.
    pub fn open(&self) -> Result<Arc<dyn BlockImage>, String> {
        let opts = OpenOptions {
            writable: !self.read_only,
            ..OpenOptions::read(Some(self.format))
        };
        paddock_disk::open(&self.path, &opts)
            .map(Arc::from)
            .map_err(|e| format!("disk {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_option_and_names_bad_ones() {
        let d = DiskConfig::parse("path=/x.img,format=qcow2,readonly=on,serial=ABC-1").unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/x.img".into(),
                format: Format::Qcow2,
                read_only: true,
                serial: "ABC-1".into()
            }
        );
        let d = DiskConfig::parse("path=/y").unwrap();
        assert_eq!(
            (d.format, d.read_only, d.serial.as_str()),
            (Format::Raw, false, "")
        );
        for (bad, needle) in [
            ("format=raw", "path"),
            ("path=/x,format=floppy", "floppy"),
            ("path=/x,readonly=maybe", "readonly"),
            ("path=/x,serial=012345678901234567890", "serial"),
            ("path=/x,cache=none", "cache"),
            ("path=/x,oops", "oops"),
        ] {
            let e = DiskConfig::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
