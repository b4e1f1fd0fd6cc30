//! Errors of the disk engine: a stable kind to match on, and a message that names the
//! file, offset or field at fault.

use std::fmt;
use std::io;

/// What went wrong, as a stable category callers can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The operating system refused an I/O operation.
    Io,
    /// The image's metadata is inconsistent or out of bounds.
    Corrupt,
    /// The image uses a feature this engine does not implement.
    Unsupported,
    /// The caller passed an invalid argument (size, offset, option).
    InvalidInput,
    /// A backing file or extent path leaves the allowed directories.
    PathNotAllowed,
    /// A write was attempted on an image opened read-only.
    ReadOnly,
    /// The image asks for more memory, time or nesting than the engine allows.
    ResourceLimit,
    /// The operation was cancelled by the caller.
    Cancelled,
}

/// An error from the disk engine.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

/// Result alias for the disk engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error with context (what was being done, on which file).
    pub fn io(message: impl Into<String>, source: io::Error) -> Self {
        Error {
            kind: ErrorKind::Io,
            message: message.into(),
            source: Some(source),
        }
    }

    /// Corrupt or out-of-bounds metadata.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// A feature the engine does not implement.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// An invalid argument.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// A resource limit was hit.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceLimit, message)
    }

    /// A write to a read-only image.
    pub fn read_only(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReadOnly, message)
    }

    /// The stable category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the source error.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with `context` (typically the file name).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The message already ends with the I/O error's text, so no separate source is reported
/// (error chains printed by callers would otherwise repeat it).
impl std::error::Error for Error {}

impl Error {
    /// The operating-system error behind an [`ErrorKind::Io`] error.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }
}

/// Adds context to I/O results.
pub trait IoContext<T> {
    /// Maps an `io::Error` into an [`Error`] described by `what`.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::corrupt(format!("{}: file is truncated", what()))
            } else {
                Error::io(what(), e)
            }
        })
    }
}
