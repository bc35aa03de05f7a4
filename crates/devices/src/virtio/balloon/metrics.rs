//! Counters a balloon keeps while it runs; shared (`Arc`) between the
//! device thread that updates them and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals for one balloon.
#[derive(Debug, Default)]
pub struct BalloonMetrics {
    /// Pages the guest put in the balloon (inflate queue).
    pub inflated_pages: AtomicU64,
    /// Pages the guest took back (deflate queue).
    pub deflated_pages: AtomicU64,
    /// Bytes given back to the host (inflate and reporting).
    pub released_bytes: AtomicU64,
    /// madvise calls made to give them back.
    pub release_calls: AtomicU64,
    /// Bytes of free memory the guest reported.
    pub reported_bytes: AtomicU64,
    /// Statistics buffers received.
    pub stats_updates: AtomicU64,
    /// Chains refused (bad direction, outside guest memory, bad frames).
    pub bad_chains: AtomicU64,
    /// Releases the host refused (madvise failed).
    pub release_fails: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
}

impl BalloonMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
