//! Hostile qcow2 images: header fields, table entries and truncations poked into valid
//! images must give an error or valid data, never a panic or a hang; a data write that
//! would land on metadata marks the image corrupt (like QEMU's iotest 060).

use std::io;
use std::path::Path;
use std::sync::Arc;

use paddock_disk::{
    create, open_storage, CreateOptions, ErrorKind, Format, MemStorage, OpenContext, Storage,
};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

/// Memory storage the test can still look at after the image took it.
#[derive(Debug, Clone)]
struct Shared(Arc<MemStorage>);

impl Storage for Shared {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A small valid image made by our writer: data, zeroes and compressed clusters.
fn base_image(dir: &Path, opts: &[(&str, &str)]) -> Vec<u8> {
    let path = dir.join("base.qcow2");
    let mut o = CreateOptions::sized(4 * MIB);
    for (k, v) in opts {
        o.options.insert(k.to_string(), v.to_string());
    }
    let img = create(&path, Format::Qcow2, &o).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i / 7) as u8).collect();
    img.write_at(&data, 1000).unwrap();
    img.write_zeroes(MIB, 200_000, false).unwrap();
    let cw = img.compressed().unwrap();
    let unit = cw.compressed_unit();
    let raw = vec![0x42u8; unit as usize];
    let c = cw.compress(&raw).unwrap();
    cw.write_compressed(2 * MIB, &raw, &c).unwrap();
    cw.write_compressed(2 * MIB + unit, &raw, &c).unwrap();
    img.finish().unwrap();
    drop(img);
    std::fs::read(&path).unwrap()
}

/// Opens `bytes` read-only and exercises everything a reader does; errors are fine.
fn poke_read(bytes: Vec<u8>) -> bool {
    let st = Box::new(MemStorage::read_only(bytes));
    let img = match open_storage(st, Some(Format::Qcow2), &OpenContext::isolated(false)) {
        Ok(i) => i,
        Err(_) => return false,
    };
    let _ = img.info();
    let size = img.virtual_size();
    let mut buf = vec![0u8; MIB as usize];
    // The start, and the end, of the disk.
    for at in [0, size.saturating_sub(MIB), size / 2] {
        let n = (size - at.min(size)).min(MIB) as usize;
        let _ = img.read_at(&mut buf[..n], at);
    }
    let mut at = 0;
    let mut steps = 0;
    while at < size && steps < 4096 {
        match img.block_status(at, size - at) {
            Ok(e) => {
                assert!(e.length > 0 && e.start == at, "{e:?}");
                at += e.length;
            }
            Err(_) => break,
        }
        steps += 1;
    }
    let _ = img.check(false);
    true
}

/// Opens `bytes` writable on memory and writes; errors are fine, panics are not.
fn poke_write(bytes: Vec<u8>) {
    let st = Box::new(MemStorage::new(bytes, 64 * MIB));
    let Ok(img) = open_storage(st, Some(Format::Qcow2), &OpenContext::isolated(true)) else {
        return;
    };
    let size = img.virtual_size();
    if size < MIB {
        return;
    }
    let _ = img.write_at(&[7u8; 70_000], 500);
    let _ = img.write_at(&[8u8; 4096], 2 * MIB);
    let _ = img.write_zeroes(0, size.min(3 * MIB), true);
    let _ = img.check(true);
    let _ = img.flush();
}

fn set(bytes: &mut [u8], at: usize, width: usize, v: u64) {
    if at + width <= bytes.len() {
        bytes[at..at + width].copy_from_slice(&v.to_be_bytes()[8 - width..]);
    }
}

#[test]
fn header_fields_poked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for opts in [
        &[][..],
        &[("compat", "0.10"), ("cluster_size", "512")][..],
        &[("compression_type", "zstd"), ("refcount_bits", "1")][..],
    ] {
        let base = base_image(dir.path(), opts);
        assert!(poke_read(base.clone()), "the unpoked image must open");
        let len = base.len() as u64;
        let fields: [(usize, usize); 18] = [
            (4, 4),
            (8, 8),
            (16, 4),
            (20, 4),
            (24, 8),
            (32, 4),
            (36, 4),
            (40, 8),
            (48, 8),
            (56, 4),
            (60, 4),
            (64, 8),
            (72, 8),
            (80, 8),
            (88, 8),
            (96, 4),
            (100, 4),
            (104, 1),
        ];
        let values = [
            0,
            1,
            7,
            0x200,
            0x10001,
            0xffff,
            0xffff_ffff,
            u64::MAX,
            u64::MAX / 2,
            1 << 40,
            len,
            len + 65536,
            65536,
            3 << 16,
        ];
        for (at, width) in fields {
            for v in values {
                let mut b = base.clone();
                set(&mut b, at, width, v);
                if poke_read(b.clone()) && cases % 3 == 0 {
                    poke_write(b);
                }
                cases += 1;
            }
        }
    }
    assert!(cases > 700);
}

