//! Hostile VMDK inputs: poked header and table fields, truncation, path escapes, huge
//! directories, compression bombs. Every case must give an error or valid data — never a
//! panic or a hang.

use std::path::Path;

use paddock_disk::{
    create, open, open_storage, BlockImage, CreateOptions, ErrorKind, Format, MemStorage,
    OpenContext, OpenOptions,
};

fn make(dir: &Path, name: &str, sub: &str, size: u64) -> Vec<u8> {
    let path = dir.join(name);
    let mut o = CreateOptions::sized(size);
    o.options.insert("subformat".into(), sub.into());
    let img = create(&path, Format::Vmdk, &o).unwrap();
    let mut x = 1u32;
    for i in 0..(size / 65536).min(40) {
        let buf: Vec<u8> = (0..40_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 24) as u8 & 0x0f
            })
            .collect();
        img.write_at(&buf, i * 65536 + 1000).unwrap();
    }
    img.finish().unwrap();
    drop(img);
    std::fs::read(&path).unwrap()
}

fn open_mem(bytes: Vec<u8>) -> paddock_disk::Result<Box<dyn BlockImage>> {
    open_storage(
        Box::new(MemStorage::read_only(bytes)),
        Some(Format::Vmdk),
        &OpenContext::isolated(false),
    )
}

/// Opens and reads a bounded part of the image; any result but a panic is acceptable, and
/// reads that succeed must be repeatable.
fn exercise(bytes: Vec<u8>) -> bool {
    let Ok(img) = open_mem(bytes) else {
        return false;
    };
    let size = img.virtual_size();
    let mut buf = vec![0u8; 1 << 20];
    for off in [0, size.saturating_sub(1 << 20), size / 2] {
        let n = (size - off).min(buf.len() as u64) as usize;
        let a = img.read_at(&mut buf[..n], off).map(|_| buf[..n].to_vec());
        if let Ok(a) = a {
            let mut again = vec![0u8; n];
            img.read_at(&mut again, off).unwrap();
            assert_eq!(a, again);
        }
    }
    let mut at = 0;
    for _ in 0..64 {
        if at >= size {
            break;
        }
        match img.block_status(at, size - at) {
            Ok(e) => {
                assert!(e.length > 0 && e.length <= size - at);
                at += e.length;
            }
            Err(_) => break,
        }
    }
    let _ = img.check(false);
    true
}

fn poke(bytes: &[u8], at: usize, val: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + val.len()].copy_from_slice(val);
    b
}

