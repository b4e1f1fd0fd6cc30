use std::sync::atomic::Ordering;

use paddock_disk::{Format, OpenOptions};

use super::request::*;
use super::*;
use crate::devices::virtio::queue::{ChainError, Queue, DESC_F_NEXT, DESC_F_WRITE};
use crate::devices::virtio::testdriver::Driver;

const DISK: usize = 1 << 20;

fn pattern(sector: u64, i: usize) -> u8 {
    (sector as u8).wrapping_mul(31).wrapping_add(i as u8)
}

fn image(read_only: bool) -> (tempfile::TempDir, Arc<dyn BlockImage>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    let mut data = vec![0u8; DISK];
    for (s, chunk) in data.chunks_mut(512).enumerate() {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = pattern(s as u64, i);
        }
    }
    std::fs::write(&path, &data).unwrap();
    let opts = OpenOptions {
        writable: !read_only,
        ..OpenOptions::read(Some(Format::Raw))
    };
    (dir, Arc::from(paddock_disk::open(&path, &opts).unwrap()))
}

struct Rig {
    _dir: tempfile::TempDir,
    image: Arc<dyn BlockImage>,
    dev: Block,
    handler: Box<dyn QueueHandler>,
    d: Driver,
    q: Queue,
}

fn rig(read_only: bool) -> Rig {
    let (dir, image) = image(read_only);
    let mut dev = Block::new(image.clone(), read_only, "paddock-serial-0123456789");
    let handler = dev.activate(dev.features()).unwrap();
    let d = Driver::new(64);
    let q = d.queue();
    Rig {
        _dir: dir,
        image,
        dev,
        handler,
        d,
        q,
    }
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

impl Rig {
    /// Submits header + readable payload + writable buffer of `in_len` + status; returns
    /// (status, used len, writable data).
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        payload: &[u8],
        in_len: u32,
    ) -> (u8, u32, Vec<u8>) {
        let h = self.d.alloc_bytes(&header(kind, sector));
        let mut bufs = vec![(h, 16, false)];
        if !payload.is_empty() {
            let p = self.d.alloc_bytes(payload);
            bufs.push((p, payload.len() as u32, false));
        }
        let data = self.d.alloc(in_len as usize, 0xee);
        if in_len > 0 {
            bufs.push((data, in_len, true));
        }
        let st = self.d.alloc(1, 0xff);
        bufs.push((st, 1, true));
        let head = self.d.push_chain(&bufs);
        let before = self.d.used_idx();
        assert!(self.handler.process(0, &mut self.q, &self.d.mem).unwrap());
        assert_eq!(self.d.used_idx(), before.wrapping_add(1));
        let (id, len) = self.d.used_elem(before);
        assert_eq!(id, head as u32);
        (
            self.d.read(st, 1)[0],
            len,
            self.d.read(data, in_len as usize),
        )
    }
}

#[test]
fn config_announces_capacity_and_limits() {
    let r = rig(false);
    let mut b = [0u8; 8];
    r.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), (DISK / 512) as u64);
    let mut w = [0u8; 4];
    r.dev.read_config(0x08, &mut w);
    assert_eq!(u32::from_le_bytes(w), SIZE_MAX);
    r.dev.read_config(0x0c, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    r.dev.read_config(0x24, &mut w);
    assert_eq!(u32::from_le_bytes(w), MAX_DISCARD_SECTORS);
    r.dev.read_config(0x30, &mut w);
    assert_eq!(u32::from_le_bytes(w), MAX_WRITE_ZEROES_SECTORS);
    let f = r.dev.features();
    for bit in [
        F_FLUSH,
        F_DISCARD,
        F_WRITE_ZEROES,
        F_SEG_MAX,
        F_SIZE_MAX,
        32,
    ] {
        assert!(f & (1 << bit) != 0, "feature {bit}");
    }
    assert_eq!(f & (1 << F_RO), 0);
    let ro = rig(true);
    assert!(ro.dev.features() & (1 << F_RO) != 0);
    assert_eq!(ro.dev.features() & (1 << F_DISCARD), 0);
}

#[test]
fn reads_writes_flushes_and_counts() {
    let mut r = rig(false);
    let (st, len, data) = r.request(T_IN, 3, &[], 1024);
    assert_eq!((st, len), (S_OK, 1025));
    for (i, &b) in data.iter().enumerate() {
        assert_eq!(b, pattern(3 + (i / 512) as u64, i % 512), "byte {i}");
    }
    let payload: Vec<u8> = (0..2048).map(|i| (i * 7) as u8).collect();
    let (st, len, _) = r.request(T_OUT, 100, &payload, 0);
    assert_eq!((st, len), (S_OK, 1));
    let mut back = vec![0u8; 2048];
    r.image.read_at(&mut back, 100 * 512).unwrap();
    assert_eq!(back, payload);
    assert_eq!(r.request(T_FLUSH, 0, &[], 0).0, S_OK);
    let c = r.dev.counters();
    assert_eq!(c.read_requests.load(Ordering::Relaxed), 1);
    assert_eq!(c.read_bytes.load(Ordering::Relaxed), 1024);
    assert_eq!(c.write_requests.load(Ordering::Relaxed), 1);
    assert_eq!(c.write_bytes.load(Ordering::Relaxed), 2048);
    assert_eq!(c.flush_requests.load(Ordering::Relaxed), 1);
}

