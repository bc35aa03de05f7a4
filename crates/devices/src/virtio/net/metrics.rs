//! Counters a network device keeps while it runs; shared (`Arc`) between
//! its queue-pair threads and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals for one network device (all queue pairs).
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames and bytes (without the virtio-net header) to the guest.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the host that no posted buffer could hold, or that the
    /// host side failed to give.
    pub rx_dropped: AtomicU64,
    /// Frames and bytes from the guest.
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames the host side refused (a bad offload header, a tap that is
    /// down).
    pub tx_errors: AtomicU64,
    /// Chains refused (wrong direction, outside guest memory, too short or
    /// too long), either way.
    pub bad_chains: AtomicU64,
    /// Times the rate limiters held a direction back.
    pub rx_throttled: AtomicU64,
    pub tx_throttled: AtomicU64,
    /// Control-queue commands, and those refused.
    pub ctrl_commands: AtomicU64,
    pub ctrl_failed: AtomicU64,
    /// Interrupts raised (one per batch per queue, fewer with EVENT_IDX).
    pub interrupts: AtomicU64,
}

impl NetMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
