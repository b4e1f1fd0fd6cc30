//! Agreement with qemu-img, both ways, over a corpus qemu-img makes in every format and
//! subformat: our reader returns qemu-img's bytes, our info matches `qemu-img info`, and every
//! conversion we write passes `qemu-img check` and `qemu-img compare` against its source.

mod common;

use std::path::Path;

use common::*;
use paddock_disk::{ConvertOptions, CreateOptions, Format, OpenOptions, Progress};

const SIZE: u64 = 12 << 20;

fn corpus(test: &str) -> Option<(tempfile::TempDir, Vec<CorpusImage>)> {
    if !qemu_img(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = build_corpus(dir.path(), SIZE);
    Some((dir, images))
}

#[test]
fn reads_every_corpus_image_byte_for_byte_like_qemu_img() {
    let Some((_dir, images)) = corpus("reads_every_corpus_image_byte_for_byte_like_qemu_img")
    else {
        return;
    };
    let mut failures = Vec::new();
    for img in &images {
        match paddock_disk::open(&img.path, &OpenOptions::read(Some(img.format))) {
            Ok(ours) => {
                let got = read_all(ours.as_ref());
                let want = std::fs::read(&img.raw).unwrap();
                if let Some(at) = first_difference(&got, &want) {
                    failures.push(format!("{}: first difference at byte {at}", img.label));
                }
            }
            Err(e) => failures.push(format!("{}: open failed: {e}", img.label)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} images disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn qemu_info(path: &Path, fmt: Format) -> serde_json::Value {
    let out = run_qemu_img(&[
        "info",
        "--output=json",
        "-f",
        fmt.name(),
        path.to_str().unwrap(),
    ]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn info_agrees_with_qemu_img_info() {
    let Some((_dir, images)) = corpus("info_agrees_with_qemu_img_info") else {
        return;
    };
    let mut failures = Vec::new();
    for img in &images {
        // Probing must find the format qemu-img finds (fixed VHD has no header: qemu calls it raw).
        let probed = paddock_disk::open(&img.path, &OpenOptions::read(None)).map(|i| i.format());
        let q_probe: serde_json::Value = serde_json::from_slice(
            &run_qemu_img(&["info", "--output=json", img.path.to_str().unwrap()]).stdout,
        )
        .unwrap();
        if probed.as_ref().ok().map(|f| f.name()) != q_probe["format"].as_str() {
            failures.push(format!(
                "{}: probed {probed:?}, qemu-img probed {}",
                img.label, q_probe["format"]
            ));
        }
        let ours = match paddock_disk::open(&img.path, &OpenOptions::read(Some(img.format))) {
            Ok(i) => i.info(),
            Err(e) => {
                failures.push(format!("{}: {e}", img.label));
                continue;
            }
        };
        let q = qemu_info(&img.path, img.format);
        let mut check = |field: &str, ours: serde_json::Value| {
            if q.get(field).is_some() && q[field] != ours {
                failures.push(format!(
                    "{}: {field} ours {ours} qemu {}",
                    img.label, q[field]
                ));
            }
        };
        check("virtual-size", ours.virtual_size.into());
        check("cluster-size", ours.cluster_size.into());
        check("backing-filename", ours.backing_file.clone().into());
        check("dirty-flag", ours.dirty.into());
        if let Some(data) = q["format-specific"]["data"].as_object() {
            for key in [
                "compat",
                "refcount-bits",
                "lazy-refcounts",
                "compression-type",
                "extended-l2",
                "create-type",
            ] {
                if let Some(v) = data.get(key) {
                    if ours.specific.get(key) != Some(v) {
                        failures.push(format!(
                            "{}: format-specific {key} ours {:?} qemu {v}",
                            img.label,
                            ours.specific.get(key)
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Targets of the conversion matrix: (label, format, -o options, compress).
const TARGETS: &[(&str, &str, &str, bool)] = &[
    ("raw", "raw", "", false),
    ("qcow2", "qcow2", "", false),
    (
        "qcow2-v2-c4k",
        "qcow2",
        "compat=0.10,cluster_size=4096",
        false,
    ),
    ("qcow2-zlib", "qcow2", "", true),
    ("qcow2-zstd", "qcow2", "compression_type=zstd", true),
    // 512-byte clusters: each 2 MiB chunk's batch spans many L2 tables.
    ("qcow2-c512-zlib", "qcow2", "cluster_size=512", true),
    ("vmdk-sparse", "vmdk", "", false),
    ("vmdk-stream", "vmdk", "subformat=streamOptimized", false),
    ("vmdk-flat", "vmdk", "subformat=monolithicFlat", false),
    ("vpc-dynamic", "vpc", "", false),
    ("vpc-fixed", "vpc", "subformat=fixed", false),
    ("vhdx-dynamic", "vhdx", "", false),
    ("vhdx-fixed", "vhdx", "subformat=fixed", false),
    ("vdi", "vdi", "", false),
    ("vdi-static", "vdi", "static=on", false),
];

fn convert_with_engine(
    src: &CorpusImage,
    out: &Path,
    target: &(&str, &str, &str, bool),
) -> Result<(), String> {
    let (_, fmt, opts, compress) = *target;
    let fmt: Format = fmt.parse().map_err(|e| format!("{e}"))?;
    let s = paddock_disk::open(&src.path, &OpenOptions::read(Some(src.format)))
        .map_err(|e| format!("open: {e}"))?;
    let mut create = CreateOptions::sized(s.virtual_size());
    for kv in opts.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap();
        create.options.insert(k.into(), v.into());
    }
    let d = paddock_disk::create(out, fmt, &create).map_err(|e| format!("create: {e}"))?;
    let opts = ConvertOptions {
        compress,
        ..Default::default()
    };
    paddock_disk::convert(s.as_ref(), d.as_ref(), &opts, &Progress::new())
        .map_err(|e| format!("convert: {e}"))?;
    Ok(())
}

#[test]
fn every_conversion_passes_qemu_img_check_and_compare() {
    let Some((dir, images)) = corpus("every_conversion_passes_qemu_img_check_and_compare") else {
        return;
    };
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut failures = Vec::new();
    let mut done = 0;
    for src in &images {
        for target in TARGETS {
            let out = out_dir.join(format!("{}-to-{}.{}", src.label, target.0, target.1));
            if let Err(e) = convert_with_engine(src, &out, target) {
                failures.push(format!("{} -> {}: {e}", src.label, target.0));
                continue;
            }
            let o = out.to_str().unwrap();
            if ["qcow2", "vmdk", "vhdx", "vdi"].contains(&target.1) {
                let (code, text) = qemu_img_status(&["check", "-f", target.1, o]);
                if code != 0 {
                    failures.push(format!(
                        "{} -> {}: qemu-img check exit {code}: {text}",
                        src.label, target.0
                    ));
                }
            }
            let (code, text) = qemu_img_status(&[
                "compare",
                "-f",
                src.format.name(),
                "-F",
                target.1,
                src.path.to_str().unwrap(),
                o,
            ]);
            if code != 0 {
                failures.push(format!(
                    "{} -> {}: qemu-img compare exit {code}: {text}",
                    src.label, target.0
                ));
            }
            done += 1;
            let _ = std::fs::remove_file(&out);
            for side in std::fs::read_dir(&out_dir).unwrap().flatten() {
                let _ = std::fs::remove_file(side.path());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} conversions failed:\n{}",
        failures.len(),
        done + failures.len(),
        failures.join("\n")
    );
}
