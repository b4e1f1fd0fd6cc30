//! Dirty-page logging, switched per memory region: a real-mode guest writes one byte, and KVM's
//! bitmap for that region names exactly the page it wrote (the basis of live migration).

mod common;

use paddock_vmm::kvm::{vcpu, KvmVm, VcpuExit};
use paddock_vmm::memory;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn a_guest_write_marks_exactly_its_page_dirty_in_its_region() {
    if !common::kvm_available("a_guest_write_marks_exactly_its_page_dirty_in_its_region") {
        return;
    }
    let mem = memory::create(4 << 20).unwrap();
    let kvm = KvmVm::create().unwrap();
    kvm.register_memory(&mem, false).unwrap();
    kvm.set_dirty_logging(&mem, 0, true).unwrap();
    // Real mode at 0x1000: mov byte [0x3000], 0x5a ; out 0x10, al
    let code = [0xc6, 0x06, 0x00, 0x30, 0x5a, 0xe6, 0x10];
    mem.write_slice(&code, GuestAddress(0x1000)).unwrap();
    let mut fd = kvm.create_vcpu(0).unwrap();
    let mut s = vcpu::sregs(&fd).unwrap();
    s.cs.base = 0;
    s.cs.selector = 0;
    s.ds.base = 0;
    s.ds.selector = 0;
    vcpu::set_sregs(&fd, &s).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu::set_regs(&fd, &regs).unwrap();
    // Writes before logging began do not count: clear what loading the code may have set.
    let _ = kvm.dirty_log(&mem, 0).unwrap();
    match fd.run().unwrap() {
        VcpuExit::IoOut(port, _) => assert_eq!(port, 0x10),
        other => panic!("unexpected exit {other:?}"),
    }
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0x5a);
    let bitmap = kvm.dirty_log(&mem, 0).unwrap();
    let dirty: Vec<usize> = (0..bitmap.len() * 64)
        .filter(|&p| bitmap[p / 64] & (1 << (p % 64)) != 0)
        .collect();
    assert_eq!(
        dirty,
        vec![3],
        "only page 3 (0x3000) was written by the guest"
    );
    // Fetching clears the log.
    let again = kvm.dirty_log(&mem, 0).unwrap();
    assert!(again.iter().all(|&w| w == 0));
    // Switched off, the region has no log any more.
    kvm.set_dirty_logging(&mem, 0, false).unwrap();
    assert!(kvm.dirty_log(&mem, 0).is_err());
}
