//! Backing chains through the CLI: create on a backing file, rebase (safe and unsafe), commit,
//! and map through the chain — checked against qemu-img where it is installed.

use std::path::Path;
use std::process::{Command, Output};

fn paddock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(args)
        .output()
        .expect("run paddock")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn have_qemu_img(test: &str) -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP {test}: qemu-img is not installed (run scripts/setup.sh)");
    }
    ok
}

fn write_raw(path: &Path, size: u64, writes: &[(u64, u8, usize)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(off, byte, len) in writes {
        f.write_all_at(&vec![byte; len], off).unwrap();
    }
}

fn qemu_compare(a: &Path, b: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .unwrap()
        .status
        .success()
}

/// base.qcow2 <- top.qcow2, where top holds one region of its own.
fn chain(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let raw = dir.join("base.raw");
    write_raw(&raw, 8 << 20, &[(0, 1, 1 << 20), (4 << 20, 2, 100_000)]);
    let base = dir.join("base.qcow2");
    ok(&paddock(&[
        "image",
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]));
    let top = dir.join("top.qcow2");
    ok(&paddock(&[
        "image",
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]));
    // The guest's view: base plus a write in the top layer.
    let view = dir.join("view.raw");
    write_raw(
        &view,
        8 << 20,
        &[(0, 1, 1 << 20), (4 << 20, 2, 100_000), (6 << 20, 3, 70_000)],
    );
    let patch = dir.join("patch.raw");
    write_raw(&patch, 8 << 20, &[(6 << 20, 3, 70_000)]);
    // Write the top layer's data through the engine: convert -n into the existing overlay
    // copies only the patch's data (zeroes are skipped because the target is not rewritten).
    ok(&paddock(&[
        "image",
        "convert",
        "-n",
        "--target-is-zero",
        "-f",
        "raw",
        "-O",
        "qcow2",
        patch.to_str().unwrap(),
        top.to_str().unwrap(),
    ]));
    (base, top, view)
}

#[test]
fn overlay_reads_through_its_backing_file_and_maps_depths() {
    let dir = tempfile::tempdir().unwrap();
    let (_base, top, view) = chain(dir.path());
    let o = paddock(&[
        "image",
        "compare",
        top.to_str().unwrap(),
        view.to_str().unwrap(),
    ]);
    ok(&o);
    let o = paddock(&["image", "map", "--output=json", top.to_str().unwrap()]);
    ok(&o);
    let map: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        map.iter().any(|e| e["depth"] == 0 && e["data"] == true),
        "{map:?}"
    );
    assert!(
        map.iter().any(|e| e["depth"] == 1 && e["data"] == true),
        "{map:?}"
    );
    let o = paddock(&[
        "image",
        "info",
        "--backing-chain",
        "--json",
        top.to_str().unwrap(),
    ]);
    ok(&o);
    let chain: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["backing-filename"], "base.qcow2");
}

#[test]
fn safe_rebase_onto_nothing_flattens_and_keeps_the_guest_view() {
    let dir = tempfile::tempdir().unwrap();
    let (base, top, view) = chain(dir.path());
    ok(&paddock(&[
        "image",
        "rebase",
        "-b",
        "",
        top.to_str().unwrap(),
    ]));
    std::fs::remove_file(&base).unwrap();
    let o = paddock(&["image", "info", "--json", top.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.get("backing-filename").is_none(), "{v}");
    ok(&paddock(&[
        "image",
        "compare",
        top.to_str().unwrap(),
        view.to_str().unwrap(),
    ]));
    if have_qemu_img("safe_rebase_onto_nothing_flattens_and_keeps_the_guest_view") {
        assert!(qemu_compare(&top, &view));
        let c = Command::new("qemu-img")
            .args(["check", top.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
    }
}

#[test]
fn unsafe_rebase_only_rewrites_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let (base, top, _view) = chain(dir.path());
    std::fs::rename(&base, dir.path().join("moved.qcow2")).unwrap();
    // The chain is broken: opening with the backing file fails and names it.
    let o = paddock(&[
        "image",
        "compare",
        top.to_str().unwrap(),
        top.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("base.qcow2"));
    ok(&paddock(&[
        "image",
        "rebase",
        "-u",
        "-b",
        "moved.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]));
    let o = paddock(&["image", "info", "--json", top.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["backing-filename"], "moved.qcow2");
}

#[test]
fn commit_moves_the_overlay_data_into_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let (base, top, view) = chain(dir.path());
    ok(&paddock(&["image", "commit", top.to_str().unwrap()]));
    // The base alone now shows the guest view, and the overlay still does.
    ok(&paddock(&[
        "image",
        "compare",
        base.to_str().unwrap(),
        view.to_str().unwrap(),
    ]));
    ok(&paddock(&[
        "image",
        "compare",
        top.to_str().unwrap(),
        view.to_str().unwrap(),
    ]));
    let o = paddock(&["image", "map", "--json", top.to_str().unwrap()]);
    let map: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        !map.iter().any(|e| e["depth"] == 0 && e["data"] == true),
        "overlay emptied: {map:?}"
    );
    if have_qemu_img("commit_moves_the_overlay_data_into_the_base") {
        assert!(qemu_compare(&base, &view));
        let c = Command::new("qemu-img")
            .args(["check", base.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
    }
}

#[test]
fn check_repair_frees_leaked_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("leaky.qcow2");
    let p = img.to_str().unwrap();
    ok(&paddock(&["image", "create", "-f", "qcow2", p, "4M"]));
    // Make the leak a crash makes: a cluster with a refcount that nothing references. Read the
    // header (big-endian), find the first refcount block, give cluster 10 a refcount of 1
    // (16-bit refcounts, the default) and grow the file to hold it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut h = [0u8; 104];
        f.read_exact_at(&mut h, 0).unwrap();
        let cluster_bits = u32::from_be_bytes(h[20..24].try_into().unwrap());
        let rt = u64::from_be_bytes(h[48..56].try_into().unwrap());
        assert_eq!(
            u32::from_be_bytes(h[96..100].try_into().unwrap()),
            4,
            "16-bit refcounts"
        );
        let mut e = [0u8; 8];
        f.read_exact_at(&mut e, rt).unwrap();
        let block = u64::from_be_bytes(e);
        f.write_all_at(&1u16.to_be_bytes(), block + 2 * 10).unwrap();
        f.set_len(11 << cluster_bits).unwrap();
    }
    let o = paddock(&["image", "check", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["leaks"], 1, "{v}");
    assert_eq!(v["corruptions"], 0, "{v}");
    assert_eq!(o.status.code(), Some(3));
    let o = paddock(&["image", "check", "-r", "leaks", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["leaks-fixed"], 1, "{v}");
    assert_eq!(o.status.code(), Some(0), "{v}");
    let o = paddock(&["image", "check", p]);
    assert_eq!(o.status.code(), Some(0));
    if have_qemu_img("check_repair_frees_leaked_clusters") {
        let c = Command::new("qemu-img")
            .args(["check", p])
            .output()
            .unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stdout));
    }
}
