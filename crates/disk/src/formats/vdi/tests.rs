//! Unit tests of the VDI driver on memory storage.

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::create::{write_layout, Plan};
use super::header::{ALLOCATED_FIELD, ZERO_BLOCK};
use super::image::open;
use crate::error::ErrorKind;
use crate::image::{BlockImage, ExtentKind};
use crate::open::{CreateOptions, OpenContext, Preallocation};
use crate::storage::{MemStorage, Storage};

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

fn new_image(size: u64, fixed: bool) -> (Shared, super::VdiImage) {
    let s = Shared(Arc::new(MemStorage::new(Vec::new(), 1 << 30)));
    let plan = Plan {
        size,
        fixed,
        prealloc: Preallocation::Off,
    };
    write_layout(&s, &plan).unwrap();
    let img = open(Box::new(s.clone()), &OpenContext::isolated(true)).unwrap();
    (s, img)
}

fn reopen(bytes: Vec<u8>) -> super::VdiImage {
    open(
        Box::new(MemStorage::read_only(bytes)),
        &OpenContext::isolated(false),
    )
    .unwrap()
}

fn read_all(img: &dyn BlockImage) -> Vec<u8> {
    let mut v = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut v, 0).unwrap();
    v
}

fn allocated_count(bytes: &[u8]) -> u32 {
    let at = ALLOCATED_FIELD as usize;
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn dynamic_allocates_in_order_and_counts_blocks() {
    let (s, img) = new_image(5 << 20, false);
    assert_eq!(img.info().subformat.as_deref(), Some("dynamic"));
    let e = img.block_status(0, 5 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Unallocated, 5 << 20));
    img.write_at(b"abc", (3 << 20) + 17).unwrap();
    img.write_at(&[9; 2 << 20], (1 << 20) - 5).unwrap();
    let bytes = s.0.contents();
    assert_eq!(allocated_count(&bytes), 4, "blocks 3, then 0, 1 and 2");
    let offset_data = 0x400;
    assert_eq!(bytes.len(), offset_data + (4 << 20));
    let entry =
        |b: usize| u32::from_le_bytes(bytes[0x200 + 4 * b..0x204 + 4 * b].try_into().unwrap());
    assert_eq!(
        [entry(0), entry(1), entry(2), entry(3), entry(4)],
        [1, 2, 3, 0, u32::MAX]
    );
    let again = reopen(bytes);
    let v = read_all(&again);
    assert_eq!(&v[(3 << 20) + 17..(3 << 20) + 20], b"abc");
    assert!(v[(1 << 20) - 5..(3 << 20) - 5].iter().all(|&x| x == 9));
    assert!(v[(3 << 20) - 5..(3 << 20) + 17].iter().all(|&x| x == 0));
    assert!(v[..(1 << 20) - 5].iter().all(|&x| x == 0));
    assert!(again.check(false).unwrap().is_clean());
    assert_eq!(again.check(false).unwrap().allocated_clusters, Some(4));
}

#[test]
fn random_operations_match_a_model() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for fixed in [false, true] {
        let size = (6 << 20) + 1536;
        let (s, img) = new_image(size, fixed);
        let mut model = vec![0u8; size as usize];
        for _ in 0..300 {
            let off = rng.gen_range(0..size - 1);
            let len = rng.gen_range(1..=(size - off).min(400_000));
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
        let again = reopen(s.0.contents());
        assert!(read_all(&again) == model, "static={fixed}");
        let mut at = 0;
        while at < size {
            let e = again.block_status(at, size - at).unwrap();
            if e.kind != ExtentKind::Data {
                assert!(model[at as usize..(at + e.length) as usize]
                    .iter()
                    .all(|&x| x == 0));
            }
            at += e.length;
        }
        assert!(again.check(false).unwrap().is_clean(), "static={fixed}");
    }
}

#[test]
fn concurrent_writers_allocate_each_block_once() {
    let (s, img) = new_image(8 << 20, false);
    let img = Arc::new(img);
    std::thread::scope(|sc| {
        for t in 0..8u64 {
            let img = img.clone();
            sc.spawn(move || {
                for k in 0..40u64 {
                    let off = (k * 8 + t) * 20_000;
                    img.write_at(&[t as u8 + 1; 20_000], off).unwrap();
                }
            });
        }
    });
    let bytes = s.0.contents();
    assert_eq!(allocated_count(&bytes), 7, "6.4 MB touches 7 blocks");
    let v = read_all(&reopen(bytes));
    for p in 0..320u64 {
        let piece = &v[(p * 20_000) as usize..((p + 1) * 20_000) as usize];
        assert!(piece.iter().all(|&x| x == (p % 8) as u8 + 1), "piece {p}");
    }
}

