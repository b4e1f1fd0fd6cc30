//! VHD (`vpc`) interoperability with qemu-img: images qemu-img writes read back byte for byte
//! through our driver, and images our driver writes pass `qemu-img compare` (qemu has no
//! `check` for vpc) and report the same virtual size.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::interop::*;
use paddock_disk::{create, open, BlockImage, CreateOptions, ExtentKind, Format, OpenOptions};

const COMBOS: [&str; 4] = [
    "subformat=dynamic",
    "subformat=fixed",
    "subformat=dynamic,force_size=on",
    "subformat=fixed,force_size=on",
];

#[test]
fn qemu_written_vhd_reads_back_identically() {
    if !have_qemu_img_for("vpc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = pattern((13 << 20) + 5 * 512);
    std::fs::write(&src, &data).unwrap();
    for combo in COMBOS {
        let img_path = dir.path().join("q.vhd");
        let back = dir.path().join("back.raw");
        qemu_from_raw("vpc", combo, &src, &img_path);
        qemu(&["convert", "-f", "vpc", "-O", "raw", s(&img_path), s(&back)]);
        let want = std::fs::read(&back).unwrap();
        let img = open(&img_path, &OpenOptions::read(Some(Format::Vpc))).unwrap();
        let ours = read_all_image(img.as_ref());
        assert_eq!(ours.len(), want.len(), "{combo}: virtual size");
        assert!(
            ours == want,
            "{combo}: contents differ from qemu-img convert -O raw"
        );
        assert!(ours[..data.len()] == data[..], "{combo}: source data");
        // info agrees with qemu-img info.
        let q = info_json(&img_path, "vpc");
        let info = img.info();
        assert_eq!(
            q["virtual-size"].as_u64(),
            Some(info.virtual_size),
            "{combo}"
        );
        assert_eq!(q["cluster-size"].as_u64(), info.cluster_size, "{combo}");
        assert_eq!(q["format"], "vpc");
        assert_eq!(q["dirty-flag"].as_bool(), Some(info.dirty));
        assert!(q.get("backing-filename").is_none() && info.backing_file.is_none());
        let sub = if combo.contains("fixed") {
            "fixed"
        } else {
            "dynamic"
        };
        assert_eq!(info.subformat.as_deref(), Some(sub));
        // Everything block_status calls non-data reads as zeroes.
        let mut at = 0;
        while at < img.virtual_size() {
            let e = img.block_status(at, img.virtual_size() - at).unwrap();
            if e.kind != ExtentKind::Data {
                let r = &want[at as usize..(at + e.length) as usize];
                assert!(r.iter().all(|&b| b == 0), "{combo}: {e:?} is not zero");
            }
            at += e.length;
        }
        // Dynamic images probe as vpc.
        if sub == "dynamic" {
            let probed = open(&img_path, &OpenOptions::read(None)).unwrap();
            assert_eq!(probed.format(), Format::Vpc);
        }
    }
}

/// Writes a pattern through the trait: partial sectors, block-crossing writes, overwrites,
/// zeroes and discards; returns the expected guest contents.
fn exercise(img: &dyn BlockImage) -> Vec<u8> {
    let size = img.virtual_size() as usize;
    let mut want = vec![0u8; size];
    let mut put = |img: &dyn BlockImage, off: usize, data: &[u8]| {
        img.write_at(data, off as u64).unwrap();
        want[off..off + data.len()].copy_from_slice(data);
    };
    put(img, 0, b"boot sector text");
    put(img, 1000, &[0x11; 3000]);
    let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 249) as u8 + 1).collect();
    put(img, (2 << 20) - 777, &big);
    put(img, (2 << 20) + 5, b"overwritten");
    put(img, size - 600, &[0x77; 600]);
    put(img, (7 << 20) + 100, &[0x33; 64 << 10]);
    img.write_zeroes((3 << 20) + 1, 70_000, false).unwrap();
    want[(3 << 20) + 1..(3 << 20) + 70_001].fill(0);
    img.write_zeroes(4 << 20, 1 << 20, true).unwrap();
    want[4 << 20..5 << 20].fill(0);
    img.discard((7 << 20) + 4096, 8192).unwrap();
    want[(7 << 20) + 4096..(7 << 20) + 12288].fill(0);
    img.flush().unwrap();
    want
}

fn our_image(dir: &Path, combo: &str, size: u64) -> (PathBuf, Vec<u8>) {
    let p = dir.join("ours.vhd");
    let mut o = CreateOptions::sized(size);
    for kv in combo.split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        o.options.insert(k.into(), v.into());
    }
    let img = create(&p, Format::Vpc, &o).unwrap();
    let want = exercise(img.as_ref());
    img.finish().unwrap();
    (p, want)
}

