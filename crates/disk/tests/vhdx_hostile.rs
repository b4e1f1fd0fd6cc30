//! VHDX hostile input: header, region table, metadata and BAT fields poked one at a time
//! (checksums re-sealed so the poke reaches the deeper checks), truncation at many points,
//! and a few hundred seeded random corruptions. Opening, reading, mapping and checking must
//! return an error or valid data: never a panic, never a hang.

use paddock_disk::{
    create, open_storage, BlockImage, CreateOptions, ErrorKind, Format, MemStorage, OpenContext,
    Result,
};

const MIB: usize = 1 << 20;
const H1: usize = 0x10000;
const H2: usize = 0x20000;
const RT1: usize = 0x30000;
const RT2: usize = 0x40000;
// Our writer's layout with the default 1 MiB log: metadata at 2 MiB, BAT at 3 MiB.
const META: usize = 2 * MIB;
const BAT: usize = 3 * MIB;
const SIZE: u64 = 8 << 20;

fn base() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.vhdx");
    let mut o = CreateOptions::sized(SIZE);
    o.options.insert("block_size".into(), "1M".into());
    let img = create(&p, Format::Vhdx, &o).unwrap();
    for (i, blk) in [0u64, 2, 7].into_iter().enumerate() {
        img.write_at(&vec![i as u8 + 1; 70_000], blk << 20).unwrap();
    }
    img.flush().unwrap();
    drop(img);
    std::fs::read(&p).unwrap()
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn seal(b: &mut [u8], at: usize, len: usize) {
    put32(b, at + 4, 0);
    let crc = crc32c::crc32c(&b[at..at + len]);
    put32(b, at + 4, crc);
}

fn reseal(b: &mut [u8]) {
    seal(b, H1, 4096);
    seal(b, H2, 4096);
    seal(b, RT1, 65536);
    seal(b, RT2, 65536);
}

/// Applies `f` at both header offsets (or both region table offsets) and re-seals.
fn headers(b: &mut [u8], f: impl Fn(&mut [u8], usize)) {
    f(b, H1);
    f(b, H2);
    reseal(b);
}

fn tables(b: &mut [u8], f: impl Fn(&mut [u8], usize)) {
    f(b, RT1);
    f(b, RT2);
    reseal(b);
}

fn open_ro(bytes: Vec<u8>) -> Result<Box<dyn BlockImage>> {
    open_storage(
        Box::new(MemStorage::read_only(bytes)),
        Some(Format::Vhdx),
        &OpenContext::isolated(false),
    )
}

fn open_rw(bytes: Vec<u8>) -> Result<Box<dyn BlockImage>> {
    open_storage(
        Box::new(MemStorage::new(bytes, 64 << 20)),
        Some(Format::Vhdx),
        &OpenContext::isolated(true),
    )
}

fn kind(r: Result<Box<dyn BlockImage>>) -> ErrorKind {
    match r {
        Ok(_) => panic!("hostile image opened"),
        Err(e) => e.kind(),
    }
}

/// Uses the image every way a reader would; errors are fine, panics and hangs are not.
fn exercise(bytes: &[u8]) {
    if let Ok(img) = open_ro(bytes.to_vec()) {
        let size = img.virtual_size();
        let mut buf = vec![0u8; MIB];
        let mut at = 0;
        while at < size.min(64 << 20) {
            let n = (size - at).min(MIB as u64) as usize;
            let _ = img.read_at(&mut buf[..n], at);
            at += n as u64;
        }
        let mut at = 0;
        for _ in 0..10_000 {
            if at >= size {
                break;
            }
            match img.block_status(at, u64::MAX) {
                Ok(e) => {
                    assert!(e.length > 0 && e.start == at);
                    at += e.length;
                }
                Err(_) => break,
            }
        }
        let _ = img.check(false);
        let _ = img.info();
    }
    if let Ok(img) = open_rw(bytes.to_vec()) {
        let size = img.virtual_size();
        if size >= 8192 {
            let _ = img.write_at(&[0x5a; 4096], size / 2 / 4096 * 4096);
            let _ = img.write_zeroes(0, 4096, true);
        }
        let _ = img.flush();
        let _ = img.check(true);
    }
}

#[test]
fn vhdx_base_image_is_sound() {
    let b = base();
    let img = open_ro(b.clone()).unwrap();
    let mut buf = vec![0u8; 70_000];
    img.read_at(&mut buf, 2 << 20).unwrap();
    assert!(buf.iter().all(|&x| x == 2));
    assert!(img.check(false).unwrap().is_clean());
    // Re-sealing an unmodified image changes nothing.
    let mut c = b.clone();
    reseal(&mut c);
    assert!(c == b);
}