#[test]
fn zero_blocks_read_as_zeroes_and_map_as_zero() {
    let (s, img) = new_image(3 << 20, false);
    img.write_at(&[4; 100], 0).unwrap();
    drop(img);
    let mut bytes = s.0.contents();
    bytes[0x204..0x208].copy_from_slice(&ZERO_BLOCK.to_le_bytes());
    let img = reopen(bytes.clone());
    let e = img.block_status(1 << 20, 2 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Zero, 1 << 20));
    let mut b = [1u8; 8];
    img.read_at(&mut b, 1 << 20).unwrap();
    assert_eq!(b, [0; 8]);
    // Writing into a zero block allocates a fresh one.
    let w = Shared(Arc::new(MemStorage::new(bytes, 1 << 30)));
    let img = open(Box::new(w.clone()), &OpenContext::isolated(true)).unwrap();
    img.write_at(&[5; 10], (1 << 20) + 10).unwrap();
    let v = read_all(&reopen(w.0.contents()));
    assert!(v[1 << 20..(1 << 20) + 10].iter().all(|&x| x == 0));
    assert!(v[(1 << 20) + 10..(1 << 20) + 20].iter().all(|&x| x == 5));
    assert_eq!(&v[..100], &[4; 100]);
}

#[test]
fn interrupted_allocation_leaks_but_never_reuses_a_block() {
    let (s, img) = new_image(4 << 20, false);
    img.write_at(&[1; 512], 0).unwrap();
    drop(img);
    // As if a crash hit after the count was raised but before the map entry was written.
    let mut bytes = s.0.contents();
    bytes[ALLOCATED_FIELD as usize..ALLOCATED_FIELD as usize + 4]
        .copy_from_slice(&2u32.to_le_bytes());
    bytes.resize(bytes.len() + (1 << 20), 0xee);
    let r = reopen(bytes.clone()).check(false).unwrap();
    assert!(r.is_clean());
    assert_eq!(r.leaks, 1);
    let w = Shared(Arc::new(MemStorage::new(bytes, 1 << 30)));
    let img = open(Box::new(w.clone()), &OpenContext::isolated(true)).unwrap();
    img.write_at(&[2; 512], 2 << 20).unwrap();
    let v = read_all(&reopen(w.0.contents()));
    assert_eq!(&v[..512], &[1; 512]);
    assert_eq!(&v[2 << 20..(2 << 20) + 512], &[2; 512]);
    assert!(v[(2 << 20) + 512..3 << 20].iter().all(|&x| x == 0));
}

#[test]
fn read_only_and_options() {
    let (s, _img) = new_image(1 << 20, false);
    let ro = reopen(s.0.contents());
    assert_eq!(
        ro.write_at(&[1], 0).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    for (k, v) in [
        ("static", "maybe"),
        ("preallocation", "metadata"),
        ("subformat", "fixed"),
    ] {
        let mut o = CreateOptions::sized(1 << 20);
        o.options.insert(k.into(), v.into());
        assert!(super::create::plan(&o).is_err(), "{k}={v}");
    }
    let mut o = CreateOptions::sized(1000);
    o.options.insert("static".into(), "on".into());
    let p = super::create::plan(&o).unwrap();
    assert_eq!(p.size, 1024);
    assert!(p.fixed);
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

#[test]
fn a_crash_after_any_write_leaves_a_consistent_image() {
    let (s, img) = new_image(4 << 20, false);
    img.write_at(&[1; 4096], 0).unwrap();
    drop(img);
    let base = s.0.contents();
    let rec = Recorder(
        Shared(Arc::new(MemStorage::new(base.clone(), 1 << 30))),
        Arc::default(),
    );
    let img = open(Box::new(rec.clone()), &OpenContext::isolated(true)).unwrap();
    img.write_at(&[2; 1000], (2 << 20) + 700).unwrap();
    img.write_at(&[3; 512], 0).unwrap();
    let log = rec.1.lock().unwrap().clone();
    assert!(
        log.len() >= 4,
        "data, size, count, map, overwrite: {}",
        log.len()
    );
    for k in 0..=log.len() {
        let mut state = base.clone();
        for (at, op) in &log[..k] {
            match op {
                Some(d) => {
                    let end = *at as usize + d.len();
                    if state.len() < end {
                        state.resize(end, 0);
                    }
                    state[*at as usize..end].copy_from_slice(d);
                }
                None => state.resize(*at as usize, 0),
            }
        }
        let img = reopen(state);
        let mut b = vec![0u8; 1000];
        img.read_at(&mut b, (2 << 20) + 700).unwrap();
        assert!(
            b.iter().all(|&x| x == 0) || b.iter().all(|&x| x == 2),
            "step {k}"
        );
        let r = img.check(false).unwrap();
        assert!(r.is_clean(), "step {k}: {:?}", r.messages);
    }
}
