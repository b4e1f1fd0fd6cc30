//! Per-device block counters, kept in atomics so a control API can read them while the
//! worker runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests and bytes of one virtio-blk device.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Read requests completed.
    pub read_requests: AtomicU64,
    /// Write requests completed.
    pub write_requests: AtomicU64,
    /// Flushes completed.
    pub flush_requests: AtomicU64,
    /// Discard and write-zeroes requests completed.
    pub discard_requests: AtomicU64,
    /// Bytes read by the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written by the guest.
    pub write_bytes: AtomicU64,
    /// Requests that ended with an I/O error or as unsupported.
    pub errors: AtomicU64,
}

impl BlockCounters {
    /// Adds `n` to `c`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `c`.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
