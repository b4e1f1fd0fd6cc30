//! Unit tests of the qcow2 driver on memory storage.

use std::sync::Arc;

use super::create::create_in;
use super::*;
use crate::image::ExtentKind;
use crate::storage::MemStorage;

const MIB: u64 = 1 << 20;

/// Memory storage shared with the test, so the bytes can be inspected and reopened.
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
        false
    }
}

fn mem_image(opts: &[(&str, &str)], size: u64) -> (Qcow2Image, Arc<MemStorage>) {
    let mut o = CreateOptions::sized(size);
    for (k, v) in opts {
        o.options.insert(k.to_string(), v.to_string());
    }
    let mem = Arc::new(MemStorage::new(Vec::new(), 1 << 30));
    let img = create_in(Box::new(Shared(mem.clone())), &o).unwrap();
    (img, mem)
}

fn reopen(mem: &Arc<MemStorage>, writable: bool) -> Result<Qcow2Image> {
    Qcow2Image::open(
        Box::new(Shared(mem.clone())),
        &OpenContext::isolated(writable),
    )
}

fn assert_clean(img: &Qcow2Image, what: &str) {
    let r = img.check(false).unwrap();
    assert!(
        r.is_clean() && r.leaks == 0 && r.corruptions == 0,
        "{what}: {r:?}"
    );
}

fn read_all(img: &dyn BlockImage) -> Vec<u8> {
    let mut b = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut b, 0).unwrap();
    b
}

#[test]
fn write_read_round_trip_every_width_and_cluster_size() {
    for (rb, cs) in [
        ("1", "512"),
        ("2", "4096"),
        ("4", "65536"),
        ("8", "512"),
        ("16", "2M"),
        ("32", "4096"),
        ("64", "65536"),
    ] {
        let (img, mem) = mem_image(&[("refcount_bits", rb), ("cluster_size", cs)], 5 * MIB);
        let data: Vec<u8> = (0..1_300_000u32).map(|i| (i % 251) as u8).collect();
        img.write_at(&data, 12345).unwrap();
        img.write_at(&data[..1000], 12345 + 700_000).unwrap();
        let mut model = vec![0u8; 5 * MIB as usize];
        model[12345..12345 + data.len()].copy_from_slice(&data);
        model[712_345..713_345].copy_from_slice(&data[..1000]);
        assert_eq!(read_all(&img), model, "rb {rb} cs {cs}");
        img.finish().unwrap();
        drop(img);
        let img = reopen(&mem, false).unwrap();
        assert_eq!(read_all(&img), model);
        assert_clean(&img, &format!("rb {rb} cs {cs}"));
    }
}

#[test]
fn zeroes_and_discard_v2_and_v3() {
    for compat in ["0.10", "1.1"] {
        let (img, _) = mem_image(&[("compat", compat), ("cluster_size", "4096")], 2 * MIB);
        img.write_at(&[5u8; 100_000], 0).unwrap();
        // Keep-allocation zeroing (v3: zero flag on the allocated cluster).
        img.write_zeroes(8192, 8192, false).unwrap();
        let e = img.block_status(8192, 8192).unwrap();
        let want = if compat == "1.1" {
            ExtentKind::Zero
        } else {
            ExtentKind::Unallocated
        };
        assert_eq!(e.kind, want, "{compat}");
        // A write into a zeroed cluster reads back with zeroes around it.
        img.write_at(&[6u8; 10], 8200).unwrap();
        let mut b = vec![0u8; 8192];
        img.read_at(&mut b, 8192).unwrap();
        assert!(b[..8].iter().all(|&x| x == 0) && b[8..18].iter().all(|&x| x == 6));
        assert!(b[18..].iter().all(|&x| x == 0));
        img.discard(40_000, 50_000).unwrap();
        img.read_at(&mut b, 49152).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        let mut b = vec![0u8; 1];
        img.read_at(&mut b, 40_000).unwrap();
        assert_eq!(b[0], 0, "partial clusters of a discard read as zeroes too");
        img.flush().unwrap();
        assert_clean(&img, compat);
    }
}

