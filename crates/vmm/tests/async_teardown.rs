//! `--async-teardown`: the VMM exits before the kernel destroys the VM (a helper process
//! does that afterwards), but only after everything it owes is done: the guest's writes are
//! in the image, the API socket is gone, and no process still holds the image or stdout.

mod common;

use std::path::Path;

use common::*;

/// Every process (but those that are gone) with a descriptor open on `path`.
fn holders(path: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == path) {
                found.push(p.file_name().to_string_lossy().to_string());
            }
        }
    }
    found
}

#[test]
fn async_teardown_exits_with_the_image_written_and_nothing_left_open() {
    if !kvm_available("async_teardown_exits_with_the_image_written_and_nothing_left_open") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.raw");
    let other = dir.path().join("o.raw");
    let socket = dir.path().join("api.sock");
    // The blk guest checks the host's pattern before writing its own at sector 64.
    let pattern: Vec<u8> = (0..1usize << 20)
        .map(|at| ((at / 512) as u64 * 31 + (at % 512) as u64 + 3) as u8)
        .collect();
    std::fs::write(&disk, &pattern).unwrap();
    std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
    // `vmm` returns once stdout and stderr reach end-of-file: the helper must not hold them.
    let o = vmm(&[
        "--kernel",
        guest("blk").to_str().unwrap(),
        "--memory",
        "128M",
        "--debug-exit",
        "--async-teardown",
        "--api-socket",
        socket.to_str().unwrap(),
        "--cmdline",
        "blk.seed=3 blk.sectors=8 blk.slot=1",
        "--disk",
        &format!("path={},format=raw,serial=DISK-1", disk.display()),
        "--disk",
        &format!("path={},readonly=on", other.display()),
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("flushed, read back ok"), "{text}");
    let image = std::fs::read(&disk).unwrap();
    assert_ne!(
        image[64 * 512..72 * 512],
        pattern[64 * 512..72 * 512],
        "the guest's writes are not in the image"
    );
    assert_eq!(image[..64 * 512], pattern[..64 * 512]);
    assert!(!socket.exists(), "the API socket was left behind");
    let canonical = disk.canonicalize().unwrap();
    assert_eq!(
        holders(&canonical),
        Vec::<String>::new(),
        "image still open"
    );
}
