//! The end-to-end test of issue #4: ONE paddockd inside a network namespace the test makes,
//! with a directory pool, a managed network with DHCP, a qcow2 image imported as a volume
//! (a task), a Linux guest under the QEMU driver on that volume and network (disk serial,
//! allocated MAC, a DHCP lease, ping over bridge + TAP), a daemon restart while it runs
//! (re-attach, console and TAP kept), a graceful stop, the `blk` test guest under
//! paddock-vmm on a second volume, and the bad-input cases answered 4xx with nothing changed.
//! Everything the test starts lives in the namespace and goes with it, even on failure.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::artifacts::{guest_artifacts, runs, KillOnDrop};
use common::netns::{can_run, tap_of, Netns, NsDaemon};
use common::{alive, guest, kvm_available, wait_until};
use paddock_api::client::Action;
use paddock_api::network::NetworkSpec;
use paddock_api::storage::{PoolRequest, TaskState, VolumeImport};
use paddock_api::{StopRequest, VmState};
use serde_json::{json, Value};

const TEST: &str = "e2e_pool_network_qemu_and_vmm_guests_survive_a_restart_and_refuse_bad_input";
/// The image's virtual size: 4 MiB; the blk guest's pattern (seed 7) fills the first MiB.
const IMAGE: usize = 4 << 20;
const SEED: u64 = 7;

/// The blk guest's host pattern (crates/vmm/tests/virtio_blk.rs).
fn host_pattern(s: u64, i: usize) -> u8 {
    (s.wrapping_mul(31).wrapping_add(i as u64).wrapping_add(SEED)) as u8
}

/// The pattern the blk guest writes from sector 64.
fn guest_pattern(s: u64, i: usize) -> u8 {
    (s.wrapping_mul(17)
        .wrapping_add(3 * i as u64)
        .wrapping_add(SEED) as u8)
        ^ 0x5a
}

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A qcow2 image with the blk guest's pattern in its first MiB, zeros after.
fn make_image(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("image.raw");
    let mut data = vec![0u8; IMAGE];
    for (s, sector) in data[..1 << 20].chunks_mut(512).enumerate() {
        for (i, b) in sector.iter_mut().enumerate() {
            *b = host_pattern(s as u64, i);
        }
    }
    std::fs::write(&raw, &data).unwrap();
    let qcow2 = dir.join("image.qcow2");
    let (raw_s, qcow2_s) = (raw.to_str().unwrap(), qcow2.to_str().unwrap());
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "qcow2", raw_s, qcow2_s]);
    qcow2
}

