//! One vsock stream between a guest port and a host Unix socket: its state, the data the guest
//! sent that the socket has not taken yet, and the credit accounting both ways (virtio 1.2
//! §5.10.6.3). The guest may have at most [`BUF_ALLOC`] bytes in flight towards us; we send it
//! at most what its `buf_alloc` and `fwd_cnt` allow.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Our receive buffer per connection, announced to the guest in every header.
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
    /// The host side closed: SHUTDOWN sent, waiting for the guest's RST.
    Closing,
}

/// What writing guest data to the socket did.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// Taken (written or buffered).
    Ok,
    /// The guest sent more than its credit allowed.
    CreditViolation,
    /// The socket is gone.
    Closed,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The host socket (non-blocking).
    pub stream: UnixStream,
    /// Epoll token of the socket.
    pub token: u64,
    /// Port on the host side (CID 2).
    pub host_port: u32,
    /// Port on the guest side.
    pub guest_port: u32,
    /// State.
    pub state: State,
    /// The socket may have data (edge seen, no read has blocked since).
    pub readable: bool,
    /// Shutdown flags the guest sent.
    pub guest_shutdown: u32,
    /// Guest data not yet written to the socket.
    pending: Vec<u8>,
    /// Bytes written to the socket, ever (wrapping): our `fwd_cnt`.
    pub fwd_cnt: u32,
    /// The `fwd_cnt` the guest last saw from us.
    pub fwd_cnt_sent: u32,
    /// Bytes sent to the guest, ever (wrapping).
    pub tx_cnt: u32,
    /// The guest's receive buffer.
    pub peer_buf_alloc: u32,
    /// The guest's `fwd_cnt`.
    pub peer_fwd_cnt: u32,
}

impl Conn {
    /// A connection on `stream`.
    pub fn new(
        stream: UnixStream,
        token: u64,
        host_port: u32,
        guest_port: u32,
        state: State,
    ) -> Conn {
        Conn {
            stream,
            token,
            host_port,
            guest_port,
            state,
            // Data may already wait in the socket (after a CONNECT line, before an edge).
            readable: true,
            guest_shutdown: 0,
            pending: Vec::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// Takes the guest's credit fields from any packet it sent on this connection.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Fills our credit fields into `h` and remembers what the guest now knows.
    pub fn stamp(&mut self, mut h: Header) -> Header {
        h.buf_alloc = BUF_ALLOC;
        h.fwd_cnt = self.fwd_cnt;
        self.fwd_cnt_sent = self.fwd_cnt;
        h
    }

    /// Whether the guest should hear about freed buffer space (half the buffer since the
    /// last header it saw).
    pub fn wants_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 2
    }

    /// Whether this connection can send the guest data now.
    pub fn can_send(&self) -> bool {
        self.state == State::Established
            && self.readable
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Writes guest data to the socket, buffering what it does not take.
    pub fn forward(&mut self, data: &[u8]) -> Forward {
        if self.pending.len() + data.len() > BUF_ALLOC as usize
            || self.guest_shutdown & SHUTDOWN_SEND != 0
        {
            return Forward::CreditViolation;
        }
        self.pending.extend_from_slice(data);
        self.flush()
    }

    /// Writes buffered guest data to the socket until it would block.
    pub fn flush(&mut self) -> Forward {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Forward::Closed,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Forward::Closed,
            }
        }
        Forward::Ok
    }

    /// Reads at most `max` bytes for the guest; `Ok(0)` is the end of the stream, `None`
    /// that nothing is there now.
    pub fn read(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Some(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return None;
                }
                Err(_) => return Some(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, 9, 1234, 5000, State::Established), b)
    }

    #[test]
    fn credit_follows_the_guests_counters() {
        let (mut c, _peer) = conn();
        assert_eq!(c.peer_credit(), 0, "nothing known yet");
        c.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Default::default()
        });
        c.tx_cnt = 600;
        assert_eq!(c.peer_credit(), 400);
        c.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 600,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 1000);
        // Wrapping counters.
        c.tx_cnt = 5;
        c.peer_fwd_cnt = u32::MAX - 4;
        assert_eq!(c.peer_credit(), 990);
    }

    #[test]
    fn forwards_to_the_socket_and_counts() {
        let (mut c, mut peer) = conn();
        assert_eq!(c.forward(b"hello"), Forward::Ok);
        assert_eq!(c.fwd_cnt, 5);
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(!c.wants_credit_update());
        let h = c.stamp(Header::default());
        assert_eq!((h.buf_alloc, h.fwd_cnt, c.fwd_cnt_sent), (BUF_ALLOC, 5, 5));
    }

    #[test]
    fn more_than_the_credit_is_a_violation() {
        let (mut c, _peer) = conn();
        let big = vec![0u8; BUF_ALLOC as usize + 1];
        assert_eq!(c.forward(&big), Forward::CreditViolation);
        c.guest_shutdown = SHUTDOWN_SEND;
        assert_eq!(c.forward(b"x"), Forward::CreditViolation);
    }
}
