//! The guest-visible PCI bus, checked by the `pci` test guest against a golden listing: a VM
//! with two disks and an rng, enumerated through ECAM and through ports 0xcf8/0xcfc.

mod common;

use common::*;

/// What the guest sees on bus 0 with `--disk`, `--disk` and `--rng`. A change here changes the
/// guest ABI and must be deliberate.
const GOLDEN: &str = "\
PCI 00:00.0 8086:0d57 class 060000 rev 00 sub 0000:0000 bars - caps -
PCI 00:01.0 1af4:1042 class 018000 rev 01 sub 1af4:0040 bars 0:c0000000/8000 caps 11 09.1 09.2 09.3 09.4
PCI 00:02.0 1af4:1042 class 018000 rev 01 sub 1af4:0040 bars 0:c0008000/8000 caps 11 09.1 09.2 09.3 09.4
PCI 00:03.0 1af4:1044 class ff0000 rev 01 sub 1af4:0040 bars 0:c0010000/8000 caps 11 09.1 09.2 09.3 09.4
BAR0 of 00:03.0 moved c0010000 -> d0000000: num_queues=1 old=ffffffff
MSI-X on 00:03.0: 2 vectors, enabled=1 entry0.data=0x30
PCI enumeration agreed
";

#[test]
fn pci_guest_listing_matches_the_golden_bus() {
    if !kvm_available("pci_guest_listing_matches_the_golden_bus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&b, vec![0u8; 2 << 20]).unwrap();
    let o = vmm(&[
        "--kernel",
        guest("pci").to_str().unwrap(),
        "--memory",
        "128M",
        "--debug-exit",
        "--disk",
        &format!("path={},format=raw,serial=A", a.display()),
        "--disk",
        &format!("path={},format=raw,readonly=on", b.display()),
        "--rng",
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert_eq!(text, GOLDEN, "stderr: {}", err(&o));
    // MSI-X routes and ioeventfds were accepted by KVM: no complaint on stderr.
    assert!(!err(&o).contains("MSI-X"), "{}", err(&o));
    assert!(!err(&o).contains("KVM_"), "{}", err(&o));
}

#[test]
fn a_vm_without_devices_has_only_the_host_bridge() {
    if !kvm_available("a_vm_without_devices_has_only_the_host_bridge") {
        return;
    }
    let o = vmm(&[
        "--kernel",
        guest("pci").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert_eq!(
        text,
        "PCI 00:00.0 8086:0d57 class 060000 rev 00 sub 0000:0000 bars - caps -\nPCI enumeration agreed\n"
    );
}
