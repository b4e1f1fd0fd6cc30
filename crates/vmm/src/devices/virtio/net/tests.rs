use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use super::handler::{NetHandler, MAX_FRAME};
use super::*;
use crate::devices::virtio::queue::ChainError;
use crate::devices::virtio::testdriver::Driver;
use crate::net::VNET_HDR_LEN;

/// A handler on one end of a datagram pair (frames keep their boundaries, like a TAP); the
/// other end plays the host network.
fn handler() -> (NetHandler, UnixDatagram, Arc<NetCounters>) {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let counters = Arc::new(NetCounters::default());
    let h = NetHandler::new(Arc::new(dev), counters.clone()).unwrap();
    (h, host, counters)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn with_header(f: &[u8], hdr_fill: u8) -> Vec<u8> {
    let mut v = vec![hdr_fill; VNET_HDR_LEN];
    v.extend_from_slice(f);
    v
}

#[test]
fn transmit_zeroes_the_header_and_sends_one_frame_per_chain() {
    let (mut h, host, c) = handler();
    let mut d = Driver::new(16);
    let mut q = d.queue();
    let f = frame(60, 1);
    let hdr = d.alloc(VNET_HDR_LEN, 0xee);
    let body = d.alloc_bytes(&f);
    let head = d.push_chain(&[(hdr, VNET_HDR_LEN as u32, false), (body, 60, false)]);
    assert!(h.process(TX, &mut q, &d.mem).unwrap());
    assert_eq!(d.used_elem(0), (head as u32, 0));
    let mut buf = [0u8; 256];
    let n = host.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &with_header(&f, 0)[..]);
    assert_eq!(NetCounters::get(&c.tx_packets), 1);
    assert_eq!(NetCounters::get(&c.tx_bytes), 60);
    assert!(!h.process(TX, &mut q, &d.mem).unwrap(), "nothing new");
}

#[test]
fn receive_fills_a_chain_with_header_and_frame() {
    let (mut h, host, c) = handler();
    let mut d = Driver::new(16);
    let mut q = d.queue();
    assert!(!h.process(RX, &mut q, &d.mem).unwrap(), "no frame yet");
    let f = frame(98, 2);
    host.send(&with_header(&f, 0x55)).unwrap();
    let a = d.alloc(1000, 0xaa);
    let b = d.alloc(1000, 0xaa);
    let head = d.push_chain(&[(a, 50, true), (b, 1000, true)]);
    assert!(h.process(RX, &mut q, &d.mem).unwrap());
    assert_eq!(d.used_elem(0), (head as u32, (VNET_HDR_LEN + 98) as u32));
    let mut got = d.read(a, 50);
    got.extend(d.read(b, VNET_HDR_LEN + 98 - 50));
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[10] = 1;
    assert_eq!(&got[..VNET_HDR_LEN], &hdr, "zeroed header, num_buffers 1");
    assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
    assert_eq!(NetCounters::get(&c.rx_packets), 1);
    assert_eq!(NetCounters::get(&c.rx_bytes), 98);
}

#[test]
fn frames_wait_for_buffers_and_oversized_frames_are_dropped() {
    let (mut h, host, c) = handler();
    let mut d = Driver::new(16);
    let mut q = d.queue();
    host.send(&with_header(&frame(500, 3), 0)).unwrap();
    let small = frame(40, 4);
    host.send(&with_header(&small, 0)).unwrap();
    // No buffers: the frames stay queued.
    assert!(!h.process(RX, &mut q, &d.mem).unwrap());
    let a = d.alloc(100, 0);
    let head = d.push_chain(&[(a, 100, true)]);
    // The 500-byte frame does not fit 100 bytes: dropped, and the chain takes the next one.
    assert!(h.process(RX, &mut q, &d.mem).unwrap());
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used_elem(0), (head as u32, (VNET_HDR_LEN + 40) as u32));
    assert_eq!(d.read(a + VNET_HDR_LEN as u64, 40), small);
    assert_eq!(NetCounters::get(&c.rx_dropped), 1);
    assert_eq!(NetCounters::get(&c.rx_packets), 1);
}

#[test]
fn malformed_chains_are_errors_not_panics() {
    // Receive buffers that the device may not write.
    let (mut h, host, _) = handler();
    let mut d = Driver::new(16);
    let mut q = d.queue();
    host.send(&with_header(&frame(20, 5), 0)).unwrap();
    let a = d.alloc(2048, 0);
    d.push_chain(&[(a, 2048, false)]);
    assert!(matches!(
        h.process(RX, &mut q, &d.mem),
        Err(ChainError::Request(_))
    ));
    // A receive chain shorter than the header.
    let (mut h, host, _) = handler();
    let mut d = Driver::new(16);
    let mut q = d.queue();
    host.send(&with_header(&frame(20, 5), 0)).unwrap();
    let a = d.alloc(8, 0);
    d.push_chain(&[(a, 8, true)]);
    assert!(h.process(RX, &mut q, &d.mem).is_err());
    // Transmit: writable buffers, a short header, an oversized frame.
    for bufs in [
        vec![(0x20_0000u64, 64u32, true)],
        vec![(0x20_0000, 4, false)],
        vec![(0x20_0000, (VNET_HDR_LEN + MAX_FRAME + 1) as u32, false)],
    ] {
        let (mut h, host, _) = handler();
        let mut d = Driver::new(16);
        let mut q = d.queue();
        d.push_chain(&bufs);
        assert!(
            matches!(h.process(TX, &mut q, &d.mem), Err(ChainError::Request(_))),
            "{bufs:?}"
        );
        assert_eq!(d.used_idx(), 0);
        let mut buf = [0u8; 16];
        assert!(host.recv(&mut buf).is_err(), "nothing reached the host");
    }
}

#[test]
fn identity_and_configuration() {
    let (dev, _host) = UnixDatagram::pair().unwrap();
    let n = Net::new(Arc::new(dev), "test", [0x52, 0x54, 0, 1, 2, 3]);
    assert_eq!(n.device_type(), 1);
    assert_eq!(n.queue_max_sizes(), &[256, 256]);
    assert_eq!(n.features(), 1 << 32 | 1 << 5 | 1 << 16);
    let mut cfg = [0u8; 8];
    n.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x52, 0x54, 0, 1, 2, 3, 1, 0]);
    let mut status = [0u8; 2];
    n.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), STATUS_LINK_UP);
}
