//! Counters a block device keeps while it runs; shared (`Arc`) between the
//! device thread that updates them and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals for one block device.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    /// fdatasyncs the device made on its own: in write-through mode, one
    /// after every request that changed the image.
    pub write_through_syncs: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub get_ids: AtomicU64,
    /// Requests refused by validation (malformed chains, out of range, ...).
    pub invalid_requests: AtomicU64,
    /// Requests of a type or with flags we do not support.
    pub unsupported: AtomicU64,
    /// Valid requests the host failed (I/O errors).
    pub io_errors: AtomicU64,
    /// Chains returned with no status byte (nowhere to write it).
    pub no_status: AtomicU64,
    /// Times the rate limiter held the disk back.
    pub throttled: AtomicU64,
    /// Interrupts raised (one per batch, fewer with EVENT_IDX).
    pub interrupts: AtomicU64,
}

impl BlockMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
