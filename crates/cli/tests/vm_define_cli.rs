//! `paddock vm define` from YAML and from flags, and `paddock vm delete --volumes`, against a
//! real paddockd.

mod common;

use common::*;

#[test]
fn a_vm_is_defined_from_yaml_or_from_flags_and_deleted_with_its_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, s) = start_daemon(dir.path());

    // YAML, by extension; what the daemon stored is what the file said.
    let yaml = dir.path().join("web.yaml");
    std::fs::write(
        &yaml,
        "name: web\ncpus: {count: 2}\nmemory:\n  size_mib: 256\nboot:\n  kind: kernel\n  kernel: /boot/vmlinuz\n  cmdline: console=ttyS0\n",
    )
    .unwrap();
    let v = json(&s, &["vm", "define", "-f", yaml.to_str().unwrap()]);
    assert_eq!(v["spec"]["cpus"]["count"], 2);
    assert_eq!(v["spec"]["memory"]["size_mib"], 256);
    assert_eq!(v["spec"]["boot"]["cmdline"], "console=ttyS0");
    // YAML errors name the file; the daemon still judges fields (unknown ones are refused).
    std::fs::write(&yaml, "name: [unclosed\n").unwrap();
    let o = paddock(&s, &["vm", "define", "-f", yaml.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("web.yaml"), "{}", text(&o.stderr));
    std::fs::write(
        &yaml,
        "name: x\ncolour: red\nboot: {kind: kernel, kernel: /k}\n",
    )
    .unwrap();
    let o = paddock(
        &s,
        &["vm", "define", "-f", yaml.to_str().unwrap(), "--json"],
    );
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["status"], 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("colour"), "{e}");

    // Flags, with a disk from a pool volume.
    let pool = dir.path().join("pool");
    json(&s, &["pool", "define", "p", pool.to_str().unwrap()]);
    json(&s, &["volume", "create", "p", "root", "--size", "16M"]);
    let v = json(
        &s,
        &[
            "vm",
            "define",
            "db",
            "--kernel",
            "/boot/vmlinuz",
            "--cmdline",
            "quiet",
            "--cpus",
            "4",
            "--memory",
            "2G",
            "--disk",
            "volume=p/root,serial=ROOT",
            "--rng",
        ],
    );
    assert_eq!(v["spec"]["cpus"]["count"], 4);
    assert_eq!(v["spec"]["memory"]["size_mib"], 2048);
    assert_eq!(v["spec"]["rng"], true);
    assert_eq!(v["spec"]["disks"][0]["volume"], "p/root");
    assert_eq!(v["spec"]["disks"][0]["serial"], "ROOT");
    assert_eq!(v["spec"]["disks"][0]["format"], "qcow2");
    // A bad flag value is refused by the CLI before anything reaches the daemon.
    let o = paddock(
        &s,
        &[
            "vm",
            "define",
            "x",
            "--kernel",
            "/k",
            "--disk",
            "path=/d.img",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("format="), "{}", text(&o.stderr));
    assert_eq!(json(&s, &["vm", "list"]).as_array().unwrap().len(), 2);

    // Deleting with its volumes takes the volume; a plain delete keeps them.
    assert!(pool.join("root").exists());
    json(&s, &["vm", "delete", "db", "--volumes"]);
    assert!(!pool.join("root").exists());
    assert!(json(&s, &["volume", "list", "p"])
        .as_array()
        .unwrap()
        .is_empty());
    json(&s, &["vm", "delete", "web"]);
    assert!(json(&s, &["vm", "list"]).as_array().unwrap().is_empty());
}
