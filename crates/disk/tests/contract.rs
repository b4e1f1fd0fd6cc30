//! The `BlockImage` contract, run over every writable format and subformat: random writes,
//! zeroes, discards, flushes and reopens against an in-memory model; concurrent writers that
//! share clusters; `block_status` that never calls data "zero"; and, where qemu-img has a
//! check for the format, a clean `qemu-img check` at the end.

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::path::Path;

use common::*;
use paddock_disk::{BlockImage, CreateOptions, ExtentKind, Format, OpenOptions};

/// (label, format, -o options) of every subformat that takes random writes.
const WRITABLE: &[(&str, &str, &str)] = &[
    ("raw", "raw", ""),
    ("qcow2-v3", "qcow2", ""),
    ("qcow2-v2-4k", "qcow2", "compat=0.10,cluster_size=4096"),
    ("qcow2-512-rc1", "qcow2", "cluster_size=512,refcount_bits=1"),
    (
        "qcow2-lazy-rc64",
        "qcow2",
        "lazy_refcounts=on,refcount_bits=64",
    ),
    ("qcow2-2m", "qcow2", "cluster_size=2M"),
    ("vmdk-sparse", "vmdk", ""),
    ("vmdk-flat", "vmdk", "subformat=monolithicFlat"),
    ("vmdk-2gsparse", "vmdk", "subformat=twoGbMaxExtentSparse"),
    ("vpc-dynamic", "vpc", ""),
    ("vpc-fixed", "vpc", "subformat=fixed"),
    ("vhdx-dynamic", "vhdx", "block_size=1M"),
    ("vhdx-fixed", "vhdx", "subformat=fixed"),
    ("vdi", "vdi", ""),
    ("vdi-static", "vdi", "static=on"),
];

const SIZE: u64 = 8 << 20;

fn create(path: &Path, fmt: &str, opts: &str) -> Box<dyn BlockImage> {
    let mut o = CreateOptions::sized(SIZE);
    for kv in opts.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap();
        o.options.insert(k.into(), v.into());
    }
    paddock_disk::create(path, fmt.parse().unwrap(), &o)
        .unwrap_or_else(|e| panic!("create {fmt} {opts}: {e}"))
}

fn reopen(path: &Path, fmt: &str) -> Box<dyn BlockImage> {
    paddock_disk::open(path, &OpenOptions::write(Some(fmt.parse().unwrap()))).unwrap()
}

fn verify(label: &str, step: usize, img: &dyn BlockImage, model: &[u8]) {
    let got = read_all(img);
    if let Some(at) = first_difference(&got[..model.len()], model) {
        panic!("{label}: after step {step}, first difference at byte {at}");
    }
    // A scatter list over an unaligned stretch reads what plain reads do.
    let (start, mut x, mut y) = (12_345usize, vec![0u8; 70_000], vec![0u8; 3_000]);
    img.read_vectored_at(
        &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)],
        start as u64,
    )
    .unwrap_or_else(|e| panic!("{label}: vectored read: {e}"));
    assert!(
        x == got[start..start + x.len()] && y == got[start + x.len()..start + x.len() + y.len()],
        "{label}: after step {step}, the vectored read differs"
    );
    // Whatever block_status calls zero or unallocated must read as zero.
    let mut at = 0;
    while at < img.virtual_size() {
        let e = img.block_status(at, img.virtual_size() - at).unwrap();
        assert_eq!(e.start, at, "{label}: extent starts where asked");
        assert!(e.length > 0, "{label}: empty extent at {at}");
        if e.kind != ExtentKind::Data {
            let end = (e.start + e.length) as usize;
            assert!(
                got[at as usize..end].iter().all(|&b| b == 0),
                "{label}: {:?} extent at {at} holds data",
                e.kind
            );
        }
        at += e.length;
    }
}