/// Imports `source` as `pool/name` and follows the task to success.
fn import(d: &NsDaemon, name: &str, source: &Path) {
    let c = d.client();
    let req = VolumeImport {
        name: name.into(),
        source: source.into(),
        format: None,
        convert_to: None,
    };
    let task = c.import_volume("pool", &req).expect("import");
    assert_eq!(task.target, format!("pool/{name}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let t = c.task(task.id).unwrap();
        if t.state != TaskState::Running {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "import {name} never ended: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    assert_eq!(task.progress, 100, "{task:?}");
    let vol = c.volume("pool", name).unwrap();
    assert_eq!((vol.format.as_str(), vol.capacity), ("qcow2", IMAGE as u64));
    assert_eq!(vol.task, None);
}

/// The first console line holding `prefix`, from `prefix` on (kernel messages may share it).
fn line<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.find(prefix).map(|at| l[at..].trim_end()))
        .unwrap_or_else(|| panic!("no '{prefix}' line on the console:\n{console}"))
}

/// Pings `addr` from the namespace (the bridge's side) until it answers.
fn ping(ns: &Netns, addr: &str) {
    wait_until(20, &format!("{addr} to answer ping"), || {
        ns.exec(&["busybox", "ping", "-c", "1", "-W", "1", addr])
            .status
            .success()
    });
}

/// The master a link is enslaved to, if it exists.
fn master(ns: &Netns, link: &str) -> Option<String> {
    ns.link(link)
        .map(|l| l["master"].as_str().unwrap_or_default().to_string())
}

#[test]
fn e2e_pool_network_qemu_and_vmm_guests_survive_a_restart_and_refuse_bad_input() {
    if !kvm_available(TEST) || !can_run(TEST, &["busybox", "qemu-img", "qemu-system-x86_64"]) {
        return;
    }
    if !runs("qemu-system-x86_64") {
        eprintln!("SKIP {TEST}: qemu-system-x86_64 does not run");
        return;
    }
    let (kernel, initramfs) = match guest_artifacts() {
        Ok(paths) => paths,
        Err(why) => {
            eprintln!("SKIP {TEST}: no guest artifacts: {why}");
            return;
        }
    };
    let ns = Netns::create("e2e");
    let mut d = NsDaemon::start(&ns);
    let c = d.client();

    // 1. A pool and a network with the host's address and a DHCP range.
    let pool_dir = d.dir.path().join("pool");
    c.define_pool(&PoolRequest {
        name: "pool".into(),
        path: pool_dir.clone(),
    })
    .expect("define pool");
    let spec: NetworkSpec = serde_json::from_value(json!({
        "name": "lan", "ipv4": "10.78.0.1/24", "nat": true,
        "dhcp": { "start": "10.78.0.50", "end": "10.78.0.60" },
    }))
    .unwrap();
    assert_eq!(
        c.define_network(&spec).expect("define network").bridge,
        "pd-lan"
    );

    // 2. A qcow2 image with data, imported twice (one volume per guest) as tasks.
    let image = make_image(d.dir.path());
    import(&d, "vol", &image);
    import(&d, "blkvol", &image);
    let (image_s, vol_s) = (image.to_str().unwrap(), pool_dir.join("vol"));
    qemu_img(&["compare", "-q", image_s, vol_s.to_str().unwrap()]);

    // 3. Linux under QEMU on the volume and the network.
    let spec = json!({
        "driver": "qemu",
        "name": "linux",
        "accel": "auto",
        "cpus": { "count": 1 },
        "memory": { "size_mib": 256 },
        "boot": { "kind": "kernel", "kernel": kernel, "initramfs": initramfs,
                  "cmdline": "console=ttyS0 paddock.dhcp=1" },
        "disks": [{ "volume": "pool/vol", "serial": "E2E-DISK" }],
        "nics": [{ "network": "lan" }],
    });
    let vm = c.define_json(spec.to_string().as_bytes()).expect("define");
    assert_eq!((vm.driver.as_str(), vm.state), ("qemu", VmState::Defined));
    assert_eq!(vm.spec.disks[0].path, pool_dir.join("vol"));
    let mac = vm.spec.nics[0].mac.expect("an allocated MAC").to_string();
    let tap = tap_of(&vm, 0);
    let vm = c.action("linux", Action::Start, None).expect("start");
    assert_eq!(vm.state, VmState::Running, "{vm:?}");
    let pid = vm.pid.expect("a running VM has a pid");
    let mut qemu = KillOnDrop(Some(pid));
    assert_eq!(
        master(&ns, &tap).as_deref(),
        Some("pd-lan"),
        "TAP on the bridge"
    );

    let console = d.wait_console("linux", "paddock-initramfs: ready", 60);
    let disk = line(&console, "paddock-initramfs: disk vda");
    assert!(disk.contains("serial=E2E-DISK "), "{disk}");
    assert!(
        disk.ends_with(&format!("sectors={}", IMAGE / 512)),
        "{disk}"
    );
    let nic = line(&console, "paddock-initramfs: nic eth0");
    assert_eq!(nic, format!("paddock-initramfs: nic eth0 mac={mac}"));
    let ip = line(&console, "paddock-initramfs: ip eth0 ");
    let addr = ip.rsplit(' ').next().unwrap().to_string();
    let last: u8 = addr
        .strip_prefix("10.78.0.")
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert!(
        (50..=60).contains(&last),
        "{addr} is outside the range: {ip}"
    );
    let ready = line(&console, "paddock-initramfs: ready");
    assert!(
        ready.contains("disks=vda") && ready.contains("net=eth0"),
        "{ready}"
    );
    assert!(console.find(ip).unwrap() < console.find(ready).unwrap());
    let leases = d.state_dir().join("networks/lan/dnsmasq.leases");
    wait_until(10, "the lease in dnsmasq's lease file", || {
        std::fs::read_to_string(&leases)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&mac) && l.split(' ').any(|w| w == addr))
    });
    ping(&ns, &addr);

    // 4. A daemon restart while it runs: re-attached, TAP kept, console still fed.
    d.restart();
    let vm = c.get("linux").unwrap();
    assert_eq!((vm.state, vm.pid), (VmState::Running, Some(pid)), "{vm:?}");
    assert!(vm.message.unwrap_or_default().contains("re-attached"));
    assert_eq!(
        master(&ns, &tap).as_deref(),
        Some("pd-lan"),
        "reconcile kept the TAP"
    );
    assert!(d.console("linux").contains(ready));
    ping(&ns, &addr);
    let stop = StopRequest {
        timeout_secs: Some(30),
    };
    let vm = c.action("linux", Action::Stop, Some(stop)).expect("stop");
    assert_eq!((vm.state, vm.pid), (VmState::Stopped, None), "{vm:?}");
    assert!(vm.message.unwrap_or_default().contains("powered off"));
    wait_until(30, "QEMU to exit", || !alive(pid));
    qemu.0 = None;
    assert!(d
        .console("linux")
        .contains("paddock-initramfs: power button"));
    assert!(ns.link(&tap).is_none(), "stop: TAP gone");
    let e = c.delete_volume("pool", "vol").unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("linux"), "{e}");
    c.delete("linux").expect("delete the VM");
    c.delete_volume("pool", "vol")
        .expect("delete the volume once unused");
    assert!(!pool_dir.join("vol").exists());

    // 5. The blk test guest under paddock-vmm on the other volume, with a NIC on the network.
    let spec = json!({
        "name": "blk",
        "memory": { "size_mib": 64 },
        "boot": { "kind": "kernel", "kernel": guest("blk"),
                  "cmdline": format!("blk.seed={SEED} blk.sectors=8") },
        "disks": [{ "volume": "pool/blkvol", "serial": "E2E-BLK" }],
        "nics": [{ "network": "lan" }],
    });
    let vm = c
        .define_json(spec.to_string().as_bytes())
        .expect("define blk");
    assert_eq!(vm.driver, "paddock-vmm");
    c.action("blk", Action::Start, None).expect("start blk");
    let vm = d.wait_state("blk", &[VmState::Stopped]);
    let console = d.console("blk");
    assert_eq!(vm.exit_status, Some(0), "{console}");
    for want in [
        "serial=E2E-BLK ",
        "host pattern ok",
        "flushed, read back ok",
    ] {
        assert!(console.contains(want), "{want}: {console}");
    }
    assert!(ns.link(&tap_of(&vm, 0)).is_none(), "exit: TAP gone");
    let blkvol = pool_dir.join("blkvol");
    let back = d.dir.path().join("blkvol.raw");
    qemu_img(&["check", "-q", "-f", "qcow2", blkvol.to_str().unwrap()]);
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "raw",
        blkvol.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    let data = std::fs::read(&back).unwrap();
    assert_eq!(
        data[64 * 512..65 * 512],
        (0..512).map(|i| guest_pattern(64, i)).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        data[72 * 512],
        host_pattern(72, 0),
        "unwritten sectors kept"
    );

    // 6. Bad input: each a 4xx with a message, and nothing changed.
    bad_input(&d);

    c.delete("blk").unwrap();
    c.delete_volume("pool", "blkvol").unwrap();
    c.delete_pool("pool").unwrap();
    c.delete_network("lan").unwrap();
    assert!(ns.link("pd-lan").is_none(), "bridge gone");
}

