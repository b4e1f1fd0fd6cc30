//! The qcow2 header, its feature bits and its extensions: parsing with every field checked,
//! and serialising the first cluster back (for `set_backing` and `create`).

use crate::error::{Error, Result};

/// The magic bytes at offset 0.
pub(crate) const MAGIC: &[u8; 4] = b"QFI\xfb";

/// Incompatible feature bits.
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub(crate) const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;

/// Compatible feature bit: lazy refcounts.
pub(crate) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Header extension types.
pub(crate) const EXT_END: u32 = 0;
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub(crate) const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
#[cfg(test)]
pub(crate) const EXT_BITMAPS: u32 = 0x2385_2875;
pub(crate) const EXT_CRYPTO: u32 = 0x0537_be77;
pub(crate) const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Largest virtual size accepted (64 TiB).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Largest L1 table in bytes (as QEMU).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table in bytes.
pub(crate) const MAX_REFTABLE_BYTES: u64 = 32 << 20;
/// Largest backing file name.
const MAX_BACKING_NAME: u32 = 1023;

/// Compression algorithm for compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Zlib,
    Zstd,
}

impl Compression {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// A header extension kept verbatim (bitmaps, unknown ones).
#[derive(Debug, Clone)]
pub(crate) struct RawExtension {
    pub(crate) kind: u32,
    pub(crate) data: Vec<u8>,
}

/// The parsed, validated header.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) backing_file_offset: u64,
    pub(crate) backing_file_size: u32,
    pub(crate) cluster_bits: u32,
    pub(crate) size: u64,
    pub(crate) l1_size: u32,
    pub(crate) l1_table_offset: u64,
    pub(crate) refcount_table_offset: u64,
    pub(crate) refcount_table_clusters: u32,
    pub(crate) nb_snapshots: u32,
    pub(crate) snapshots_offset: u64,
    pub(crate) incompatible: u64,
    pub(crate) compatible: u64,
    pub(crate) autoclear: u64,
    pub(crate) refcount_order: u32,
    pub(crate) header_length: u32,
    pub(crate) compression: Compression,
    /// Header bytes beyond the fields we know (v3 header_length > 112), kept verbatim.
    pub(crate) tail: Vec<u8>,
    pub(crate) backing_file: Option<String>,
    pub(crate) backing_format: Option<String>,
    /// Feature names from the feature table: (type, bit, name).
    pub(crate) feature_names: Vec<(u8, u8, String)>,
    /// Extensions we keep but do not interpret (bitmaps, unknown types).
    pub(crate) other_extensions: Vec<RawExtension>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

impl Header {
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub(crate) fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    pub(crate) fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    pub(crate) fn lazy_refcounts(&self) -> bool {
        self.compatible & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Bytes in one L2 entry.
    pub(crate) fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// Entries in one L2 table.
    pub(crate) fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// L1 entries needed to map `size` bytes.
    pub(crate) fn l1_entries_for(&self, size: u64) -> u64 {
        let per_l1 = self.l2_entries() * self.cluster_size();
        size.div_ceil(per_l1)
    }

    fn feature_name(&self, kind: u8, bit: u32) -> Option<&str> {
        self.feature_names
            .iter()
            .find(|(t, b, _)| *t == kind && u32::from(*b) == bit)
            .map(|(_, _, n)| n.as_str())
    }

    /// Parses and validates the header from the first bytes of the file (`head` holds the
    /// whole first cluster, or the whole file when shorter). `file_len` bounds offsets.
    pub(crate) fn parse(head: &[u8]) -> Result<Header> {
        if head.len() < 72 {
            return Err(Error::corrupt("qcow2 header is truncated"));
        }
        if &head[..4] != MAGIC {
            return Err(Error::corrupt("qcow2 magic is missing"));
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(Error::unsupported(format!(
                "qcow2 version {version} is not supported (only 2 and 3)"
            )));
        }
        let cluster_bits = be32(head, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(Error::corrupt(format!(
                "cluster_bits {cluster_bits} is outside 9..21"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let crypt = be32(head, 32);
        if crypt != 0 {
            return Err(Error::unsupported(format!(
                "encrypted qcow2 images are not supported (crypt_method {crypt})"
            )));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(head, 8),
            backing_file_size: be32(head, 16),
            cluster_bits,
            size: be64(head, 24),
            l1_size: be32(head, 36),
            l1_table_offset: be64(head, 40),
            refcount_table_offset: be64(head, 48),
            refcount_table_clusters: be32(head, 56),
            nb_snapshots: be32(head, 60),
            snapshots_offset: be64(head, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 72,
            compression: Compression::Zlib,
            tail: Vec::new(),
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            other_extensions: Vec::new(),
        };
        if version == 3 {
            if head.len() < 104 {
                return Err(Error::corrupt("qcow2 v3 header is truncated"));
            }
            h.incompatible = be64(head, 72);
            h.compatible = be64(head, 80);
            h.autoclear = be64(head, 88);
            h.refcount_order = be32(head, 96);
            h.header_length = be32(head, 100);
            if h.header_length < 104 || u64::from(h.header_length) > cluster_size {
                return Err(Error::corrupt(format!(
                    "header_length {} is outside 104..cluster size",
                    h.header_length
                )));
            }
            if h.header_length as usize > head.len() {
                return Err(Error::corrupt("qcow2 header is truncated"));
            }
            if h.header_length > 104 {
                h.compression = match head[104] {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    t => {
                        return Err(Error::unsupported(format!(
                            "compression type {t} is not supported (zlib=0, zstd=1)"
                        )))
                    }
                };
            }
            if h.header_length > 112 {
                h.tail = head[112..h.header_length as usize].to_vec();
            }
            if h.refcount_order > 6 {
                return Err(Error::corrupt(format!(
                    "refcount_order {} is above 6",
                    h.refcount_order
                )));
            }
        }
        // Extensions first, so error messages can name unknown features.
        h.parse_extensions(head)?;
        let unknown = h.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let bit = unknown.trailing_zeros();
            let name = h
                .feature_name(0, bit)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            return Err(Error::unsupported(format!(
                "unsupported qcow2 incompatible feature bit {bit}{name}"
            )));
        }
        if h.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Error::unsupported("external data files are not supported"));
        }
        if h.compression != Compression::Zlib && h.incompatible & INCOMPAT_COMPRESSION == 0 {
            return Err(Error::corrupt(
                "compression type is not zlib but incompatible bit 3 is clear",
            ));
        }
        if h.extended_l2() && cluster_bits < 14 {
            return Err(Error::corrupt(format!(
                "extended L2 entries need clusters of at least 16 KiB, not {cluster_size}"
            )));
        }
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(Error::limit(format!(
                "virtual size {} is above the 64 TiB limit",
                h.size
            )));
        }
        let needed = h.l1_entries_for(h.size);
        if u64::from(h.l1_size) < needed {
            return Err(Error::corrupt(format!(
                "L1 table has {} entries, {needed} are needed for the virtual size {}",
                h.l1_size, h.size
            )));
        }
        if u64::from(h.l1_size) * 8 > MAX_L1_BYTES {
            return Err(Error::limit(format!(
                "L1 table of {} entries is above the 32 MiB limit",
                h.l1_size
            )));
        }
        if h.l1_size > 0 {
            check_table_offset("L1 table", h.l1_table_offset, cluster_size)?;
        }
        check_table_offset("refcount table", h.refcount_table_offset, cluster_size)?;
        if h.refcount_table_clusters == 0 {
            return Err(Error::corrupt("refcount table has 0 clusters"));
        }
        if u64::from(h.refcount_table_clusters) * cluster_size > MAX_REFTABLE_BYTES {
            return Err(Error::limit(format!(
                "refcount table of {} clusters is above the 32 MiB limit",
                h.refcount_table_clusters
            )));
        }
        if h.nb_snapshots > 0 {
            check_table_offset("snapshot table", h.snapshots_offset, cluster_size)?;
        }
        if h.backing_file_offset != 0 {
            if h.backing_file_size > MAX_BACKING_NAME || h.backing_file_size == 0 {
                return Err(Error::corrupt(format!(
                    "backing file name length {} is outside 1..1023",
                    h.backing_file_size
                )));
            }
            let end = h
                .backing_file_offset
                .saturating_add(u64::from(h.backing_file_size));
            if end > cluster_size || end > head.len() as u64 {
                return Err(Error::corrupt(format!(
                    "backing file name at offset {:#x} is outside the first cluster",
                    h.backing_file_offset
                )));
            }
            let raw = &head[h.backing_file_offset as usize..end as usize];
            let name = std::str::from_utf8(raw)
                .map_err(|_| Error::corrupt("backing file name is not UTF-8"))?;
            h.backing_file = Some(name.to_string());
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, head: &[u8]) -> Result<()> {
        let mut at = self.header_length as u64;
        // Extensions end at the backing file name (if it follows them) or the first cluster.
        let mut limit = (head.len() as u64).min(self.cluster_size());
        if self.backing_file_offset > at && self.backing_file_offset < limit {
            limit = self.backing_file_offset;
        }
        let mut count = 0;
        while at + 8 <= limit {
            let kind = be32(head, at as usize);
            let len = u64::from(be32(head, at as usize + 4));
            at += 8;
            if kind == EXT_END {
                return Ok(());
            }
            count += 1;
            if count > 1024 {
                return Err(Error::corrupt("too many header extensions"));
            }
            let end = at.checked_add(len).filter(|&e| e <= limit).ok_or_else(|| {
                Error::corrupt(format!(
                    "header extension {kind:#x} at offset {:#x} overruns the header area",
                    at - 8
                ))
            })?;
            let data = &head[at as usize..end as usize];
            match kind {
                EXT_BACKING_FORMAT => {
                    let s = std::str::from_utf8(data)
                        .map_err(|_| Error::corrupt("backing format name is not UTF-8"))?;
                    self.backing_format = Some(s.trim_end_matches('\0').to_string());
                }
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name = &e[2..];
                        let n = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                        let name = String::from_utf8_lossy(&name[..n]).into_owned();
                        self.feature_names.push((e[0], e[1], name));
                    }
                }
                EXT_DATA_FILE => {
                    if self.incompatible & INCOMPAT_DATA_FILE != 0 {
                        return Err(Error::unsupported("external data files are not supported"));
                    }
                }
                EXT_CRYPTO => {
                    return Err(Error::unsupported(
                        "encrypted qcow2 images are not supported",
                    ))
                }
                _ => self.other_extensions.push(RawExtension {
                    kind,
                    data: data.to_vec(),
                }),
            }
            at = end.div_ceil(8) * 8;
        }
        Ok(())
    }

    /// Serialises the header fields (without extensions) into `header_length` bytes.
    pub(crate) fn encode_fields(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.header_length as usize];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version == 3 {
            b[72..80].copy_from_slice(&self.incompatible.to_be_bytes());
            b[80..88].copy_from_slice(&self.compatible.to_be_bytes());
            b[88..96].copy_from_slice(&self.autoclear.to_be_bytes());
            b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            b[100..104].copy_from_slice(&self.header_length.to_be_bytes());
            if self.header_length > 104 {
                b[104] = match self.compression {
                    Compression::Zlib => 0,
                    Compression::Zstd => 1,
                };
            }
            if self.header_length > 112 {
                b[112..].copy_from_slice(&self.tail);
            }
        }
        b
    }

