//! virtio-balloon (virtio 1.2, 5.5): memory the guest gives back to the
//! host while it runs, with statistics, deflate-on-OOM and free page
//! reporting.
//!
//! - `device.rs`: `Balloon`, the `VirtioDevice` the transport drives, and
//!   `BalloonHandle`, what the VMM keeps to set the target and read the
//!   balloon's size and the guest's statistics while it runs.
//! - `request.rs`: untrusted chains into page frame numbers, free ranges
//!   and statistics, or the reason they are refused.
//! - `release.rs`: guest pages into merged host ranges given back with one
//!   `madvise` each (never one syscall per 4 KiB page).
//! - `stats.rs`: the statistics tags the spec defines, as the guest last
//!   sent them.
//! - `worker.rs`: the device thread: inflate, deflate, statistics and
//!   reporting queues and the statistics timer.
//! - `persist.rs`: the plain serializable state a snapshot needs.
//! - `metrics.rs`: counters the device keeps while it runs.

mod device;
mod metrics;
mod persist;
pub mod release;
pub mod request;
pub mod stats;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Balloon, BalloonHandle, BalloonSettings, QUEUE_SIZE};
pub use metrics::BalloonMetrics;
pub use persist::BalloonState;
pub use stats::GuestStats;
pub use worker::Worker;

/// Feature bits (virtio 1.2, 5.5.3).
pub mod features {
    pub const STATS_VQ: u32 = 1;
    pub const DEFLATE_ON_OOM: u32 = 2;
    pub const FREE_PAGE_HINT: u32 = 3;
    pub const PAGE_REPORTING: u32 = 5;
}

/// The balloon counts in 4 KiB pages whatever the host page size.
pub const PAGE_SHIFT: u32 = 12;
/// Pages in one MiB.
pub const PAGES_PER_MIB: u32 = 1 << (20 - PAGE_SHIFT);
