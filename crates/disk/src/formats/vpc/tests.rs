//! Unit tests of the VHD driver on memory storage.

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::create::{write_layout, Plan};
use super::footer::{DiskType, SECTOR};
use super::parse;
use crate::error::ErrorKind;
use crate::image::{BlockImage, ExtentKind};
use crate::open::{CreateOptions, OpenContext, Preallocation};
use crate::storage::{MemStorage, Storage};

/// Memory storage the test keeps a handle on while the image owns a clone.
#[derive(Debug, Clone)]
struct Shared(Arc<MemStorage>);

impl Storage for Shared {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
}

fn plan(disk_type: DiskType, size: u64, force_size: bool) -> Plan {
    Plan {
        disk_type,
        size,
        force_size,
        prealloc: Preallocation::Off,
        parent: None,
    }
}

fn new_image(disk_type: DiskType, size: u64) -> (Shared, super::VpcImage) {
    let s = Shared(Arc::new(MemStorage::new(Vec::new(), 1 << 30)));
    write_layout(&s, &plan(disk_type, size, true)).unwrap();
    let img = parse::open(Box::new(s.clone()), &OpenContext::isolated(true)).unwrap();
    (s, img)
}

fn reopen(s: &Shared) -> super::VpcImage {
    let ro = MemStorage::read_only(s.0.contents());
    parse::open(Box::new(ro), &OpenContext::isolated(false)).unwrap()
}

fn read_all(img: &dyn BlockImage) -> Vec<u8> {
    let mut v = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut v, 0).unwrap();
    v
}

#[test]
fn dynamic_writes_read_back_and_map_by_sector() {
    let (s, img) = new_image(DiskType::Dynamic, 6 << 20);
    assert_eq!(img.virtual_size(), 6 << 20);
    assert_eq!(img.info().cluster_size, Some(2 << 20));
    let e = img.block_status(0, 6 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Unallocated, 6 << 20));
    // A partial-sector write in the middle of block 1.
    img.write_at(b"hello", (2 << 20) + 1000).unwrap();
    let mut b = vec![0u8; 600];
    img.read_at(&mut b, (2 << 20) + 700).unwrap();
    assert_eq!(&b[300..305], b"hello");
    assert!(b[..300].iter().chain(&b[305..]).all(|&x| x == 0));
    let e = img.block_status(2 << 20, 4 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Unallocated, 512));
    let e = img.block_status((2 << 20) + 512, 4 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Data, 512), "sector 1 only");
    assert!(e.host_offset.is_some());
    // A write spanning blocks 0 and 1.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    img.write_at(&data, (2 << 20) - 4096).unwrap();
    let mut back = vec![0u8; 8192];
    img.read_at(&mut back, (2 << 20) - 4096).unwrap();
    assert_eq!(back, data);
    // The file ends with a footer equal to the copy at offset 0, and reopens the same.
    let bytes = s.0.contents();
    assert_eq!(bytes[..512], bytes[bytes.len() - 512..]);
    let again = reopen(&s);
    assert_eq!(read_all(&again), read_all(&img));
    assert!(img.check(false).unwrap().is_clean());
}

#[test]
fn zeroes_and_discard_clear_sectors() {
    let (_s, img) = new_image(DiskType::Dynamic, 4 << 20);
    img.write_at(&vec![7u8; 1 << 20], 0).unwrap();
    img.write_zeroes(4096, 8192, true).unwrap();
    let e = img.block_status(4096, 1 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Unallocated, 8192));
    img.write_zeroes(100, 10, false).unwrap();
    img.discard(20_000, 700).unwrap();
    let v = read_all(&img);
    assert!(v[100..110].iter().all(|&x| x == 0));
    assert!(v[4096..12288].iter().all(|&x| x == 0));
    assert!(v[20_000..20_700].iter().all(|&x| x == 0));
    assert_eq!(v[99], 7);
    assert_eq!(v[110], 7);
    assert_eq!(v[12288], 7);
    assert_eq!(v[20_700], 7);
}

#[test]
fn random_operations_match_a_model() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for disk_type in [DiskType::Dynamic, DiskType::Fixed] {
        let size = 5 << 20;
        let (s, img) = new_image(disk_type, size);
        let mut model = vec![0u8; size as usize];
        for _ in 0..300 {
            let off = rng.gen_range(0..size - 1);
            let len = rng.gen_range(1..=(size - off).min(300_000));
            match rng.gen_range(0..4) {
                0 | 1 => {
                    let fill: u8 = rng.gen_range(1..=255);
                    let buf: Vec<u8> = (0..len).map(|i| fill ^ (i as u8)).collect();
                    img.write_at(&buf, off).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&buf);
                }
                2 => {
                    img.write_zeroes(off, len, rng.gen()).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                _ => {
                    let mut b = vec![0u8; len as usize];
                    img.read_at(&mut b, off).unwrap();
                    assert_eq!(b, model[off as usize..(off + len) as usize]);
                }
            }
        }
        assert!(read_all(&img) == model, "{disk_type:?}");
        assert!(read_all(&reopen(&s)) == model, "{disk_type:?} reopened");
        // block_status covers the disk exactly; its data extents hold all non-zero bytes.
        let mut at = 0;
        while at < size {
            let e = img.block_status(at, size - at).unwrap();
            assert_eq!(e.start, at);
            if e.kind != ExtentKind::Data {
                let r = &model[at as usize..(at + e.length) as usize];
                assert!(r.iter().all(|&x| x == 0), "{disk_type:?} at {at}");
            }
            at += e.length;
        }
        assert!(img.check(false).unwrap().is_clean());
    }
}