#[test]
fn our_vhd_passes_qemu_img_compare() {
    if !have_qemu_img_for("vpc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for combo in COMBOS {
        let (p, want) = our_image(dir.path(), combo, 10 << 20);
        let exp = dir.path().join("expected.raw");
        std::fs::write(&exp, &want).unwrap();
        let q = info_json(&p, "vpc");
        assert_eq!(
            q["virtual-size"].as_u64(),
            Some(want.len() as u64),
            "{combo}"
        );
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "vpc", "-F", "raw", s(&p), s(&exp)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{combo}: qemu-img compare: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Our own reader and check agree too.
        let img = open(&p, &OpenOptions::read(Some(Format::Vpc))).unwrap();
        assert!(read_all_image(img.as_ref()) == want, "{combo}");
        assert!(img.check(false).unwrap().is_clean(), "{combo}");
    }
}

#[test]
fn our_writes_into_qemu_images_pass_compare() {
    if !have_qemu_img_for("vpc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for combo in ["subformat=dynamic", "subformat=fixed"] {
        let p = dir.path().join("q.vhd");
        qemu(&["create", "-q", "-f", "vpc", "-o", combo, s(&p), "10M"]);
        let img = open(&p, &OpenOptions::write(Some(Format::Vpc))).unwrap();
        let want = exercise(img.as_ref());
        drop(img);
        let exp = dir.path().join("expected.raw");
        std::fs::write(&exp, &want).unwrap();
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "vpc", "-F", "raw", s(&p), s(&exp)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{combo}: {out:?}");
    }
}

#[test]
fn azure_fixed_force_size_is_exact() {
    if !have_qemu_img_for("vpc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("azure.vhd");
    let mut o = CreateOptions::sized(64 << 20);
    o.options.insert("subformat".into(), "fixed".into());
    o.options.insert("force_size".into(), "on".into());
    let img = create(&p, Format::Vpc, &o).unwrap();
    img.write_at(&[1; 4096], (64 << 20) - 4096).unwrap();
    img.finish().unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), (64 << 20) + 512);
    let q = info_json(&p, "vpc");
    assert_eq!(q["virtual-size"].as_u64(), Some(64 << 20));
    // Without force_size the size rounds up to a CHS geometry, as qemu-img does.
    let p2 = dir.path().join("chs.vhd");
    let img = create(&p2, Format::Vpc, &CreateOptions::sized(64 << 20)).unwrap();
    let q2 = dir.path().join("chs-q.vhd");
    qemu(&["create", "-q", "-f", "vpc", s(&q2), "64M"]);
    assert_eq!(
        info_json(&q2, "vpc")["virtual-size"].as_u64(),
        Some(img.virtual_size())
    );
    assert_eq!(img.virtual_size(), 67_125_248);
}

/// A 13 MiB raw source in `dir` and its bytes, for the resize tests.
fn resize_source(dir: &Path) -> (PathBuf, Vec<u8>) {
    let src = dir.join("src.raw");
    let data = pattern(13 << 20);
    std::fs::write(&src, &data).unwrap();
    (src, data)
}

/// `data` cut or zero-padded to `len` bytes.
fn padded(data: &[u8], len: u64) -> Vec<u8> {
    let mut v = data[..data.len().min(len as usize)].to_vec();
    v.resize(len as usize, 0);
    v
}

/// Asserts that qemu-img reads the VHD at `vhd` as exactly `model`.
fn assert_qemu_reads(vhd: &Path, model: &[u8], what: &str) {
    let reference = vhd.with_extension("reference.raw");
    std::fs::write(&reference, model).unwrap();
    let out = qemu(&["compare", "-f", "vpc", "-F", "raw", s(vhd), s(&reference)]);
    assert!(out.status.success(), "{what}: qemu-img compare");
}

