//! A synchronous QMP client over a Unix socket.
//!
//! QMP is line-delimited JSON: on connect the server sends a greeting
//! (`{"QMP": {"version": ..., "capabilities": [...]}}`); the client leaves capability
//! negotiation with `qmp_capabilities`; then each `{"execute": ..., "id": ...}` gets one
//! `{"return": ..., "id": ...}` or `{"error": {"class": ..., "desc": ...}, "id": ...}`, and
//! asynchronous events (`{"event": ..., "data": ..., "timestamp": ...}`) may arrive between
//! them. Events read while waiting for a reply are queued, never dropped, and handed out by
//! [`QmpClient::take_events`] and [`QmpClient::wait_event`]. Every read has a deadline; a reply
//! that arrives after its command timed out carries a stale id and is discarded.

#[cfg(test)]
mod tests;
mod types;

pub use types::{BlockStats, CpuInfo, QemuVersion, QmpEvent, RunState, StatusInfo};

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Longest line the client accepts from the server, so a broken peer cannot grow memory.
const MAX_LINE: usize = 16 << 20;

/// What went wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting, reading or writing the socket failed.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// The socket path (or `<stream>` for a stream handed in).
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// No answer before the deadline.
    #[error("QMP socket {path}: no {what} within {after:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// What was awaited (`greeting`, `reply to stop`, `event SHUTDOWN`).
        what: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The server closed the connection.
    #[error("QMP socket {path}: closed by QEMU")]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// The server sent something that is not QMP.
    #[error("QMP socket {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// QEMU refused the command.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command name.
        command: String,
        /// QMP error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// The greeting QEMU sends on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: QemuVersion,
    /// Capabilities the server offers (`oob`); none are enabled by this client.
    pub capabilities: Vec<String>,
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    path: PathBuf,
    buf: Vec<u8>,
    events: VecDeque<QmpEvent>,
    next_id: u64,
    timeout: Duration,
    greeting: Greeting,
}

