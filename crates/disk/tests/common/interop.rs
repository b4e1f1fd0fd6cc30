//! Helpers shared by the VHD and VDI interop tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use paddock_disk::BlockImage;

pub fn have_qemu_img_for(what: &str) -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("qemu-img not found: skipping the {what} interop test");
    }
    ok
}

pub fn qemu(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img convert -f raw -O FMT -o OPTIONS src dst`.
pub fn qemu_from_raw(fmt: &str, options: &str, src: &Path, dst: &Path) {
    qemu(&[
        "convert",
        "-f",
        "raw",
        "-O",
        fmt,
        "-o",
        options,
        s(src),
        s(dst),
    ]);
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A raw source with holes, zero runs, text, a repeating pattern and random bytes, of an
/// odd size so CHS rounding shows.
pub fn pattern(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let text = b"The quick brown fox jumps over the lazy dog. ";
    for (i, b) in v[4096..200_000].iter_mut().enumerate() {
        *b = text[i % text.len()];
    }
    for (i, b) in v[3 << 20..(5 << 20) + 777].iter_mut().enumerate() {
        *b = (i * 7 % 253) as u8 + 1;
    }
    let mut x = 0x1234_5678u32;
    for b in v[(9 << 20) + 513..(10 << 20) + 100].iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let end = v.len();
    v[end - 1000..].fill(0x5a);
    v
}

pub fn read_all_image(img: &dyn BlockImage) -> Vec<u8> {
    let mut v = vec![0u8; img.virtual_size() as usize];
    for (i, chunk) in v.chunks_mut(1 << 20).enumerate() {
        img.read_at(chunk, (i as u64) << 20).unwrap();
    }
    v
}

pub fn info_json(path: &Path, fmt: &str) -> serde_json::Value {
    let out = qemu(&["info", "-f", fmt, "--output=json", s(path)]);
    serde_json::from_slice(&out.stdout).unwrap()
}
