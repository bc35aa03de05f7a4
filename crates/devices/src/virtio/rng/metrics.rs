//! Counters an entropy device keeps while it runs; shared (`Arc`) between
//! the device thread that updates them and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals for one entropy device.
#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Requests served with random bytes.
    pub requests: AtomicU64,
    /// Random bytes written to the guest.
    pub bytes: AtomicU64,
    /// Requests refused (a readable or out-of-range buffer).
    pub invalid_requests: AtomicU64,
    /// Times the rate limiter held the queue back.
    pub throttled: AtomicU64,
    /// getrandom failures (the request completes with 0 bytes).
    pub host_errors: AtomicU64,
    /// Interrupts raised (one per batch, fewer with EVENT_IDX).
    pub interrupts: AtomicU64,
}

impl RngMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
