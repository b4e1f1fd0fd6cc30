//! The 16550 UART on COM1 (0x3f8, IRQ 4), built on vm-superio, and its host side:
//! `--serial stdio|off|file=PATH` (output only), `--serial socket=PATH[,wait=on][,log=FILE]`
//! (the VMM listens; one client at a time gets the output and types the input, and a new
//! connection replaces the current client, which is disconnected; output with no client is
//! kept, up to [`BACKLOG`] bytes, for the next one; `wait=on` holds the boot until the first
//! client; `log=FILE` appends all output to FILE whether or not a client is connected), and
//! `--serial pty` (a pseudo-terminal in raw mode whose path is printed on stderr). Input is fed
//! to the UART only as fast as the guest empties its FIFO.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1 base port.
pub const COM1: u64 = 0x3f8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// Output kept for a socket client that has not connected yet (the oldest bytes go first).
pub const BACKLOG: usize = 64 * 1024;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Signals an eventfd when the guest has emptied the receive FIFO.
pub struct FifoEvents(Option<Arc<EventFd>>);

impl SerialEvents for FifoEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(e) = &self.0 {
            let _ = e.write(1);
        }
    }
}

/// A 16550 UART.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, FifoEvents, Box<dyn Write + Send>>,
    fifo_empty: Option<Arc<EventFd>>,
}

impl SerialDevice {
    /// A UART that signals `irq` and writes guest output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        // Blocking: the input thread sleeps on it while the FIFO is full (and yields instead
        // in the unlikely case that no eventfd can be made).
        let fifo_empty = EventFd::new(0).ok().map(Arc::new);
        SerialDevice {
            uart: Serial::with_events(IrqTrigger(irq), FifoEvents(fifo_empty.clone()), out),
            fifo_empty,
        }
    }

    /// Feeds host input to the guest; returns how many bytes the FIFO took.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            let _ = self.uart.write(offset as u8, data[0]);
        }
    }
}

/// Where COM1 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// Standard output.
    Stdio,
    /// Nowhere.
    Off,
    /// Appended to a file.
    File(PathBuf),
    /// A Unix socket the VMM listens on.
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Wait for the first client before the guest starts.
        wait: bool,
        /// A file all output is appended to, with or without a client.
        log: Option<PathBuf>,
    },
    /// A new pseudo-terminal.
    Pty,
}

impl SerialConfig {
    /// Parses the value of `--serial`.
    pub fn parse(s: &str) -> Result<SerialConfig, String> {
        let bad =
            || format!("'{s}': use stdio, off, file=PATH, socket=PATH[,wait=on][,log=FILE] or pty");
        match s {
            "stdio" => return Ok(SerialConfig::Stdio),
            "off" => return Ok(SerialConfig::Off),
            "pty" => return Ok(SerialConfig::Pty),
            _ => {}
        }
        if let Some(p) = s.strip_prefix("file=").filter(|p| !p.is_empty()) {
            return Ok(SerialConfig::File(p.into()));
        }
        let rest = s.strip_prefix("socket=").ok_or_else(bad)?;
        let mut parts = rest.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let (mut wait, mut log) = (false, None);
        for opt in parts {
            match opt {
                "wait=on" => wait = true,
                "wait=off" => wait = false,
                _ => match opt.strip_prefix("log=").filter(|p| !p.is_empty()) {
                    Some(p) => log = Some(PathBuf::from(p)),
                    None => return Err(bad()),
                },
            }
        }
        Ok(SerialConfig::Socket {
            path: path.into(),
            wait,
            log,
        })
    }