#[test]
fn vmdk_header_field_pokes() {
    let dir = tempfile::tempdir().unwrap();
    let images = [
        make(dir.path(), "a.vmdk", "monolithicSparse", 3 << 20),
        make(dir.path(), "s.vmdk", "streamOptimized", 3 << 20),
    ];
    let mut cases = 0;
    for img in &images {
        assert!(exercise(img.clone()), "the unmodified image opens");
        let len = img.len() as u64;
        let vals64 = [
            0u64,
            1,
            2,
            3,
            0x7f,
            0xffff_ffff,
            u64::MAX,
            1 << 40,
            len / 512,
            len,
            1 << 62,
        ];
        // 64-bit fields: capacity, grain, descriptor offset/size, rgd, gd, overhead.
        for at in [12usize, 20, 28, 36, 48, 56, 64] {
            for v in vals64 {
                exercise(poke(img, at, &v.to_le_bytes()));
                cases += 1;
            }
        }
        // 32-bit fields: version, flags, GTEs per GT; and the compression algorithm.
        for at in [4usize, 8, 44] {
            for v in [0u32, 1, 2, 4, 7, 0x3_0007, 513, 4096, 4097, u32::MAX] {
                exercise(poke(img, at, &v.to_le_bytes()));
                cases += 1;
            }
        }
        for v in [0u16, 2, u16::MAX] {
            exercise(poke(img, 77, &v.to_le_bytes()));
            cases += 1;
        }
        // Broken newline detection bytes are refused.
        let err = open_mem(poke(img, 73, b"\r\n\r\n")).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }
    assert!(cases > 150);
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn vmdk_table_entry_pokes() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "a.vmdk", "monolithicSparse", 3 << 20);
    let len = img.len() as u64;
    let gd = le64(&img, 56) as usize * 512;
    let gt0 = le32(&img, gd) as usize * 512;
    let specials = [
        1u32,
        2,
        3,
        gd as u32 / 512,
        (len / 512) as u32,
        (len / 512) as u32 - 1,
        u32::MAX,
        0x8000_0000,
    ];
    for v in specials {
        exercise(poke(&img, gd, &v.to_le_bytes()));
        for k in [0usize, 1, 20, 511] {
            exercise(poke(&img, gt0 + 4 * k, &v.to_le_bytes()));
        }
    }
    // A GT entry past the end of the file is an error, not zeroes.
    let bad = poke(&img, gt0, &u32::MAX.to_le_bytes());
    let i = open_mem(bad).unwrap();
    let err = i.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn vmdk_truncation_at_many_points() {
    let dir = tempfile::tempdir().unwrap();
    for (name, sub) in [
        ("a.vmdk", "monolithicSparse"),
        ("s.vmdk", "streamOptimized"),
    ] {
        let img = make(dir.path(), name, sub, 3 << 20);
        let step = (img.len() / 150).max(512);
        let mut at = 0;
        let mut opened = 0;
        while at < img.len() {
            if exercise(img[..at].to_vec()) {
                opened += 1;
            }
            at += step;
        }
        if sub == "streamOptimized" {
            // Without its footer a stream image cannot be opened.
            assert_eq!(opened, 0, "truncated stream images must not open");
            let err = open_mem(img[..img.len() - 512].to_vec()).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::Corrupt);
        }
    }
}

#[test]
fn vmdk_gigantic_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "a.vmdk", "monolithicSparse", 1 << 20);
    // 512 TiB capacity.
    let err = open_mem(poke(&img, 12, &(1u64 << 40).to_le_bytes()))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::ResourceLimit);
    // 64 TiB with one-sector grains and one entry per table: a 512 GiB directory.
    let mut b = poke(&img, 12, &(1u64 << 37).to_le_bytes());
    b = poke(&b, 20, &1u64.to_le_bytes());
    b = poke(&b, 44, &1u32.to_le_bytes());
    let err = open_mem(b).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::ResourceLimit);
    // A directory that would fit in memory but not in the file is corrupt, not allocated.
    let b = poke(&img, 12, &(1u64 << 36).to_le_bytes());
    let err = open_mem(b).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

/// Finds the first grain marker of a stream image made by our writer (after the header).
fn first_grain(img: &[u8]) -> usize {
    let overhead = le64(img, 64) as usize * 512;
    assert_eq!(le64(img, overhead), 0, "the first grain is grain 0");
    overhead
}

#[test]
fn vmdk_compression_bombs_and_absurd_markers() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "s.vmdk", "streamOptimized", 1 << 20);
    let g = first_grain(&img);
    let size = le32(&img, g + 8) as usize;
    // Absurd sizes.
    for v in [0u32, 0x10_0000, u32::MAX] {
        let i = open_mem(poke(&img, g + 8, &v.to_le_bytes())).unwrap();
        assert!(i.read_at(&mut [0u8; 512], 0).is_err(), "marker size {v}");
    }
    // Wrong LBA.
    let i = open_mem(poke(&img, g, &128u64.to_le_bytes())).unwrap();
    assert_eq!(
        i.read_at(&mut [0u8; 512], 0).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    // A stream that inflates to 1 MiB from a few hundred bytes, in place of grain 0.
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![0x41u8; 1 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(
        bomb.len() <= size,
        "bomb fits in the slot ({} vs {size})",
        bomb.len()
    );
    let mut b = poke(&img, g + 8, &(bomb.len() as u32).to_le_bytes());
    b[g + 12..g + 12 + bomb.len()].copy_from_slice(&bomb);
    let i = open_mem(b).unwrap();
    let err = i.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("beyond the grain size"), "{err}");
}