fn random_ops(label: &str, fmt: &str, opts: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("img.{fmt}"));
    let mut img = create(&path, fmt, opts);
    let size = img.virtual_size();
    assert!(
        size >= SIZE,
        "{label}: virtual size {size} smaller than asked"
    );
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng::new(0x5eed ^ label.len() as u64);
    for step in 0..160 {
        let r = rng.next();
        let len = 1 + (rng.next() % 300_000).min(size - 1);
        let off = rng.next() % (size - len);
        match r % 10 {
            0..=5 => {
                let mut data = vec![0u8; len as usize];
                rng.fill(&mut data);
                if r % 7 == 0 {
                    data.iter_mut().take(len as usize / 2).for_each(|b| *b = 0);
                }
                if r % 5 == 1 {
                    // A gather list of three pieces, as a VMM passes a guest's request on.
                    let (a, rest) = data.split_at(data.len() / 3);
                    let (b, c) = rest.split_at(rest.len() / 2);
                    let bufs = [IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)];
                    img.write_vectored_at(&bufs, off)
                } else {
                    img.write_at(&data, off)
                }
                .unwrap_or_else(|e| panic!("{label} step {step}: write: {e}"));
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            6 => {
                img.write_zeroes(off, len, r % 2 == 0)
                    .unwrap_or_else(|e| panic!("{label} step {step}: zeroes: {e}"));
                model[off as usize..(off + len) as usize].fill(0);
            }
            7 => {
                img.discard(off, len)
                    .unwrap_or_else(|e| panic!("{label} step {step}: discard: {e}"));
                model[off as usize..(off + len) as usize].fill(0);
            }
            8 => img.flush().unwrap(),
            _ => {
                img.finish().unwrap();
                drop(img);
                img = reopen(&path, fmt);
            }
        }
        if step % 40 == 39 {
            verify(label, step, img.as_ref(), &model);
        }
    }
    img.finish().unwrap();
    drop(img);
    let img = paddock_disk::open(&path, &OpenOptions::read(Some(fmt.parse().unwrap()))).unwrap();
    verify(label, usize::MAX, img.as_ref(), &model);
    if ["qcow2", "vmdk", "vhdx", "vdi"].contains(&fmt) && qemu_img(label) {
        let (code, text) = qemu_img_status(&["check", "-f", fmt, path.to_str().unwrap()]);
        assert_eq!(code, 0, "{label}: qemu-img check: {text}");
    }
}

/// Runs `f` for every writable format and reports every format that failed, not just the first.
fn for_each_format(f: impl Fn(&str, &str, &str) + std::panic::RefUnwindSafe) {
    let mut failed = Vec::new();
    for (label, fmt, opts) in WRITABLE {
        if let Err(e) = std::panic::catch_unwind(|| f(label, fmt, opts)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            failed.push(format!("{label}: {}", msg.unwrap_or_default()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} formats failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn random_operations_match_the_model_in_every_format() {
    for_each_format(random_ops);
}

#[test]
fn concurrent_writers_sharing_clusters_lose_nothing() {
    for_each_format(|label, fmt, opts| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("img.{fmt}"));
        let img = create(&path, fmt, opts);
        let threads = 4u64;
        let per = 48u64;
        // Thread t writes 900 bytes at i*4096 + t*1000: neighbours share every cluster.
        std::thread::scope(|s| {
            for t in 0..threads {
                let img = img.as_ref();
                s.spawn(move || {
                    for i in 0..per {
                        let off = (i * 37 % per) * 40_960 + t * 1000;
                        img.write_at(&[(t * per + i) as u8 | 1; 900], off).unwrap();
                    }
                });
            }
        });
        img.finish().unwrap();
        drop(img);
        let img = paddock_disk::open(
            &path,
            &OpenOptions::read(Some(fmt.parse::<Format>().unwrap())),
        )
        .unwrap();
        for t in 0..threads {
            for i in 0..per {
                let off = (i * 37 % per) * 40_960 + t * 1000;
                let mut b = [0u8; 900];
                img.read_at(&mut b, off).unwrap();
                assert!(
                    b.iter().all(|&x| x == (t * per + i) as u8 | 1),
                    "{label}: thread {t} write {i} lost"
                );
            }
        }
    });
}

#[test]
fn reads_and_writes_past_the_end_are_refused() {
    for_each_format(|label, fmt, opts| {
        let dir = tempfile::tempdir().unwrap();
        let img = create(&dir.path().join(format!("img.{fmt}")), fmt, opts);
        let size = img.virtual_size();
        let mut b = [0u8; 16];
        assert!(
            img.read_at(&mut b, size - 8).is_err(),
            "{label}: read past end"
        );
        assert!(
            img.write_at(&b, size - 8).is_err(),
            "{label}: write past end"
        );
        assert!(
            img.read_at(&mut b, u64::MAX - 4).is_err(),
            "{label}: overflowing offset"
        );
        assert!(
            img.write_zeroes(size, 1, false).is_err(),
            "{label}: zeroes past end"
        );
    });
}

#[test]
fn read_only_images_refuse_writes_and_stay_unchanged() {
    for_each_format(|label, fmt, opts| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("img.{fmt}"));
        let img = create(&path, fmt, opts);
        img.write_at(&[7u8; 5000], 12_345).unwrap();
        img.finish().unwrap();
        drop(img);
        let before: Vec<Vec<u8>> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        let img =
            paddock_disk::open(&path, &OpenOptions::read(Some(fmt.parse().unwrap()))).unwrap();
        assert!(img.is_read_only());
        assert!(img.write_at(&[1u8; 10], 0).is_err(), "{label}");
        assert!(img.write_zeroes(0, 4096, true).is_err(), "{label}");
        let _ = img.flush();
        drop(img);
        let after: Vec<Vec<u8>> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        assert!(
            before == after,
            "{label}: a read-only open changed the files"
        );
    });
}