    /// Opens the host side: the output sink, and the input source when there is one.
    pub fn open(&self) -> Result<(Box<dyn Write + Send>, Option<SerialInput>), String> {
        match self {
            SerialConfig::Stdio => Ok((Box::new(std::io::stdout()), None)),
            SerialConfig::Off => Ok((Box::new(std::io::sink()), None)),
            SerialConfig::File(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(|f| (Box::new(f) as Box<dyn Write + Send>, None))
                .map_err(|e| format!("{}: {e}", p.display())),
            SerialConfig::Socket { path, wait, log } => open_socket(path, *wait, log.as_deref()),
            SerialConfig::Pty => open_pty(),
        }
    }
}

/// The connected client and the output it has not taken yet.
#[derive(Default)]
struct Client {
    stream: Option<UnixStream>,
    backlog: VecDeque<u8>,
    /// Counts accepted clients, so the input thread knows whether the client it saw end is
    /// still the current one.
    generation: u64,
}

impl Client {
    /// Writes the backlog to the client until it would block; drops a client that is gone.
    fn drain(&mut self) {
        while let Some(s) = &self.stream {
            let (a, _) = self.backlog.as_slices();
            if a.is_empty() {
                return;
            }
            match (&*s).write(a) {
                Ok(n) if n > 0 => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                _ => self.stream = None,
            }
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.backlog.extend(data);
        let excess = self.backlog.len().saturating_sub(BACKLOG);
        self.backlog.drain(..excess);
        self.drain();
    }
}

/// Guest output towards the socket client, and the log file when there is one.
struct SocketOut {
    client: Arc<Mutex<Client>>,
    log: Option<File>,
}

impl Write for SocketOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // A log that cannot be written (a full disk) must not stop the console.
        if let Some(f) = &mut self.log {
            let _ = f.write_all(data);
        }
        lock(&self.client).push(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Guest output towards the pty (dropped when nobody reads and the pty is full).
struct PtyOut(Arc<File>);

impl Write for PtyOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let _ = (&*self.0).write(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The input side of a socket or pty serial port, started once the UART exists.
pub struct SerialInput(Source);

enum Source {
    /// Accepts clients one at a time on the listener.
    Socket {
        /// The listening socket.
        listener: UnixListener,
        /// The client shared with the output side.
        client: Arc<Mutex<Client>>,
    },
    /// Reads the pty master.
    Pty {
        /// The master side.
        master: Arc<File>,
        /// The slave, held open so the master never reads EIO while nobody is attached.
        _slave: File,
    },
}

fn open_socket(
    path: &Path,
    wait: bool,
    log: Option<&Path>,
) -> Result<(Box<dyn Write + Send>, Option<SerialInput>), String> {
    let log = match log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    let what = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!("{}: exists and is not a socket", path.display()));
        }
        std::fs::remove_file(path).map_err(what)?;
    }
    let listener = UnixListener::bind(path).map_err(what)?;
    eprintln!("paddock-vmm: serial socket listening on {}", path.display());
    let client = Arc::new(Mutex::new(Client::default()));
    if wait {
        let (s, _) = listener.accept().map_err(what)?;
        s.set_nonblocking(true).map_err(what)?;
        lock(&client).stream = Some(s);
    }
    Ok((
        Box::new(SocketOut {
            client: client.clone(),
            log,
        }),
        Some(SerialInput(Source::Socket { listener, client })),
    ))
}

fn open_pty() -> Result<(Box<dyn Write + Send>, Option<SerialInput>), String> {
    let err = |what: &str| format!("pty: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: posix_openpt returns a new descriptor or -1; nothing else is touched.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(err("posix_openpt"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    // SAFETY: grantpt/unlockpt act on the master descriptor we own.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(err("unlockpt"));
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most `name.len()` bytes.
    if unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) } != 0 {
        return Err(err("ptsname_r"));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .to_string();
    // SAFETY: termios is plain data; tcgetattr fills it, cfmakeraw edits it, tcsetattr
    // applies it to the pty (raw: no echo, so output never comes back as input).
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(err("tcgetattr"));
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(err("tcsetattr"));
        }
    }
    set_nonblocking(fd).map_err(|e| format!("pty: {e}"))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(&path)
        .map_err(|e| format!("pty {path}: {e}"))?;
    eprintln!("paddock-vmm: serial pty at {path}");
    let master = Arc::new(master);
    Ok((
        Box::new(PtyOut(master.clone())),
        Some(SerialInput(Source::Pty {
            master,
            _slave: slave,
        })),
    ))
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOCTTY | libc::O_CLOEXEC)
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let r = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A poll entry for `fd`: readable, and writable too with `out`.
fn poll_entry(fd: RawFd, out: bool) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN | if out { libc::POLLOUT } else { 0 },
        revents: 0,
    }
}

/// Waits up to `timeout_ms` (-1: forever) until one of `fds` is ready; their `revents` say
/// which (all zero after a timeout or an error).
fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) {
    // SAFETY: polls descriptors the caller holds open; `fds` lives across the call and its
    // length is passed with it.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r <= 0 {
        fds.iter_mut().for_each(|p| p.revents = 0);
    }
}

/// Waits until `fd` is readable (or, with `out`, writable); returns the events seen.
fn wait_fd(fd: RawFd, out: bool) -> i16 {
    let mut p = [poll_entry(fd, out)];
    poll_fds(&mut p, -1);
    p[0].revents
}

/// Events that mean "read now": data, or the peer is gone.
const READABLE: i16 = libc::POLLIN | libc::POLLHUP | libc::POLLERR;

/// Feeds `bytes` to the UART, sleeping on the FIFO-empty event while the FIFO is full.
fn feed(uart: &Mutex<SerialDevice>, fifo_empty: Option<&EventFd>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = lock(uart).enqueue_input(bytes);
        bytes = &bytes[n..];
        if n == 0 {
            match fifo_empty {
                Some(e) => {
                    let _ = e.read();
                }
                None => std::thread::yield_now(),
            }
        }
    }
}

/// What one non-blocking read of an input source gave.
enum Got {
    /// Some bytes, now fed to the UART.
    Fed,
    /// Nothing yet.
    Nothing,
    /// The source ended or failed.
    End,
}

/// Reads once from `src` (non-blocking) and feeds what came to the UART.
fn read_into_uart(
    mut src: impl Read,
    buf: &mut [u8],
    uart: &Mutex<SerialDevice>,
    fifo: Option<&EventFd>,
) -> Got {
    match src.read(buf) {
        Ok(0) => Got::End,
        Ok(n) => {
            feed(uart, fifo, &buf[..n]);
            Got::Fed
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            Got::Nothing
        }
        Err(_) => Got::End,
    }
}

