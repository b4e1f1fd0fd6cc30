//! `paddock vm console NAME`: the VM's serial console over the daemon's WebSocket.
//!
//! On a terminal, standard input goes to the guest in raw mode and `Ctrl-]` detaches (like
//! `virsh console`); the terminal is restored on every way out (detach, the VM stopping, an
//! error, SIGTERM/SIGHUP/SIGINT/SIGQUIT, a panic). Without a terminal, input is piped to the
//! guest byte for byte (no escape character) and the session lasts until the console closes
//! (the VM stopped) or a signal ends it; output goes to standard output either way.

use std::io::{ErrorKind, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use paddock_api::client_console::{Message, Socket, WsError};
use paddock_api::{Client, ClientError, ErrorBody};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::termios::{self, OptionalActions, Termios};

/// `Ctrl-]`.
const DETACH: u8 = 0x1d;

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The user pressed `Ctrl-]`.
    Detached,
    /// The daemon closed the console (the reason it gave).
    Closed(String),
    /// A signal asked us to end.
    Signalled,
}

/// A local failure (terminal, stdin, stdout) in the client's error type.
fn local(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Api {
        status: 0,
        body: ErrorBody {
            error: format!("{what}: {e}"),
            field: None,
        },
    }
}

/// The terminal in raw mode until dropped.
struct RawMode {
    stdin: std::io::Stdin,
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode, ClientError> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).map_err(|e| local("reading the terminal", e))?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)
            .map_err(|e| local("setting the terminal to raw mode", e))?;
        Ok(RawMode { stdin, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.stdin, OptionalActions::Now, &self.saved);
    }
}

/// Attaches to `name`'s console until detach, the console closing, or a signal.
pub fn attach(client: &Client, name: &str) -> Result<(), ClientError> {
    let ws = client.console_ws(name)?;
    let tty = termios::isatty(std::io::stdin());
    // Signals end the loop (so the terminal is restored) instead of the process.
    let (sig_rx, sig_tx) = UnixStream::pair().map_err(|e| local("signal pipe", e))?;
    sig_rx
        .set_nonblocking(true)
        .map_err(|e| local("signal pipe", e))?;
    let mut ids = Vec::new();
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGQUIT,
    ] {
        let tx = sig_tx.try_clone().map_err(|e| local("signal pipe", e))?;
        ids.push(
            signal_hook::low_level::pipe::register(sig, tx)
                .map_err(|e| local("installing signal handlers", e))?,
        );
    }
    let end = {
        let _raw = if tty { Some(RawMode::enter()?) } else { None };
        if tty {
            eprint!("Connected to {name}'s console; Ctrl-] detaches\r\n");
        }
        Session::new(ws, tty).run(&sig_rx)
    };
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    match end? {
        End::Detached => eprintln!("\nDetached from {name}'s console."),
        End::Closed(reason) if tty => eprintln!("\n{reason}"),
        End::Closed(_) | End::Signalled => {}
    }
    Ok(())
}

/// One console session: the WebSocket (non-blocking) and where input and output go.
struct Session {
    ws: Socket,
    tty: bool,
    /// A frame is waiting for the socket to take it.
    pending: bool,
    stdin_open: bool,
}

impl Session {
    fn new(ws: Socket, tty: bool) -> Session {
        Session {
            ws,
            tty,
            pending: false,
            stdin_open: true,
        }
    }

    fn run(mut self, signals: &UnixStream) -> Result<End, ClientError> {
        self.ws
            .get_ref()
            .set_nonblocking(true)
            .map_err(|e| local("console socket", e))?;
        let stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let sock_events = if self.pending {
                PollFlags::IN | PollFlags::OUT
            } else {
                PollFlags::IN
            };
            let (sock_ready, sig_ready, in_ready) = {
                let sock = self.ws.get_ref().as_fd();
                let mut fds = vec![
                    PollFd::new(&sock, sock_events),
                    PollFd::new(signals, PollFlags::IN),
                ];
                if self.stdin_open {
                    fds.push(PollFd::new(&stdin, PollFlags::IN));
                }
                match poll(&mut fds, None) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(local("poll", e)),
                }
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    fds.get(2).is_some_and(|f| !f.revents().is_empty()),
                )
            };
            if sig_ready {
                return Ok(End::Signalled);
            }
            if in_ready {
                match rustix::io::read(&stdin, &mut buf) {
                    Ok(0) => self.stdin_open = false,
                    Ok(n) => {
                        let input = &buf[..n];
                        let detach = self.tty.then(|| input.iter().position(|&b| b == DETACH));
                        if let Some(Some(at)) = detach {
                            self.send(&input[..at])?;
                            return Ok(End::Detached);
                        }
                        self.send(input)?;
                    }
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    Err(e) => return Err(local("reading standard input", e)),
                }
            }
            if sock_ready {
                if self.pending {
                    self.flush()?;
                }
                if let Some(end) = self.receive()? {
                    return Ok(end);
                }
            }
        }
    }

    /// Queues `bytes` for the guest and writes what the socket takes now.
    fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self.ws.send(Message::Binary(bytes.to_vec().into())) {
            Ok(()) => Ok(()),
            Err(e) if would_block(&e) => {
                self.pending = true;
                Ok(())
            }
            Err(e) => Err(local("sending to the console", e)),
        }
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        match self.ws.flush() {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => Err(local("sending to the console", e)),
        }
    }

    /// Copies every frame that has arrived to standard output; `Some` when the console
    /// closed.
    fn receive(&mut self) -> Result<Option<End>, ClientError> {
        let mut out = std::io::stdout().lock();
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => write_out(&mut out, &b)?,
                Ok(Message::Text(t)) => write_out(&mut out, t.as_bytes())?,
                Ok(Message::Close(frame)) => {
                    // Send our half of the closing handshake if the socket takes it.
                    let _ = self.ws.flush();
                    let reason = frame
                        .map(|f| f.reason.to_string())
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| "The console closed.".into());
                    return Ok(Some(End::Closed(reason)));
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(None),
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Ok(Some(End::Closed("The console closed.".into())))
                }
                Err(e) => return Err(local("reading the console", e)),
            }
        }
    }
}

fn write_out(out: &mut impl Write, bytes: &[u8]) -> Result<(), ClientError> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| local("writing standard output", e))
}

/// Whether a WebSocket error only says "not now" (the socket is non-blocking).
fn would_block(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if io.kind() == ErrorKind::WouldBlock)
}
