//! Just enough of a VMDK to tell whether QEMU can write it: its `createType`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

const SPARSE_MAGIC: &[u8; 4] = b"KDMV";
/// Largest embedded descriptor read (QEMU's own limit is 1 MiB; real ones are under 2 KiB).
const MAX_DESCRIPTOR: u64 = 1 << 20;
/// Header flag: grains are compressed (streamOptimized).
const FLAG_COMPRESSED: u32 = 1 << 16;

/// The image's `createType` (`monolithicSparse`, `streamOptimized`, ...), from the text
/// descriptor or the one a sparse extent embeds; `None` when it names none.
pub(crate) fn create_type(path: &Path) -> io::Result<Option<String>> {
    let mut f = File::open(path)?;
    let mut head = [0u8; 512];
    let n = read_up_to(&mut f, &mut head)?;
    let head = &head[..n];
    if head.len() >= 44 && &head[..4] == SPARSE_MAGIC {
        let le32 = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().expect("4 bytes"));
        let le64 = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().expect("8 bytes"));
        let flags = le32(8);
        let (offset, size) = (le64(28), le64(36));
        if offset != 0 && size != 0 {
            let len = size.saturating_mul(512).min(MAX_DESCRIPTOR);
            let start = offset.checked_mul(512).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "descriptor offset overflows")
            })?;
            f.seek(SeekFrom::Start(start))?;
            let mut text = Vec::new();
            f.take(len).read_to_end(&mut text)?;
            if let Some(t) = parse_create_type(&text) {
                return Ok(Some(t));
            }
        }
        // No descriptor: compressed grains can only be streamOptimized.
        return Ok((flags & FLAG_COMPRESSED != 0).then(|| "streamOptimized".to_string()));
    }
    // A text descriptor file.
    let mut text = head.to_vec();
    (&mut f).take(MAX_DESCRIPTOR).read_to_end(&mut text)?;
    Ok(parse_create_type(&text))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn parse_create_type(text: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(text);
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "createType").then(|| value.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn create_type_comes_from_text_and_embedded_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("flat.vmdk");
        std::fs::write(
            &text,
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType=\"monolithicFlat\"\n",
        )
        .unwrap();
        assert_eq!(
            create_type(&text).unwrap().as_deref(),
            Some("monolithicFlat")
        );

        // A sparse header whose descriptor sits at sector 1.
        let sparse = dir.path().join("s.vmdk");
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(SPARSE_MAGIC);
        h[8..12].copy_from_slice(&(FLAG_COMPRESSED | 3).to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&1u64.to_le_bytes());
        let mut f = File::create(&sparse).unwrap();
        f.write_all(&h).unwrap();
        let mut d = b"createType=\"streamOptimized\"\n".to_vec();
        d.resize(512, 0);
        f.write_all(&d).unwrap();
        drop(f);
        assert_eq!(
            create_type(&sparse).unwrap().as_deref(),
            Some("streamOptimized")
        );

        // Without a descriptor, compressed grains still say streamOptimized.
        h[28..44].fill(0);
        std::fs::write(&sparse, &h).unwrap();
        assert_eq!(
            create_type(&sparse).unwrap().as_deref(),
            Some("streamOptimized")
        );
        h[8..12].fill(0);
        std::fs::write(&sparse, &h).unwrap();
        assert_eq!(create_type(&sparse).unwrap(), None);
    }
}
