//! virtio-blk under real KVM: the `blk` guest reads the host's pattern, writes its own,
//! flushes, and the host checks the image file (and `qemu-img check` for container formats).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const DISK: usize = 1 << 20;
const SECTORS: u64 = 8;
const WRITE_AT: u64 = 64;

fn host_pattern(seed: u64, s: u64, i: usize) -> u8 {
    (s.wrapping_mul(31).wrapping_add(i as u64).wrapping_add(seed)) as u8
}

fn guest_pattern(seed: u64, s: u64, i: usize) -> u8 {
    (s.wrapping_mul(17)
        .wrapping_add(3 * i as u64)
        .wrapping_add(seed) as u8)
        ^ 0x5a
}

fn pattern_disk(seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; DISK];
    for (s, c) in d.chunks_mut(512).enumerate() {
        for (i, b) in c.iter_mut().enumerate() {
            *b = host_pattern(seed, s as u64, i);
        }
    }
    d
}

fn fnv(h: &mut u32, bytes: &[u8]) {
    for &b in bytes {
        *h = (*h ^ b as u32).wrapping_mul(16_777_619);
    }
}

/// Runs the blk guest on `disk` (slot 1) with an rng and a second, read-only disk beside it.
fn run_blk(disk: &str, cmdline: &str, other: &Path) -> std::process::Output {
    vmm(&[
        "--kernel",
        guest("blk").to_str().unwrap(),
        "--memory",
        "128M",
        "--debug-exit",
        "--cmdline",
        cmdline,
        "--disk",
        disk,
        "--disk",
        &format!("path={},readonly=on", other.display()),
        "--rng",
    ])
}

/// Checks the guest's output and the image contents (read back as raw bytes).
fn verify(o: &std::process::Output, seed: u64, image: &[u8]) {
    let text = out(o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(o));
    assert!(
        text.contains("capacity=2048 sectors ro=0 flush=1"),
        "{text}"
    );
    assert!(text.contains("serial=DISK-1 "), "{text}");
    assert!(text.contains("host pattern ok"), "{text}");
    assert!(text.contains("flushed, read back ok"), "{text}");
    for s in 0..SECTORS {
        for i in 0..512 {
            let at = ((WRITE_AT + s) * 512) as usize + i;
            assert_eq!(
                image[at],
                guest_pattern(seed, WRITE_AT + s, i),
                "sector {} byte {i}",
                WRITE_AT + s
            );
        }
    }
    // Sectors the guest did not write keep the host's pattern.
    assert_eq!(
        image[(WRITE_AT + SECTORS) as usize * 512],
        host_pattern(seed, WRITE_AT + SECTORS, 0)
    );
    let mut sum = 0x811c_9dc5u32;
    fnv(&mut sum, &image[..SECTORS as usize * 512]);
    fnv(
        &mut sum,
        &image[WRITE_AT as usize * 512..(WRITE_AT + SECTORS) as usize * 512],
    );
    assert!(
        text.contains(&format!("checksum={sum:08x}")),
        "host checksum {sum:08x}: {text}"
    );
}