#[test]
fn vhdx_header_pokes() {
    let b = base();
    let mut c = b.clone();
    c[H1] = b'x';
    c[H2] = b'x';
    assert_eq!(kind(open_ro(c)), ErrorKind::Corrupt);
    // One damaged copy: the other serves, check reports it, repair rewrites it.
    let mut c = b.clone();
    c[H2 + 200] ^= 1;
    let img = open_ro(c.clone()).unwrap();
    let r = img.check(false).unwrap();
    assert_eq!(r.corruptions, 1, "{:?}", r.messages);
    let img = open_rw(c).unwrap();
    let r = img.check(true).unwrap();
    assert_eq!(r.corruptions_fixed, 1);
    assert!(img.check(false).unwrap().is_clean());
    let mut c = b.clone();
    headers(&mut c, |b, h| b[h + 66] = 2);
    assert_eq!(kind(open_ro(c)), ErrorKind::Unsupported);
    for (at, v) in [(72, 12345u64), (72, 0), (72, u64::MAX), (68, 4096)] {
        let mut c = b.clone();
        headers(&mut c, |b, h| {
            if at == 68 {
                put32(b, h + at, v as u32)
            } else {
                put64(b, h + at, v)
            }
        });
        assert_eq!(
            kind(open_ro(c.clone())),
            ErrorKind::Corrupt,
            "field {at}={v}"
        );
        exercise(&c);
    }
    // Log GUID set over an empty log: nothing to replay, not dirty.
    let mut c = b.clone();
    headers(&mut c, |b, h| b[h + 48] = 0x77);
    let img = open_ro(c.clone()).unwrap();
    assert!(!img.info().dirty);
    // Log GUID set with a log that lies past the end of the file.
    headers(&mut c, |b, h| put64(b, h + 72, 1 << 40));
    assert_eq!(kind(open_ro(c)), ErrorKind::Corrupt);
}

#[test]
fn vhdx_region_table_pokes() {
    let b = base();
    let mut c = b.clone();
    c[RT1 + 100] ^= 1;
    c[RT2 + 100] ^= 1;
    assert_eq!(kind(open_ro(c)), ErrorKind::Corrupt);
    let cases: [(usize, u64, bool, ErrorKind); 8] = [
        (32, META as u64, false, ErrorKind::Corrupt), // BAT over the metadata region
        (32, 1 << 20, false, ErrorKind::Corrupt),     // BAT over the log
        (32, 1 << 40, false, ErrorKind::Corrupt),     // past EOF
        (32, 12345, false, ErrorKind::Corrupt),       // misaligned
        (40, 0, true, ErrorKind::Corrupt),            // zero length
        (40, 1 << 30, true, ErrorKind::Corrupt),      // length past EOF
        (8, 5000, true, ErrorKind::Corrupt),          // entry count
        (64, 0, false, ErrorKind::Corrupt),           // metadata in the header section
    ];
    for (at, v, small, want) in cases {
        let mut c = b.clone();
        tables(&mut c, |b, t| {
            if small {
                put32(b, t + at, v as u32)
            } else {
                put64(b, t + at, v)
            }
        });
        assert_eq!(kind(open_ro(c.clone())), want, "region field {at}={v}");
        exercise(&c);
    }
    // An unknown required region is refused; an unknown optional one is ignored.
    let mut c = b.clone();
    tables(&mut c, |b, t| {
        put32(b, t + 8, 3);
        b[t + 80..t + 96].copy_from_slice(&[0x42; 16]);
        put64(b, t + 96, 6 << 20);
        put32(b, t + 104, 1 << 20);
        put32(b, t + 108, 1);
    });
    assert_eq!(kind(open_ro(c.clone())), ErrorKind::Unsupported);
    tables(&mut c, |b, t| put32(b, t + 108, 0));
    assert!(open_ro(c).is_ok());
}

#[test]
fn vhdx_metadata_pokes() {
    let b = base();
    let item = META + 0x10000;
    let cases: [(usize, u64, usize, ErrorKind); 12] = [
        (item, 3 << 20, 4, ErrorKind::Corrupt), // block size not a power of two
        (item, 0, 4, ErrorKind::Corrupt),       // block size 0
        (item, 512 << 20, 4, ErrorKind::Corrupt), // block size too big
        (item, 1 << 31, 4, ErrorKind::Corrupt), // block size way too big
        (item, 512 << 10, 4, ErrorKind::Corrupt), // block size too small
        (item + 4, 2, 4, ErrorKind::Corrupt),   // has-parent without a locator
        (item + 8, 1 << 63, 8, ErrorKind::ResourceLimit), // virtual size
        (item + 8, 64 << 40, 8, ErrorKind::ResourceLimit), // 64 TiB of 1 MiB blocks
        (item + 8, 200 << 30, 8, ErrorKind::Corrupt), // BAT region too small
        (item + 8, (8 << 20) + 100, 8, ErrorKind::Corrupt), // not a sector multiple
        (item + 0x20, 1024, 4, ErrorKind::Corrupt), // logical sector size
        (META + 10, 3000, 2, ErrorKind::Corrupt), // entry count
    ];
    for (at, v, w, want) in cases {
        let mut c = b.clone();
        match w {
            2 => c[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes()),
            4 => put32(&mut c, at, v as u32),
            _ => put64(&mut c, at, v),
        }
        assert_eq!(kind(open_ro(c.clone())), want, "metadata at 0x{at:x}={v}");
        exercise(&c);
    }
    // Item table entries: offset inside the table, past the region, oversized length.
    for (field, v) in [(16, 100u32), (16, 0x00ff_fff0), (20, 2 << 20)] {
        let mut c = b.clone();
        put32(&mut c, META + 32 + field, v);
        assert_eq!(kind(open_ro(c.clone())), ErrorKind::Corrupt, "{field}={v}");
        exercise(&c);
    }
    // An unknown required system item is refused.
    let mut c = b.clone();
    c[META + 32..META + 48].copy_from_slice(&[0x99; 16]);
    assert_eq!(kind(open_ro(c)), ErrorKind::Unsupported);
    // 4 KiB logical sectors with a 64 TiB disk and 1 MiB blocks: the chunk ratio is 32768
    // and the BAT would be 512 MiB.
    let mut c = b.clone();
    put32(&mut c, item + 0x20, 4096);
    put64(&mut c, item + 8, 64 << 40);
    assert_eq!(kind(open_ro(c)), ErrorKind::ResourceLimit);
}

