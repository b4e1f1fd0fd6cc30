//! The `paddock image` commands as a user or script runs them: exit codes, JSON output,
//! qemu-img flag spelling, and errors that name the file and say what to do.

use std::path::Path;
use std::process::{Command, Output};

fn paddock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(args)
        .output()
        .expect("run paddock")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
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

fn write_pattern(path: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all_at(&data, 4096).unwrap();
    f.write_all_at(b"tail", size - 4).unwrap();
}

#[test]
fn create_info_and_resize_round_trip_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    let p = img.to_str().unwrap();
    let o = paddock(&[
        "image",
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        p,
        "64M",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = paddock(&["image", "info", "--output=json", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual-size"], 64 << 20);
    assert_eq!(v["cluster-size"], 4096);
    let o = paddock(&["image", "resize", p, "+64M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = paddock(&["image", "info", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["virtual-size"], 128 << 20);
    let o = paddock(&["image", "resize", p, "-64M"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--shrink"), "{}", stderr(&o));
}

#[test]
fn vhds_resize_and_a_fixed_one_is_not_resized_as_raw_by_probing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("azure.vhd");
    let p = img.to_str().unwrap();
    let o = paddock(&[
        "image",
        "create",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed,force_size=on",
        p,
        "30M",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::metadata(&img).unwrap().len();
    // Probing reads a fixed VHD as raw; growing it as raw would strand the footer.
    let o = paddock(&["image", "resize", p, "32M"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("-f vpc"), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), before);
    let o = paddock(&["image", "resize", "-f", "vhd", p, "32M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A dynamic VHD probes as vpc (it has a footer copy at offset 0): no -f needed.
    let dynamic = dir.path().join("dynamic.vhd");
    let d = dynamic.to_str().unwrap();
    let o = paddock(&["image", "create", "-f", "vpc", d, "30M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = paddock(&["image", "resize", d, "+1G"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = paddock(&["image", "check", d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = paddock(&["image", "info", "--json", "-f", "vpc", p]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["virtual-size"], 32 << 20);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), (32 << 20) + 512);
}

#[test]
fn convert_reports_json_progress_and_compare_exit_codes_follow_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    write_pattern(&src, 32 << 20);
    let dst = dir.path().join("dst.qcow2");
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let o = paddock(&[
        "image", "convert", "--json", "-f", "raw", "-O", "qcow2", s, d,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last_progress = lines
        .iter()
        .rfind(|v| v["event"] == "progress")
        .expect("a progress line");
    assert_eq!(last_progress["done"], 32 << 20);
    let o2 = paddock(&["image", "compare", s, d]);
    assert_eq!(o2.status.code(), Some(0), "{}{}", stdout(&o2), stderr(&o2));
    // Change one byte: exit 1 and the offset is named.
    let other = dir.path().join("other.raw");
    std::fs::copy(&src, &other).unwrap();
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&other)
            .unwrap()
            .write_all_at(b"X", 123_456)
            .unwrap();
    }
    let o = paddock(&[
        "image",
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        d,
        other.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("123456"), "{}", stdout(&o));
    let o = paddock(&["image", "compare", "--json", d, other.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["offset"], 123_456);
    // A missing file: exit 2 and the file is named.
    let o = paddock(&["image", "compare", d, "/nonexistent/x.img"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/x.img"), "{}", stderr(&o));
}

#[test]
fn converted_qcow2_passes_qemu_img_check_and_compare() {
    if !have_qemu_img("converted_qcow2_passes_qemu_img_check_and_compare") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    write_pattern(&src, 16 << 20);
    for (fmt, extra) in [
        ("qcow2", vec!["-c"]),
        ("vmdk", vec!["-o", "subformat=streamOptimized"]),
        ("vdi", vec![]),
    ] {
        let dst = dir.path().join(format!("out.{fmt}"));
        let mut args = vec!["image", "convert", "-O", fmt];
        args.extend(extra);
        args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        let o = paddock(&args);
        assert!(o.status.success(), "{fmt}: {}", stderr(&o));
        let q = Command::new("qemu-img")
            .args([
                "compare",
                "-f",
                "raw",
                "-F",
                fmt,
                src.to_str().unwrap(),
                dst.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            q.status.success(),
            "{fmt}: {}",
            String::from_utf8_lossy(&q.stdout)
        );
        let c = paddock(&["image", "check", "--json", dst.to_str().unwrap()]);
        assert_eq!(c.status.code(), Some(0), "{fmt}: {}", stdout(&c));
    }
}

#[test]
fn bad_usage_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.img");
    let o = paddock(&["image", "create", "-f", "qcow3", p.to_str().unwrap(), "1G"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown format 'qcow3'"),
        "{}",
        stderr(&o)
    );
    let o = paddock(&[
        "image",
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=3k",
        p.to_str().unwrap(),
        "1G",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cluster_size"), "{}", stderr(&o));
    let o = paddock(&[
        "image",
        "create",
        "-f",
        "raw",
        "-o",
        "bogus=1",
        p.to_str().unwrap(),
        "1G",
    ]);
    assert!(stderr(&o).contains("bogus"), "{}", stderr(&o));
    let o = paddock(&["image", "info", "/nonexistent/disk.qcow2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/disk.qcow2"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn backing_file_outside_the_allowed_directory_is_refused() {
    if !have_qemu_img("backing_file_outside_the_allowed_directory_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("pool");
    std::fs::create_dir(&inner).unwrap();
    let secret = dir.path().join("secret.raw");
    std::fs::write(&secret, vec![1u8; 1 << 20]).unwrap();
    let top = inner.join("top.qcow2");
    let q = Command::new("qemu-img")
        .args([
            "create",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "../secret.raw",
            "-F",
            "raw",
            top.to_str().unwrap(),
            "1M",
        ])
        .output()
        .unwrap();
    assert!(q.status.success());
    let o = paddock(&[
        "image",
        "convert",
        "-O",
        "raw",
        top.to_str().unwrap(),
        inner.join("out.raw").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("outside the allowed directories"),
        "{}",
        stderr(&o)
    );
    let o = paddock(&[
        "image",
        "convert",
        "--allow-dir",
        dir.path().to_str().unwrap(),
        "-O",
        "raw",
        top.to_str().unwrap(),
        inner.join("out.raw").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn completions_are_generated() {
    let o = paddock(&["completions", "bash"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("paddock"));
}
