//! The control API: HTTP/1.1 with JSON bodies on a Unix socket (`--api-socket PATH`), served
//! by one thread that multiplexes connections with epoll. Routes are in [`routes`], the
//! OpenAPI document in `crates/vmm/api/openapi.json`. The thread runs under the VMM thread's
//! seccomp filter.

pub mod http;
pub mod routes;
pub mod spec;
pub mod state;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::{self, ThreadFilter, ThreadKind};
pub use routes::ROUTES;
pub use state::{CounterSource, DeviceCounters, DeviceInfo, VmHandle, VmInfo};

/// Most connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a response write may block on a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

const STOP: u64 = u64::MAX;
const LISTENER: u64 = u64::MAX - 1;

/// A bound API socket; the file is removed when this is dropped.
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the API socket (refusing to replace anything but a stale socket).
pub fn bind(path: &Path) -> std::io::Result<BoundSocket> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    Ok(BoundSocket {
        listener: UnixListener::bind(path)?,
        path: path.to_path_buf(),
    })
}

/// The running API thread.
pub struct ApiServer {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    socket: Option<BoundSocket>,
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl ApiServer {
    /// Starts serving `socket` for `vm`; the thread installs `filter`.
    pub fn start(
        socket: BoundSocket,
        vm: VmHandle,
        filter: Option<ThreadFilter>,
    ) -> std::io::Result<ApiServer> {
        let listener = socket.listener.try_clone()?;
        listener.set_nonblocking(true)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        let vm = Arc::new(vm);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Some(f) = &filter {
                    if let Err(e) = seccomp::install(ThreadKind::Api, f) {
                        vm.exit.request(1, e.to_string());
                        return;
                    }
                }
                seccomp::selftest_point(ThreadKind::Api);
                serve(&epoll, &listener, &vm);
            })?;
        Ok(ApiServer {
            stop,
            thread: Some(thread),
            socket: Some(socket),
        })
    }

    /// Stops the thread, waits for it and removes the socket file.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
        // Removes the socket file.
        self.socket.take();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(epoll: &Epoll, listener: &UnixListener, vm: &VmHandle) {
    let mut conns: BTreeMap<u64, Conn> = BTreeMap::new();
    let mut next_token = 0u64;
    let mut events = vec![EpollEvent::default(); MAX_CONNECTIONS + 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("paddock-vmm: api: epoll failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                STOP => return,
                LISTENER => accept(epoll, listener, &mut conns, &mut next_token),
                token => {
                    let keep = match conns.get_mut(&token) {
                        Some(c) => serve_conn(c, vm),
                        None => continue,
                    };
                    if !keep {
                        if let Some(c) = conns.remove(&token) {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                c.stream.as_raw_fd(),
                                EpollEvent::default(),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn accept(epoll: &Epoll, listener: &UnixListener, conns: &mut BTreeMap<u64, Conn>, next: &mut u64) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("paddock-vmm: api: accept: {e}");
                return;
            }
        };
        if conns.len() >= MAX_CONNECTIONS {
            continue; // dropped: closed at once
        }
        if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
            continue;
        }
        let token = *next;
        *next = next.wrapping_add(1) % (u64::MAX - 2);
        if epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
            )
            .is_ok()
        {
            conns.insert(
                token,
                Conn {
                    stream,
                    buf: Vec::new(),
                },
            );
        }
    }
}

/// Reads what is there and answers every complete request; false closes the connection.
fn serve_conn(c: &mut Conn, vm: &VmHandle) -> bool {
    let mut chunk = [0u8; 4096];
    let n = match c.stream.read(&mut chunk) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
        Err(_) => return false,
    };
    c.buf.extend_from_slice(&chunk[..n]);
    loop {
        let (resp, used) = match http::parse(&c.buf) {
            http::Parsed::Incomplete => return true,
            http::Parsed::Bad(r) => (r, c.buf.len()),
            http::Parsed::Done(req, used) => {
                let mut r = routes::handle(&req, vm);
                r.close |= req.close;
                (r, used)
            }
        };
        c.buf.drain(..used);
        if c.stream.write_all(&resp.encode()).is_err() || resp.close {
            return false;
        }
    }
}
