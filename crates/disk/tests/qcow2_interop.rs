//! qcow2 interoperability with qemu-img: images qemu-img makes read byte-for-byte like
//! `qemu-img convert -O raw`, `info` and `map` agree, and images we write pass
//! `qemu-img check` and `qemu-img compare`.

use std::path::Path;
use std::process::Command;

use paddock_disk::{create, open, BlockImage, CreateOptions, ExtentKind, Format, OpenOptions};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("qemu-img not found: skipping qcow2 interop test");
    }
    ok
}

fn qemu(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    out
}

fn qemu_ok(args: &[&str]) {
    let out = qemu(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A disk pattern: text, random data, zero runs, holes, repeated bytes.
fn pattern(size: u64, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut d = vec![0u8; size as usize];
    let mut at = 0usize;
    let mut k = 0;
    while at < d.len() {
        let len = (rng.gen_range(1..300) * 1024 + rng.gen_range(0..700)).min(d.len() - at);
        match k % 5 {
            0 => {
                let text = b"The quick brown fox jumps over the lazy qcow2 cluster. ";
                for (i, b) in d[at..at + len].iter_mut().enumerate() {
                    *b = text[i % text.len()];
                }
            }
            1 => rng.fill(&mut d[at..at + len]),
            2 | 4 => {}
            _ => d[at..at + len].fill((k % 251) as u8 + 1),
        }
        at += len;
        k += 1;
    }
    d
}

fn write_raw(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

fn qemu_to_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("qemu-out.raw");
    qemu_ok(&[
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let d = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    d
}

fn ours_to_raw(img: &dyn BlockImage) -> Vec<u8> {
    let size = img.virtual_size();
    let mut d = vec![0u8; size as usize];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(MIB + 4096);
        img.read_at(&mut d[at as usize..(at + n) as usize], at)
            .unwrap();
        at += n;
    }
    d
}

fn qemu_info(img: &Path) -> serde_json::Value {
    let out = qemu(&["info", "--output=json", img.to_str().unwrap()]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Our info agrees with qemu-img's on the fields we promise.
fn assert_info_matches(img: &dyn BlockImage, path: &Path) {
    let q = qemu_info(path);
    let ours = img.info();
    assert_eq!(
        q["virtual-size"].as_u64(),
        Some(ours.virtual_size),
        "virtual size"
    );
    assert_eq!(
        q["cluster-size"].as_u64(),
        ours.cluster_size,
        "cluster size"
    );
    assert_eq!(q["dirty-flag"].as_bool(), Some(ours.dirty), "dirty");
    assert_eq!(
        q["backing-filename"].as_str(),
        ours.backing_file.as_deref(),
        "backing file"
    );
    assert_eq!(
        q["backing-filename-format"].as_str(),
        ours.backing_format.as_deref(),
        "backing format"
    );
    let data = q["format-specific"]["data"].as_object().unwrap();
    for (k, v) in data {
        if [
            "compat",
            "lazy-refcounts",
            "refcount-bits",
            "corrupt",
            "extended-l2",
            "compression-type",
        ]
        .contains(&k.as_str())
        {
            assert_eq!(ours.specific.get(k), Some(v), "specific key {k}");
        }
    }
    for k in ours.specific.keys() {
        assert!(data.contains_key(k), "we report {k}, qemu does not");
    }
    let snaps = q["snapshots"].as_array().cloned().unwrap_or_default();
    assert_eq!(snaps.len(), ours.snapshots.len());
    for (s, o) in snaps.iter().zip(&ours.snapshots) {
        assert_eq!(s["id"].as_str(), Some(o.id.as_str()));
        assert_eq!(s["name"].as_str(), Some(o.name.as_str()));
        assert_eq!(s["vm-state-size"].as_u64(), Some(o.vm_state_size));
        assert_eq!(s["date-sec"].as_u64(), Some(o.date_sec));
    }
}

/// Our block_status agrees with `qemu-img map` of this layer (data / zero / unallocated).
fn assert_map_matches(img: &dyn BlockImage, path: &Path) {
    let out = qemu(&["map", "--output=json", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kind_of = |e: &serde_json::Value| {
        if e["depth"].as_u64() != Some(0) {
            ExtentKind::Unallocated
        } else if e["data"].as_bool() == Some(true) {
            ExtentKind::Data
        } else if e["present"].as_bool() == Some(true) && e["zero"].as_bool() == Some(true) {
            ExtentKind::Zero
        } else {
            ExtentKind::Unallocated
        }
    };
    let size = img.virtual_size();
    let mut ours = Vec::new();
    let mut at = 0;
    while at < size {
        let e = img.block_status(at, size - at).unwrap();
        assert!(e.length > 0);
        ours.push(e);
        at += e.length;
    }
    for q in &map {
        let start = q["start"].as_u64().unwrap();
        let end = start + q["length"].as_u64().unwrap();
        let want = kind_of(q);
        for e in ours
            .iter()
            .filter(|e| e.start < end && e.start + e.length > start)
        {
            // qemu reports unallocated zero-reading ranges of images without backing as
            // zero=true, present=false; both mean "not data".
            let got = e.kind;
            let same = got == want;
            assert!(
                same,
                "at {:#x}: qemu {want:?} ({q}), ours {got:?} ({e:?})",
                e.start.max(start)
            );
            if let (Some(h), Some(qh)) = (e.host_offset, q["offset"].as_u64()) {
                let s = e.start.max(start);
                assert_eq!(h + (s - e.start), qh + (s - start), "host offset at {s:#x}");
            }
        }
    }
}

/// Converts `raw` to qcow2 with qemu-img and checks our reader against qemu-img.
fn qemu_image_reads_like_qemu(dir: &Path, name: &str, opts: &str, compress: bool, size: u64) {
    let raw = dir.join(format!("{name}.src.raw"));
    write_raw(&raw, &pattern(size, size ^ name.len() as u64));
    let img = dir.join(format!("{name}.qcow2"));
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    if compress {
        args.push("-c");
    }
    args.extend([raw.to_str().unwrap(), img.to_str().unwrap()]);
    qemu_ok(&args);
    let ours = open(&img, &OpenOptions::read(Some(Format::Qcow2)))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let expect = qemu_to_raw(&img, dir);
    let got = ours_to_raw(ours.as_ref());
    assert!(
        got == expect,
        "{name}: our bytes differ from qemu-img convert"
    );
    assert_info_matches(ours.as_ref(), &img);
    assert_map_matches(ours.as_ref(), &img);
    let r = ours.check(false).unwrap();
    assert!(r.is_clean() && r.leaks == 0, "{name}: {r:?}");
}

#[test]
fn qemu_images_every_refcount_width() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for bits in [1, 2, 4, 8, 16, 32, 64] {
        let opts = format!("refcount_bits={bits}");
        qemu_image_reads_like_qemu(
            dir.path(),
            &format!("rc{bits}"),
            &opts,
            false,
            9 * MIB + 1536,
        );
    }
}

#[test]
fn qemu_images_cluster_sizes_and_compat() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in [
        ("cs512", "cluster_size=512"),
        ("cs4k", "cluster_size=4096"),
        ("cs64k", "cluster_size=65536"),
        ("cs2m", "cluster_size=2M"),
        ("v2", "compat=0.10"),
        ("v2cs4k", "compat=0.10,cluster_size=4096"),
        ("lazy", "lazy_refcounts=on"),
        ("extl2", "extended_l2=on"),
        ("prealloc", "preallocation=metadata"),
    ] {
        qemu_image_reads_like_qemu(dir.path(), name, opts, false, 7 * MIB + 512);
    }
}

#[test]
fn qemu_compressed_images_zlib_and_zstd() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    qemu_image_reads_like_qemu(dir.path(), "zlib", "", true, 6 * MIB);
    qemu_image_reads_like_qemu(dir.path(), "zstd", "compression_type=zstd", true, 6 * MIB);
    qemu_image_reads_like_qemu(dir.path(), "zlib4k", "cluster_size=4096", true, 3 * MIB);
    qemu_image_reads_like_qemu(dir.path(), "v2zlib", "compat=0.10", true, 3 * MIB);
    qemu_image_reads_like_qemu(
        dir.path(),
        "extl2zstd",
        "extended_l2=on,compression_type=zstd",
        true,
        3 * MIB,
    );
    qemu_image_reads_like_qemu(dir.path(), "zlib2m", "cluster_size=2M", true, 5 * MIB);
    qemu_image_reads_like_qemu(dir.path(), "zlib512", "cluster_size=512", true, MIB + 512);
}

/// A backing chain. The overlay holds only what differs from its base: it is made empty on
/// top of the modified image, then safely rebased onto the original base (qemu-img copies
/// the differing ranges into it).
#[test]
fn qemu_backing_chain_and_extended_l2_subclusters() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 8 * MIB;
    let base_data = pattern(size, 7);
    write_raw(&d.join("base.raw"), &base_data);
    let run = |args: &[&str]| {
        let out = Command::new("qemu-img")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["convert", "-O", "qcow2", "base.raw", "base.qcow2"]);
    let mut top = base_data.clone();
    for (off, len, v) in [
        (4096u64, 4096u64, 0x11u8),
        (3 * MIB + 100, 70_000, 0x22),
        (7 * MIB, 8192, 0),
    ] {
        top[off as usize..(off + len) as usize].fill(v);
    }
    write_raw(&d.join("top.raw"), &top);
    run(&["convert", "-O", "qcow2", "top.raw", "mod.qcow2"]);
    for (name, opts) in [("ov", "extended_l2=off"), ("ovx", "extended_l2=on")] {
        let file = format!("{name}.qcow2");
        run(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            opts,
            "-b",
            "mod.qcow2",
            "-F",
            "qcow2",
            &file,
        ]);
        run(&["rebase", "-b", "base.qcow2", "-F", "qcow2", &file]);
        let ov = d.join(&file);
        let img = open(&ov, &OpenOptions::read(Some(Format::Qcow2))).unwrap();
        assert!(img.backing().is_some());
        assert!(ours_to_raw(img.as_ref()) == top, "{name}");
        assert!(qemu_to_raw(&ov, d) == top, "{name}: qemu");
        assert_info_matches(img.as_ref(), &ov);
        assert_map_matches(img.as_ref(), &ov);
        // Most of the overlay is unallocated (reads come from the base).
        let e = img.block_status(MIB, size - MIB).unwrap();
        assert_eq!(e.kind, ExtentKind::Unallocated, "{name}: {e:?}");
    }
}

/// Internal snapshots are listed, and writing over shared clusters keeps the snapshot intact.
#[test]
fn qemu_internal_snapshot_listed_and_preserved_by_our_writes() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 4 * MIB;
    let data = pattern(size, 3);
    write_raw(&d.join("s.raw"), &data);
    let img_path = d.join("snap.qcow2");
    qemu_ok(&[
        "convert",
        "-O",
        "qcow2",
        d.join("s.raw").to_str().unwrap(),
        img_path.to_str().unwrap(),
    ]);
    qemu_ok(&["snapshot", "-c", "snap1", img_path.to_str().unwrap()]);
    {
        let img = open(&img_path, &OpenOptions::read(Some(Format::Qcow2))).unwrap();
        assert_eq!(img.info().snapshots.len(), 1);
        assert_eq!(img.info().snapshots[0].name, "snap1");
        assert_eq!(img.info().snapshots[0].disk_size, Some(size));
        assert_info_matches(img.as_ref(), &img_path);
        let r = img.check(false).unwrap();
        assert!(r.is_clean() && r.leaks == 0, "{r:?}");
    }
    let mut now = data.clone();
    {
        let img = open(&img_path, &OpenOptions::write(Some(Format::Qcow2))).unwrap();
        let w = vec![0x5au8; 100_000];
        img.write_at(&w, 12345).unwrap();
        now[12345..12345 + w.len()].copy_from_slice(&w);
        img.write_zeroes(2 * MIB, MIB, true).unwrap();
        now[2 * MIB as usize..3 * MIB as usize].fill(0);
        img.finish().unwrap();
    }
    let out = qemu(&["check", img_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(qemu_to_raw(&img_path, d), now);
    let snap_raw = d.join("snap1.raw");
    qemu_ok(&[
        "convert",
        "-l",
        "snapshot.name=snap1",
        "-O",
        "raw",
        img_path.to_str().unwrap(),
        snap_raw.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&snap_raw).unwrap() == data,
        "snapshot content changed"
    );
}

fn qemu_check_and_compare(img: &Path, expect: &[u8], dir: &Path, what: &str) {
    let out = qemu(&["check", "--output=json", img.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{what}: qemu-img check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = dir.join("expect.raw");
    std::fs::write(&raw, expect).unwrap();
    let out = qemu(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{what}: qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a mix of requests through our driver, mirroring them into `model`.
fn exercise(img: &dyn BlockImage, model: &mut [u8], seed: u64) {
    let size = model.len() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cu = img.info().cluster_size.unwrap();
    let mut writes: Vec<(u64, u64)> = vec![
        (0, 512),
        (cu - 100, 300),
        (size / 2, 2 * MIB.min(size / 4)),
        (size - 4096, 4096),
        (size / 3 + 7, 123_457.min(size / 4)),
    ];
    for _ in 0..20 {
        let len = rng.gen_range(1..(300 * 1024).min(size));
        writes.push((rng.gen_range(0..size - len), len));
    }
    for (i, (off, len)) in writes.into_iter().enumerate() {
        let mut buf = vec![0u8; len as usize];
        rng.fill(&mut buf[..]);
        if i % 4 == 3 {
            buf[..len as usize / 2].fill(0);
        }
        img.write_at(&buf, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&buf);
    }
    // Overwrite, zero (both ways), discard.
    let ops = [
        (size / 4, 3 * cu + 17, 0),
        (size / 5, 5 * cu, 1),
        (cu / 2, 2 * cu, 2),
        (size / 2 + cu, 4 * cu + 1000, 0),
    ];
    for (off, len, op) in ops {
        let len = len.min(size - off);
        match op {
            0 => img.write_zeroes(off, len, false).unwrap(),
            1 => img.write_zeroes(off, len, true).unwrap(),
            _ => {
                img.discard(off, len).unwrap();
            }
        }
        // Discard drops whole clusters and zeroes the partial ones: with no backing file,
        // the whole range reads as zeroes, exactly like write_zeroes.
        model[off as usize..(off + len) as usize].fill(0);
    }
    img.flush().unwrap();
    let mut back = vec![0u8; model.len()];
    img.read_at(&mut back, 0).unwrap();
    assert!(back == model, "read-back after writes differs");
}

#[test]
fn our_images_pass_qemu_check_and_compare() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, opts) in [
        "",
        "compat=0.10",
        "refcount_bits=1",
        "refcount_bits=2",
        "refcount_bits=8",
        "refcount_bits=64",
        "cluster_size=512",
        "cluster_size=2M",
        "lazy_refcounts=on",
        "compression_type=zstd",
        "preallocation=metadata",
        "preallocation=full,cluster_size=4096",
        "preallocation=falloc,refcount_bits=4",
    ]
    .into_iter()
    .enumerate()
    {
        let path = d.join(format!("w{i}.qcow2"));
        let size = 6 * MIB;
        let mut o = CreateOptions::sized(size);
        for kv in opts.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap();
            o.options.insert(k.into(), v.into());
        }
        let mut model = vec![0u8; size as usize];
        {
            let img = create(&path, Format::Qcow2, &o).unwrap();
            exercise(img.as_ref(), &mut model, i as u64);
            img.finish().unwrap();
        }
        qemu_check_and_compare(&path, &model, d, opts);
        let img = open(&path, &OpenOptions::read(Some(Format::Qcow2))).unwrap();
        assert_info_matches(img.as_ref(), &path);
        assert_map_matches(img.as_ref(), &path);
        let r = img.check(false).unwrap();
        assert!(r.is_clean() && r.leaks == 0, "{opts}: {r:?}");
    }
}

/// Compressed writes from several threads (zlib and zstd), then normal overwrites of some
/// compressed clusters.
#[test]
fn our_compressed_images_from_threads_pass_qemu() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for ct in ["zlib", "zstd"] {
        let path = d.join(format!("c-{ct}.qcow2"));
        let size = 8 * MIB;
        let mut o = CreateOptions::sized(size);
        o.options.insert("compression_type".into(), ct.into());
        let src = pattern(size, 11);
        let mut model = src.clone();
        {
            let img = create(&path, Format::Qcow2, &o).unwrap();
            let cw = img.compressed().unwrap();
            let unit = cw.compressed_unit() as usize;
            std::thread::scope(|s| {
                for t in 0..4 {
                    let src = &src;
                    s.spawn(move || {
                        for (i, chunk) in src.chunks(unit).enumerate().filter(|(i, _)| i % 4 == t) {
                            let c = cw.compress(chunk).unwrap();
                            cw.write_compressed((i * unit) as u64, chunk, &c).unwrap();
                        }
                    });
                }
            });
            let w = vec![0x77u8; 100_000];
            img.write_at(&w, 3 * MIB + 5).unwrap();
            model[3 * MIB as usize + 5..3 * MIB as usize + 5 + w.len()].copy_from_slice(&w);
            img.finish().unwrap();
        }
        qemu_check_and_compare(&path, &model, d, ct);
        assert_eq!(
            qemu_info(&path)["format-specific"]["data"]["compression-type"],
            ct
        );
        let img = open(&path, &OpenOptions::read(Some(Format::Qcow2))).unwrap();
        // Compressed clusters map as data without a host offset.
        let e = img.block_status(0, size).unwrap();
        assert_eq!(e.kind, ExtentKind::Data);
        assert_eq!(e.host_offset, None);
        // File is smaller than the data (compression paid off, clusters were packed).
        assert!(std::fs::metadata(&path).unwrap().len() < size * 3 / 4);
    }
}

/// Parallel 1 MiB writes (with 2 MiB clusters, two threads share each new cluster).
#[test]
fn parallel_writes_into_shared_clusters() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("par.qcow2");
    let size = 32 * MIB;
    let mut o = CreateOptions::sized(size);
    o.options.insert("cluster_size".into(), "2M".into());
    let src = pattern(size, 5);
    {
        let img = create(&path, Format::Qcow2, &o).unwrap();
        let img = img.as_ref();
        std::thread::scope(|s| {
            for t in 0..4usize {
                let src = &src;
                s.spawn(move || {
                    for (i, chunk) in src
                        .chunks(MIB as usize)
                        .enumerate()
                        .filter(|(i, _)| i % 4 == t)
                    {
                        img.write_at(chunk, i as u64 * MIB).unwrap();
                    }
                });
            }
        });
        img.finish().unwrap();
    }
    qemu_check_and_compare(&path, &src, dir.path(), "parallel");
}

/// An overlay we write on a qemu-made base; refcount table growth with small clusters;
/// resize with L1 growth; set_backing.
#[test]
fn our_overlay_growth_resize_and_rebase() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 4 * MIB;
    let base = pattern(size, 21);
    write_raw(&d.join("b.raw"), &base);
    qemu_ok(&[
        "convert",
        "-O",
        "qcow2",
        d.join("b.raw").to_str().unwrap(),
        d.join("b.qcow2").to_str().unwrap(),
    ]);
    let ov = d.join("o.qcow2");
    let mut o = CreateOptions::sized(0);
    o.backing_file = Some("b.qcow2".into());
    o.backing_format = Some(Format::Qcow2);
    let mut model = base.clone();
    {
        let img = create(&ov, Format::Qcow2, &o).unwrap();
        assert_eq!(img.virtual_size(), size);
        let w = vec![0xabu8; 5000];
        img.write_at(&w, 70_000).unwrap(); // partial cluster: COW from the base
        model[70_000..75_000].copy_from_slice(&w);
        img.write_zeroes(MIB, 200_000, false).unwrap();
        model[MIB as usize..MIB as usize + 200_000].fill(0);
        img.discard(2 * MIB, MIB).unwrap(); // reads from the base again
        img.finish().unwrap();
    }
    qemu_check_and_compare(&ov, &model, d, "overlay");
    let q = qemu_info(&ov);
    assert_eq!(q["backing-filename"], "b.qcow2");
    assert_eq!(q["backing-filename-format"], "qcow2");

    // Many small clusters: refcount blocks and the refcount table must grow.
    let small = d.join("small.qcow2");
    let mut o = CreateOptions::sized(24 * MIB);
    o.options.insert("cluster_size".into(), "512".into());
    o.options.insert("refcount_bits".into(), "64".into());
    let data = pattern(24 * MIB, 9);
    {
        let img = create(&small, Format::Qcow2, &o).unwrap();
        for (i, c) in data.chunks(MIB as usize).enumerate() {
            img.write_at(c, i as u64 * MIB).unwrap();
        }
        img.finish().unwrap();
    }
    qemu_check_and_compare(&small, &data, d, "small clusters");

    // Resize: grow past the L1 table, write at the end, then rebase onto nothing.
    let r = d.join("r.qcow2");
    let mut o = CreateOptions::sized(MIB);
    o.options.insert("cluster_size".into(), "4096".into());
    let mut model = vec![0u8; MIB as usize];
    {
        let img = create(&r, Format::Qcow2, &o).unwrap();
        img.write_at(&[1u8; 10_000], 1000).unwrap();
        model[1000..11_000].fill(1);
        img.resize(64 * MIB).unwrap();
        model.resize(64 * MIB as usize, 0);
        img.write_at(&[2u8; 8192], 63 * MIB).unwrap();
        model[63 * MIB as usize..63 * MIB as usize + 8192].fill(2);
        assert!(img.resize(MIB).is_err(), "shrinking over data must fail");
        img.resize(63 * MIB + 65536).unwrap();
        model.truncate(63 * MIB as usize + 65536);
        img.set_backing(Some(("nonexistent.qcow2", Some(Format::Qcow2))))
            .unwrap();
        img.set_backing(None).unwrap();
        img.finish().unwrap();
    }
    qemu_check_and_compare(&r, &model, d, "resize");
}

/// Lazy refcounts: an image left dirty (no close) is repaired on the next writable open.
#[test]
fn lazy_refcounts_dirty_image_is_rebuilt() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lazy.qcow2");
    let mut o = CreateOptions::sized(4 * MIB);
    o.options.insert("lazy_refcounts".into(), "on".into());
    let img = create(&path, Format::Qcow2, &o).unwrap();
    img.write_at(&[9u8; 300_000], 4096).unwrap();
    img.flush().unwrap();
    assert!(img.info().dirty, "dirty bit set while lazily writing");
    assert_eq!(qemu_info(&path)["dirty-flag"], true);
    std::mem::forget(img); // a crash: never closed
    let img = open(&path, &OpenOptions::write(Some(Format::Qcow2))).unwrap();
    assert!(!img.info().dirty);
    drop(img);
    let mut model = vec![0u8; 4 * MIB as usize];
    model[4096..304_096].fill(9);
    qemu_check_and_compare(&path, &model, dir.path(), "lazy");
}

