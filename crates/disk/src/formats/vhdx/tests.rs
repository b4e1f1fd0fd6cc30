//! Unit tests of the vhdx driver: round trips on memory, the log (replay, overlay, CRC),
//! differencing disks with partially present blocks, 4 KiB sectors and concurrency.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use uuid::Uuid;

use super::format::*;
use super::log::{write_entry, NewEntry};
use super::parse::read_headers;
use super::Driver;
use crate::error::ErrorKind;
use crate::formats::FormatDriver;
use crate::image::{BlockImage, ExtentKind};
use crate::open::{open, CreateOptions, OpenContext, OpenOptions};
use crate::storage::{FileStorage, MemStorage, Storage};
use crate::Format;

fn make(dir: &Path, name: &str, size: u64, opts: &[(&str, &str)]) -> PathBuf {
    let p = dir.join(name);
    let mut o = CreateOptions::sized(size);
    for (k, v) in opts {
        o.options.insert(k.to_string(), v.to_string());
    }
    drop(Driver.create(&p, &o).unwrap());
    p
}

fn mem(bytes: Vec<u8>, writable: bool) -> crate::Result<Box<dyn BlockImage>> {
    let s: Box<dyn Storage> = if writable {
        Box::new(MemStorage::new(bytes, 1 << 30))
    } else {
        Box::new(MemStorage::read_only(bytes))
    };
    Driver.open(s, &OpenContext::isolated(writable))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn err<T>(r: crate::Result<T>) -> crate::Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn read(img: &dyn BlockImage, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    img.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn dynamic_round_trip_on_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "d.vhdx", 20 << 20, &[("block_size", "1M")]);
    let img = mem(std::fs::read(&p).unwrap(), true).unwrap();
    assert_eq!(img.info().cluster_size, Some(MIB));
    assert_eq!(img.info().subformat.as_deref(), Some("dynamic"));
    let e = img.block_status(0, 20 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Zero, 20 << 20));
    let a = pattern(3 << 20, 5);
    img.write_at(&a, (1 << 20) - 512).unwrap();
    img.write_at(&pattern(4096, 9), 10 << 20).unwrap();
    assert_eq!(read(&*img, (1 << 20) - 512, a.len()), a);
    // Blocks 0-3 were allocated in order, so they map as one contiguous run.
    let e = img.block_status(0, 20 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Data, 4 << 20));
    let e2 = img.block_status(MIB, 20 << 20).unwrap();
    assert_eq!(e2.host_offset, e.host_offset.map(|h| h + MIB));
    let e = img.block_status(4 << 20, 20 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Zero, 6 << 20));
    // Whole blocks zeroed with unmap become zero blocks; partial ones read as zero.
    img.write_zeroes(2 << 20, 1 << 20, true).unwrap();
    img.write_zeroes((3 << 20) + 100, 1000, false).unwrap();
    let e = img.block_status(2 << 20, 1 << 20).unwrap();
    assert_eq!(e.kind, ExtentKind::Zero);
    let mut expect = vec![0u8; 20 << 20];
    expect[(1 << 20) - 512..(1 << 20) - 512 + a.len()].copy_from_slice(&a);
    expect[10 << 20..(10 << 20) + 4096].copy_from_slice(&pattern(4096, 9));
    expect[2 << 20..3 << 20].fill(0);
    expect[(3 << 20) + 100..(3 << 20) + 1100].fill(0);
    assert!(read(&*img, 0, 20 << 20) == expect);
    img.flush().unwrap();
    let r = img.check(false).unwrap();
    assert!(r.is_clean(), "{:?}", r.messages);
    assert_eq!(r.allocated_clusters, Some(4));
}

