//! SMP under real KVM: the `smp` guest starts every AP with INIT-SIPI-SIPI through its LAPIC;
//! each AP reaches long mode through a real-mode trampoline and reports on COM1.

mod common;

use common::*;

#[test]
fn every_vcpu_of_four_comes_up_and_reports() {
    if !kvm_available("every_vcpu_of_four_comes_up_and_reports") {
        return;
    }
    let o = vmm(&[
        "--kernel",
        guest("smp").to_str().unwrap(),
        "--memory",
        "128M",
        "--debug-exit",
        "--cpus",
        "4",
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(
        text.contains("smp: 4 CPUs in the MP table; CPU 0 up (BSP)"),
        "{text}"
    );
    for id in 1..4 {
        assert!(
            text.contains(&format!("CPU {id} up (AP ")),
            "CPU {id}: {text}"
        );
    }
    assert!(text.contains("SMP PASS: 4 CPUs up"), "{text}");
}

#[test]
fn one_vcpu_needs_no_ap() {
    if !kvm_available("one_vcpu_needs_no_ap") {
        return;
    }
    let o = vmm(&[
        "--kernel",
        guest("smp").to_str().unwrap(),
        "--memory",
        "64M",
        "--debug-exit",
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("SMP PASS: 1 CPUs up"), "{text}");
    assert!(!text.contains("(AP "), "{text}");
}