    /// Serialises header, extensions and backing file name as the start of cluster 0,
    /// updating `backing_file_offset`/`backing_file_size`. Fails when it does not fit.
    pub(crate) fn encode_cluster0(&mut self) -> Result<Vec<u8>> {
        let mut ext = Vec::new();
        let push = |ext: &mut Vec<u8>, kind: u32, data: &[u8]| {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u32).to_be_bytes());
            ext.extend_from_slice(data);
            while ext.len() % 8 != 0 {
                ext.push(0);
            }
        };
        if let Some(f) = &self.backing_format {
            push(&mut ext, EXT_BACKING_FORMAT, f.as_bytes());
        }
        if self.version == 3 {
            push(&mut ext, EXT_FEATURE_TABLE, &feature_table());
        }
        for e in &self.other_extensions {
            push(&mut ext, e.kind, &e.data);
        }
        push(&mut ext, EXT_END, &[]);
        let name_at = self.header_length as u64 + ext.len() as u64;
        match &self.backing_file {
            Some(n) => {
                if n.is_empty() || n.len() > MAX_BACKING_NAME as usize {
                    return Err(Error::invalid(format!(
                        "backing file name of {} bytes is outside 1..1023",
                        n.len()
                    )));
                }
                self.backing_file_offset = name_at;
                self.backing_file_size = n.len() as u32;
            }
            None => {
                self.backing_file_offset = 0;
                self.backing_file_size = 0;
            }
        }
        let mut out = self.encode_fields();
        out.extend_from_slice(&ext);
        if let Some(n) = &self.backing_file {
            out.extend_from_slice(n.as_bytes());
        }
        if out.len() as u64 > self.cluster_size() {
            return Err(Error::invalid(format!(
                "header, extensions and backing file name ({} bytes) do not fit in one cluster",
                out.len()
            )));
        }
        Ok(out)
    }
}

