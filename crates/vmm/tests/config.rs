//! `--config vm.json` under real KVM: a Paddock VM spec boots the test guests; it excludes
//! the VM flags; bad or unsupported specs exit 2 naming the field.

mod common;

use std::path::Path;

use common::*;

fn write_spec(dir: &Path, json: &str) -> String {
    let p = dir.join("vm.json");
    std::fs::write(&p, json).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_spec_boots_the_hello_and_rng_guests() {
    if !kvm_available("a_spec_boots_the_hello_and_rng_guests") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        &format!(
            r#"{{"name":"hello-1","cpus":{{"count":1}},"memory":{{"size_mib":128}},
                "boot":{{"kind":"kernel","kernel":"{}","cmdline":"paddock.test=spec"}}}}"#,
            guest("hello").display()
        ),
    );
    let o = vmm(&["--config", &spec, "--debug-exit"]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("cmdline=paddock.test=spec"), "{text}");
    assert!(text.contains("ram=127 MiB"), "{text}");

    let spec = write_spec(
        dir.path(),
        &format!(
            r#"{{"name":"rng-1","memory":{{"size_mib":64}},"rng":true,
                "boot":{{"kind":"kernel","kernel":"{}"}}}}"#,
            guest("rng").display()
        ),
    );
    let o = vmm(&["--config", &spec, "--debug-exit"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("rng ok"), "{}", out(&o));
}

#[test]
fn config_and_vm_flags_are_mutually_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "{}");
    for flag in [
        vec!["--kernel", "/k"],
        vec!["--memory", "64M"],
        vec!["--cpus", "2"],
        vec!["--rng"],
        vec!["--disk", "path=/d"],
    ] {
        let mut args = vec!["--config", spec.as_str()];
        args.extend_from_slice(&flag);
        let o = vmm(&args);
        assert_eq!(o.status.code(), Some(2), "{flag:?}: {}", err(&o));
        assert!(err(&o).contains("--config"), "{}", err(&o));
        assert!(err(&o).contains(flag[0]), "{flag:?}: {}", err(&o));
    }
    // Neither a kernel nor a config.
    let o = vmm(&["--memory", "64M"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("--kernel"), "{}", err(&o));
}

#[test]
fn bad_or_unsupported_specs_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = r#""boot":{"kind":"kernel","kernel":"/k"}"#;
    for (json, field) in [
        (
            r#"{"name":"a","memory":{"size_mib":64},"boot":{"kind":"firmware","firmware":"uefi"}}"#
                .to_string(),
            "boot.kind",
        ),
        (
            format!(
                r#"{{"name":"a","memory":{{"size_mib":64}},{kernel},"nics":[{{"network":"lan"}}]}}"#
            ),
            "nics[0].tap",
        ),
        (
            format!(r#"{{"name":"a","memory":{{"size_mib":64}},{kernel},"accel":"tcg"}}"#),
            "accel",
        ),
        (
            format!(
                r#"{{"name":"a","memory":{{"size_mib":64}},{kernel},"vsock":{{"cid":2,"socket":"/v"}}}}"#
            ),
            "vsock.cid",
        ),
        (
            format!(r#"{{"name":"a","memory":{{"size_mib":64}},{kernel},"cpus":{{"count":0}}}}"#),
            "cpus.count",
        ),
        (
            format!(r#"{{"name":"a","memory":{{"size_mib":1}},{kernel}}}"#),
            "memory.size_mib",
        ),
        (
            format!(r#"{{"name":"a","memory":{{"size_mib":64}},{kernel},"cpu":4}}"#),
            "cpu",
        ),
        ("not json".to_string(), "expected"),
    ] {
        let spec = write_spec(dir.path(), &json);
        let o = vmm(&["--config", &spec]);
        assert_eq!(o.status.code(), Some(2), "{json}: {}", err(&o));
        assert!(err(&o).contains(field), "{json}: {}", err(&o));
        assert!(err(&o).contains("vm.json"), "{}", err(&o));
    }
    let o = vmm(&["--config", "/nonexistent/vm.json"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("/nonexistent/vm.json"), "{}", err(&o));
}