#[test]
fn compressed_clusters_pack_and_rewrite() {
    for ct in ["zlib", "zstd"] {
        let (img, _) = mem_image(&[("compression_type", ct)], 4 * MIB);
        let cw = img.compressed().unwrap();
        let unit = cw.compressed_unit();
        for i in 0..8u64 {
            let raw: Vec<u8> = (0..unit)
                .map(|j| ((j / 100) as u8).wrapping_add(i as u8))
                .collect();
            let c = cw.compress(&raw).unwrap();
            assert!((c.len() as u64) < unit / 4);
            cw.write_compressed(i * unit, &raw, &c).unwrap();
        }
        // Eight small blobs share one host cluster.
        let e = img.block_status(0, 4 * MIB).unwrap();
        assert_eq!(
            (e.kind, e.length, e.host_offset),
            (ExtentKind::Data, 8 * unit, None)
        );
        // Rewriting part of a compressed cluster makes it a normal one (copy-on-write).
        img.write_at(&[0xeeu8; 100], unit + 50).unwrap();
        let e = img.block_status(unit, unit).unwrap();
        assert!(e.host_offset.is_some());
        let mut b = vec![0u8; unit as usize];
        img.read_at(&mut b, unit).unwrap();
        assert_eq!(b[0], 1);
        assert!(b[50..150].iter().all(|&x| x == 0xee));
        assert_eq!(b[200], 3);
        img.flush().unwrap();
        assert_clean(&img, ct);
        assert_eq!(img.info().specific["compression-type"], ct);
    }
}

#[test]
fn refcount_table_grows_and_l1_grows_on_resize() {
    let (img, mem) = mem_image(
        &[("cluster_size", "512"), ("refcount_bits", "16")],
        10 * MIB,
    );
    let rt0 = img.lock().rc.table_offset;
    let data = vec![0x3cu8; 10 * MIB as usize];
    img.write_at(&data, 0).unwrap();
    assert_ne!(
        img.lock().rc.table_offset,
        rt0,
        "refcount table was relocated"
    );
    img.resize(40 * MIB).unwrap();
    img.write_at(&[1u8; 4096], 39 * MIB).unwrap();
    img.finish().unwrap();
    drop(img);
    let img = reopen(&mem, false).unwrap();
    assert_eq!(img.virtual_size(), 40 * MIB);
    let mut b = vec![0u8; 4096];
    img.read_at(&mut b, 39 * MIB).unwrap();
    assert!(b.iter().all(|&x| x == 1));
    img.read_at(&mut b, 5 * MIB).unwrap();
    assert!(b.iter().all(|&x| x == 0x3c));
    assert_clean(&img, "growth");
}

#[test]
fn check_finds_and_repairs_leaks_and_low_refcounts() {
    let (img, mem) = mem_image(&[("cluster_size", "4096")], 2 * MIB);
    img.write_at(&[9u8; 40_000], 0).unwrap();
    img.finish().unwrap();
    // Leak: count a cluster nothing uses; low: drop the count of a data cluster.
    let (leak_c, data_c) = {
        let mut m = img.lock();
        let end = m.rc.end;
        m.rc.set_range(img.storage(), end + 3, 1, 1).unwrap();
        let host = match m.entry(img.storage(), 0).unwrap() {
            meta::Entry::Normal { host, .. } => host,
            e => panic!("{e:?}"),
        };
        m.rc.set_range(img.storage(), host / 4096, 1, 0).unwrap();
        (end + 3, host / 4096)
    };
    // The leaked cluster must lie inside the file for check to see it.
    mem.set_len((leak_c + 1) * 4096).unwrap();
    let r = img.check(false).unwrap();
    assert_eq!(r.leaks, 1, "{r:?}");
    assert_eq!(r.corruptions, 1, "{r:?}");
    assert!(
        r.messages
            .iter()
            .any(|m| m.contains(&format!("cluster {data_c} "))),
        "{r:?}"
    );
    let r = img.check(true).unwrap();
    assert_eq!((r.leaks_fixed, r.corruptions_fixed), (1, 1), "{r:?}");
    assert!(r.is_clean());
    assert_clean(&img, "after repair");
    assert_eq!(r.total_clusters, Some(512));
    assert_eq!(r.allocated_clusters, Some(10));
    drop(img);
    let img = reopen(&mem, false).unwrap();
    assert_clean(&img, "reopened");
    let mut b = vec![0u8; 40_000];
    img.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 9));
}

#[test]
fn lazy_refcounts_set_dirty_and_rebuild_on_open() {
    let (img, mem) = mem_image(&[("lazy_refcounts", "on")], 4 * MIB);
    img.write_at(&[1u8; 200_000], 0).unwrap();
    img.flush().unwrap();
    assert!(img.info().dirty);
    // Simulate lost refcount updates of a crash, then never close.
    {
        let mut m = img.lock();
        let end = m.rc.end;
        m.rc.set_range(img.storage(), 4, end - 4, 0).unwrap();
    }
    std::mem::forget(img);
    let ro = reopen(&mem, false).unwrap();
    assert!(ro.info().dirty);
    assert!(ro.check(false).unwrap().corruptions > 0);
    drop(ro);
    let img = reopen(&mem, true).unwrap();
    assert!(!img.info().dirty);
    assert_clean(&img, "rebuilt");
    let mut b = vec![0u8; 200_000];
    img.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 1));
}

