//! VDI interoperability with qemu-img: images qemu-img writes (dynamic and static) read
//! back byte for byte through our driver, and images our driver writes pass `qemu-img check`
//! and `qemu-img compare`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::interop::*;
use paddock_disk::{create, open, BlockImage, CreateOptions, ExtentKind, Format, OpenOptions};

const COMBOS: [&str; 2] = ["static=off", "static=on"];

fn qemu_ok(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn qemu_written_vdi_reads_back_identically() {
    if !have_qemu_img_for("vdi") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let data = pattern((13 << 20) + 5 * 512);
    std::fs::write(&src, &data).unwrap();
    for combo in COMBOS {
        let img_path = dir.path().join("q.vdi");
        let back = dir.path().join("back.raw");
        qemu_from_raw("vdi", combo, &src, &img_path);
        qemu(&["convert", "-f", "vdi", "-O", "raw", s(&img_path), s(&back)]);
        let want = std::fs::read(&back).unwrap();
        assert!(want == data, "{combo}: qemu round trip");
        let img = open(&img_path, &OpenOptions::read(None)).unwrap();
        assert_eq!(img.format(), Format::Vdi, "probed");
        let ours = read_all_image(img.as_ref());
        assert!(
            ours == want,
            "{combo}: contents differ from qemu-img convert -O raw"
        );
        let q = info_json(&img_path, "vdi");
        let info = img.info();
        assert_eq!(
            q["virtual-size"].as_u64(),
            Some(info.virtual_size),
            "{combo}"
        );
        assert_eq!(q["cluster-size"].as_u64(), info.cluster_size, "{combo}");
        assert_eq!(q["format"], "vdi");
        assert_eq!(q["dirty-flag"].as_bool(), Some(info.dirty));
        let sub = if combo == "static=on" {
            "static"
        } else {
            "dynamic"
        };
        assert_eq!(info.subformat.as_deref(), Some(sub));
        let mut at = 0;
        let mut data_bytes = 0;
        while at < img.virtual_size() {
            let e = img.block_status(at, img.virtual_size() - at).unwrap();
            if e.kind == ExtentKind::Data {
                data_bytes += e.length;
            } else {
                let r = &want[at as usize..(at + e.length) as usize];
                assert!(r.iter().all(|&b| b == 0), "{combo}: {e:?} is not zero");
            }
            at += e.length;
        }
        if sub == "dynamic" {
            assert!(
                data_bytes < img.virtual_size(),
                "holes of the source stay unallocated"
            );
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
    let p = dir.join("ours.vdi");
    let mut o = CreateOptions::sized(size);
    for kv in combo.split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        o.options.insert(k.into(), v.into());
    }
    let img = create(&p, Format::Vdi, &o).unwrap();
    let want = exercise(img.as_ref());
    img.finish().unwrap();
    (p, want)
}

fn assert_check_and_compare(p: &Path, want: &[u8], exp: &Path, what: &str) {
    std::fs::write(exp, want).unwrap();
    let (ok, text) = qemu_ok(&["check", "-f", "vdi", s(p)]);
    assert!(ok, "{what}: qemu-img check: {text}");
    let (ok, text) = qemu_ok(&["compare", "-f", "vdi", "-F", "raw", s(p), s(exp)]);
    assert!(ok, "{what}: qemu-img compare: {text}");
}

#[test]
fn our_vdi_passes_qemu_img_check_and_compare() {
    if !have_qemu_img_for("vdi") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for combo in ["static=off", "static=on", "static=on,preallocation=full"] {
        let (p, want) = our_image(dir.path(), combo, (10 << 20) + 512);
        let q = info_json(&p, "vdi");
        assert_eq!(
            q["virtual-size"].as_u64(),
            Some(want.len() as u64),
            "{combo}"
        );
        assert_check_and_compare(&p, &want, &dir.path().join("expected.raw"), combo);
        let img = open(&p, &OpenOptions::read(Some(Format::Vdi))).unwrap();
        assert!(read_all_image(img.as_ref()) == want, "{combo}");
        assert!(img.check(false).unwrap().is_clean(), "{combo}");
    }
}

#[test]
fn our_writes_into_qemu_images_pass_check_and_compare() {
    if !have_qemu_img_for("vdi") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for combo in COMBOS {
        let p = dir.path().join("q.vdi");
        qemu(&["create", "-q", "-f", "vdi", "-o", combo, s(&p), "10M"]);
        let img = open(&p, &OpenOptions::write(Some(Format::Vdi))).unwrap();
        let want = exercise(img.as_ref());
        drop(img);
        assert_check_and_compare(&p, &want, &dir.path().join("expected.raw"), combo);
        // qemu keeps allocating after us without landing on our blocks.
        let mut want = want;
        let io = Command::new("qemu-io")
            .args(["-f", "vdi", "-c", "write -P 0x42 6M 2M", s(&p)])
            .output();
        if io.as_ref().is_ok_and(|o| o.status.success()) {
            want[6 << 20..8 << 20].fill(0x42);
            assert_check_and_compare(&p, &want, &dir.path().join("expected.raw"), combo);
        } else {
            eprintln!("qemu-io not usable: skipping the write-after-us part");
        }
    }
}