fn write_desc(dir: &Path, extent_lines: &str) -> std::path::PathBuf {
    let p = dir.join("d.vmdk");
    std::fs::write(
        &p,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n{extent_lines}\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn vmdk_extent_paths_are_confined() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("pool");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(root.path().join("x"), vec![7u8; 4096]).unwrap();
    std::fs::write(dir.join("ok-flat.vmdk"), vec![1u8; 4096]).unwrap();
    std::os::unix::fs::symlink(root.path().join("x"), dir.join("link")).unwrap();
    for name in ["../x", "/etc/passwd", "sub/../../x", "link"] {
        let p = write_desc(&dir, &format!("RW 8 FLAT \"{name}\" 0"));
        let err = open(&p, &OpenOptions::read(None)).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::PathNotAllowed, "{name}: {err}");
        let p = write_desc(&dir, &format!("RW 8 SPARSE \"{name}\""));
        let err = open(&p, &OpenOptions::read(None)).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::PathNotAllowed, "{name}: {err}");
    }
    let p = write_desc(&dir, "RW 8 FLAT \"ok-flat.vmdk\" 0\nRW 8 ZERO");
    let img = open(&p, &OpenOptions::read(None)).unwrap();
    let mut b = vec![0u8; 8192];
    img.read_at(&mut b, 0).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 1) && b[4096..].iter().all(|&x| x == 0));
    assert_eq!(img.info().files.len(), 2);
    // The descriptor cannot name itself as its data.
    let p = write_desc(&dir, "RW 8 FLAT \"d.vmdk\" 0");
    assert!(open(&p, &OpenOptions::write(None)).is_err());
}

#[test]
fn vmdk_hostile_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.vmdk"), vec![1u8; 4096]).unwrap();
    let cases: [(&str, ErrorKind); 5] = [
        (
            "RW 18446744073709551615 FLAT \"f.vmdk\" 0",
            ErrorKind::ResourceLimit,
        ),
        (
            "RW 8 FLAT \"f.vmdk\" 18446744073709551615",
            ErrorKind::Corrupt,
        ),
        ("RW 8 VMFSRDM \"f.vmdk\"", ErrorKind::Unsupported),
        ("RW 8 SPARSE \"f.vmdk\"", ErrorKind::Unsupported),
        ("", ErrorKind::Corrupt),
    ];
    for (line, kind) in cases {
        let p = write_desc(dir.path(), line);
        let err = open(&p, &OpenOptions::read(None)).err().unwrap();
        assert_eq!(err.kind(), kind, "{line}: {err}");
    }
    // A descriptor over 1 MiB.
    let mut big = String::from("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n");
    while big.len() <= 1 << 20 {
        big.push_str("# padding padding padding padding padding padding padding\n");
    }
    let p = dir.path().join("big.vmdk");
    std::fs::write(&p, big).unwrap();
    let err = open(&p, &OpenOptions::read(Some(Format::Vmdk)))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::ResourceLimit);
    // A sparse extent smaller than its descriptor line.
    let small = make(dir.path(), "small.vmdk", "twoGbMaxExtentSparse", 1 << 20);
    drop(small);
    let p = write_desc(dir.path(), "RW 999999 SPARSE \"small-s001.vmdk\"");
    let err = open(&p, &OpenOptions::read(None)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    // Backing files are refused where the caller forbids them.
    let o = CreateOptions {
        backing_file: Some("small.vmdk".into()),
        ..CreateOptions::sized(1 << 20)
    };
    drop(create(&dir.path().join("top.vmdk"), Format::Vmdk, &o).unwrap());
    let mut ro = OpenOptions::read(None);
    ro.allow_backing = false;
    let err = open(&dir.path().join("top.vmdk"), &ro).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::PathNotAllowed);
}
