use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::handler::ConsoleHandler;
use super::*;
use crate::devices::virtio::queue::ChainError;
use crate::devices::virtio::testdriver::Driver;
use crate::devices::virtio::worker::WorkerQueue;

/// An output sink the test can read back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn handler(input: Option<Arc<File>>) -> (ConsoleHandler, Sink) {
    let sink = Sink::default();
    let out: Output = Arc::new(Mutex::new(Box::new(sink.clone())));
    (ConsoleHandler::new(out, input).unwrap(), sink)
}

#[test]
fn output_is_written_in_order_across_descriptors() {
    let (mut h, sink) = handler(None);
    let mut d = Driver::new(16);
    let mut q = d.queue();
    let a = d.alloc_bytes(b"hello ");
    let b = d.alloc_bytes(b"console\n");
    d.push_chain(&[(a, 6, false), (b, 8, false)]);
    let big: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let c = d.alloc_bytes(&big);
    d.push_chain(&[(c, big.len() as u32, false)]);
    assert!(h.process(TX, &mut q, &d.mem).unwrap());
    assert_eq!(d.used_idx(), 2);
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(&got[..14], b"hello console\n");
    assert_eq!(&got[14..], &big[..]);
}

#[test]
fn input_reaches_receive_buffers_when_they_come() {
    let (dev, mut host) = UnixStream::pair().unwrap();
    let input = Arc::new(File::from(OwnedFd::from(dev)));
    let (mut h, _) = handler(Some(input));
    let mut d = Driver::new(16);
    let mut wq = vec![WorkerQueue {
        index: RX,
        queue: d.queue(),
        event: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    }];
    host.write_all(b"typed line\n").unwrap();
    // No buffers yet: the input waits.
    assert!(h.process_backend(&mut wq, &d.mem).unwrap().is_empty());
    let a = d.alloc(4, 0);
    let b = d.alloc(64, 0);
    d.push_chain(&[(a, 4, true)]);
    d.push_chain(&[(b, 64, true)]);
    assert!(h.process(RX, &mut wq[0].queue, &d.mem).unwrap());
    assert_eq!(d.used_elem(0).1, 4);
    assert_eq!(d.used_elem(1).1, 7);
    assert_eq!(d.read(a, 4), b"type");
    assert_eq!(d.read(b, 7), b"d line\n");
}

#[test]
fn buffers_in_the_wrong_direction_are_malformed() {
    let (mut h, sink) = handler(None);
    let mut d = Driver::new(16);
    let mut q = d.queue();
    let a = d.alloc(8, 0);
    d.push_chain(&[(a, 8, true)]);
    assert!(matches!(
        h.process(TX, &mut q, &d.mem),
        Err(ChainError::Request(_))
    ));
    assert!(sink.0.lock().unwrap().is_empty());

    let (dev, mut host) = UnixStream::pair().unwrap();
    let (mut h, _) = handler(Some(Arc::new(File::from(OwnedFd::from(dev)))));
    host.write_all(b"x").unwrap();
    let mut d = Driver::new(16);
    let mut q = d.queue();
    let a = d.alloc(8, 0);
    d.push_chain(&[(a, 8, false)]);
    assert!(h.process(RX, &mut q, &d.mem).is_err());
}

#[test]
fn options_and_identity() {
    assert_eq!(ConsoleConfig::parse("off").unwrap(), ConsoleConfig::Off);
    assert_eq!(ConsoleConfig::parse("stdio").unwrap(), ConsoleConfig::Stdio);
    assert_eq!(
        ConsoleConfig::parse("file=/tmp/c").unwrap(),
        ConsoleConfig::File("/tmp/c".into())
    );
    assert!(ConsoleConfig::parse("file=").is_err());
    assert!(ConsoleConfig::parse("tcp").is_err());
    assert!(ConsoleConfig::Off.build().unwrap().is_none());
    let c = Console::new(Box::new(std::io::sink()), None);
    assert_eq!(c.device_type(), 3);
    assert_eq!(c.features(), 1 << 32);
    let mut ports = [0u8; 4];
    c.read_config(4, &mut ports);
    assert_eq!(u32::from_le_bytes(ports), 1);
}
