//! Hostile VHD images: corrupted footers, dynamic headers and BATs, and truncation. Opening
//! and using them must give an error or valid data, never a panic or a hang.

mod common;

use paddock_disk::{create, BlockImage, CreateOptions, ErrorKind, Format};

/// A small dynamic image with some data, and a fixed one, made by our writer.
fn valid_images() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for sub in ["dynamic", "fixed"] {
        let p = dir.path().join(format!("{sub}.vhd"));
        let mut o = CreateOptions::sized(5 << 20);
        o.options.insert("subformat".into(), sub.into());
        let img = create(&p, Format::Vpc, &o).unwrap();
        img.write_at(&[0xab; 3000], 1000).unwrap();
        img.write_at(&[0xcd; 4096], (4 << 20) + 512).unwrap();
        img.finish().unwrap();
        out.push(std::fs::read(&p).unwrap());
    }
    out
}

fn sum_checksum(b: &mut [u8], field: usize) {
    b[field..field + 4].fill(0);
    let s = b.iter().fold(0u32, |a, &x| a.wrapping_add(u32::from(x)));
    b[field..field + 4].copy_from_slice(&(!s).to_be_bytes());
}

fn open_mem(bytes: &[u8], writable: bool) -> paddock_disk::Result<Box<dyn BlockImage>> {
    common::open_mem(bytes, Format::Vpc, writable)
}

/// Uses an opened image every way the engine would; errors are fine, panics are not.
fn exercise(img: &dyn BlockImage) {
    let size = img.virtual_size();
    let _ = img.info();
    let mut buf = vec![0u8; 1 << 20];
    for at in [0, size.saturating_sub(1 << 20), size / 2] {
        let n = (size - at.min(size)).min(1 << 20) as usize;
        let _ = img.read_at(&mut buf[..n], at);
    }
    let mut at = 0;
    for _ in 0..64 {
        if at >= size {
            break;
        }
        match img.block_status(at, size - at) {
            Ok(e) => {
                assert!(e.length > 0 && e.start == at);
                at += e.length;
            }
            Err(_) => break,
        }
    }
    let _ = img.check(false);
    if !img.is_read_only() && size > 0 {
        let _ = img.write_at(&[1; 700], size / 3);
        let _ = img.write_zeroes(0, size.min(3 << 20), true);
        let _ = img.read_at(&mut buf[..512.min(size as usize)], 0);
    }
}

