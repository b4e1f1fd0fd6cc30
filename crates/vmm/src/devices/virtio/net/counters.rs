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

impl crate::api::CounterSource for NetCounters {
    fn counters(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        std::collections::BTreeMap::from([
            ("rx_packets", g(&self.rx_packets)),
            ("rx_bytes", g(&self.rx_bytes)),
            ("rx_dropped", g(&self.rx_dropped)),
            ("tx_packets", g(&self.tx_packets)),
            ("tx_bytes", g(&self.tx_bytes)),
            ("tx_dropped", g(&self.tx_dropped)),
        ])
    }
}

#[cfg(test)]
mod api_tests {
    use super::*;
    use crate::api::CounterSource;
    use std::sync::atomic::Ordering;

    #[test]
    fn counters_are_reported_by_name_to_the_control_api() {
        let c = NetCounters::default();
        c.rx_bytes.store(1500, Ordering::Relaxed);
        c.tx_packets.store(3, Ordering::Relaxed);
        let m = CounterSource::counters(&c);
        assert_eq!(m["rx_bytes"], 1500);
        assert_eq!(m["tx_packets"], 3);
        assert_eq!(m["rx_dropped"], 0);
        assert_eq!(m.len(), 6);
    }
}
