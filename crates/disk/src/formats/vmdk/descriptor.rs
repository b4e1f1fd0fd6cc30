//! The text descriptor: identity (CID), parent link, create type, extent lines and the DDB.

use crate::error::{Error, Result};

/// The largest descriptor accepted, embedded or in its own file.
pub const MAX_DESCRIPTOR: u64 = 1 << 20;
/// The most extent lines accepted (64 TiB in 2 GiB pieces is 32768).
pub const MAX_EXTENTS: usize = 40_000;
/// `parentCID` value meaning "no parent".
pub const NO_PARENT: u32 = 0xffff_ffff;

/// Access mode of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-write.
    Rw,
    /// Read-only.
    ReadOnly,
    /// Not accessible.
    Denied,
}

/// The type of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// A flat (raw) file at an offset.
    Flat,
    /// A hosted sparse extent (`KDMV`).
    Sparse,
    /// Reads as zeroes; holds nothing.
    Zero,
    /// An ESX flat file (handled as flat).
    Vmfs,
    /// An ESX sparse extent (handled when it is `KDMV`).
    VmfsSparse,
}

impl ExtentType {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "FLAT" => ExtentType::Flat,
            "SPARSE" => ExtentType::Sparse,
            "ZERO" => ExtentType::Zero,
            "VMFS" => ExtentType::Vmfs,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "VMFSRDM" | "VMFSRAW" => {
                return Err(Error::unsupported(format!(
                    "descriptor extent type {s} (raw device mapping) is not supported"
                )))
            }
            _ => {
                return Err(Error::corrupt(format!(
                    "descriptor extent type '{s}' is unknown"
                )))
            }
        })
    }

    /// The name as written in a descriptor.
    pub fn name(self) -> &'static str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Sparse => "SPARSE",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
        }
    }
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentType,
    /// File name (absent for ZERO extents).
    pub file: Option<String>,
    /// Offset into a flat file, in sectors.
    pub offset: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Content ID.
    pub cid: u32,
    /// Content ID of the parent, [`NO_PARENT`] when none.
    pub parent_cid: u32,
    /// `createType` (the subformat).
    pub create_type: String,
    /// `parentFileNameHint`.
    pub parent_hint: Option<String>,
    /// Extent lines, in order.
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` entries, in order, values unquoted.
    pub ddb: Vec<(String, String)>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

fn parse_hex_cid(v: &str, field: &str) -> Result<u32> {
    u32::from_str_radix(unquote(v), 16)
        .map_err(|_| Error::corrupt(format!("descriptor {field} '{v}' is not a hex number")))
}

fn parse_extent(line: &str, lineno: usize) -> Result<ExtentLine> {
    let bad = |what: &str| Error::corrupt(format!("descriptor line {lineno}: {what}"));
    let (access, rest) = line
        .split_once(char::is_whitespace)
        .ok_or_else(|| bad("extent line is incomplete"))?;
    let access = match access {
        "RW" => Access::Rw,
        "RDONLY" => Access::ReadOnly,
        "NOACCESS" => Access::Denied,
        _ => return Err(bad("unknown extent access mode")),
    };
    let rest = rest.trim_start();
    let (size, rest) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| bad("extent line has no type"))?;
    let sectors: u64 = size
        .parse()
        .map_err(|_| bad(&format!("extent size '{size}' is not a number")))?;
    let rest = rest.trim_start();
    let (kind, rest) = match rest.split_once(char::is_whitespace) {
        Some((k, r)) => (k, r.trim()),
        None => (rest.trim(), ""),
    };
    let kind =
        ExtentType::parse(kind).map_err(|e| e.context(format!("descriptor line {lineno}")))?;
    let (file, offset) = if kind == ExtentType::Zero {
        (None, 0)
    } else {
        let inner = rest
            .strip_prefix('"')
            .ok_or_else(|| bad("extent file name is not quoted"))?;
        let end = inner
            .find('"')
            .ok_or_else(|| bad("extent file name has no closing quote"))?;
        let name = &inner[..end];
        if name.is_empty() {
            return Err(bad("extent file name is empty"));
        }
        let tail = inner[end + 1..].trim();
        let offset = if tail.is_empty() {
            0
        } else {
            tail.parse::<u64>()
                .map_err(|_| bad(&format!("extent offset '{tail}' is not a number")))?
        };
        (Some(name.to_string()), offset)
    };
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

impl Descriptor {
    /// Parses descriptor text (bytes up to the first NUL; at most [`MAX_DESCRIPTOR`]).
    pub fn parse(raw: &[u8]) -> Result<Self> {
        if raw.len() as u64 > MAX_DESCRIPTOR {
            return Err(Error::limit(format!(
                "descriptor of {} bytes is larger than 1 MiB",
                raw.len()
            )));
        }
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let text = String::from_utf8_lossy(&raw[..end]);
        let mut d = Descriptor {
            cid: 0,
            parent_cid: NO_PARENT,
            create_type: String::new(),
            parent_hint: None,
            extents: Vec::new(),
            ddb: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if ["RW", "RDONLY", "NOACCESS"]
                .iter()
                .any(|a| line.starts_with(a) && line[a.len()..].starts_with(char::is_whitespace))
            {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(Error::limit(format!(
                        "descriptor has more than {MAX_EXTENTS} extents"
                    )));
                }
                d.extents.push(parse_extent(line, i + 1)?);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            match key {
                "CID" => d.cid = parse_hex_cid(value, "CID")?,
                "parentCID" => d.parent_cid = parse_hex_cid(value, "parentCID")?,
                "createType" => d.create_type = unquote(value).to_string(),
                "parentFileNameHint" => {
                    let v = unquote(value);
                    if !v.is_empty() {
                        d.parent_hint = Some(v.to_string());
                    }
                }
                k if k.starts_with("ddb.") => {
                    d.ddb.push((k.to_string(), unquote(value).to_string()))
                }
                _ => {}
            }
        }
        Ok(d)
    }

    /// Total size of all extents in sectors, overflow-checked.
    pub fn total_sectors(&self) -> Result<u64> {
        self.extents.iter().try_fold(0u64, |acc, e| {
            acc.checked_add(e.sectors)
                .ok_or_else(|| Error::corrupt("descriptor extent sizes overflow"))
        })
    }

    /// A `ddb.*` value.
    #[cfg(test)]
    pub fn ddb(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Renders the descriptor as text in the layout VMware and qemu-img write.
    pub fn render(&self) -> String {
        let mut s = String::from("# Disk DescriptorFile\nversion=1\n");
        s.push_str(&format!(
            "CID={:08x}\nparentCID={:08x}\n",
            self.cid, self.parent_cid
        ));
        s.push_str(&format!("createType=\"{}\"\n", self.create_type));
        if let Some(p) = &self.parent_hint {
            s.push_str(&format!("parentFileNameHint=\"{p}\"\n"));
        }
        s.push_str("\n# Extent description\n");
        for e in &self.extents {
            let access = match e.access {
                Access::Rw => "RW",
                Access::ReadOnly => "RDONLY",
                Access::Denied => "NOACCESS",
            };
            s.push_str(&format!("{access} {} {}", e.sectors, e.kind.name()));
            if let Some(f) = &e.file {
                s.push_str(&format!(" \"{f}\""));
                if matches!(e.kind, ExtentType::Flat | ExtentType::Vmfs) {
                    s.push_str(&format!(" {}", e.offset));
                }
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in &self.ddb {
            s.push_str(&format!("{k} = \"{v}\"\n"));
        }
        s
    }
}
