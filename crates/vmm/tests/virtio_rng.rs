//! virtio-rng under real KVM: the `rng` guest reads 4 KiB by polling the used ring.

mod common;

use common::*;

#[test]
fn rng_guest_reads_random_bytes() {
    if !kvm_available("rng_guest_reads_random_bytes") {
        return;
    }
    let o = vmm(&[
        "--kernel",
        guest("rng").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
        "--rng",
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("rng 00:01.0: used=4096"), "{text}");
    assert!(text.contains("all_zero=false"), "{text}");
    assert!(text.contains("rng ok"), "{text}");
}

#[test]
fn without_rng_the_guest_finds_no_device() {
    if !kvm_available("without_rng_the_guest_finds_no_device") {
        return;
    }
    let o = vmm(&[
        "--kernel",
        guest("rng").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("no virtio-rng device"), "{}", out(&o));
}