#[test]
fn read_only_open_never_writes_and_refuses_writes() {
    let (img, mem) = mem_image(&[("lazy_refcounts", "on")], MIB);
    img.write_at(&[1u8; 1000], 0).unwrap();
    std::mem::forget(img);
    let before = mem.contents();
    let ro = Qcow2Image::open(
        Box::new(MemStorage::read_only(before.clone())),
        &OpenContext::isolated(false),
    )
    .unwrap();
    assert!(ro.is_read_only());
    assert_eq!(
        ro.write_at(&[0], 0).unwrap_err().kind(),
        crate::ErrorKind::ReadOnly
    );
    assert_eq!(
        ro.check(true).unwrap_err().kind(),
        crate::ErrorKind::ReadOnly
    );
    drop(ro);
    assert_eq!(mem.contents(), before);
}

#[test]
fn create_options_are_validated() {
    let bad = [
        ("compat", "0.9"),
        ("cluster_size", "1000"),
        ("cluster_size", "4M"),
        ("refcount_bits", "3"),
        ("refcount_bits", "128"),
        ("lazy_refcounts", "maybe"),
        ("compression_type", "lz4"),
        ("extended_l2", "on"),
        ("preallocation", "all"),
        ("encryption", "on"),
    ];
    for (k, v) in bad {
        let mut o = CreateOptions::sized(MIB);
        o.options.insert(k.into(), v.into());
        let mem = Box::new(MemStorage::new(Vec::new(), 1 << 30));
        assert!(create_in(mem, &o).is_err(), "{k}={v}");
    }
    let mut o = CreateOptions::sized(MIB);
    o.options.insert("compat".into(), "0.10".into());
    o.options.insert("refcount_bits".into(), "8".into());
    assert!(create_in(Box::new(MemStorage::new(Vec::new(), 1 << 30)), &o).is_err());
    let (img, _) = mem_image(&[], 1000);
    assert_eq!(
        img.virtual_size(),
        1024,
        "sizes round up to 512 like qemu-img"
    );
    let info = img.info();
    assert_eq!(info.cluster_size, Some(65536));
    assert_eq!(info.specific["compat"], "1.1");
    assert_eq!(info.specific["refcount-bits"], 16);
}

#[test]
fn concurrent_writers_and_readers() {
    let (img, _) = mem_image(&[("cluster_size", "65536")], 16 * MIB);
    let img = &img;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for i in 0..16u64 {
                    // Unaligned 300 KB writes: neighbouring threads share clusters.
                    let off = (i * 4 + t) * 250_000;
                    img.write_at(&vec![(t * 16 + i) as u8 + 1; 250_000], off)
                        .unwrap();
                    let mut b = vec![0u8; 1000];
                    img.read_at(&mut b, off).unwrap();
                    assert_eq!(b[0], (t * 16 + i) as u8 + 1);
                }
            });
        }
    });
    for k in 0..64u64 {
        let (i, t) = (k / 4, k % 4);
        let mut b = vec![0u8; 250_000];
        img.read_at(&mut b, k * 250_000).unwrap();
        assert!(b.iter().all(|&x| x == (t * 16 + i) as u8 + 1), "chunk {k}");
    }
    img.flush().unwrap();
    assert_clean(img, "concurrent");
}

#[test]
fn compressed_with_narrow_refcounts_does_not_overflow() {
    for rb in ["1", "2", "4"] {
        let (img, mem) = mem_image(&[("refcount_bits", rb), ("cluster_size", "4096")], MIB);
        let cw = img.compressed().unwrap();
        for i in 0..40u64 {
            let raw = vec![(i % 3) as u8 + 1; 4096];
            let c = cw.compress(&raw).unwrap();
            cw.write_compressed(i * 4096, &raw, &c).unwrap();
        }
        img.finish().unwrap();
        drop(img);
        let img = reopen(&mem, false).unwrap();
        assert_clean(&img, rb);
        let mut b = vec![0u8; 4096];
        img.read_at(&mut b, 39 * 4096).unwrap();
        assert!(b.iter().all(|&x| x == 1));
    }
}