/// Every list the API has, comparable before and after a refused request.
fn snapshot(d: &NsDaemon) -> Vec<Value> {
    let mut all = Vec::new();
    for path in [
        "/api/v1/vms",
        "/api/v1/pools",
        "/api/v1/pools/pool/volumes",
        "/api/v1/networks",
        "/api/v1/tasks",
    ] {
        let (status, mut body) = d.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        // A file system's free space moves with everything else on the host.
        for item in body.as_array_mut().unwrap() {
            item.as_object_mut().unwrap().remove("available");
        }
        all.push(body);
    }
    all
}

fn bad_input(d: &NsDaemon) {
    let spec = |extra: Value| {
        let mut s = json!({ "name": "bad", "memory": { "size_mib": 64 },
                            "boot": { "kind": "kernel", "kernel": guest("wait") } });
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s.to_string().into_bytes()
    };
    let big = vec![b' '; (1 << 20) + 1];
    let cases: Vec<(&str, &str, Option<Vec<u8>>, u16)> = vec![
        ("POST", "/api/v1/vms", Some(b"{\"name\": ".to_vec()), 400),
        (
            "POST",
            "/api/v1/vms",
            Some(spec(json!({ "colour": "red" }))),
            400,
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(spec(json!({ "memory": { "size_mib": 0 } }))),
            422,
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(spec(json!({ "nics": [{ "network": "nope" }] }))),
            422,
        ),
        (
            "POST",
            "/api/v1/vms",
            Some(spec(json!({ "disks": [{ "volume": "pool/nope" }] }))),
            422,
        ),
        ("POST", "/api/v1/vms", Some(big), 413),
        ("GET", "/api/v1/vms/nope", None, 404),
        ("POST", "/api/v1/vms/nope/start", None, 404),
        ("GET", "/api/v1/pools/nope", None, 404),
        ("DELETE", "/api/v1/pools/nope", None, 404),
        ("GET", "/api/v1/networks/nope", None, 404),
        ("DELETE", "/api/v1/networks/nope", None, 404),
        ("GET", "/api/v1/pools/pool/volumes/nope", None, 404),
        ("DELETE", "/api/v1/pools/pool/volumes/nope", None, 404),
        ("POST", "/api/v1/vms/blk/pause", None, 409),
        (
            "POST",
            "/api/v1/pools",
            Some(br#"{"name":"p2","path":"rel"}"#.to_vec()),
            422,
        ),
    ];
    let before = snapshot(d);
    for (method, path, body, want) in cases {
        let (status, answer) = d.call_raw(method, path, body.as_deref());
        let what = format!("{method} {path}");
        assert_eq!(status, want, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{what}: no message: {answer}");
        assert_eq!(snapshot(d), before, "{what} changed something");
    }
    assert_eq!(d.client().get("blk").unwrap().state, VmState::Stopped);
}
