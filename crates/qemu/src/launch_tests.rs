//! Command lines built from specs.

use super::*;
use paddock_spec::{Accel, VsockSpec};

fn host() -> Host {
    Host {
        kvm: Ok(()),
        pvm: false,
        vhost_vsock: true,
        ovmf: Some(PathBuf::from("/usr/share/ovmf/OVMF.fd")),
    }
}

fn spec() -> VmSpec {
    serde_json::from_value(serde_json::json!({
        "name": "web-1", "cpus": {"count": 4, "threads_per_core": 2},
        "memory": {"size_mib": 512},
        "boot": {"kind": "kernel", "kernel": "/k/bzImage", "initramfs": "/k/initrd",
                 "cmdline": "console=ttyS0 quiet"},
        "disks": [
            {"path": "/img/a,b.qcow2", "format": "qcow2", "serial": "disk-a"},
            {"path": "/img/b.vhd", "format": "vhd", "readonly": true}
        ],
        "nics": [{"tap": "tap7", "mac": "52:54:00:aa:bb:cc"}, {"tap": "tap8"}],
        "serial": {"mode": "file", "path": "/run/vm/console.log"},
        "rng": true
    }))
    .unwrap()
}

fn json_args(args: &[String], flag: &str) -> Vec<Value> {
    arg_after(args, flag)
        .into_iter()
        .map(|s| serde_json::from_str(s).unwrap_or_else(|e| panic!("{flag} {s}: {e}")))
        .collect()
}

#[test]
fn the_basics_are_fixed_and_sized_from_the_spec() {
    let opts = LaunchOptions::new("/run/vm");
    let c = build(&spec(), &opts, AccelChoice::Tcg, &host()).unwrap();
    let a = &c.args;
    for flag in ["-nodefaults", "-no-user-config"] {
        assert!(a.iter().any(|x| x == flag), "{flag} missing: {a:?}");
    }
    assert_eq!(arg_after(a, "-display"), ["none"]);
    assert_eq!(arg_after(a, "-machine"), ["q35"]);
    assert_eq!(arg_after(a, "-accel"), ["tcg"]);
    assert_eq!(arg_after(a, "-cpu"), ["max"]);
    assert_eq!(arg_after(a, "-m"), ["512M"]);
    assert_eq!(arg_after(a, "-smp"), ["4,sockets=1,cores=2,threads=2"]);
    assert_eq!(arg_after(a, "-kernel"), ["/k/bzImage"]);
    assert_eq!(arg_after(a, "-initrd"), ["/k/initrd"]);
    assert_eq!(arg_after(a, "-append"), ["console=ttyS0 quiet"]);
    assert_eq!(
        arg_after(a, "-qmp"),
        ["unix:/run/vm/qmp.sock,server=on,wait=off"]
    );
    assert_eq!(c.wrapper, ["setsid"]);
    assert!(!c.stdio_console);
    let kvm = build(&spec(), &opts, AccelChoice::Kvm, &host()).unwrap();
    assert_eq!(arg_after(&kvm.args, "-accel"), ["kvm"]);
    assert_eq!(arg_after(&kvm.args, "-cpu"), ["host"]);
}

#[test]
fn disks_declare_their_format_and_carry_readonly_and_serial() {
    let c = build(
        &spec(),
        &LaunchOptions::new("/run/vm"),
        AccelChoice::Tcg,
        &host(),
    )
    .unwrap();
    let nodes = json_args(&c.args, "-blockdev");
    assert_eq!(nodes.len(), 4);
    assert_eq!(nodes[0]["driver"], "file");
    assert_eq!(
        nodes[0]["filename"], "/img/a,b.qcow2",
        "JSON needs no escaping"
    );
    assert_eq!(nodes[1]["driver"], "qcow2");
    assert_eq!(nodes[1]["file"], "disk0-file");
    assert_eq!(nodes[1]["read-only"], false);
    assert_eq!(nodes[3]["driver"], "vpc", "vhd is QEMU's vpc");
    assert_eq!(nodes[3]["read-only"], true);
    assert_eq!(nodes[2]["read-only"], true);
    let devices = json_args(&c.args, "-device");
    let blk: Vec<&Value> = devices
        .iter()
        .filter(|d| d["driver"] == "virtio-blk-pci")
        .collect();
    assert_eq!(blk.len(), 2);
    assert_eq!(blk[0]["id"], "disk0");
    assert_eq!(blk[0]["drive"], "disk0");
    assert_eq!(blk[0]["serial"], "disk-a");
    assert!(blk[1].get("serial").is_none());
    assert!(devices.iter().any(|d| d["driver"] == "virtio-rng-pci"));
}