#[test]
fn memory_images_reopen_with_flushed_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "d.vhdx", 8 << 20, &[("block_size", "2M")]);
    let s = Arc::new(MemStorage::new(std::fs::read(&p).unwrap(), 1 << 30));
    #[derive(Debug)]
    struct Shared(Arc<MemStorage>);
    impl Storage for Shared {
        fn read_at(&self, b: &mut [u8], o: u64) -> std::io::Result<usize> {
            self.0.read_at(b, o)
        }
        fn write_all_at(&self, b: &[u8], o: u64) -> std::io::Result<()> {
            self.0.write_all_at(b, o)
        }
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn set_len(&self, l: u64) -> std::io::Result<()> {
            self.0.set_len(l)
        }
        fn sync(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn is_read_only(&self) -> bool {
            false
        }
    }
    let img = Driver
        .open(Box::new(Shared(s.clone())), &OpenContext::isolated(true))
        .unwrap();
    img.write_at(&pattern(8192, 1), 3 << 20).unwrap();
    img.flush().unwrap();
    // A second block written but never flushed: the copy taken now must still open cleanly
    // and show the flushed block (the crash case).
    img.write_at(&pattern(8192, 2), 6 << 20).unwrap();
    let crashed = s.contents();
    let again = mem(crashed, false).unwrap();
    assert_eq!(read(&*again, 3 << 20, 8192), pattern(8192, 1));
    assert!(again.check(false).unwrap().is_clean());
    drop(img);
    let again = mem(s.contents(), false).unwrap();
    assert_eq!(read(&*again, 6 << 20, 8192), pattern(8192, 2));
}

#[test]
fn fixed_images_keep_blocks_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "f.vhdx",
        5 << 20,
        &[("subformat", "fixed"), ("block_size", "1M")],
    );
    let img = open(&p, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    assert_eq!(img.info().subformat.as_deref(), Some("fixed"));
    // Allocated in this layer: data, or zero where the payload is still a host-file hole.
    let e = img.block_status(0, 5 << 20).unwrap();
    assert_ne!(e.kind, ExtentKind::Unallocated);
    assert_eq!(e.length, 5 << 20);
    img.write_at(&pattern(4096, 3), 2 << 20).unwrap();
    img.write_zeroes(2 << 20, 1 << 20, true).unwrap();
    let e = img.block_status(2 << 20, 1 << 20).unwrap();
    assert_ne!(e.kind, ExtentKind::Unallocated);
    assert_eq!(e.length, 1 << 20);
    assert!(read(&*img, 2 << 20, 4096).iter().all(|&b| b == 0));
}

#[test]
fn four_k_logical_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "4k.vhdx",
        40 << 20,
        &[("logical_sector_size", "4096"), ("block_size", "1M")],
    );
    let img = open(&p, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    assert_eq!(img.info().specific["logical-sector-size"], 4096);
    img.write_at(&pattern(12288, 4), 33 << 20).unwrap();
    drop(img);
    let img = open(&p, &OpenOptions::read(Some(Format::Vhdx))).unwrap();
    assert_eq!(read(&*img, 33 << 20, 12288), pattern(12288, 4));
    let g = Geometry::new(40 << 20, MIB, 4096, 4096, false).unwrap();
    assert_eq!(g.chunk_ratio, 32768);
}

