//! Progress and cancellation shared between a long operation and whoever watches it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters a long operation updates and a watcher (progress bar, JSON lines, a daemon task)
/// reads from another thread.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    written: AtomicU64,
    cancelled: AtomicBool,
}

impl Progress {
    /// A fresh counter.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the amount of work (bytes of virtual disk).
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    /// Adds processed bytes.
    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Adds bytes actually written to the target.
    pub fn add_written(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Total work in bytes.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    /// Processed bytes so far (never more than the total, although compressed output may
    /// count a unit that straddles a zero run twice).
    pub fn done(&self) -> u64 {
        let done = self.done.load(Ordering::Relaxed);
        match self.total() {
            0 => done,
            t => done.min(t),
        }
    }
    /// Bytes written to the target so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Asks the operation to stop at its next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}