/// Reads the pty master (non-blocking, after poll) until it ends, feeding the UART.
fn pump_pty(master: &File, uart: &Mutex<SerialDevice>, fifo: Option<&EventFd>) {
    let mut buf = [0u8; 256];
    loop {
        if wait_fd(master.as_raw_fd(), false) & READABLE == 0 {
            continue;
        }
        if let Got::End = read_into_uart(master, &mut buf, uart, fifo) {
            return;
        }
    }
}

/// Serves the socket forever: accepts clients (a new one replaces the current one, which is
/// disconnected), feeds the current client's input to the UART, and sends it the backlog as
/// its socket takes it.
fn serve_socket(
    listener: &UnixListener,
    client: &Mutex<Client>,
    uart: &Mutex<SerialDevice>,
    fifo: Option<&EventFd>,
) {
    let mut buf = [0u8; 256];
    loop {
        // A descriptor of our own for the current client, so that the vCPU thread dropping
        // the client (a failed write) cannot close what we poll.
        let (current, generation, want_out) = {
            let c = lock(client);
            let s = c.stream.as_ref().and_then(|s| s.try_clone().ok());
            (s, c.generation, !c.backlog.is_empty())
        };
        let mut fds = vec![poll_entry(listener.as_raw_fd(), false)];
        if let Some(s) = &current {
            fds.push(poll_entry(s.as_raw_fd(), want_out));
        }
        poll_fds(&mut fds, -1);
        if let Some(s) = &current {
            let ev = fds[1].revents;
            if ev & libc::POLLOUT != 0 {
                lock(client).drain();
            }
            // Input first: a client that left is noticed before a new one is accepted.
            if ev & READABLE != 0 {
                if let Got::End = read_into_uart(s, &mut buf, uart, fifo) {
                    let mut c = lock(client);
                    // Unless a new client has taken its place meanwhile.
                    if c.generation == generation {
                        c.stream = None;
                    }
                }
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Ok((s, _)) = listener.accept() {
                if s.set_nonblocking(true).is_ok() {
                    let mut c = lock(client);
                    if let Some(old) = c.stream.replace(s) {
                        let _ = old.shutdown(std::net::Shutdown::Both);
                    }
                    c.generation += 1;
                    c.drain();
                }
            }
        }
    }
}

impl SerialInput {
    /// Starts the thread that serves the host side of `uart`.
    pub fn start(self, uart: Arc<Mutex<SerialDevice>>) -> std::io::Result<()> {
        let fifo = lock(&uart).fifo_empty.clone();
        std::thread::Builder::new()
            .name("serial-in".into())
            .spawn(move || match self.0 {
                Source::Socket { listener, client } => {
                    serve_socket(&listener, &client, &uart, fifo.as_deref())
                }
                Source::Pty { master, _slave } => {
                    pump_pty(&master, &uart, fifo.as_deref());
                    drop(_slave);
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_backend() {
        assert_eq!(SerialConfig::parse("stdio").unwrap(), SerialConfig::Stdio);
        assert_eq!(SerialConfig::parse("off").unwrap(), SerialConfig::Off);
        assert_eq!(SerialConfig::parse("pty").unwrap(), SerialConfig::Pty);
        assert_eq!(
            SerialConfig::parse("file=/tmp/x").unwrap(),
            SerialConfig::File("/tmp/x".into())
        );
        assert_eq!(
            SerialConfig::parse("socket=/tmp/s,wait=on").unwrap(),
            SerialConfig::Socket {
                path: "/tmp/s".into(),
                wait: true,
                log: None
            }
        );
        assert_eq!(
            SerialConfig::parse("socket=/tmp/s,log=/tmp/console.log,wait=on").unwrap(),
            SerialConfig::Socket {
                path: "/tmp/s".into(),
                wait: true,
                log: Some("/tmp/console.log".into())
            }
        );
        assert_eq!(
            SerialConfig::parse("socket=/tmp/s").unwrap(),
            SerialConfig::Socket {
                path: "/tmp/s".into(),
                wait: false,
                log: None
            }
        );
        for bad in [
            "",
            "file=",
            "socket=",
            "socket=/s,wait=maybe",
            "socket=/s,log=",
            "socket=,log=/l",
            "tcp=1",
        ] {
            assert!(SerialConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backlog_keeps_the_newest_bytes() {
        let mut c = Client::default();
        c.push(&vec![1u8; BACKLOG]);
        c.push(&[2, 3]);
        assert_eq!(c.backlog.len(), BACKLOG);
        assert_eq!(c.backlog.back(), Some(&3));
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        c.stream = Some(a);
        c.drain();
        // The socket buffer takes some of it; the rest stays queued, nothing is lost.
        let mut got = vec![0u8; 8];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(got, [1u8; 8]);
    }

    #[test]
    fn input_is_limited_by_the_fifo() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq, Box::new(std::io::sink()));
        let taken = s.enqueue_input(&[b'x'; 100]);
        assert!(taken > 0 && taken < 100, "{taken}");
        assert_eq!(s.enqueue_input(b"more"), 0);
        // The guest reads one byte through the data register.
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }
}