#[test]
fn concurrent_writers_allocate_safely() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "c.vhdx", 32 << 20, &[("block_size", "1M")]);
    let img: Arc<dyn BlockImage> = Arc::from(mem(std::fs::read(&p).unwrap(), true).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                for k in 0..16u64 {
                    // Threads interleave within the same blocks.
                    let off = k * (2 << 20) + u64::from(t) * 65536;
                    img.write_at(&pattern(65536, t), off).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for k in 0..16u64 {
        for t in 0..8u8 {
            let off = k * (2 << 20) + u64::from(t) * 65536;
            assert_eq!(read(&*img, off, 65536), pattern(65536, t));
        }
    }
    img.flush().unwrap();
    assert!(img.check(false).unwrap().is_clean());
}

/// Turns `p` into a dirty image whose log allocates block 3 at the end of the file (data in
/// its first sector) and rewrites sector 1 of block 0 and zeroes its sector 2.
fn make_dirty(p: &Path) -> (Vec<u8>, u64) {
    let s = FileStorage::open(p, true).unwrap();
    let (mut h, slot, _) = read_headers(&s).unwrap();
    let file_len = s.len().unwrap();
    // Our writer: log at 1 MiB, metadata after the log, BAT after that.
    let bat_at = h.log_end() + MIB;
    let mut e0 = [0u8; 8];
    s.read_exact_at(&mut e0, bat_at).unwrap();
    let block0 = bat_offset(u64::from_le_bytes(e0));
    assert_ne!(block0, 0);
    let new_block = file_len.div_ceil(MIB) * MIB;
    let mut bat_sector = vec![0u8; 4096];
    s.read_exact_at(&mut bat_sector, bat_at).unwrap();
    put64(
        &mut bat_sector,
        3 * 8,
        bat_entry(PAYLOAD_FULLY_PRESENT, new_block),
    );
    // The block's space was allocated before the entry was logged (qemu does not extend
    // the file to LastFileOffset on replay, so the file already has it).
    s.set_len(new_block + MIB).unwrap();
    let data = vec![0xabu8; 4096];
    let fresh = vec![0xcdu8; 4096];
    h.log_guid = Uuid::new_v4();
    h.seq += 1;
    let entry = NewEntry {
        seq: 10,
        at: 0,
        tail: 0,
        data: &[
            (block0 + 4096, &data),
            (new_block, &fresh),
            (bat_at, &bat_sector),
        ],
        zeros: &[(block0 + 8192, 4096)],
        flushed_file_offset: new_block + MIB,
        last_file_offset: new_block + MIB,
    };
    write_entry(&s, &h, &entry).unwrap();
    s.write_all_at(&h.to_bytes(), HEADER_OFFSETS[1 - slot])
        .unwrap();
    s.sync().unwrap();
    (std::fs::read(p).unwrap(), h.log_offset)
}

fn expected_after_replay(before: &[u8]) -> Vec<u8> {
    let mut want = before.to_vec();
    want[4096..8192].fill(0xab);
    want[8192..12288].fill(0);
    want[3 << 20..(3 << 20) + 4096].fill(0xcd);
    want
}

#[test]
fn log_replay_read_only_overlay_and_writable_apply() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "l.vhdx", 8 << 20, &[("block_size", "1M")]);
    let img = open(&p, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    img.write_at(&pattern(1 << 20, 7), 0).unwrap();
    let before = read(&*img, 0, 8 << 20);
    drop(img);
    let (dirty_bytes, _) = make_dirty(&p);
    let want = expected_after_replay(&before);

    // Read-only: replayed in memory, reported dirty, file untouched.
    let ro = open(&p, &OpenOptions::read(Some(Format::Vhdx))).unwrap();
    assert!(ro.info().dirty);
    assert!(read(&*ro, 0, 8 << 20) == want);
    assert!(!ro.check(false).unwrap().is_clean());
    drop(ro);
    assert!(std::fs::read(&p).unwrap() == dirty_bytes);

    // qemu-img agrees on what the log means, when it is installed.
    if Path::new("/usr/bin/qemu-img").exists() {
        let q = dir.path().join("q.vhdx");
        std::fs::copy(&p, &q).unwrap();
        let out = Command::new("qemu-img")
            .args(["check", "-r", "all", "-f", "vhdx"])
            .arg(&q)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let raw = dir.path().join("q.raw");
        let st = Command::new("qemu-img")
            .args(["convert", "-f", "vhdx", "-O", "raw"])
            .arg(&q)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(
            std::fs::read(&raw).unwrap() == want,
            "qemu replays differently"
        );
    }

    // Writable: applied to the file and the log GUID cleared.
    let rw = open(&p, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    assert!(!rw.info().dirty);
    assert!(read(&*rw, 0, 8 << 20) == want);
    drop(rw);
    let s = FileStorage::open(&p, false).unwrap();
    assert!(read_headers(&s).unwrap().0.log_guid.is_nil());
    let ro = open(&p, &OpenOptions::read(Some(Format::Vhdx))).unwrap();
    assert!(read(&*ro, 0, 8 << 20) == want);
    assert!(ro.check(false).unwrap().is_clean());
}

#[test]
fn log_entry_with_bad_crc_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "l.vhdx", 8 << 20, &[("block_size", "1M")]);
    let img = open(&p, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    img.write_at(&pattern(1 << 20, 7), 0).unwrap();
    let before = read(&*img, 0, 8 << 20);
    drop(img);
    let (mut bytes, log_at) = make_dirty(&p);
    // Flip a byte in the first data sector: the entry's CRC no longer matches.
    bytes[(log_at + 4096 + 100) as usize] ^= 0xff;
    let ro = mem(bytes.clone(), false).unwrap();
    assert!(!ro.info().dirty);
    assert!(read(&*ro, 0, 8 << 20) == before);
    // A descriptor whose sequence number disagrees is refused just the same.
    let (mut bytes, log_at) = make_dirty(&p);
    bytes[(log_at + 64 + 24) as usize] ^= 1;
    let ro = mem(bytes, false).unwrap();
    assert!(!ro.info().dirty);
}