/// The child half of `sigkill_during_writes_leaves_only_leaks`: writes numbered regions,
/// flushing after each and saying so on stdout, then waits to be killed.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var("PADDOCK_QCOW2_CRASH_IMAGE") else {
        return;
    };
    let img = open(Path::new(&path), &OpenOptions::write(Some(Format::Qcow2))).unwrap();
    for i in 0..CRASH_REGIONS {
        let (off, data) = crash_region(i);
        img.write_at(&data, off).unwrap();
        if i % 2 == 0 {
            img.write_zeroes(off + 20_000, 70_000, i % 4 == 0).unwrap();
        }
        img.flush().unwrap();
        println!("flushed {i}");
    }
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

const CRASH_REGIONS: u64 = 120;

/// Region `i`: 150 000 bytes at `i * 160 000` (regions share clusters), bytes derived from
/// `i`; even regions get a zeroed hole at 20 000..90 000.
fn crash_region(i: u64) -> (u64, Vec<u8>) {
    let data = (0..150_000u64)
        .map(|j| ((i * 7 + j / 1000) % 250) as u8 + 1)
        .collect();
    (i * 160_000, data)
}

fn crash_expected(i: u64) -> Vec<u8> {
    let (_, mut d) = crash_region(i);
    if i % 2 == 0 {
        d[20_000..90_000].fill(0);
    }
    d
}