#[test]
fn nics_are_virtio_on_taps_without_scripts() {
    let s = spec();
    let c = build(
        &s,
        &LaunchOptions::new("/run/vm"),
        AccelChoice::Tcg,
        &host(),
    )
    .unwrap();
    let netdevs = json_args(&c.args, "-netdev");
    assert_eq!(netdevs.len(), 2);
    assert_eq!(netdevs[0]["type"], "tap");
    assert_eq!(netdevs[0]["ifname"], "tap7");
    assert_eq!(netdevs[0]["script"], "no");
    assert_eq!(netdevs[0]["downscript"], "no");
    let nics: Vec<Value> = json_args(&c.args, "-device")
        .into_iter()
        .filter(|d| d["driver"] == "virtio-net-pci")
        .collect();
    assert_eq!(nics[0]["mac"], "52:54:00:aa:bb:cc");
    assert_eq!(nics[0]["netdev"], "net0");
    // The second NIC has no MAC in the spec: a stable one per VM name and index.
    let mac = default_mac("web-1", 1);
    assert_eq!(nics[1]["mac"], mac.to_string());
    assert!(mac.is_unicast() && mac.0[..3] == [0x52, 0x54, 0x00]);
    assert_eq!(mac, default_mac("web-1", 1));
    assert_ne!(mac, default_mac("web-2", 1));
    assert_ne!(mac, default_mac("web-1", 0));
}

#[test]
fn serial_modes_map_to_chardevs_and_paths_are_escaped() {
    let mut opts = LaunchOptions::new("/run/a,b");
    opts.console_log = Some(PathBuf::from("/log/con.log"));
    let mut s = spec();
    let chardev = |s: &VmSpec, o: &LaunchOptions| {
        let c = build(s, o, AccelChoice::Tcg, &host()).unwrap();
        (
            arg_after(&c.args, "-chardev")
                .first()
                .map(|x| x.to_string()),
            arg_after(&c.args, "-qmp")[0].to_string(),
            c.stdio_console,
        )
    };
    let (c, qmp, _) = chardev(&s, &opts);
    assert_eq!(c.unwrap(), "file,id=serial0,path=/run/vm/console.log");
    assert_eq!(qmp, "unix:/run/a,,b/qmp.sock,server=on,wait=off");
    s.serial = SerialSpec::Socket {
        path: PathBuf::from("/run/con,sole.sock"),
        log: None,
    };
    assert_eq!(
        chardev(&s, &opts).0.unwrap(),
        "socket,id=serial0,path=/run/con,,sole.sock,server=on,wait=off,logfile=/log/con.log,logappend=on"
    );
    // The spec's own log wins over the launcher's copy.
    s.serial = SerialSpec::Socket {
        path: PathBuf::from("/run/con.sock"),
        log: Some(PathBuf::from("/state/a,b/console.log")),
    };
    assert_eq!(
        chardev(&s, &opts).0.unwrap(),
        "socket,id=serial0,path=/run/con.sock,server=on,wait=off,logfile=/state/a,,b/console.log,logappend=on"
    );
    s.serial = SerialSpec::Stdio;
    let (c, _, stdio) = chardev(&s, &opts);
    assert_eq!(
        c.unwrap(),
        "stdio,id=serial0,signal=off,logfile=/log/con.log,logappend=on"
    );
    assert!(stdio);
    s.serial = SerialSpec::Off;
    assert_eq!(chardev(&s, &opts).0, None);
}

#[test]
fn firmware_shared_memory_vsock_and_netns() {
    let mut s = spec();
    s.boot = BootSpec::Firmware {
        firmware: Firmware::Bios,
    };
    s.memory.shared = true;
    s.vsock = Some(VsockSpec {
        cid: 42,
        socket: PathBuf::from("/run/v.sock"),
    });
    s.accel = Accel::Tcg;
    let mut opts = LaunchOptions::new("/run/vm");
    opts.netns = Some("ns1".into());
    let c = build(&s, &opts, AccelChoice::Tcg, &host()).unwrap();
    assert!(arg_after(&c.args, "-kernel").is_empty());
    assert!(
        arg_after(&c.args, "-bios").is_empty(),
        "SeaBIOS is the default"
    );
    assert_eq!(
        arg_after(&c.args, "-machine"),
        ["q35,memory-backend=pc.ram"]
    );
    let objects = json_args(&c.args, "-object");
    assert_eq!(objects[0]["qom-type"], "memory-backend-memfd");
    assert_eq!(objects[0]["size"], 512u64 << 20);
    assert_eq!(objects[0]["share"], true);
    let vsock: Vec<Value> = json_args(&c.args, "-device")
        .into_iter()
        .filter(|d| d["driver"] == "vhost-vsock-pci")
        .collect();
    assert_eq!(vsock[0]["guest-cid"], 42);
    assert_eq!(c.wrapper, ["setsid", "ip", "netns", "exec", "ns1"]);
    let cmd = c.to_command();
    assert_eq!(cmd.get_program(), "setsid");
    let argv: Vec<_> = cmd.get_args().take(5).collect();
    assert_eq!(argv, ["ip", "netns", "exec", "ns1", "qemu-system-x86_64"]);

    s.boot = BootSpec::Firmware {
        firmware: Firmware::Uefi,
    };
    let c = build(&s, &opts, AccelChoice::Tcg, &host()).unwrap();
    assert_eq!(arg_after(&c.args, "-bios"), ["/usr/share/ovmf/OVMF.fd"]);
}

#[test]
fn attach_matches_the_socket_as_written_on_the_command_line() {
    let cmdline = b"qemu-system-x86_64\0-qmp\0unix:/run/a,,b/qmp.sock,server=on,wait=off\0";
    assert!(mentions(cmdline, Path::new("/run/a,b/qmp.sock")));
    assert!(!mentions(cmdline, Path::new("/run/other/qmp.sock")));
}
