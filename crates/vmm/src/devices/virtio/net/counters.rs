//! Per-device network counters, in atomics so a control API can read them while the worker
//! runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Frames and bytes of one virtio-net device (bytes exclude the virtio-net header).
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Frames from the host dropped (too large for the guest's buffer, or malformed).
    pub rx_dropped: AtomicU64,
    /// Frames the guest sent that reached the TAP.
    pub tx_packets: AtomicU64,
    /// Bytes the guest sent that reached the TAP.
    pub tx_bytes: AtomicU64,
    /// Frames the guest sent that the TAP refused.
    pub tx_dropped: AtomicU64,
}

impl NetCounters {
    /// Adds `n` to `c`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `c`.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
