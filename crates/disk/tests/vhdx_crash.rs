//! VHDX crash consistency: a child process writes through our driver, flushing every fourth
//! write, and dies (abort: no destructors, no further flush) after N writes. The image must
//! pass `qemu-img check`, our own check, and hold every flushed write; unflushed writes read
//! as either their data or the old zeroes, never anything else.

use std::path::Path;
use std::process::Command;

use paddock_disk::{create, open, CreateOptions, Format, OpenOptions};

const ENV: &str = "PADDOCK_VHDX_CRASH";
const SIZE: u64 = 32 << 20;
const OPS: usize = 16;

fn op(i: usize) -> (u64, Vec<u8>) {
    let at = i as u64 * (3 << 19) + (i as u64 % 3) * 4096;
    let len = 65536 + i * 1000;
    let data = (0..len).map(|k| ((k * 7 + i * 13) as u8) | 1).collect();
    (at, data)
}

/// The child side: does its work only when the parent sets the variable (in a normal test run
/// it returns at once).
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let (path, n) = spec.rsplit_once(':').unwrap();
    let n: usize = n.parse().unwrap();
    let img = open(Path::new(path), &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    for i in 0..n {
        let (at, data) = op(i);
        img.write_at(&data, at).unwrap();
        if (i + 1) % 4 == 0 {
            img.flush().unwrap();
        }
    }
    std::process::abort();
}

fn qemu_ok(args: &[&str]) -> Option<bool> {
    Command::new("qemu-img").args(args).output().ok().map(|o| {
        if !o.status.success() {
            eprintln!(
                "qemu-img {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        o.status.success()
    })
}

#[test]
fn vhdx_survives_kill_between_flushes() {
    let dir = tempfile::tempdir().unwrap();
    for n in [1, 4, 6, 11, 16] {
        let p = dir.path().join(format!("c{n}.vhdx"));
        let mut o = CreateOptions::sized(SIZE);
        o.options.insert("block_size".into(), "1M".into());
        drop(create(&p, Format::Vhdx, &o).unwrap());
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--test-threads=1"])
            .env(ENV, format!("{}:{n}", p.display()))
            .output()
            .unwrap()
            .status;
        assert!(!status.success(), "child should have died after {n} writes");
        if let Some(ok) = qemu_ok(&["check", "-f", "vhdx", p.to_str().unwrap()]) {
            assert!(ok, "qemu-img check failed after a crash at {n}");
        } else {
            eprintln!("qemu-img not found; checking with our driver only");
        }
        let img = open(&p, &OpenOptions::read(Some(Format::Vhdx))).unwrap();
        let r = img.check(false).unwrap();
        assert!(r.is_clean(), "{n}: {:?}", r.messages);
        let flushed = n / 4 * 4;
        for i in 0..OPS {
            let (at, data) = op(i);
            let mut got = vec![0u8; data.len()];
            img.read_at(&mut got, at).unwrap();
            if i < flushed {
                assert!(got == data, "flushed write {i} lost after crash at {n}");
            } else if i < n {
                for (g, d) in got.chunks(512).zip(data.chunks(512)) {
                    assert!(g == d || g.iter().all(|&b| b == 0), "write {i} torn");
                }
            } else {
                assert!(got.iter().all(|&b| b == 0), "write {i} never happened");
            }
        }
        // qemu reads the same bytes we do.
        let raw = dir.path().join(format!("c{n}.raw"));
        if qemu_ok(&[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            p.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]) == Some(true)
        {
            let theirs = std::fs::read(&raw).unwrap();
            let mut ours = vec![0u8; SIZE as usize];
            img.read_at(&mut ours, 0).unwrap();
            assert!(theirs == ours, "qemu reads differently after crash at {n}");
        }
    }
}
