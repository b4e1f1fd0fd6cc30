use super::*;
use crate::devices::virtio::testdriver::Driver;

#[test]
fn fills_writable_buffers_with_random_bytes() {
    let mut d = Driver::new(16);
    let mut q = d.queue();
    let a = d.alloc(4096, 0);
    let b = d.alloc(100, 0);
    let h = d.push_chain(&[(a, 4096, true), (b, 100, true)]);
    assert!(RngHandler.process(0, &mut q, &d.mem).unwrap());
    assert_eq!(d.used_elem(0), (h as u32, 4196));
    let bytes = d.read(a, 4096);
    assert!(bytes.iter().any(|&x| x != 0));
    assert!(bytes.windows(2).any(|w| w[0] != w[1]), "not constant");
    assert!(
        !RngHandler.process(0, &mut q, &d.mem).unwrap(),
        "nothing new"
    );
}

#[test]
fn readable_buffers_are_malformed() {
    let mut d = Driver::new(16);
    let mut q = d.queue();
    let a = d.alloc(64, 0);
    d.push_chain(&[(a, 64, false)]);
    assert!(matches!(
        RngHandler.process(0, &mut q, &d.mem),
        Err(ChainError::Request(_))
    ));
    assert_eq!(d.used_idx(), 0);
}

#[test]
fn identity() {
    let r = Rng;
    assert_eq!(r.device_type(), 4);
    assert_eq!(r.features(), 1 << 32);
    assert_eq!(r.queue_max_sizes(), &[256]);
}