#[test]
fn concurrent_writers_in_shared_blocks() {
    let (s, img) = new_image(DiskType::Dynamic, 8 << 20);
    let img = Arc::new(img);
    std::thread::scope(|sc| {
        for t in 0..8u64 {
            let img = img.clone();
            sc.spawn(move || {
                // Thread t writes every 8th 3000-byte piece: pieces interleave in blocks.
                for k in 0..40u64 {
                    let off = (k * 8 + t) * 3000;
                    img.write_at(&[t as u8 + 1; 3000], off).unwrap();
                }
            });
        }
    });
    let v = read_all(&reopen(&s));
    for p in 0..320u64 {
        let piece = &v[(p * 3000) as usize..((p + 1) * 3000) as usize];
        assert!(piece.iter().all(|&x| x == (p % 8) as u8 + 1), "piece {p}");
    }
}

#[test]
fn read_only_open_never_writes_and_refuses_writes() {
    let (s, img) = new_image(DiskType::Dynamic, 4 << 20);
    img.write_at(&[1; 4096], 0).unwrap();
    let ro = reopen(&s);
    let e = ro.write_at(&[2; 512], 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert!(ro.write_zeroes(0, 512, true).is_err());
}

#[test]
fn missing_trailing_footer_is_read_from_the_copy_and_repaired() {
    let (s, img) = new_image(DiskType::Dynamic, 4 << 20);
    img.write_at(&[5; 4096], 2 << 20).unwrap();
    drop(img);
    let mut bytes = s.0.contents();
    bytes.truncate(bytes.len() - 512);
    let s2 = Shared(Arc::new(MemStorage::new(bytes, 1 << 30)));
    let img = parse::open(Box::new(s2.clone()), &OpenContext::isolated(true)).unwrap();
    let mut b = [0u8; 16];
    img.read_at(&mut b, 2 << 20).unwrap();
    assert_eq!(b, [5; 16]);
    let r = img.check(false).unwrap();
    assert_eq!(r.corruptions, 1, "{:?}", r.messages);
    let r = img.check(true).unwrap();
    assert_eq!(r.corruptions_fixed, 1);
    assert!(img.check(false).unwrap().is_clean());
    // A write after the repair allocates past the footer and keeps the data.
    img.write_at(&[6; 512], 0).unwrap();
    let again = reopen(&s2);
    again.read_at(&mut b, 2 << 20).unwrap();
    assert_eq!(b, [5; 16]);
    again.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [6; 16]);
}

#[test]
fn fixed_image_is_data_then_footer() {
    let (s, img) = new_image(DiskType::Fixed, 1 << 20);
    img.write_at(b"abc", 10).unwrap();
    let bytes = s.0.contents();
    assert_eq!(bytes.len() as u64, (1 << 20) + SECTOR);
    assert_eq!(&bytes[10..13], b"abc");
    assert_eq!(&bytes[1 << 20..(1 << 20) + 8], b"conectix");
    assert_eq!(img.info().subformat.as_deref(), Some("fixed"));
    assert_eq!(img.info().cluster_size, None);
}

#[test]
fn chs_rounding_applies_without_force_size() {
    let s = Shared(Arc::new(MemStorage::new(Vec::new(), 1 << 30)));
    write_layout(&s, &plan(DiskType::Dynamic, 100 << 20, false)).unwrap();
    let img = parse::open(Box::new(s), &OpenContext::isolated(false)).unwrap();
    assert_eq!(img.virtual_size(), 104_865_792);
    assert_eq!(img.info().specific["creator-app"], "qemu");
}