#[test]
fn log_tail_outside_the_sequence_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "l.vhdx", 8 << 20, &[("block_size", "1M")]);
    let s = FileStorage::open(&p, true).unwrap();
    let (mut h, slot, _) = read_headers(&s).unwrap();
    h.log_guid = Uuid::new_v4();
    h.seq += 1;
    let zero_at = 4 << 20;
    let entry = NewEntry {
        seq: 3,
        at: 8192,
        tail: 0,
        data: &[],
        zeros: &[(zero_at, 4096)],
        flushed_file_offset: 0,
        last_file_offset: 0,
    };
    write_entry(&s, &h, &entry).unwrap();
    s.write_all_at(&h.to_bytes(), HEADER_OFFSETS[1 - slot])
        .unwrap();
    drop(s);
    let e = err(open(&p, &OpenOptions::read(Some(Format::Vhdx))));
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("tail"), "{e}");
}

#[test]
fn differencing_disks_read_through_parent_and_bitmaps() {
    let dir = tempfile::tempdir().unwrap();
    let base = make(dir.path(), "base.vhdx", 8 << 20, &[("block_size", "1M")]);
    let img = open(&base, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    img.write_at(&vec![0x22; 8 << 20], 0).unwrap();
    drop(img);
    let child = dir.path().join("child.vhdx");
    let mut o = CreateOptions::sized(8 << 20);
    o.backing_file = Some("base.vhdx".into());
    o.options.insert("block_size".into(), "1M".into());
    let img = Driver.create(&child, &o).unwrap();
    assert_eq!(img.info().backing_file.as_deref(), Some("base.vhdx"));
    assert_eq!(img.info().subformat.as_deref(), Some("differencing"));
    let e = img.block_status(0, 8 << 20).unwrap();
    assert_eq!((e.kind, e.length), (ExtentKind::Unallocated, 8 << 20));
    assert!(read(&*img, 0, 8 << 20).iter().all(|&b| b == 0x22));
    img.write_at(&[0x33; 4096], MIB + 4096).unwrap();
    let b = read(&*img, MIB, MIB as usize);
    assert!(b[..4096].iter().all(|&x| x == 0x22));
    assert!(b[4096..8192].iter().all(|&x| x == 0x33));
    assert!(b[8192..].iter().all(|&x| x == 0x22));
    drop(img);

    // Hand-build a partially present block 2: its first 8 sectors live here.
    let s = FileStorage::open(&child, true).unwrap();
    let (h, _, _) = read_headers(&s).unwrap();
    let bat_at = h.log_end() + MIB;
    let geo = Geometry::new(8 << 20, MIB, 512, 512, true).unwrap();
    let end = s.len().unwrap().div_ceil(MIB) * MIB;
    let (block_at, bitmap_at) = (end, end + MIB);
    let mut bitmap = vec![0u8; MIB as usize];
    let first_sector = (2 * MIB / 512) as usize;
    for k in first_sector..first_sector + 8 {
        bitmap[k / 8] |= 1 << (k % 8);
    }
    s.write_all_at(&bitmap, bitmap_at).unwrap();
    s.write_all_at(&[0x44; 4096], block_at).unwrap();
    let put = |i: usize, v: u64| s.write_all_at(&v.to_le_bytes(), bat_at + i as u64 * 8);
    put(
        geo.payload_index(2),
        bat_entry(PAYLOAD_PARTIALLY_PRESENT, block_at),
    )
    .unwrap();
    put(geo.bitmap_index(0), bat_entry(SB_PRESENT, bitmap_at)).unwrap();
    drop(s);

    let img = open(&child, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    let b = read(&*img, 2 * MIB, MIB as usize);
    assert!(b[..4096].iter().all(|&x| x == 0x44));
    assert!(b[4096..].iter().all(|&x| x == 0x22));
    let e = img.block_status(2 * MIB, MIB).unwrap();
    assert_eq!(
        (e.kind, e.length, e.host_offset),
        (ExtentKind::Data, 4096, Some(block_at))
    );
    let e = img.block_status(2 * MIB + 4096, MIB).unwrap();
    assert_eq!(e.kind, ExtentKind::Unallocated);
    assert!(img.check(false).unwrap().is_clean());
    // Writing completes the block from the parent.
    img.write_at(&[0x55; 512], 2 * MIB + 8192).unwrap();
    let b = read(&*img, 2 * MIB, MIB as usize);
    assert!(b[..4096].iter().all(|&x| x == 0x44));
    assert!(b[4096..8192].iter().all(|&x| x == 0x22));
    assert!(b[8192..8704].iter().all(|&x| x == 0x55));
    assert!(b[8704..].iter().all(|&x| x == 0x22));
    assert_eq!(
        img.block_status(2 * MIB, MIB).unwrap().kind,
        ExtentKind::Data
    );
    // Whole-block discard makes a zero block that hides the parent.
    img.discard(3 * MIB, MIB).unwrap();
    assert!(read(&*img, 3 * MIB, 4096).iter().all(|&x| x == 0));
    assert_eq!(
        img.block_status(3 * MIB, MIB).unwrap().kind,
        ExtentKind::Zero
    );
    drop(img);

    // Writing to the parent changes its data write GUID: the child no longer opens.
    let img = open(&base, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    img.write_at(&[1; 512], 0).unwrap();
    drop(img);
    let e = err(open(&child, &OpenOptions::read(Some(Format::Vhdx))));
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("data write GUID"), "{e}");
}

#[test]
fn differencing_disk_without_backing_permission_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "base.vhdx", 4 << 20, &[]);
    let child = dir.path().join("child.vhdx");
    let mut o = CreateOptions::sized(4 << 20);
    o.backing_file = Some("base.vhdx".into());
    drop(Driver.create(&child, &o).unwrap());
    let e = err(mem(std::fs::read(&child).unwrap(), false));
    assert_eq!(e.kind(), ErrorKind::PathNotAllowed, "{e}");
}

