use super::*;
use crate::devices::virtio::testdriver::Driver;

#[test]
fn layout_is_validated() {
    let d = Driver::new(8);
    assert!(Queue::new(&d.mem, 8, d.desc, d.avail, d.used).is_ok());
    for (size, desc, avail, used) in [
        (0, d.desc, d.avail, d.used),
        (6, d.desc, d.avail, d.used),
        (8, d.desc + 8, d.avail, d.used),
        (8, d.desc, d.avail + 1, d.used),
        (8, d.desc, d.avail, d.used + 2),
        (8, 16 << 20, d.avail, d.used),
        (8, d.desc, d.avail, (16 << 20) - 16),
        (8, u64::MAX - 15, d.avail, d.used),
    ] {
        assert!(
            matches!(
                Queue::new(&d.mem, size, desc, avail, used),
                Err(ChainError::BadQueue(_))
            ),
            "{size} {desc:#x} {avail:#x} {used:#x}"
        );
    }
}

#[test]
fn chains_pop_in_order_and_used_entries_publish() {
    let mut d = Driver::new(8);
    let mut q = d.queue();
    assert_eq!(q.pop(&d.mem).unwrap(), None);
    let a = d.alloc(16, 1);
    let b = d.alloc(512, 2);
    let h1 = d.push_chain(&[(a, 16, false), (b, 512, true)]);
    let h2 = d.push_chain(&[(a, 4, false)]);
    let c1 = q.pop(&d.mem).unwrap().unwrap();
    assert_eq!(c1.head, h1);
    assert_eq!((c1.readable_len(), c1.writable_len()), (16, 512));
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().head, h2);
    assert_eq!(q.pop(&d.mem).unwrap(), None);
    q.add_used(&d.mem, h1, 512).unwrap();
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used_elem(0), (h1 as u32, 512));
    assert!(q.needs_interrupt(&d.mem));
}

#[test]
fn malformed_chains_are_errors_not_panics() {
    let mut d = Driver::new(8);
    let buf = d.alloc(64, 0);
    // A loop: 0 -> 1 -> 0.
    let mut q = d.queue();
    d.write_desc(0, buf, 8, DESC_F_NEXT, 1);
    d.write_desc(1, buf, 8, DESC_F_NEXT, 0);
    d.publish(0);
    assert_eq!(q.pop(&d.mem), Err(ChainError::Loop(0)));
    // next outside the table.
    let mut q = d.queue();
    d.write_desc(0, buf, 8, DESC_F_NEXT, 99);
    assert_eq!(q.pop(&d.mem), Err(ChainError::BadIndex(99)));
    // A buffer past the end of memory, and one that wraps the address space.
    let mut q = d.queue();
    d.write_desc(0, (16 << 20) - 4, 8, 0, 0);
    assert!(matches!(q.pop(&d.mem), Err(ChainError::OutOfRange { .. })));
    let mut q = d.queue();
    d.write_desc(0, u64::MAX - 2, 8, 0, 0);
    assert!(matches!(q.pop(&d.mem), Err(ChainError::OutOfRange { .. })));
    // Readable after writable.
    let mut q = d.queue();
    d.write_desc(0, buf, 8, DESC_F_WRITE | DESC_F_NEXT, 1);
    d.write_desc(1, buf, 8, 0, 0);
    assert_eq!(q.pop(&d.mem), Err(ChainError::ReadAfterWrite(0)));
    // Indirect without the feature.
    let mut q = d.queue();
    d.write_desc(0, buf, 16, DESC_F_INDIRECT, 0);
    assert_eq!(q.pop(&d.mem), Err(ChainError::Indirect(0)));
    // A head index outside the table, and an avail index far ahead.
    let mut q = d.queue();
    d.mem.write_obj(200u16, d.avail_ring_slot(0)).unwrap();
    assert_eq!(q.pop(&d.mem), Err(ChainError::BadIndex(200)));
    let mut q = d.queue();
    d.set_avail_idx(40);
    assert!(matches!(
        q.pop(&d.mem),
        Err(ChainError::AvailOverrun { .. })
    ));
}

#[test]
fn segments_span_descriptors() {
    let mut d = Driver::new(4);
    let a = d.alloc_bytes(b"head");
    let b = d.alloc_bytes(b"er-and-data");
    let chain = DescriptorChain {
        head: 0,
        descs: vec![
            Descriptor {
                addr: GuestAddress(a),
                len: 4,
                writable: false,
            },
            Descriptor {
                addr: GuestAddress(b),
                len: 11,
                writable: false,
            },
        ],
    };
    let s = Segments::new(chain.readable());
    assert_eq!(s.len(), 15);
    let mut buf = [0u8; 6];
    s.read(&d.mem, 2, &mut buf).unwrap();
    assert_eq!(&buf, b"ader-a");
    s.write(&d.mem, 3, b"XY").unwrap();
    assert_eq!(d.read(a, 4), b"heaX");
    assert_eq!(d.read(b, 2), b"Yr");
    assert!(s.read(&d.mem, 10, &mut buf).is_err());
}
