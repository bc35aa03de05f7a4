//! Counters a vsock device keeps while it runs; shared (`Arc`) between the
//! device thread that updates them and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals for one vsock device.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Connections set up, either way.
    pub connections: AtomicU64,
    /// Guest connections to a host port nobody listens on.
    pub refused: AtomicU64,
    /// RST packets sent to the guest.
    pub rst_sent: AtomicU64,
    /// Guest packets refused (malformed, wrong CID or type, out of order).
    pub bad_packets: AtomicU64,
    /// Host programs that did not send a valid CONNECT line.
    pub bad_host_requests: AtomicU64,
    /// Payload bytes guest -> host and host -> guest.
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Interrupts raised (one per batch and queue, fewer with EVENT_IDX).
    pub interrupts: AtomicU64,
}

impl VsockMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