/// SIGKILL a writer while it writes and flushes: qemu-img check finds no corruption (leaks
/// at most), every flushed region reads back, the others hold their own bytes or zeroes,
/// and a writable open plus repair leaves a clean image.
#[test]
fn sigkill_during_writes_leaves_only_leaks() {
    use std::io::BufRead;
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in [
        ("plain", ""),
        ("lazy", "lazy_refcounts"),
        ("small", "cluster_size"),
    ] {
        let path = dir.path().join(format!("crash-{name}.qcow2"));
        let mut o = CreateOptions::sized(CRASH_REGIONS * 160_000 + MIB);
        match opts {
            "lazy_refcounts" => {
                o.options.insert("lazy_refcounts".into(), "on".into());
            }
            "cluster_size" => {
                o.options.insert("cluster_size".into(), "4096".into());
            }
            _ => {}
        }
        create(&path, Format::Qcow2, &o).unwrap().finish().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PADDOCK_QCOW2_CRASH_IMAGE", &path)
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut flushed = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("flushed ") {
                let n: u64 = n.trim().parse().unwrap();
                flushed = Some(n);
                if n >= 40 {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let flushed = flushed.expect("child flushed nothing");
        let out = qemu(&["check", path.to_str().unwrap()]);
        let code = out.status.code().unwrap_or(-1);
        eprintln!("{name}: killed after flush {flushed}; qemu-img check exit {code}");
        assert!(
            code == 0 || code == 3,
            "{name}: qemu-img check exit {code}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let img = open(&path, &OpenOptions::read(Some(Format::Qcow2))).unwrap();
        let disk = ours_to_raw(img.as_ref());
        assert!(
            disk == qemu_to_raw(&path, dir.path()),
            "{name}: we and qemu disagree"
        );
        for i in 0..CRASH_REGIONS {
            let (off, _) = crash_region(i);
            let want = crash_expected(i);
            let got = &disk[off as usize..off as usize + want.len()];
            if i <= flushed {
                // Flushed before the kill.
                assert!(got == &want[..], "{name}: flushed region {i} lost");
            } else {
                assert!(
                    got.iter().zip(&want).all(|(&g, &w)| g == w || g == 0),
                    "{name}: region {i} holds foreign bytes"
                );
            }
        }
        drop(img);
        let img = open(&path, &OpenOptions::write(Some(Format::Qcow2))).unwrap();
        let r = img.check(true).unwrap();
        assert!(r.is_clean(), "{name}: {r:?}");
        drop(img);
        let out = qemu(&["check", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: after repair: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