impl QmpClient {
    /// Connects to the socket at `path`, reads the greeting and enters command mode; each
    /// step waits at most `timeout`, which also becomes the default for commands.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::handshake(stream, path.to_path_buf(), timeout)
    }

    /// Like [`QmpClient::connect`], on a stream already connected (a socketpair in tests).
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        Self::handshake(stream, PathBuf::from("<stream>"), timeout)
    }

    fn handshake(stream: UnixStream, path: PathBuf, timeout: Duration) -> Result<Self, QmpError> {
        let mut client = QmpClient {
            stream,
            path,
            buf: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout,
            greeting: Greeting {
                version: QemuVersion::default(),
                capabilities: Vec::new(),
            },
        };
        let deadline = Instant::now() + timeout;
        let msg = client.read_message(deadline, "greeting")?;
        client.greeting = client.parse_greeting(&msg)?;
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    fn parse_greeting(&self, msg: &Value) -> Result<Greeting, QmpError> {
        let qmp = msg.get("QMP").ok_or_else(|| {
            self.protocol(format!("expected a greeting, got {}", abbreviate(msg)))
        })?;
        let version: QemuVersion = qmp
            .get("version")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| self.protocol("greeting without a version".into()))?;
        let capabilities = qmp
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Greeting {
            version,
            capabilities,
        })
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the deadline for each later command.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with optional `arguments` (a JSON object) and returns its `return`
    /// value; events that arrive meanwhile are queued.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        let deadline = Instant::now() + self.timeout;
        self.write_all(line.as_bytes(), deadline)?;
        let what = format!("reply to {command}");
        loop {
            let msg = self.read_message(deadline, &what)?;
            if let Some(event) = QmpEvent::from_message(&msg) {
                self.events.push_back(event);
                continue;
            }
            match msg.get("id") {
                // A reply to an earlier command that timed out.
                Some(got) if got.as_u64() != Some(id) => continue,
                _ => {}
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(format!("unexpected message {}", abbreviate(&msg))));
        }
    }

    /// Runs `command` and decodes its return value as `T`.
    pub fn execute_as<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let value = self.execute(command, arguments)?;
        serde_json::from_value(value)
            .map_err(|e| self.protocol(format!("reply to {command} does not decode: {e}")))
    }

    /// Takes every queued event, oldest first.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// Reads events for up to `wait` (returning early on the first one) and queues them;
    /// returns how many are queued. A closed connection is an error.
    pub fn poll_events(&mut self, wait: Duration) -> Result<usize, QmpError> {
        let deadline = Instant::now() + wait;
        match self.read_message(deadline, "event") {
            Ok(msg) => self.queue_unsolicited(msg),
            Err(QmpError::Timeout { .. }) => {}
            Err(e) => return Err(e),
        }
        // Whatever else is already buffered.
        while let Some(msg) = self.buffered_message()? {
            self.queue_unsolicited(msg);
        }
        Ok(self.events.len())
    }

    /// Waits up to `timeout` for an event named `name` and takes it (a queued one first);
    /// other events stay queued.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent, QmpError> {
        let deadline = Instant::now() + timeout;
        let what = format!("event {name}");
        loop {
            if let Some(i) = self.events.iter().position(|e| e.name == name) {
                return Ok(self.events.remove(i).expect("index from position"));
            }
            let msg = self.read_message(deadline, &what)?;
            self.queue_unsolicited(msg);
        }
    }

    /// `query-status`: the run state.
    pub fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        self.execute_as("query-status", None)
    }

    /// `stop`: pauses every vCPU.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// `cont`: resumes a paused VM.
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button (the guest decides what to do).
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// `quit`: QEMU exits at once. A connection closed before the reply counts as done.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-cpus-fast`: one entry per vCPU with its host thread.
    pub fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfo>, QmpError> {
        self.execute_as("query-cpus-fast", None)
    }

    /// `query-blockstats`: I/O counters per attached disk.
    pub fn query_blockstats(&mut self) -> Result<Vec<BlockStats>, QmpError> {
        let raw: Vec<types::RawBlockStats> = self.execute_as("query-blockstats", None)?;
        Ok(raw.into_iter().map(BlockStats::from).collect())
    }

    /// `query-version`: QEMU's version.
    pub fn query_version(&mut self) -> Result<QemuVersion, QmpError> {
        self.execute_as("query-version", None)
    }

    fn queue_unsolicited(&mut self, msg: Value) {
        // Only events are unsolicited; a late reply (stale id) is dropped.
        if let Some(event) = QmpEvent::from_message(&msg) {
            self.events.push_back(event);
        }
    }

    fn protocol(&self, message: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message,
        }
    }

    fn io(&self, source: io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn timeout_error(&self, what: &str, deadline: Instant, start: Instant) -> QmpError {
        QmpError::Timeout {
            path: self.path.clone(),
            what: what.to_string(),
            after: deadline.saturating_duration_since(start),
        }
    }

    fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), QmpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.stream
            .set_write_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| self.io(e))?;
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(QmpError::Closed {
                path: self.path.clone(),
            }),
            Err(e) => Err(self.io(e)),
        }
    }

    /// The next complete JSON message already in the buffer, if any.
    fn buffered_message(&mut self) -> Result<Option<Value>, QmpError> {
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let text = &line[..line.len() - 1];
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(text)
                .map(Some)
                .map_err(|e| self.protocol(format!("bad JSON from QEMU: {e}")));
        }
        Ok(None)
    }

    /// Reads until one complete message, or the deadline.
    fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Value, QmpError> {
        let start = Instant::now();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(msg) = self.buffered_message()? {
                return Ok(msg);
            }
            if self.buf.len() > MAX_LINE {
                return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error(what, deadline, start));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.io(e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timeout_error(what, deadline, start));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                    })
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }
}

/// A message cut short for an error text.
fn abbreviate(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