#[test]
fn blk_guest_reads_and_writes_a_raw_disk() {
    if !kvm_available("blk_guest_reads_and_writes_a_raw_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (disk, other) = (dir.path().join("d.raw"), dir.path().join("o.raw"));
    std::fs::write(&disk, pattern_disk(7)).unwrap();
    std::fs::write(&other, vec![0u8; DISK]).unwrap();
    let o = run_blk(
        &format!("path={},format=raw,serial=DISK-1", disk.display()),
        "blk.seed=7 blk.sectors=8 blk.slot=1",
        &other,
    );
    verify(&o, 7, &std::fs::read(&disk).unwrap());
}

#[test]
fn blk_guest_on_container_formats_leaves_images_that_qemu_img_accepts() {
    if !kvm_available("blk_guest_on_container_formats_leaves_images_that_qemu_img_accepts") {
        return;
    }
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("SKIP container formats: qemu-img is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let other = dir.path().join("o.raw");
    std::fs::write(&raw, pattern_disk(3)).unwrap();
    std::fs::write(&other, vec![0u8; DISK]).unwrap();
    let mut ran = 0;
    for fmt in ["qcow2", "vmdk", "vhdx", "vdi"] {
        let img = dir.path().join(format!("d.{fmt}"));
        let st = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", fmt])
            .arg(&raw)
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img convert to {fmt}");
        let opts = paddock_disk::OpenOptions::write(Some(fmt.parse().unwrap()));
        if let Err(e) = paddock_disk::open(&img, &opts) {
            if e.kind() == paddock_disk::ErrorKind::Unsupported {
                eprintln!("SKIP {fmt}: paddock-disk cannot open it yet ({e})");
                continue;
            }
            panic!("{fmt}: {e}");
        }
        let o = run_blk(
            &format!("path={},format={fmt},serial=DISK-1", img.display()),
            "blk.seed=3 blk.sectors=8",
            &other,
        );
        let back = dir.path().join(format!("back-{fmt}.raw"));
        let st = Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(&img)
            .arg(&back)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img convert back from {fmt}");
        verify(&o, 3, &std::fs::read(&back).unwrap());
        let check = Command::new("qemu-img")
            .args(["check", "-f", fmt])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "qemu-img check {fmt}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 2, "at least two container formats must run");
}

#[test]
fn a_read_only_disk_refuses_writes_with_ioerr_and_stays_unchanged() {
    if !kvm_available("a_read_only_disk_refuses_writes_with_ioerr_and_stays_unchanged") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (first, ro) = (dir.path().join("a.raw"), dir.path().join("ro.raw"));
    std::fs::write(&first, vec![0u8; DISK]).unwrap();
    let content = pattern_disk(5);
    std::fs::write(&ro, &content).unwrap();
    let o = vmm(&[
        "--kernel",
        guest("blk").to_str().unwrap(),
        "--memory",
        "128M",
        "--debug-exit",
        "--cmdline",
        "blk.slot=2 blk.ro=1 blk.seed=5",
        "--disk",
        &format!("path={}", first.display()),
        "--disk",
        &format!("path={},format=raw,readonly=on,serial=RO", ro.display()),
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("ro=1"), "{text}");
    assert!(text.contains("serial=RO "), "{text}");
    assert!(text.contains("write refused: IOERR"), "{text}");
    assert_eq!(std::fs::read(&ro).unwrap(), content);
}

#[test]
fn bad_disk_options_exit_2_and_name_the_option() {
    for bad in [
        "format=raw",
        "path=/x,format=floppy",
        "path=/x,readonly=maybe",
        "path=/x,cache=none",
    ] {
        let o = vmm(&["--kernel", "/nonexistent", "--disk", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", err(&o));
        assert!(err(&o).contains("--disk"), "{bad}: {}", err(&o));
    }
    // A disk that cannot be opened is named, with status 1.
    let dir = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    let missing = dir.path().join("missing.raw");
    let o = vmm(&[
        "--kernel",
        hello.to_str().unwrap(),
        "--disk",
        &format!("path={}", missing.display()),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("missing.raw"), "{}", err(&o));
}

#[test]
fn a_looping_chain_from_the_guest_needs_a_reset_and_the_device_recovers() {
    if !kvm_available("a_looping_chain_from_the_guest_needs_a_reset_and_the_device_recovers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (disk, other) = (dir.path().join("d.raw"), dir.path().join("o.raw"));
    std::fs::write(&disk, pattern_disk(9)).unwrap();
    std::fs::write(&other, vec![0u8; DISK]).unwrap();
    let o = run_blk(
        &format!("path={},format=raw,serial=DISK-1", disk.display()),
        "blk.seed=9 blk.malformed=1",
        &other,
    );
    let text = out(&o);
    assert!(
        text.contains("looping chain: DEVICE_NEEDS_RESET"),
        "{text}{}",
        err(&o)
    );
    assert!(text.contains("reset and restarted"), "{text}");
    assert!(
        err(&o).contains("loops"),
        "the VMM logs the bad chain: {}",
        err(&o)
    );
    verify(&o, 9, &std::fs::read(&disk).unwrap());
}
