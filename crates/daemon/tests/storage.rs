//! Storage pools, volumes and tasks end to end, against a real paddockd; `qemu-img` is the
//! oracle for every image the daemon writes.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use paddock_api::storage::{Task, TaskState, Volume};
use paddock_api::VmState;
use serde_json::{json, Value};

/// Whether qemu-img runs; prints why a test skips when it does not.
fn qemu_img_available(test: &str) -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIP {test}: qemu-img is not installed");
    }
    ok
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
}

fn info(path: &Path) -> Value {
    let o = qemu_img(&["info", "--output=json", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `qemu-img compare` of two images (formats probed; raw files are declared).
fn same(a: &Path, af: &str, b: &Path, bf: &str) -> bool {
    let o = qemu_img(&[
        "compare",
        "-f",
        af,
        "-F",
        bf,
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    o.status.success()
}

/// A pool named `name` on a fresh directory of the daemon's test dir.
fn pool(d: &Daemon, name: &str) -> PathBuf {
    let dir = d.dir.path().join(format!("pool-{name}"));
    let (st, body) = d.call(
        "POST",
        "/api/v1/pools",
        Some(json!({ "name": name, "path": dir }).to_string().as_bytes()),
    );
    assert_eq!(st, 201, "{body}");
    dir
}

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.call("POST", path, Some(body.to_string().as_bytes()))
}

/// Waits until task `id` ends; answers it.
fn wait_task(d: &Daemon, id: &str) -> Task {
    let c = d.client();
    let id = id.parse().unwrap();
    let mut last = None;
    wait_until(120, "the task to end", || {
        let t = c.task(id).unwrap();
        let done = t.state.is_final();
        last = Some(t);
        done
    });
    last.unwrap()
}

/// A raw file of `size` bytes with `chunk` bytes of a pattern every `every` bytes.
fn patterned_raw(path: &Path, size: u64, every: u64, chunk: usize) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut at = 0;
    while at < size {
        let buf: Vec<u8> = (0..chunk)
            .map(|i| (at / every + i as u64 * 7) as u8 | 1)
            .collect();
        f.write_all_at(&buf, at).unwrap();
        at += every;
    }
}

#[test]
fn pool_and_volume_lifecycle_in_every_format() {
    if !qemu_img_available("pool_and_volume_lifecycle_in_every_format") {
        return;
    }
    let d = Daemon::start();
    let c = d.client();
    let dir = pool(&d, "p1");
    assert!(dir.is_dir(), "the pool's directory is made");
    assert_eq!(c.pools().unwrap().len(), 1);
    let p = c.pool("p1").unwrap();
    assert!(p.capacity > 0 && p.available <= p.capacity, "{p:?}");

    for fmt in ["qcow2", "raw", "vmdk", "vpc", "vhdx", "vdi"] {
        let name = format!("v-{fmt}");
        let (st, v) = post(
            &d,
            "/api/v1/pools/p1/volumes",
            json!({ "name": name, "capacity": "64M", "format": fmt }),
        );
        assert_eq!(st, 201, "{fmt}: {v}");
        let v: Volume = serde_json::from_value(v).unwrap();
        assert_eq!(v.path, dir.join(&name));
        let qi = info(&v.path);
        assert_eq!(qi["format"], fmt, "{fmt}");
        assert_eq!(qi["virtual-size"].as_u64().unwrap(), v.capacity, "{fmt}");
        assert!(v.capacity >= 64 << 20, "{fmt}: {}", v.capacity);
    }
    assert_eq!(c.volumes("p1").unwrap().len(), 6);
    assert_eq!(c.pool("p1").unwrap().volumes, 6);

    // Resize: grow, refuse a shrink without "shrink", then shrink.
    let grown = c
        .resize_volume(
            "p1",
            "v-qcow2",
            &serde_json::from_value(json!({ "capacity": "128M" })).unwrap(),
        )
        .unwrap();
    assert_eq!(grown.capacity, 128 << 20);
    assert_eq!(info(&grown.path)["virtual-size"], 128u64 << 20);
    let (st, e) = post(
        &d,
        "/api/v1/pools/p1/volumes/v-raw/resize",
        json!({ "capacity": 1 << 20 }),
    );
    assert_eq!(st, 422, "{e}");
    assert_eq!(e["field"], "shrink");
    assert_eq!(info(&dir.join("v-raw"))["virtual-size"], 64u64 << 20);
    let (st, e) = post(
        &d,
        "/api/v1/pools/p1/volumes/v-raw/resize",
        json!({ "capacity": 1 << 20, "shrink": true }),
    );
    assert_eq!(st, 200, "{e}");
    assert_eq!(info(&dir.join("v-raw"))["virtual-size"], 1u64 << 20);

    // A pool with volumes is not deleted.
    let (st, e) = d.call("DELETE", "/api/v1/pools/p1", None);
    assert_eq!(st, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("v-"), "{e}");

    // Metrics name the pool.
    let r = paddock_api::http::request(
        &d.socket,
        "GET",
        "/metrics",
        None,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let text = String::from_utf8(r.body).unwrap();
    let lines: Vec<_> = text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).unwrap();
    for name in [
        "paddock_pool_capacity_bytes",
        "paddock_pool_allocation_bytes",
        "paddock_pool_available_bytes",
    ] {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("pool") == Some("p1"))
            .unwrap_or_else(|| panic!("{name} for p1 in {text}"));
        match s.value {
            prometheus_parse::Value::Gauge(v) => assert!(v >= 0.0),
            ref v => panic!("{name}: {v:?}"),
        }
    }

    for v in c.volumes("p1").unwrap() {
        c.delete_volume("p1", &v.name).unwrap();
        assert!(!v.path.exists(), "{} is removed", v.path.display());
    }
    c.delete_pool("p1").unwrap();
    assert!(c.pools().unwrap().is_empty());
    assert!(dir.is_dir(), "the directory outlives the pool");
    let audit = c.audit().unwrap();
    for action in [
        "pool-define",
        "volume-create",
        "volume-resize",
        "volume-delete",
        "pool-delete",
    ] {
        assert!(
            audit.iter().any(|a| a.action == action && a.result == "ok"),
            "{action} is audited"
        );
    }
}

#[test]
fn import_converts_and_clones_read_the_same_data() {
    if !qemu_img_available("import_converts_and_clones_read_the_same_data") {
        return;
    }
    let d = Daemon::start();
    let c = d.client();
    let dir = pool(&d, "p");
    let raw = d.dir.path().join("src.raw");
    patterned_raw(&raw, 32 << 20, 1 << 20, 8192);
    let src = d.dir.path().join("src.qcow2");
    let o = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(o.status.success());

    let (st, a) = post(
        &d,
        "/api/v1/pools/p/volumes/import",
        json!({ "name": "base", "source": src, "convert_to": "raw" }),
    );
    assert_eq!(st, 202, "{a}");
    assert_eq!(a["task"]["kind"], "convert");
    let t = wait_task(&d, a["task"]["id"].as_str().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(t.progress, 100);
    let base = c.volume("p", "base").unwrap();
    assert_eq!((base.format.as_str(), base.capacity), ("raw", 32 << 20));
    assert_eq!(info(&base.path)["format"], "raw");
    assert!(
        same(&src, "qcow2", &base.path, "raw"),
        "imported data differs"
    );

    // Linked clone: qcow2 over the base through a relative backing name.
    let (st, v) = post(
        &d,
        "/api/v1/pools/p/volumes/clone",
        json!({ "name": "lc", "from": "base" }),
    );
    assert_eq!(st, 201, "{v}");
    let lc: Volume = serde_json::from_value(v).unwrap();
    assert_eq!(lc.backing.as_deref(), Some("base"));
    let qi = info(&lc.path);
    assert_eq!(qi["format"], "qcow2");
    assert_eq!(qi["backing-filename"], "base", "relative backing: {qi}");
    assert!(
        same(&lc.path, "qcow2", &base.path, "raw"),
        "the clone reads the base"
    );

    // Full clone, as a task.
    let (st, a) = post(
        &d,
        "/api/v1/pools/p/volumes/clone",
        json!({ "name": "fc", "from": "lc", "linked": false }),
    );
    assert_eq!(st, 202, "{a}");
    let t = wait_task(&d, a["task"]["id"].as_str().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let fc = c.volume("p", "fc").unwrap();
    assert!(fc.backing.is_none());
    assert!(info(&fc.path).get("backing-filename").is_none());
    assert!(
        same(&fc.path, "qcow2", &src, "qcow2"),
        "the full clone reads the data"
    );

    // The base of a linked clone stays while the clone exists.
    let (st, e) = d.call("DELETE", "/api/v1/pools/p/volumes/base", None);
    assert_eq!(st, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("'lc'"), "{e}");
    assert!(base.path.exists());
    c.delete_volume("p", "lc").unwrap();
    c.delete_volume("p", "base").unwrap();
    assert!(!dir.join("base").exists());
    assert_eq!(c.tasks().unwrap().len(), 2);
}

/// Pools, volumes and the files in the pool directory, to compare.
fn snapshot(d: &Daemon, dir: &Path) -> (Value, Value, Vec<String>) {
    let mut pools = d.call("GET", "/api/v1/pools", None).1;
    // The file system's free space moves with everything else on the host.
    for p in pools.as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("available");
    }
    let vols = d.call("GET", "/api/v1/pools/p/volumes", None).1;
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    files.sort();
    (pools, vols, files)
}

#[test]
fn bad_storage_requests_get_4xx_and_change_nothing() {
    let d = Daemon::start();
    let dir = pool(&d, "p");
    let c = d.client();
    c.create_volume(
        "p",
        &serde_json::from_value(json!({ "name": "keep", "capacity": 1 << 20 })).unwrap(),
    )
    .unwrap();
    let file = d.dir.path().join("plain.txt");
    std::fs::write(&file, b"not a pool").unwrap();
    let before = snapshot(&d, &dir);
    let long = "x".repeat(65);
    let vols = "/api/v1/pools/p/volumes";
    let cases: Vec<(&str, String, Value, u16, Option<&str>)> = vec![
        (
            "POST",
            "/api/v1/pools".into(),
            json!({ "name": "q", "path": "rel/dir" }),
            422,
            Some("path"),
        ),
        (
            "POST",
            "/api/v1/pools".into(),
            json!({ "name": "q", "path": "/tmp/../etc" }),
            422,
            Some("path"),
        ),
        (
            "POST",
            "/api/v1/pools".into(),
            json!({ "name": "q", "path": file }),
            422,
            Some("path"),
        ),
        (
            "POST",
            "/api/v1/pools".into(),
            json!({ "name": "a/b", "path": "/tmp/x" }),
            422,
            Some("name"),
        ),
        (
            "POST",
            "/api/v1/pools".into(),
            json!({ "name": "p", "path": d.dir.path().join("other") }),
            409,
            None,
        ),
        (
            "POST",
            "/api/v1/pools".into(),
            json!({ "name": "q", "path": dir }),
            409,
            None,
        ),
        (
            "POST",
            "/api/v1/pools".into(),
            json!({ "name": "q" }),
            400,
            None,
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": "../x", "capacity": 1024 }),
            422,
            Some("name"),
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": "..", "capacity": 1024 }),
            422,
            Some("name"),
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": long, "capacity": 1024 }),
            422,
            Some("name"),
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": "n", "capacity": "lots" }),
            422,
            Some("capacity"),
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": "n", "capacity": 0 }),
            422,
            Some("capacity"),
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": "n", "capacity": 1024, "format": "iso" }),
            422,
            Some("format"),
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": "keep", "capacity": 1024 }),
            409,
            None,
        ),
        (
            "POST",
            vols.into(),
            json!({ "name": "n", "capacity": 1024, "size": 1 }),
            400,
            None,
        ),
        (
            "POST",
            "/api/v1/pools/none/volumes".into(),
            json!({ "name": "n", "capacity": 1024 }),
            404,
            None,
        ),
        (
            "POST",
            format!("{vols}/import"),
            json!({ "name": "n", "source": "src.raw" }),
            422,
            Some("source"),
        ),
        (
            "POST",
            format!("{vols}/import"),
            json!({ "name": "n", "source": "/nonexistent/x.raw" }),
            422,
            Some("source"),
        ),
        (
            "POST",
            format!("{vols}/import"),
            json!({ "name": "n", "source": file, "format": "qcow2" }),
            422,
            Some("source"),
        ),
        (
            "POST",
            format!("{vols}/import"),
            json!({ "name": "n", "source": file, "convert_to": "iso" }),
            422,
            Some("convert_to"),
        ),
        (
            "POST",
            format!("{vols}/clone"),
            json!({ "name": "n", "from": "absent" }),
            404,
            None,
        ),
        (
            "POST",
            format!("{vols}/clone"),
            json!({ "name": "keep", "from": "keep" }),
            409,
            None,
        ),
        (
            "POST",
            format!("{vols}/keep/resize"),
            json!({ "capacity": "-1" }),
            422,
            Some("capacity"),
        ),
        (
            "POST",
            format!("{vols}/absent/resize"),
            json!({ "capacity": 1024 }),
            404,
            None,
        ),
        ("DELETE", format!("{vols}/absent"), Value::Null, 404, None),
        (
            "DELETE",
            "/api/v1/pools/absent".into(),
            Value::Null,
            404,
            None,
        ),
        (
            "GET",
            "/api/v1/tasks/not-a-uuid".into(),
            Value::Null,
            404,
            None,
        ),
        (
            "POST",
            "/api/v1/tasks/00000000-0000-0000-0000-000000000000/cancel".into(),
            Value::Null,
            404,
            None,
        ),
    ];
    for (method, path, body, status, field) in cases {
        let text = body.to_string();
        let b = (!body.is_null()).then_some(text.as_bytes());
        let (got, err) = d.call(method, &path, b);
        assert_eq!(got, status, "{method} {path} {text}: {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{err}"
        );
        assert_eq!(
            err["field"].as_str(),
            field,
            "{method} {path} {text}: {err}"
        );
        assert_eq!(
            snapshot(&d, &dir),
            before,
            "{method} {path} {text} changed something"
        );
    }
    assert!(!d.dir.path().join("other").exists());
}

#[test]
fn a_volume_used_by_a_vm_resolves_and_cannot_go() {
    if !qemu_img_available("a_volume_used_by_a_vm_resolves_and_cannot_go") {
        return;
    }
    let d = Daemon::start();
    let c = d.client();
    let dir = pool(&d, "p");
    // The blk guest's pattern (see crates/vmm/tests/virtio_blk.rs): 1 MiB, seed 7.
    let raw = d.dir.path().join("pattern.raw");
    let pattern: Vec<u8> = (0..1u64 << 20)
        .map(|n| {
            ((n / 512)
                .wrapping_mul(31)
                .wrapping_add(n % 512)
                .wrapping_add(7)) as u8
        })
        .collect();
    std::fs::write(&raw, &pattern).unwrap();
    let (st, a) = post(
        &d,
        "/api/v1/pools/p/volumes/import",
        json!({ "name": "disk", "source": raw, "format": "raw", "convert_to": "qcow2" }),
    );
    assert_eq!(st, 202, "{a}");
    assert_eq!(
        wait_task(&d, a["task"]["id"].as_str().unwrap()).state,
        TaskState::Succeeded
    );

    let mut spec = spec_json("vm1", "blk");
    spec["boot"]["cmdline"] = json!("blk.seed=7 blk.sectors=8");
    spec["disks"] = json!([{ "volume": "p/absent" }]);
    let (st, e) = post(&d, "/api/v1/vms", spec.clone());
    assert_eq!(st, 422, "{e}");
    assert_eq!(e["field"], "disks[0].volume");
    spec["disks"] = json!([{ "volume": "nopool/disk" }]);
    assert_eq!(post(&d, "/api/v1/vms", spec.clone()).0, 422);
    assert!(c.list().unwrap().is_empty());

    spec["disks"] = json!([{ "volume": "p/disk", "serial": "DISK-1" }]);
    let (st, vm) = post(&d, "/api/v1/vms", spec);
    assert_eq!(st, 201, "{vm}");
    let disk = &vm["spec"]["disks"][0];
    assert_eq!(disk["volume"], "p/disk", "the reference is kept");
    assert_eq!(
        disk["path"].as_str().map(PathBuf::from),
        Some(dir.join("disk"))
    );
    assert_eq!(disk["format"], "qcow2");

    for (method, path, body) in [
        ("DELETE", "/api/v1/pools/p/volumes/disk", None),
        (
            "POST",
            "/api/v1/pools/p/volumes/disk/resize",
            Some(json!({ "capacity": "2M" })),
        ),
    ] {
        let text = body.map(|b| b.to_string());
        let (st, e) = d.call(method, path, text.as_deref().map(str::as_bytes));
        assert_eq!(st, 409, "{method} {path}: {e}");
        assert!(e["error"].as_str().unwrap().contains("'vm1'"), "{e}");
    }
    assert_eq!(info(&dir.join("disk"))["virtual-size"], 1u64 << 20);

    if kvm_available("a_volume_used_by_a_vm_resolves_and_cannot_go (boot)") {
        c.action("vm1", paddock_api::client::Action::Start, None)
            .unwrap();
        let vm = d.wait_state("vm1", VmState::Stopped);
        let console = String::from_utf8_lossy(&c.console("vm1").unwrap()).to_string();
        assert_eq!(vm.exit_status, Some(0), "{console}");
        assert!(console.contains("serial=DISK-1"), "{console}");
        assert!(console.contains("host pattern ok"), "{console}");
        assert!(console.contains("flushed, read back ok"), "{console}");
        let check = qemu_img(&["check", "-f", "qcow2", dir.join("disk").to_str().unwrap()]);
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    // Deleting the VM with its volumes: refused (nothing deleted) while another VM uses the
    // volume, or for a bad query; then both go.
    let mut spec2 = spec_json("vm2", "blk");
    spec2["disks"] = json!([{ "volume": "p/disk" }]);
    assert_eq!(post(&d, "/api/v1/vms", spec2).0, 201);
    let (st, e) = d.call("DELETE", "/api/v1/vms/vm1?volumes=delete", None);
    assert_eq!(st, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("'vm2'"), "{e}");
    let (st, e) = d.call("DELETE", "/api/v1/vms/vm1?volumes=all", None);
    assert_eq!(st, 422, "{e}");
    assert_eq!(e["field"], "volumes");
    assert_eq!(c.list().unwrap().len(), 2);
    assert!(dir.join("disk").exists());
    c.delete("vm2").unwrap();
    assert!(dir.join("disk").exists(), "a plain delete keeps the volume");
    c.delete_vm("vm1", true).unwrap();
    assert!(c.list().unwrap().is_empty());
    assert!(!dir.join("disk").exists());
    assert!(c.volumes("p").unwrap().is_empty());
    let audit = c.audit().unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "delete+volumes" && a.target == "vm1" && a.result == "ok"));
}

/// Starts importing an 8 GiB sparse raw with data spread over it (slow enough to catch
/// running) into a qcow2 volume; answers the task's id.
fn start_big_import(d: &Daemon, name: &str) -> String {
    let raw = d.dir.path().join(format!("{name}.raw"));
    patterned_raw(&raw, 8 << 30, 256 << 10, 4096);
    let (st, a) = post(
        d,
        "/api/v1/pools/p/volumes/import",
        json!({ "name": name, "source": raw, "format": "raw", "convert_to": "qcow2" }),
    );
    assert_eq!(st, 202, "{a}");
    a["task"]["id"].as_str().unwrap().to_string()
}

#[test]
fn a_cancelled_import_leaves_nothing() {
    let d = Daemon::start();
    let dir = pool(&d, "p");
    let id = start_big_import(&d, "big");
    let (st, t) = d.call("POST", &format!("/api/v1/tasks/{id}/cancel"), None);
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["state"], "cancelled", "{t}");
    assert!(!dir.join("big").exists(), "the partial volume is removed");
    assert!(d.client().volumes("p").unwrap().is_empty());
    let (st, _) = d.call("POST", &format!("/api/v1/tasks/{id}/cancel"), None);
    assert_eq!(st, 409, "an ended task cannot be cancelled again");
}

#[test]
fn a_task_interrupted_by_a_restart_reads_failed() {
    let mut d = Daemon::start();
    let dir = pool(&d, "p");
    let id = start_big_import(&d, "big");
    assert_eq!(
        d.client().task(id.parse().unwrap()).unwrap().state,
        TaskState::Running
    );
    d.stop_with("KILL");
    d.spawn_again();
    let t = d.client().task(id.parse().unwrap()).unwrap();
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert_eq!(t.error.as_deref(), Some("interrupted by a daemon restart"));
    assert!(t.finished_at.is_some());
    assert!(!dir.join("big").exists(), "the partial volume is removed");
    assert!(d.client().volumes("p").unwrap().is_empty());
}

#[test]
fn task_events_announce_the_start_and_the_end() {
    use std::io::{BufRead, BufReader, Write};
    let d = Daemon::start();
    pool(&d, "p");
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    s.write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    // The stream is open once its headers are in.
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
    }
    let raw = d.dir.path().join("small.raw");
    patterned_raw(&raw, 4 << 20, 1 << 20, 512);
    let (st, a) = post(
        &d,
        "/api/v1/pools/p/volumes/import",
        json!({ "name": "v", "source": raw, "format": "raw" }),
    );
    assert_eq!(st, 202, "{a}");
    let mut states = Vec::new();
    let mut kind = String::new();
    while states.last() != Some(&TaskState::Succeeded) {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the event stream ended"
        );
        if let Some(k) = line.trim_end().strip_prefix("event: ") {
            kind = k.into();
        } else if let Some(data) = line.trim_end().strip_prefix("data: ") {
            if let paddock_api::Event::Task { task } = serde_json::from_str(data).unwrap() {
                assert_eq!(kind, "task");
                assert_eq!(task.id.to_string(), a["task"]["id"].as_str().unwrap());
                states.push(task.state);
            }
        }
    }
    assert_eq!(states.first(), Some(&TaskState::Running), "{states:?}");
}