fn bat(c: &mut [u8], block: usize, state: u64, offset: u64) {
    put64(c, BAT + block * 8, (offset & !0xfffff) | state);
}

#[test]
fn vhdx_bat_pokes() {
    let b = base();
    // Block 2 past the end of the file: opens, its reads fail, check reports it.
    let mut c = b.clone();
    bat(&mut c, 2, 6, 1 << 40);
    let img = open_ro(c.clone()).unwrap();
    let mut buf = [0u8; 512];
    assert_eq!(
        img.read_at(&mut buf, 2 << 20).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    img.read_at(&mut buf, 0).unwrap();
    assert!(!img.check(false).unwrap().is_clean());
    exercise(&c);
    // Block 0 inside the BAT: readable, but writes refused until repaired.
    let mut c = b.clone();
    bat(&mut c, 0, 6, BAT as u64);
    let img = open_rw(c.clone()).unwrap();
    assert!(img.info().corrupt);
    let e = img.write_at(&[1; 512], 4 << 20).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let r = img.check(true).unwrap();
    assert!(r.corruptions_fixed >= 1, "{:?}", r.messages);
    img.write_at(&[1; 512], 4 << 20).unwrap();
    img.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
    assert!(img.check(false).unwrap().is_clean());
    exercise(&c);
    // Invalid states, offset 0, and two blocks sharing space.
    for (state, off) in [(5u64, 6u64 << 20), (7, 6 << 20), (4, 0), (6, 0)] {
        let mut c = b.clone();
        bat(&mut c, 3, state, off);
        let img = open_ro(c.clone()).unwrap();
        assert!(img.read_at(&mut buf, 3 << 20).is_err(), "state {state}");
        assert!(!img.check(false).unwrap().is_clean());
        exercise(&c);
    }
    let mut c = b.clone();
    let first = u64::from_le_bytes(c[BAT..BAT + 8].try_into().unwrap());
    put64(&mut c, BAT + 5 * 8, first);
    let img = open_ro(c.clone()).unwrap();
    let r = img.check(false).unwrap();
    assert!(
        r.messages
            .iter()
            .any(|m| m.contains("overlaps another block")),
        "{:?}",
        r.messages
    );
    exercise(&c);
}

#[test]
fn vhdx_truncation_anywhere() {
    let b = base();
    let points = [
        0,
        7,
        8,
        4096,
        H1 + 100,
        H2,
        RT1 + 10,
        RT2,
        RT2 + 65535,
        MIB - 1,
        MIB,
        MIB + MIB / 2,
        META,
        META + 100,
        BAT,
        BAT + 8,
        4 * MIB,
        4 * MIB + 1,
        5 * MIB - 1,
        6 * MIB,
        b.len() - 1,
    ];
    for n in points {
        let c = b[..n.min(b.len())].to_vec();
        match open_ro(c.clone()) {
            Ok(img) => {
                // Anything that opens reads the first block or fails cleanly.
                let mut buf = vec![0u8; MIB];
                if let Err(e) = img.read_at(&mut buf, 0) {
                    assert_eq!(e.kind(), ErrorKind::Corrupt, "{n}: {e}");
                }
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "truncated at {n}: {e}"),
        }
        exercise(&c);
    }
}

#[test]
fn vhdx_random_corruption() {
    let b = base();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Places worth hitting: headers, region tables, metadata table and items, BAT.
    let hot = [
        (H1, 128),
        (H2, 128),
        (RT1, 96),
        (RT2, 96),
        (META, 224),
        (META + 0x10000, 48),
        (BAT, 64),
    ];
    for case in 0..300 {
        let mut c = b.clone();
        for _ in 0..1 + next() % 3 {
            let (at, len) = hot[(next() % hot.len() as u64) as usize];
            let i = at + (next() % len as u64) as usize;
            c[i] = next() as u8;
        }
        if case % 2 == 0 {
            reseal(&mut c);
        }
        exercise(&c);
    }
}