/// Serves one chain of `bufs` (header first, status last) and returns the status byte.
fn serve(r: &mut Rig, bufs: &[(u64, u32, bool)], status: u64) -> u8 {
    r.d.push_chain(bufs);
    assert!(r.handler.process(0, &mut r.q, &r.d.mem).unwrap());
    r.d.read(status, 1)[0]
}

#[test]
fn multi_segment_requests_scatter_and_gather_in_order() {
    let mut r = rig(false);
    // A read at sector 5 into three scattered buffers of 512, 1024 and 512 bytes.
    let h = r.d.alloc_bytes(&header(T_IN, 5));
    let parts = [
        r.d.alloc(512, 0xee),
        r.d.alloc(1024, 0xee),
        r.d.alloc(512, 0xee),
    ];
    let st = r.d.alloc(1, 0xff);
    let bufs = [
        (h, 16, false),
        (parts[0], 512, true),
        (parts[1], 1024, true),
        (parts[2], 512, true),
        (st, 1, true),
    ];
    assert_eq!(serve(&mut r, &bufs, st), S_OK);
    let got = [
        r.d.read(parts[0], 512),
        r.d.read(parts[1], 1024),
        r.d.read(parts[2], 512),
    ]
    .concat();
    for (i, &b) in got.iter().enumerate() {
        assert_eq!(b, pattern(5 + (i / 512) as u64, i % 512), "byte {i}");
    }
    // A write at sector 40 gathered from two buffers.
    let (a, b) = (vec![0x11u8; 512], vec![0x22u8; 1024]);
    let h = r.d.alloc_bytes(&header(T_OUT, 40));
    let (pa, pb) = (r.d.alloc_bytes(&a), r.d.alloc_bytes(&b));
    let st = r.d.alloc(1, 0xff);
    let bufs = [
        (h, 16, false),
        (pa, 512, false),
        (pb, 1024, false),
        (st, 1, true),
    ];
    assert_eq!(serve(&mut r, &bufs, st), S_OK);
    let mut back = vec![0u8; 1536];
    r.image.read_at(&mut back, 40 * 512).unwrap();
    assert_eq!(back, [a, b].concat());
    // The same buffer twice (a hostile or sloppy driver): served one segment after the
    // other, so the buffer ends up holding the second sector, and nothing breaks.
    let h = r.d.alloc_bytes(&header(T_IN, 9));
    let same = r.d.alloc(512, 0xee);
    let st = r.d.alloc(1, 0xff);
    let bufs = [
        (h, 16, false),
        (same, 512, true),
        (same, 512, true),
        (st, 1, true),
    ];
    assert_eq!(serve(&mut r, &bufs, st), S_OK);
    let got = r.d.read(same, 512);
    assert!((0..512).all(|i| got[i] == pattern(10, i)));
}

#[test]
fn get_id_discard_and_write_zeroes() {
    let mut r = rig(false);
    let (st, len, id) = r.request(T_GET_ID, 0, &[], 20);
    assert_eq!((st, len), (S_OK, 21));
    assert_eq!(&id, b"paddock-serial-01234");
    let mut seg = 8u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&4u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(r.request(T_DISCARD, 0, &seg, 0).0, S_OK);
    let mut wz = 20u64.to_le_bytes().to_vec();
    wz.extend_from_slice(&2u32.to_le_bytes());
    wz.extend_from_slice(&WZ_UNMAP.to_le_bytes());
    assert_eq!(r.request(T_WRITE_ZEROES, 0, &wz, 0).0, S_OK);
    let mut b = vec![0xaau8; 1024];
    r.image.read_at(&mut b, 20 * 512).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    r.image.read_at(&mut b[..512], 8 * 512).unwrap();
    assert!(
        b[..512].iter().all(|&x| x == 0),
        "discarded raw range reads zero"
    );
    // Discard with a flag, out of range, too many sectors.
    let mut bad = 0u64.to_le_bytes().to_vec();
    bad.extend_from_slice(&1u32.to_le_bytes());
    bad.extend_from_slice(&1u32.to_le_bytes());
    assert_eq!(r.request(T_DISCARD, 0, &bad, 0).0, S_UNSUPP);
    let mut far = ((DISK / 512) as u64).to_le_bytes().to_vec();
    far.extend_from_slice(&1u32.to_le_bytes());
    far.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(r.request(T_DISCARD, 0, &far, 0).0, S_IOERR);
}

#[test]
fn bad_requests_end_with_ioerr_or_unsupp() {
    let mut r = rig(false);
    let last = (DISK / 512) as u64;
    assert_eq!(r.request(T_IN, last, &[], 512).0, S_IOERR);
    assert_eq!(r.request(T_IN, u64::MAX / 2, &[], 512).0, S_IOERR);
    assert_eq!(r.request(T_IN, 0, &[], 100).0, S_IOERR, "not whole sectors");
    assert_eq!(r.request(T_OUT, last - 1, &[0; 1024], 0).0, S_IOERR);
    assert_eq!(r.request(77, 0, &[], 0).0, S_UNSUPP);
    assert_eq!(r.dev.counters().errors.load(Ordering::Relaxed), 5);
}

