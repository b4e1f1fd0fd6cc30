//! Unit tests on memory storage: the write paths against a model, concurrency, streams,
//! descriptors, compressed-grain limits, and check.

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::create::{build_stream, test_descriptor, write_sparse};
use super::descriptor::{Access, Descriptor, ExtentType};
use super::sparse::{deflate_grain, inflate_grain};
use super::*;
use crate::error::ErrorKind;
use crate::image::{BlockImage, ExtentKind};
use crate::open::Preallocation;
use crate::storage::MemStorage;

/// Memory storage that a test can keep a handle on after the image takes it.
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
        self.0.sync()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
}

fn mem() -> Shared {
    Shared(Arc::new(MemStorage::new(Vec::new(), 256 << 20)))
}

fn sparse_image(sectors: u64, zeroed: bool) -> (VmdkImage, Shared) {
    let m = mem();
    let desc = test_descriptor("monolithicSparse", sectors);
    write_sparse(
        &m,
        sectors,
        Some(&desc.render()),
        zeroed,
        Preallocation::Off,
    )
    .unwrap();
    let img = open_image(Box::new(m.clone()), &OpenContext::isolated(true)).unwrap();
    (img, m)
}

fn reopen(m: &Shared, writable: bool) -> VmdkImage {
    let bytes = m.0.contents();
    let s: Box<dyn Storage> = if writable {
        Box::new(MemStorage::new(bytes, 256 << 20))
    } else {
        Box::new(MemStorage::read_only(bytes))
    };
    open_image(s, &OpenContext::isolated(writable)).unwrap()
}

fn read_all(img: &dyn BlockImage) -> Vec<u8> {
    let mut v = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut v, 0).unwrap();
    v
}

#[test]
fn random_operations_match_a_model() {
    for zeroed in [false, true] {
        let size = 3 << 20;
        let (img, m) = sparse_image(size / 512 + 3, zeroed);
        let size = img.virtual_size() as usize;
        let mut model = vec![0u8; size];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7 + zeroed as u64);
        for step in 0..300 {
            let off = rng.gen_range(0..size);
            let len = rng.gen_range(1..=(size - off).min(200_000));
            match rng.gen_range(0..5) {
                0..=2 => {
                    let v: u8 = rng.gen();
                    let buf = vec![v; len];
                    img.write_at(&buf, off as u64).unwrap();
                    model[off..off + len].fill(v);
                }
                3 => {
                    img.write_zeroes(off as u64, len as u64, rng.gen()).unwrap();
                    model[off..off + len].fill(0);
                }
                _ => {
                    img.discard(off as u64, len as u64).unwrap();
                    model[off..off + len].fill(0);
                }
            }
            if step % 50 == 0 {
                assert!(read_all(&img) == model, "step {step}");
            }
        }
        assert!(read_all(&img) == model);
        let report = img.check(false).unwrap();
        assert!(report.is_clean(), "{:?}", report.messages);
        drop(img);
        let again = reopen(&m, false);
        assert!(read_all(&again) == model);
        // block_status never calls a data run zero or unallocated.
        let mut at = 0u64;
        while at < again.virtual_size() {
            let e = again.block_status(at, u64::MAX).unwrap();
            if e.kind != ExtentKind::Data {
                assert!(model[at as usize..(at + e.length) as usize]
                    .iter()
                    .all(|&b| b == 0));
            }
            at += e.length;
        }
    }
}

#[test]
fn zeroed_grains_report_zero_and_unallocated_is_unallocated() {
    let (img, _) = sparse_image(4096, true);
    assert_eq!(
        img.block_status(0, 1 << 20).unwrap().kind,
        ExtentKind::Unallocated
    );
    img.write_at(&[9u8; 65536 * 2], 0).unwrap();
    let e = img.block_status(0, 1 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Data, 131072));
    assert!(e.host_offset.is_some());
    img.write_zeroes(0, 65536, false).unwrap();
    let e = img.block_status(0, 1 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Zero, 65536));
}