#[test]
fn differencing_disk_reads_parent_and_writes_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let top = dir.path().join("top.vhd");
    let mut o = CreateOptions::sized(4 << 20);
    o.options.insert("force_size".into(), "on".into());
    let b = super::create::create(&base, &o).unwrap();
    b.write_at(&[0xaa; 8192], 0).unwrap();
    b.write_at(&[0xbb; 4096], 3 << 20).unwrap();
    b.flush().unwrap();
    drop(b);
    let mut o = CreateOptions::sized(0);
    o.backing_file = Some("base.vhd".into());
    let t = crate::open::create(&top, crate::Format::Vpc, &o).unwrap();
    assert_eq!(t.virtual_size(), 4 << 20);
    assert_eq!(t.info().backing_file.as_deref(), Some("base.vhd"));
    t.write_at(&[0xcc; 100], 4000).unwrap();
    t.flush().unwrap();
    drop(t);
    let t = crate::open::open(&top, &crate::OpenOptions::read(None)).unwrap();
    let mut v = vec![0u8; 8192];
    t.read_at(&mut v, 0).unwrap();
    assert!(v[..4000].iter().all(|&x| x == 0xaa));
    assert!(v[4000..4100].iter().all(|&x| x == 0xcc));
    assert!(
        v[4100..].iter().all(|&x| x == 0xaa),
        "rest of the sector from the parent"
    );
    let e = t.block_status(0, 1 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Unallocated, 3584));
    let mut w = [0u8; 16];
    t.read_at(&mut w, 3 << 20).unwrap();
    assert_eq!(w, [0xbb; 16]);
    // Zeroes hide the parent; discard shows it again.
    let t = crate::open::open(&top, &crate::OpenOptions::write(None)).unwrap();
    t.write_zeroes(0, 1024, true).unwrap();
    t.read_at(&mut w, 0).unwrap();
    assert_eq!(w, [0; 16]);
    t.discard(0, 1024).unwrap();
    t.read_at(&mut w, 0).unwrap();
    assert_eq!(w, [0xaa; 16]);
    // A parent that is not allowed is refused, as is a parent with another UUID.
    let mut opts = crate::OpenOptions::read(None);
    opts.allow_backing = false;
    let e = crate::open::open(&top, &opts).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::PathNotAllowed);
    let b = super::create::create(&base, &CreateOptions::sized(4 << 20)).unwrap();
    drop(b);
    let e = crate::open::open(&top, &crate::OpenOptions::read(None))
        .err()
        .unwrap();
    assert!(e.to_string().contains("UUID"), "{e}");
}

#[test]
fn create_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.vhd");
    for (k, v) in [
        ("subformat", "sparse"),
        ("cluster_size", "65536"),
        ("force_size", "maybe"),
        ("preallocation", "metadata"),
    ] {
        let mut o = CreateOptions::sized(1 << 20);
        o.options.insert(k.into(), v.into());
        assert!(super::create::create(&p, &o).is_err(), "{k}={v}");
    }
    let e = super::create::create(&p, &CreateOptions::sized(2041 << 30))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// Storage that records every write and resize, so a test can rebuild the file as a crash
/// after any of them would leave it.
#[derive(Debug, Clone)]
struct Recorder(Shared, Arc<std::sync::Mutex<Vec<Op>>>);

/// A recorded write (offset, bytes) or resize (length, None).
type Op = (u64, Option<Vec<u8>>);

impl Storage for Recorder {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.1.lock().unwrap().push((offset, Some(buf.to_vec())));
        self.0.write_all_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.1.lock().unwrap().push((len, None));
        self.0.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        false
    }
}

fn replay(base: &[u8], log: &[Op]) -> Vec<u8> {
    let mut v = base.to_vec();
    for (at, op) in log {
        match op {
            Some(d) => {
                let end = *at as usize + d.len();
                if v.len() < end {
                    v.resize(end, 0);
                }
                v[*at as usize..end].copy_from_slice(d);
            }
            None => v.resize(*at as usize, 0),
        }
    }
    v
}

#[test]
fn a_crash_after_any_write_leaves_a_consistent_image() {
    let (s, img) = new_image(DiskType::Dynamic, 6 << 20);
    img.write_at(&[1; 4096], 0).unwrap();
    drop(img);
    let base = s.0.contents();
    let rec = Recorder(
        Shared(Arc::new(MemStorage::new(base.clone(), 1 << 30))),
        Arc::default(),
    );
    let img = parse::open(Box::new(rec.clone()), &OpenContext::isolated(true)).unwrap();
    img.write_at(&[2; 1000], (2 << 20) + 700).unwrap();
    img.write_at(&[3; 512], 0).unwrap();
    let log = rec.1.lock().unwrap().clone();
    assert!(
        log.len() >= 5,
        "footer, data, bitmap, BAT, overwrite: {}",
        log.len()
    );
    for k in 0..=log.len() {
        let state = replay(&base, &log[..k]);
        assert_eq!(
            state[state.len() - 512..],
            state[..512],
            "footer at end, step {k}"
        );
        let img = reopen(&Shared(Arc::new(MemStorage::new(state, 1 << 30))));
        let mut b = vec![0u8; 1000];
        img.read_at(&mut b, (2 << 20) + 700).unwrap();
        assert!(
            b.iter().all(|&x| x == 0) || b.iter().all(|&x| x == 2),
            "step {k}"
        );
        let mut b = vec![0u8; 512];
        img.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 1) || b.iter().all(|&x| x == 3));
        let r = img.check(false).unwrap();
        assert!(r.is_clean(), "step {k}: {:?}", r.messages);
    }
}