#[test]
fn read_only_disks_refuse_writes_with_ioerr() {
    let mut r = rig(true);
    assert_eq!(r.request(T_OUT, 0, &[1; 512], 0).0, S_IOERR);
    let mut seg = 0u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&1u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        r.request(T_DISCARD, 0, &seg, 0).0,
        S_UNSUPP,
        "not negotiated"
    );
    let mut b = [0u8; 512];
    r.image.read_at(&mut b, 0).unwrap();
    assert_eq!(b[1], pattern(0, 1));
    assert_eq!(r.request(T_IN, 0, &[], 512).0, S_OK);
}

fn malformed(build: impl FnOnce(&mut Driver)) -> ChainError {
    let mut r = rig(false);
    build(&mut r.d);
    let e = r.handler.process(0, &mut r.q, &r.d.mem).unwrap_err();
    assert_eq!(r.d.used_idx(), 0, "nothing completed");
    e
}

#[test]
fn malformed_chains_are_errors() {
    // No writable status byte.
    let e = malformed(|d| {
        let h = d.alloc_bytes(&header(T_IN, 0));
        d.push_chain(&[(h, 16, false)]);
    });
    assert!(
        matches!(e, ChainError::Request(ref m) if m.contains("status")),
        "{e}"
    );
    // Header too short.
    let e = malformed(|d| {
        let h = d.alloc_bytes(&header(T_IN, 0));
        let s = d.alloc(1, 0);
        d.push_chain(&[(h, 8, false), (s, 1, true)]);
    });
    assert!(
        matches!(e, ChainError::Request(ref m) if m.contains("header")),
        "{e}"
    );
    // A read whose data buffer is device-readable: wrong direction.
    let e = malformed(|d| {
        let h = d.alloc_bytes(&header(T_IN, 0));
        let b = d.alloc(512, 0);
        let s = d.alloc(1, 0);
        d.push_chain(&[(h, 16, false), (b, 512, false), (s, 1, true)]);
    });
    assert!(
        matches!(e, ChainError::Request(ref m) if m.contains("readable")),
        "{e}"
    );
    // A write whose data buffer is device-writable.
    let e = malformed(|d| {
        let h = d.alloc_bytes(&header(T_OUT, 0));
        let b = d.alloc(512, 0);
        let s = d.alloc(1, 0);
        d.push_chain(&[(h, 16, false), (b, 512, true), (s, 1, true)]);
    });
    assert!(
        matches!(e, ChainError::Request(ref m) if m.contains("writable")),
        "{e}"
    );
    // A descriptor longer than size_max.
    let e = malformed(|d| {
        let h = d.alloc_bytes(&header(T_IN, 0));
        let s = d.alloc(1, 0);
        d.push_chain(&[
            (h, 16, false),
            (0x20_0000, SIZE_MAX + 512, true),
            (s, 1, true),
        ]);
    });
    assert!(
        matches!(e, ChainError::Request(ref m) if m.contains("size_max")),
        "{e}"
    );
    // A chain that loops.
    let e = malformed(|d| {
        let h = d.alloc_bytes(&header(T_IN, 0));
        d.write_desc(0, h, 16, DESC_F_NEXT, 1);
        d.write_desc(1, h, 16, DESC_F_NEXT | DESC_F_WRITE, 1);
        d.publish(0);
    });
    assert_eq!(e, ChainError::Loop(0));
    // A buffer outside guest memory.
    let e = malformed(|d| {
        let h = d.alloc_bytes(&header(T_IN, 0));
        let s = d.alloc(1, 0);
        d.push_chain(&[(h, 16, false), (1 << 40, 512, true), (s, 1, true)]);
    });
    assert!(matches!(e, ChainError::OutOfRange { .. }), "{e}");
}

#[test]
fn event_idx_is_offered_and_a_pass_publishes_all_requests_at_once() {
    let mut r = rig(true);
    assert_ne!(
        r.dev.features() & 1 << crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX,
        0
    );
    assert!(r.handler.drains_queues());
    let mut statuses = Vec::new();
    for s in 0..20u64 {
        let h = r.d.alloc_bytes(&header(T_IN, s));
        let data = r.d.alloc(512, 0);
        let st = r.d.alloc(1, 0xff);
        r.d.push_chain(&[(h, 16, false), (data, 512, true), (st, 1, true)]);
        statuses.push((s, data, st));
    }
    assert!(r.handler.process(0, &mut r.q, &r.d.mem).unwrap());
    assert_eq!(r.d.used_idx(), 20);
    for (s, data, st) in statuses {
        assert_eq!(r.d.read(st, 1), [S_OK]);
        let expect: Vec<u8> = (0..512).map(|i| pattern(s, i)).collect();
        assert_eq!(r.d.read(data, 512), expect, "sector {s}");
    }
}
