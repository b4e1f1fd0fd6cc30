//! Hostile VDI images: corrupted header fields and block maps, and truncation. Opening and
//! using them must give an error or valid data, never a panic or a hang.

mod common;

use paddock_disk::{create, BlockImage, CreateOptions, ErrorKind, Format};

fn valid_images() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for st in ["off", "on"] {
        let p = dir.path().join(format!("{st}.vdi"));
        let mut o = CreateOptions::sized(4 << 20);
        o.options.insert("static".into(), st.into());
        let img = create(&p, Format::Vdi, &o).unwrap();
        img.write_at(&[0xab; 3000], 1000).unwrap();
        img.write_at(&[0xcd; 4096], (3 << 20) + 512).unwrap();
        img.finish().unwrap();
        out.push(std::fs::read(&p).unwrap());
    }
    out
}

fn open_mem(bytes: &[u8], writable: bool) -> paddock_disk::Result<Box<dyn BlockImage>> {
    common::open_mem(bytes, Format::Vdi, writable)
}

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
        let _ = img.write_at(&[2; 700], size - 700.min(size));
        let _ = img.write_zeroes(0, size.min(3 << 20), true);
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
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

const NASTY32: [u32; 9] = [
    0,
    1,
    511,
    512,
    0x100,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    1 << 20,
];

#[test]
fn header_field_mutations_fail_cleanly() {
    let mut cases = 0;
    for base in valid_images() {
        // Version, header size, type, flags, map and data offsets, legacy geometry, sector
        // size, block size, extra data, blocks in image, blocks allocated.
        let fields = [
            0x44, 0x48, 0x4c, 0x50, 0x154, 0x158, 0x15c, 0x168, 0x178, 0x17c, 0x180, 0x184,
        ];
        for field in fields {
            for v in NASTY32 {
                let mut b = base.clone();
                put32(&mut b, field, v);
                try_all(&b);
                cases += 1;
            }
        }
        for v in [0u64, 1, 511, 5 << 20, 1 << 46, u64::MAX] {
            let mut b = base.clone();
            b[0x170..0x178].copy_from_slice(&v.to_le_bytes());
            try_all(&b);
            cases += 1;
        }
    }
    assert!(cases > 200, "{cases}");
}

#[test]
fn specific_refusals_name_the_field() {
    let base = valid_images().remove(0);
    let with = |field: usize, v: u32| {
        let mut b = base.clone();
        put32(&mut b, field, v);
        open_mem(&b, false).err().unwrap()
    };
    let e = with(0x40, 0x1234);
    assert!(e.to_string().contains("signature"), "{e}");
    for bs in [0, 4096, 3 << 20, 2 << 20] {
        let e = with(0x178, bs);
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("block size"), "{e}");
    }
    let e = with(0x44, 0x0001_0000);
    assert!(e.to_string().contains("version 1.0"), "{e}");
    let e = with(0x4c, 4);
    assert!(e.to_string().contains("differencing"), "{e}");
    let e = with(0x154, 0x201);
    assert!(e.to_string().contains("aligned"), "{e}");
    let e = with(0x180, 0xffff_ffff);
    assert_eq!(e.kind(), ErrorKind::ResourceLimit, "{e}");
    let e = with(0x180, 1);
    assert!(e.to_string().contains("larger than"), "{e}");
    let mut b = base.clone();
    b[0x170..0x178].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_eq!(
        open_mem(&b, false).err().unwrap().kind(),
        ErrorKind::ResourceLimit
    );
    let mut b = base.clone();
    b[0x1b8] = 1;
    assert!(open_mem(&b, false).is_err(), "parent UUID");
}

#[test]
fn block_map_mutations_fail_cleanly() {
    let base = valid_images().remove(0);
    let map = 0x200;
    let mut cases = 0;
    for slot in 0..4 {
        for v in [
            0u32,
            1,
            2,
            3,
            4,
            5,
            100,
            0x7fff_ffff,
            0xffff_fffd,
            0xffff_fffe,
        ] {
            let mut b = base.clone();
            put32(&mut b, map + 4 * slot, v);
            try_all(&b);
            cases += 1;
        }
    }
    // Out of range: readable elsewhere, refused for writing, reported by check.
    let mut b = base.clone();
    put32(&mut b, map + 4, 100);
    assert!(open_mem(&b, true).is_err());
    let img = open_mem(&b, false).unwrap();
    let mut buf = [0u8; 16];
    assert!(img.read_at(&mut buf, 1 << 20).is_err());
    img.read_at(&mut buf, 1000).unwrap();
    assert_eq!(buf, [0xab; 16]);
    assert!(img.check(false).unwrap().corruptions > 0);
    // Two entries sharing a data block: refused for writing, reported by check.
    let first = u32::from_le_bytes(base[map..map + 4].try_into().unwrap());
    let mut b = base.clone();
    put32(&mut b, map + 4, first);
    let e = open_mem(&b, true).err().unwrap();
    assert!(e.to_string().contains("reuses"), "{e}");
    assert!(
        open_mem(&b, false)
            .unwrap()
            .check(false)
            .unwrap()
            .corruptions
            > 0
    );
    assert!(cases >= 40);
}

#[test]
fn truncation_at_many_points_fails_cleanly() {
    for base in valid_images() {
        let len = base.len();
        let mut points: Vec<usize> = (0..len).step_by(len / 89 + 1).collect();
        points.extend([0, 1, 0x43, 0x1ff, 0x200, 0x201, 0x3ff, 0x400, len - 1]);
        for cut in points {
            if let Some(e) = try_all(&base[..cut]) {
                assert!(
                    matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
                    "cut at {cut}: {e}"
                );
            }
        }
    }
}

#[test]
fn random_header_bytes_never_panic() {
    let base = valid_images().remove(0);
    let mut x = 0x2545_f491u32;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for _ in 0..200 {
        let mut b = base.clone();
        for _ in 0..4 {
            let at = 0x44 + (next() % (0x400 - 0x44)) as usize;
            b[at] = next() as u8;
        }
        try_all(&b);
    }
}