#[test]
fn fixed_vhds_resize_in_place_and_qemu_img_agrees() {
    if !have_qemu_img_for("vpc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = resize_source(dir.path());
    // Exact-size (Azure) images: grow to 64 MiB, then shrink to 6 MiB + 3 sectors.
    let p = dir.path().join("azure.vhd");
    qemu_from_raw("vpc", "subformat=fixed,force_size=on", &src, &p);
    for (size, grow) in [(64u64 << 20, true), ((6 << 20) + 1536, false)] {
        let img = open(&p, &OpenOptions::write(Some(Format::Vpc))).unwrap();
        img.resize(size).unwrap();
        assert_eq!(
            img.virtual_size(),
            size,
            "grow={grow}: size in the open handle"
        );
        // The open handle reads and writes at the new size straight away.
        let mut tail = vec![0xffu8; 512];
        img.read_at(&mut tail, size - 512).unwrap();
        if grow {
            assert!(tail.iter().all(|&b| b == 0), "grown space reads as zeroes");
        }
        drop(img);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), size + 512);
        assert_eq!(info_json(&p, "vpc")["virtual-size"].as_u64(), Some(size));
        assert_qemu_reads(&p, &padded(&data, size), &format!("grow={grow}"));
    }
    // Geometry-sized images round up to a geometry as `create` does, and qemu-img sees the
    // same size.
    let chs = dir.path().join("chs.vhd");
    qemu_from_raw("vpc", "subformat=fixed", &src, &chs);
    let img = open(&chs, &OpenOptions::write(Some(Format::Vpc))).unwrap();
    img.resize(100 << 20).unwrap();
    let size = img.virtual_size();
    assert!(
        (100 << 20..(100 << 20) + (1 << 20)).contains(&size),
        "{size}"
    );
    drop(img);
    assert_eq!(info_json(&chs, "vpc")["virtual-size"].as_u64(), Some(size));
    assert_qemu_reads(&chs, &padded(&data, size), "geometry-sized");
}

#[test]
fn dynamic_vhds_grow_in_place_and_qemu_img_agrees() {
    if !have_qemu_img_for("vpc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = resize_source(dir.path());
    // 13 MiB: 7 BAT entries in a one-sector BAT, room for 128 (256 MiB). Growing
    // to 200 MiB fits that space; growing to 600 MiB moves the BAT to the end of the file.
    let p = dir.path().join("dyn.vhd");
    qemu_from_raw("vpc", "subformat=dynamic,force_size=on", &src, &p);
    let mut model = data.clone();
    for (size, moved) in [(200u64 << 20, false), (600u64 << 20, true)] {
        let img = open(&p, &OpenOptions::write(Some(Format::Vpc))).unwrap();
        let before = img.info().specific["max-table-entries"].as_u64().unwrap();
        img.resize(size).unwrap();
        assert_eq!(img.virtual_size(), size);
        let after = img.info().specific["max-table-entries"].as_u64().unwrap();
        assert_eq!(after, size.div_ceil(2 << 20), "moved={moved}: BAT entries");
        assert!(after > before);
        // The open handle writes into the new space: a block past the old end.
        let at = size - (3 << 20) + 777;
        img.write_at(&[0xc3; 5000], at).unwrap();
        img.finish().unwrap();
        drop(img);
        model.resize(size as usize, 0);
        model[at as usize..at as usize + 5000].fill(0xc3);
        assert_eq!(info_json(&p, "vpc")["virtual-size"].as_u64(), Some(size));
        assert_qemu_reads(&p, &model, &format!("moved={moved}"));
        let img = open(&p, &OpenOptions::read(Some(Format::Vpc))).unwrap();
        assert!(img.check(false).unwrap().is_clean(), "moved={moved}: check");
        assert!(
            read_all_image(img.as_ref()) == model,
            "moved={moved}: our read"
        );
    }
}

#[test]
fn refused_vhd_resizes_leave_the_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dyn.vhd");
    let img = create(&p, Format::Vpc, &CreateOptions::sized(8 << 20)).unwrap();
    img.write_at(&[7; 4096], 0).unwrap();
    img.finish().unwrap();
    drop(img);
    let before = std::fs::read(&p).unwrap();
    let img = open(&p, &OpenOptions::write(Some(Format::Vpc))).unwrap();
    let e = img.resize(4 << 20).unwrap_err().to_string();
    assert!(e.contains("subformat=fixed"), "{e}");
    drop(img);
    assert!(
        std::fs::read(&p).unwrap() == before,
        "a refused shrink wrote"
    );
    let ro = open(&p, &OpenOptions::read(Some(Format::Vpc))).unwrap();
    assert!(ro.resize(16 << 20).is_err());
    drop(ro);
    let f = dir.path().join("fixed.vhd");
    let mut o = CreateOptions::sized(8 << 20);
    o.options.insert("subformat".into(), "fixed".into());
    drop(create(&f, Format::Vpc, &o).unwrap());
    let before = std::fs::read(&f).unwrap();
    let ro = open(&f, &OpenOptions::read(Some(Format::Vpc))).unwrap();
    assert!(ro.resize(16 << 20).is_err());
    drop(ro);
    assert!(
        std::fs::read(&f).unwrap() == before,
        "a read-only resize wrote"
    );
}