#[test]
fn create_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.vhdx");
    for (k, v) in [
        ("block_size", "3M"),
        ("block_size", "512M"),
        ("log_size", "1000"),
        ("subformat", "sparse"),
        ("logical_sector_size", "1024"),
        ("cluster_size", "1M"),
    ] {
        let mut o = CreateOptions::sized(1 << 30);
        o.options.insert(k.into(), v.into());
        assert!(Driver.create(&p, &o).is_err(), "{k}={v} accepted");
    }
    assert!(Driver.create(&p, &CreateOptions::sized(65 << 40)).is_err());
    assert_eq!(super::create::auto_block_size(1 << 30), 8 * MIB);
    assert_eq!(super::create::auto_block_size(2 << 30), 16 * MIB);
    assert_eq!(super::create::auto_block_size(200 << 30), 32 * MIB);
}

#[test]
fn log_replays_the_newest_sequence_from_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "l.vhdx", 8 << 20, &[("block_size", "1M")]);
    let img = open(&p, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    img.write_at(&pattern(1 << 20, 7), 0).unwrap();
    drop(img);
    let s = FileStorage::open(&p, true).unwrap();
    let (mut h, slot, _) = read_headers(&s).unwrap();
    let bat_at = h.log_end() + MIB;
    let mut e0 = [0u8; 8];
    s.read_exact_at(&mut e0, bat_at).unwrap();
    let block0 = bat_offset(u64::from_le_bytes(e0));
    h.log_guid = Uuid::new_v4();
    h.seq += 1;
    let len = s.len().unwrap();
    let entry = |seq: u64, at: u64, tail: u64, fill: u8, sector: u64| {
        let data = vec![fill; 4096];
        write_entry(
            &s,
            &h,
            &NewEntry {
                seq,
                at,
                tail,
                data: &[(block0 + sector * 4096, &data)],
                zeros: &[],
                flushed_file_offset: len,
                last_file_offset: len,
            },
        )
        .unwrap()
    };
    // A stale older sequence, then the active one: seq 5 at 0 (the tail), seq 6 after it.
    entry(2, 64 << 10, 64 << 10, 0x11, 1);
    let l = entry(5, 0, 0, 0x55, 2);
    entry(6, l, 0, 0x66, 3);
    // A lone entry with a higher number but a foreign log GUID is not part of any sequence.
    let mut foreign = h.clone();
    foreign.log_guid = Uuid::new_v4();
    write_entry(
        &s,
        &foreign,
        &NewEntry {
            seq: 99,
            at: 512 << 10,
            tail: 512 << 10,
            data: &[(block0, &[0x99; 4096])],
            zeros: &[],
            flushed_file_offset: len,
            last_file_offset: len,
        },
    )
    .unwrap();
    s.write_all_at(&h.to_bytes(), HEADER_OFFSETS[1 - slot])
        .unwrap();
    drop(s);
    let img = open(&p, &OpenOptions::read(Some(Format::Vhdx))).unwrap();
    assert!(img.info().dirty);
    let b = read(&*img, 0, 5 * 4096);
    let orig = pattern(1 << 20, 7);
    assert_eq!(b[..4096], orig[..4096], "foreign entry must not replay");
    assert_eq!(
        b[4096..8192],
        orig[4096..8192],
        "stale sequence must not replay"
    );
    assert!(b[8192..12288].iter().all(|&x| x == 0x55));
    assert!(b[12288..16384].iter().all(|&x| x == 0x66));
    assert_eq!(b[16384..], orig[16384..5 * 4096]);
}

#[test]
fn log_entries_may_wrap_around_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "w.vhdx",
        8 << 20,
        &[("subformat", "fixed"), ("block_size", "1M")],
    );
    let s = FileStorage::open(&p, true).unwrap();
    let (mut h, slot, _) = read_headers(&s).unwrap();
    h.log_guid = Uuid::new_v4();
    h.seq += 1;
    let len = s.len().unwrap();
    let at = u64::from(h.log_length) - 4096;
    let target = len - 4096;
    write_entry(
        &s,
        &h,
        &NewEntry {
            seq: 1,
            at,
            tail: at,
            data: &[(target, &[0x77; 4096])],
            zeros: &[],
            flushed_file_offset: len,
            last_file_offset: len,
        },
    )
    .unwrap();
    s.write_all_at(&h.to_bytes(), HEADER_OFFSETS[1 - slot])
        .unwrap();
    drop(s);
    let img = open(&p, &OpenOptions::write(Some(Format::Vhdx))).unwrap();
    assert!(read(&*img, (8 << 20) - 4096, 4096)
        .iter()
        .all(|&x| x == 0x77));
}