#[test]
fn table_entries_poked() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), &[("cluster_size", "4096")]);
    let cs = 4096u64;
    let l1_off = be64(&base, 40) as usize;
    let rt_off = be64(&base, 48) as usize;
    let l2_off = (be64(&base, l1_off) & 0x00ff_ffff_ffff_fe00) as usize;
    let len = base.len() as u64;
    let targets = [
        (l1_off, "L1 entry 0"),
        (rt_off, "refcount table entry 0"),
        (l2_off, "L2 entry 0"),
        (l2_off + 8, "L2 entry 1"),
        (l2_off + 8 * 512, "L2 entry for 2 MiB (compressed)"),
    ];
    let values = [
        0,
        1,
        len + cs,
        (len + cs) | (1 << 63),
        0x1234 | (1 << 63),
        l1_off as u64 | (1 << 63),
        rt_off as u64 | (1 << 63),
        l2_off as u64 | (1 << 63),
        1 << 63,
        (1 << 62) | ((1u64 << 62) - 1),
        (1 << 62) | 0x200,
        (1 << 62) | (len - 10),
        u64::MAX,
        0x00ff_ffff_ffff_fe00,
        cs | 1,
    ];
    let mut cases = 0;
    for (at, _what) in targets {
        for v in values {
            let mut b = base.clone();
            set(&mut b, at, 8, v);
            poke_read(b.clone());
            poke_write(b);
            cases += 1;
        }
    }
    // Loops: the L2 table is the L1 table; the refcount block is the refcount table.
    let mut b = base.clone();
    set(&mut b, l1_off, 8, l1_off as u64 | (1 << 63));
    set(&mut b, rt_off, 8, rt_off as u64);
    poke_read(b.clone());
    poke_write(b);
    assert!(cases >= 75);
}

#[test]
fn truncations_and_random_flips() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), &[("cluster_size", "4096")]);
    let len = base.len();
    let mut points: Vec<usize> = (0..150).map(|i| i * len / 150).collect();
    points.extend([
        0,
        1,
        71,
        72,
        103,
        104,
        111,
        112,
        4095,
        4096,
        8191,
        8192,
        12288,
        len - 1,
    ]);
    for p in points {
        let b = base[..p.min(len)].to_vec();
        if poke_read(b.clone()) {
            poke_write(b);
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(60);
    for _ in 0..150 {
        let mut b = base.clone();
        for _ in 0..rng.gen_range(1..8) {
            let at = rng.gen_range(0..(5 * 4096).min(len));
            b[at] ^= 1 << rng.gen_range(0..8);
        }
        poke_read(b);
    }
}

#[test]
fn unknown_feature_bits_and_corrupt_flag() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), &[]);
    let open_ro = |b: Vec<u8>| {
        open_storage(
            Box::new(MemStorage::read_only(b)),
            Some(Format::Qcow2),
            &OpenContext::isolated(false),
        )
    };
    let mut b = base.clone();
    set(&mut b, 72, 8, 1 << 17);
    let err = open_ro(b).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("bit 17"), "{err}");
    let mut b = base.clone();
    set(&mut b, 72, 8, 1 << 2);
    let err = open_ro(b).err().unwrap();
    assert_eq!(err.to_string(), "external data files are not supported");
    let mut b = base.clone();
    set(&mut b, 72, 8, 1 << 1);
    assert!(open_ro(b.clone()).unwrap().info().corrupt);
    let err = open_storage(
        Box::new(MemStorage::new(b, 64 * MIB)),
        Some(Format::Qcow2),
        &OpenContext::isolated(true),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("read-only"), "{err}");
}

/// iotest 060: an L2 entry pointing at the L1 table; writing through it must fail, mark
/// the image corrupt, and leave the L1 table untouched.
#[test]
fn write_over_metadata_marks_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = base_image(dir.path(), &[("cluster_size", "4096")]);
    let l1_off = be64(&base, 40) as usize;
    let l2_off = (be64(&base, l1_off) & 0x00ff_ffff_ffff_fe00) as usize;
    // Guest cluster 0 (allocated data) now "lives" in the L1 table.
    set(&mut base, l2_off, 8, l1_off as u64 | (1 << 63));
    let l1_before = base[l1_off..l1_off + 4096].to_vec();
    let mem = Arc::new(MemStorage::new(base, 64 * MIB));
    let img = open_storage(
        Box::new(Shared(mem.clone())),
        Some(Format::Qcow2),
        &OpenContext::isolated(true),
    )
    .unwrap();
    let err = img.write_at(&[0xffu8; 512], 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("L1"), "{err}");
    assert!(
        img.write_at(&[1u8; 512], 3 * MIB).is_err(),
        "further writes refused"
    );
    assert!(img.info().corrupt);
    drop(img);
    let after = mem.contents();
    assert_eq!(&after[l1_off..l1_off + 4096], &l1_before[..]);
    assert_eq!(be64(&after, 72) & 2, 2, "corrupt bit set on disk");
    let report = open_storage(
        Box::new(MemStorage::read_only(after)),
        Some(Format::Qcow2),
        &OpenContext::isolated(false),
    )
    .unwrap()
    .check(false)
    .unwrap();
    assert!(report.corruptions > 0, "{report:?}");
}

/// Several header fields poked at once with values drawn from a hostile set.
#[test]
fn header_field_combinations() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), &[("cluster_size", "4096")]);
    let len = base.len() as u64;
    let fields: [(usize, usize); 12] = [
        (8, 8),
        (16, 4),
        (24, 8),
        (36, 4),
        (40, 8),
        (48, 8),
        (56, 4),
        (60, 4),
        (64, 8),
        (72, 8),
        (96, 4),
        (100, 4),
    ];
    let values = [
        0,
        1,
        4096,
        8192,
        0xfff,
        u64::MAX,
        u64::MAX - 4095,
        1 << 56,
        len,
        len - 4096,
        100,
        1023,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(80);
    let mut opened = 0;
    for _ in 0..300 {
        let mut b = base.clone();
        for _ in 0..rng.gen_range(2..5) {
            let (at, w) = fields[rng.gen_range(0..fields.len())];
            set(&mut b, at, w, values[rng.gen_range(0..values.len())]);
        }
        if poke_read(b.clone()) {
            opened += 1;
            poke_write(b);
        }
    }
    assert!(opened < 300, "some combinations must be refused");
}