#[test]
fn concurrent_writers_share_grains_safely() {
    let (img, m) = sparse_image(8192, false);
    let img = Arc::new(img);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    // Each thread owns one 512-byte sector of every 4 KiB block.
                    let off = i * 4096 * 8 + u64::from(t) * 512;
                    img.write_at(&[t + 1; 512], off).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let data = read_all(img.as_ref());
    for i in 0..64usize {
        for t in 0..8usize {
            let off = i * 4096 * 8 + t * 512;
            assert!(data[off..off + 512].iter().all(|&b| b == t as u8 + 1));
        }
    }
    assert!(img.check(false).unwrap().is_clean());
    drop(img);
    assert!(read_all(&reopen(&m, false)) == data);
}

#[test]
fn read_only_open_refuses_writes() {
    let (img, m) = sparse_image(2048, false);
    img.write_at(&[1; 4096], 0).unwrap();
    drop(img);
    let before = m.0.contents();
    let ro = reopen(&m, false);
    assert!(ro.is_read_only());
    assert_eq!(
        ro.write_at(&[2; 10], 0).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(
        ro.write_zeroes(0, 512, true).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(m.0.contents(), before);
}

#[test]
fn stream_round_trip_and_ordering() {
    let m = mem();
    let sectors = 4096 + 7;
    let img = build_stream(
        Box::new(m.clone()),
        "s.vmdk",
        sectors,
        test_descriptor("streamOptimized", sectors),
    )
    .unwrap();
    let mut model = vec![0u8; (sectors * 512) as usize];
    let err = img.read_at(&mut [0u8; 10], 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    for (off, len, v) in [(100u64, 1000usize, 1u8), (1200, 70_000, 2), (300_000, 5, 3)] {
        img.write_at(&vec![v; len], off).unwrap();
        model[off as usize..off as usize + len].fill(v);
    }
    // Same grain as the pending one is fine; an earlier finished grain is not.
    img.write_at(&[4; 10], 300_010).unwrap();
    model[300_010..300_020].fill(4);
    let err = img.write_at(&[5; 10], 0).unwrap_err();
    assert!(err.to_string().contains("already written"), "{err}");
    let tail = model.len() - 700;
    img.write_at(&[6; 700], tail as u64).unwrap();
    model[tail..].fill(6);
    img.finish().unwrap();
    assert!(read_all(&img) == model);
    drop(img);
    let again = reopen(&m, false);
    assert_eq!(again.info().subformat.as_deref(), Some("streamOptimized"));
    assert!(read_all(&again) == model);
    assert!(again.check(false).unwrap().is_clean());
    let e = again.block_status(0, u64::MAX).unwrap();
    assert_eq!((e.kind, e.host_offset), (ExtentKind::Data, None));
    // Writing a finished stream image through a new handle is refused.
    let rw = reopen(&m, true);
    assert!(rw.write_at(&[1], 0).is_err());
}

#[test]
fn inflate_refuses_bombs_and_garbage() {
    let g = 65536;
    let grain = deflate_grain(&[7u8; 1000], g, Default::default()).unwrap();
    let out = inflate_grain(&grain, g).unwrap();
    assert_eq!(out.len(), g);
    assert!(out[..1000].iter().all(|&b| b == 7) && out[1000..].iter().all(|&b| b == 0));
    let bomb = deflate_grain(&vec![0u8; 4 * g], 4 * g, Default::default()).unwrap();
    let err = inflate_grain(&bomb, g).unwrap_err();
    assert!(err.to_string().contains("beyond the grain size"), "{err}");
    assert!(inflate_grain(b"not zlib at all", g).is_err());
    let short = deflate_grain(&[1u8; 10], 10, Default::default()).unwrap();
    assert_eq!(inflate_grain(&short, g).unwrap().len(), g);
}

#[test]
fn descriptor_parses_extent_lines() {
    let text = b"# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\n\
        createType=\"twoGbMaxExtentFlat\"\nparentFileNameHint=\"base dir/b.vmdk\"\n\
        RW 100 FLAT \"a b-f001.vmdk\" 20\nRDONLY 50 SPARSE \"s.vmdk\"\nNOACCESS 10 ZERO\n\
        ddb.adapterType = \"lsilogic\"\n\0garbage after NUL";
    let d = Descriptor::parse(text).unwrap();
    assert_eq!((d.cid, d.parent_cid), (0xabcd, 0xffff_ffff));
    assert_eq!(d.create_type, "twoGbMaxExtentFlat");
    assert_eq!(d.parent_hint.as_deref(), Some("base dir/b.vmdk"));
    assert_eq!(d.extents.len(), 3);
    assert_eq!(d.extents[0].file.as_deref(), Some("a b-f001.vmdk"));
    assert_eq!(
        (d.extents[0].offset, d.extents[0].kind),
        (20, ExtentType::Flat)
    );
    assert_eq!(d.extents[1].access, Access::ReadOnly);
    assert_eq!(
        (d.extents[2].kind, d.extents[2].file.clone()),
        (ExtentType::Zero, None)
    );
    assert_eq!(d.ddb("ddb.adapterType"), Some("lsilogic"));
    assert_eq!(d.total_sectors().unwrap(), 160);
    let again = Descriptor::parse(d.render().as_bytes()).unwrap();
    assert_eq!(again, d);
    for bad in [
        &b"RW x SPARSE \"a\""[..],
        b"RW 10 SPARSE a.vmdk",
        b"RW 10 SPARSE \"a.vmdk",
        b"RW 10 BOGUS \"a\"",
        b"RW 10 FLAT \"a\" nope",
        b"CID=zz",
    ] {
        assert_eq!(
            Descriptor::parse(bad).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }
    assert_eq!(
        Descriptor::parse(b"RW 10 VMFSRDM \"a\"")
            .unwrap_err()
            .kind(),
        ErrorKind::Unsupported
    );
    let big = vec![b'#'; (1 << 20) + 1];
    assert_eq!(
        Descriptor::parse(&big).unwrap_err().kind(),
        ErrorKind::ResourceLimit
    );
    let overflow = b"RW 18446744073709551615 ZERO\nRW 2 ZERO\n";
    assert!(Descriptor::parse(overflow)
        .unwrap()
        .total_sectors()
        .is_err());
}

#[test]
fn extent_names_are_confined() {
    for ok in ["a.vmdk", "sub/a.vmdk", "sub/../a.vmdk", "./a.vmdk"] {
        assert!(check_extent_name(ok).is_ok(), "{ok}");
    }
    for bad in ["../x", "/etc/passwd", "sub/../../x", "a/../../../b"] {
        assert_eq!(
            check_extent_name(bad).unwrap_err().kind(),
            ErrorKind::PathNotAllowed
        );
    }
    // A memory image cannot reach any file at all.
    let text = b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"x.vmdk\" 0\n";
    let s = Box::new(MemStorage::read_only(text.to_vec()));
    let err = open_image(s, &OpenContext::isolated(false)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::PathNotAllowed);
}

#[test]
fn check_finds_grains_in_metadata_and_writes_refuse_them() {
    let (img, m) = sparse_image(4096, false);
    img.write_at(&[1; 512], 0).unwrap();
    let Body::Sparse(e) = &img.pieces[0].body else {
        panic!("sparse")
    };
    let gd = e.hdr.gd_offset;
    let gt0 = e.lock().gd[0];
    drop(img);
    // Point grain 1 at the grain directory.
    m.0.write_all_at(&(gd as u32).to_le_bytes(), u64::from(gt0) * 512 + 4)
        .unwrap();
    let img = reopen(&m, true);
    let report = img.check(false).unwrap();
    assert!(!report.is_clean());
    assert!(
        report
            .messages
            .iter()
            .any(|s| s.contains("overlaps metadata")),
        "{:?}",
        report.messages
    );
    let err = img.write_at(&[2; 512], 65536).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn info_reports_qemu_keys() {
    let (img, _) = sparse_image(2048, false);
    let info = img.info();
    assert_eq!(info.subformat.as_deref(), Some("monolithicSparse"));
    assert_eq!(info.cluster_size, Some(65536));
    assert_eq!(info.specific["parent-cid"], 0xffff_ffffu32);
    let ext = &info.specific["extents"][0];
    assert_eq!(ext["virtual-size"], 2048 * 512);
    assert_eq!(ext["format"], "");
    assert!(ext.get("compressed").is_none());
}
