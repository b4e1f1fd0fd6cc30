//! Crash safety: a child process writes an image and flushes from time to time; the parent
//! kills it with SIGKILL at many points. Afterwards `qemu-img check` must find no corruption
//! (leaks are allowed) and every write acknowledged before the last completed flush must read
//! back, through our engine and through qemu-img.
//!
//! The child is this same test binary, re-run with `PADDOCK_CRASH_CHILD` set.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use paddock_disk::{CreateOptions, Format, OpenOptions};

const SIZE: u64 = 64 << 20;
const REGION: u64 = 256 << 10;
const WRITES: u64 = SIZE / REGION;
const FLUSH_EVERY: u64 = 4;

/// Write `i` goes to its own region (a permutation, so allocation order is not sequential) at
/// an unaligned offset inside it, with content derived from `i`.
fn write_of(i: u64) -> (u64, Vec<u8>) {
    let slot = (i * 37) % WRITES;
    let offset = slot * REGION + (i * 4099) % 8192;
    let len = 20_000 + ((i * 7919) % 100_000) as usize;
    let mut data = vec![0u8; len];
    Rng::new(i + 1).fill(&mut data);
    (offset, data)
}

fn child(path: &Path, format: Format) {
    let img = paddock_disk::open(path, &OpenOptions::write(Some(format))).expect("child open");
    for i in 0..WRITES {
        let (off, data) = write_of(i);
        img.write_at(&data, off).expect("child write");
        if (i + 1) % FLUSH_EVERY == 0 {
            img.flush().expect("child flush");
            println!("flushed {}", i + 1);
        }
    }
    img.finish().expect("finish");
    println!("done");
}

#[test]
fn crash_child() {
    // Only does something when run as the child of the crash tests below.
    if let (Ok(path), Ok(fmt)) = (
        std::env::var("PADDOCK_CRASH_CHILD"),
        std::env::var("PADDOCK_CRASH_FORMAT"),
    ) {
        child(Path::new(&path), fmt.parse().unwrap());
    }
}

fn crash_format(
    format: Format,
    options: &[(&str, &str)],
    kill_points: &[u64],
    repair_on_open: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for &kill_after in kill_points {
        let path = dir.path().join(format!("crash-{kill_after}.{format}"));
        let mut opts = CreateOptions::sized(SIZE);
        for (k, v) in options {
            opts.options.insert(k.to_string(), v.to_string());
        }
        paddock_disk::create(&path, format, &opts)
            .unwrap()
            .finish()
            .unwrap();
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("PADDOCK_CRASH_CHILD", &path)
            .env("PADDOCK_CRASH_FORMAT", format.name())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut flushed = 0;
        for line in BufReader::new(c.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("flushed ") {
                flushed = n.parse().unwrap();
                if flushed >= kill_after {
                    // SIGKILL while the child is already busy with the next writes.
                    c.kill().unwrap();
                    break;
                }
            }
        }
        let _ = c.wait();
        let p = path.to_str().unwrap();
        if repair_on_open {
            // A dirty image (lazy refcounts) is repaired by the next writable open.
            let img = paddock_disk::open(&path, &OpenOptions::write(Some(format))).unwrap();
            img.flush().unwrap();
        }
        let (code, text) = qemu_img_status(&["check", "-f", format.name(), p]);
        if code != 0 && code != 3 {
            failures.push(format!(
                "kill after {kill_after}: qemu-img check exit {code}: {text}"
            ));
            continue;
        }
        let img = paddock_disk::open(&path, &OpenOptions::read(Some(format))).unwrap();
        let raw = dir.path().join("expect.raw");
        run_qemu_img(&[
            "convert",
            "-f",
            format.name(),
            "-O",
            "raw",
            p,
            raw.to_str().unwrap(),
        ]);
        let theirs = std::fs::read(&raw).unwrap();
        for i in 0..flushed {
            let (off, data) = write_of(i);
            let mut got = vec![0u8; data.len()];
            img.read_at(&mut got, off).unwrap();
            if got != data {
                failures.push(format!(
                    "kill after {kill_after}: flushed write {i} lost (ours)"
                ));
            }
            if theirs[off as usize..off as usize + data.len()] != data[..] {
                failures.push(format!(
                    "kill after {kill_after}: flushed write {i} lost (qemu-img)"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}:\n{}", format, failures.join("\n"));
}

const KILL_POINTS: &[u64] = &[4, 8, 20, 36, 60, 100, 160, 200, 252];

#[test]
fn qcow2_survives_sigkill_during_writes() {
    if qemu_img("qcow2_survives_sigkill_during_writes") {
        crash_format(Format::Qcow2, &[], KILL_POINTS, false);
    }
}

#[test]
fn qcow2_with_lazy_refcounts_survives_sigkill() {
    if qemu_img("qcow2_with_lazy_refcounts_survives_sigkill") {
        crash_format(
            Format::Qcow2,
            &[("lazy_refcounts", "on")],
            &[8, 60, 200],
            true,
        );
    }
}

#[test]
fn vhdx_survives_sigkill_during_writes() {
    if qemu_img("vhdx_survives_sigkill_during_writes") {
        crash_format(Format::Vhdx, &[("block_size", "1M")], KILL_POINTS, false);
    }
}

#[test]
fn vmdk_survives_sigkill_during_writes() {
    if qemu_img("vmdk_survives_sigkill_during_writes") {
        crash_format(Format::Vmdk, &[], KILL_POINTS, false);
    }
}