fn try_all(bytes: &[u8]) -> Option<paddock_disk::Error> {
    let mut err = None;
    for writable in [false, true] {
        match open_mem(bytes, writable) {
            Ok(img) => exercise(img.as_ref()),
            Err(e) => err = Some(e),
        }
    }
    err
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

const NASTY32: [u32; 7] = [
    0,
    1,
    511,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x0000_1001,
];
const NASTY64: [u64; 6] = [
    0,
    1,
    0x1_0000_0000,
    1 << 62,
    u64::MAX,
    0x7fff_ffff_ffff_ffff,
];

#[test]
fn footer_field_mutations_fail_cleanly() {
    let mut cases = 0;
    for base in valid_images() {
        let foot = base.len() - 512;
        let copies: Vec<usize> = if base[..8] == *b"conectix" {
            vec![0, foot]
        } else {
            vec![foot]
        };
        for &at in &copies {
            // 32-bit fields: features, version, timestamp, creator version, type, geometry.
            for field in [8, 12, 24, 32, 56, 60] {
                for v in NASTY32 {
                    let mut b = base.clone();
                    put32(&mut b[at..at + 512], field, v);
                    let plain = try_all(&b);
                    // The checksum is a byte sum: only a changed sum must be caught, and only
                    // in the copy the reader trusts (offset 0 of a dynamic disk).
                    let sum = |x: &[u8]| x.iter().map(|&c| u32::from(c)).sum::<u32>();
                    if at == copies[0] && sum(&b[at..at + 512]) != sum(&base[at..at + 512]) {
                        assert!(plain.is_some(), "footer field {field} changed unnoticed");
                    }
                    sum_checksum(&mut b[at..at + 512], 64);
                    try_all(&b);
                    cases += 2;
                }
            }
            // 64-bit fields: data offset, original and current size.
            for field in [16, 40, 48] {
                for v in NASTY64 {
                    for app in [b"qemu", b"win "] {
                        let mut b = base.clone();
                        put64(&mut b[at..at + 512], field, v);
                        b[at + 28..at + 32].copy_from_slice(app);
                        sum_checksum(&mut b[at..at + 512], 64);
                        try_all(&b);
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 200, "{cases}");
}

#[test]
fn bad_checksums_are_refused() {
    for base in valid_images() {
        let foot = base.len() - 512;
        let at = if base[..8] == *b"conectix" { 0 } else { foot };
        let mut b = base.clone();
        b[at + 64] ^= 0x40;
        let e = open_mem(&b, false).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("checksum"), "{e}");
        if at == 0 {
            let mut b = base.clone();
            b[512 + 36] ^= 1; // dynamic header checksum
            let e = open_mem(&b, false).err().unwrap();
            assert!(e.to_string().contains("dynamic header"), "{e}");
        }
    }
}

#[test]
fn dynamic_header_and_bat_mutations_fail_cleanly() {
    let base = valid_images().remove(0);
    let dh = 512;
    let mut cases = 0;
    // Table offset, max table entries, block size, version.
    for (field, wide) in [(16usize, true), (28, false), (32, false), (24, false)] {
        for i in 0..7 {
            let mut b = base.clone();
            if wide {
                put64(&mut b[dh..dh + 1024], field, NASTY64[i % NASTY64.len()]);
            } else {
                put32(&mut b[dh..dh + 1024], field, NASTY32[i]);
            }
            sum_checksum(&mut b[dh..dh + 1024], 36);
            try_all(&b);
            cases += 1;
        }
    }
    // Specific refusals.
    let with = |field: usize, v: u32| {
        let mut b = base.clone();
        put32(&mut b[dh..dh + 1024], field, v);
        sum_checksum(&mut b[dh..dh + 1024], 36);
        open_mem(&b, false).err().unwrap()
    };
    for bs in [0, 3 << 20, 1000, 256] {
        let e = with(32, bs);
        assert!(e.to_string().contains("block size"), "{bs}: {e}");
    }
    let e = with(28, 0xffff_ffff);
    assert!(
        matches!(e.kind(), ErrorKind::ResourceLimit | ErrorKind::Corrupt),
        "{e}"
    );
    let e = with(28, 1);
    assert!(e.to_string().contains("too few"), "{e}");
    // BAT entries: past the end of the file, into the headers, duplicated, misaligned.
    let bat = 1536;
    let first = u32::from_be_bytes(base[bat..bat + 4].try_into().unwrap());
    for v in [0u32, 1, 2, 3, first + 1, 0x0fff_ffff, 0xffff_fffe, first] {
        for slot in [1usize, 2] {
            let mut b = base.clone();
            put32(&mut b, bat + 4 * slot, v);
            try_all(&b);
            cases += 1;
        }
    }
    let mut b = base.clone();
    put32(&mut b, bat + 4, 0x0fff_ffff);
    let e = open_mem(&b, false).err().unwrap();
    assert!(e.to_string().contains("truncated"), "{e}");
    // A block overlapping the headers is refused for writing, and check reports it.
    let mut b = base.clone();
    put32(&mut b, bat + 4, 1);
    let e = open_mem(&b, true).err().unwrap();
    assert!(e.to_string().contains("overlap"), "{e}");
    let img = open_mem(&b, false).unwrap();
    assert!(img.check(false).unwrap().corruptions > 0);
    assert!(cases > 40);
}

#[test]
fn truncation_at_many_points_fails_cleanly() {
    for base in valid_images() {
        let len = base.len();
        let mut points: Vec<usize> = (0..len).step_by(len / 97 + 1).collect();
        points.extend([
            0,
            1,
            511,
            512,
            513,
            1535,
            1536,
            2047,
            2048,
            len - 513,
            len - 1,
        ]);
        for cut in points {
            let b = &base[..cut];
            if let Some(e) = try_all(b) {
                assert!(
                    matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
                    "cut at {cut}: {e}"
                );
            }
        }
    }
}

#[test]
fn garbage_after_cookie_never_panics() {
    // Deterministic pseudo-random footers and dynamic headers with valid checksums.
    let base = valid_images().remove(0);
    let mut x = 0x9e37_79b9u32;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for _ in 0..150 {
        let mut b = base.clone();
        for _ in 0..6 {
            let at = (next() % 1536) as usize;
            if at >= 8 && !(512..520).contains(&at) {
                b[at] = next() as u8;
            }
        }
        sum_checksum(&mut b[..512], 64);
        sum_checksum(&mut b[512..1536], 36);
        try_all(&b);
    }
}