fn check_table_offset(what: &str, offset: u64, cluster_size: u64) -> Result<()> {
    if offset == 0 || offset % cluster_size != 0 {
        return Err(Error::corrupt(format!(
            "{what} offset {offset:#x} is not cluster aligned (or is 0)"
        )));
    }
    if offset > (1 << 56) {
        return Err(Error::corrupt(format!(
            "{what} offset {offset:#x} is beyond any possible file size"
        )));
    }
    Ok(())
}

/// The feature name table we write into v3 images.
fn feature_table() -> Vec<u8> {
    let names: [(u8, u8, &str); 7] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
    ];
    let mut out = Vec::with_capacity(names.len() * 48);
    for (t, b, n) in names {
        let mut e = [0u8; 48];
        e[0] = t;
        e[1] = b;
        e[2..2 + n.len()].copy_from_slice(n.as_bytes());
        out.extend_from_slice(&e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let mut h = Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 112,
            compression: Compression::Zlib,
            tail: Vec::new(),
            backing_file: Some("base.qcow2".into()),
            backing_format: Some("qcow2".into()),
            feature_names: Vec::new(),
            other_extensions: vec![RawExtension {
                kind: EXT_BITMAPS,
                data: vec![1, 2, 3],
            }],
        };
        let c0 = h.encode_cluster0().unwrap();
        let mut full = c0.clone();
        full.resize(65536, 0);
        Header::parse(&full).unwrap()
    }

    #[test]
    fn header_round_trips_with_extensions() {
        let h = sample();
        assert_eq!(h.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(h.other_extensions.len(), 1);
        assert_eq!(h.other_extensions[0].data, vec![1, 2, 3]);
        assert!(h.feature_names.iter().any(|(_, _, n)| n == "dirty bit"));
        assert_eq!(h.l2_entries(), 8192);
    }

    #[test]
    fn unknown_incompatible_bit_is_named() {
        let mut h = sample();
        h.incompatible |= 1 << 9;
        h.feature_names.clear();
        let mut b = h.clone().encode_cluster0().unwrap();
        // Add a feature-table entry naming bit 9 by re-encoding with a custom table.
        b.resize(65536, 0);
        let err = Header::parse(&b).unwrap_err();
        assert!(err.to_string().contains("bit 9"), "{err}");
    }

    #[test]
    fn data_file_is_refused() {
        let mut h = sample();
        h.incompatible |= INCOMPAT_DATA_FILE;
        let mut b = h.encode_cluster0().unwrap();
        b.resize(65536, 0);
        let err = Header::parse(&b).unwrap_err();
        assert_eq!(err.to_string(), "external data files are not supported");
    }
}
