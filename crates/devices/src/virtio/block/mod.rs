//! virtio-blk: a block device backed by a raw image file or a host block
//! device.
//!
//! - `device.rs`: `Block`, the `VirtioDevice` the transport drives (features,
//!   config space, activate/reset).
//! - `disk.rs`: the backing file (open checks, capacity, synchronous I/O
//!   helpers the engines share).
//! - `request.rs`: turns an untrusted descriptor chain into a validated
//!   `Request`, or says why it cannot.
//! - `engine/`: the I/O engines (io_uring where the host has it, else a
//!   pool of I/O threads doing preadv/pwritev; a synchronous engine in the
//!   worker for tests and fuzzing).
//! - `worker.rs`: the device thread: waits on the queues' kick eventfds,
//!   submits requests to the engine, completes them in batches and signals
//!   the guest once per batch (respecting EVENT_IDX).
//! - `persist.rs`: the plain serializable state a snapshot needs.
//! - `metrics.rs`: counters the device keeps while it runs.
//! - `fuzzing.rs` (tests and the `fuzzing` feature): the harness the
//!   cargo-fuzz target in `fuzz/` and the fuzz-lite test share, with its
//!   oracle in `fuzzing/oracle.rs`.

mod device;
mod disk;
pub mod engine;
mod metrics;
mod persist;
pub mod request;
mod worker;

#[cfg(test)]
mod durability_tests;
#[cfg(test)]
mod fuzz_lite;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod mmio_tests;
#[cfg(test)]
mod pci_tests;
#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod throughput;

pub use device::{Block, QUEUE_SIZE};
pub use disk::Disk;
pub use engine::EngineKind;
pub use metrics::BlockMetrics;
pub use persist::BlockState;
pub use worker::Worker;

use std::path::PathBuf;

/// Size of a virtio-blk sector: request offsets are always in these units.
pub const SECTOR_SIZE: u64 = 512;
/// log2(SECTOR_SIZE).
pub const SECTOR_SHIFT: u32 = 9;

/// Errors setting up a block device (never raised by guest requests: those
/// fail the request with a status byte instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("disk image {path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path}: is a directory, not a file or block device")]
    IsDirectory { path: PathBuf },
    #[error("disk image {path}: not a regular file or block device")]
    NotFileOrBlockDevice { path: PathBuf },
    #[error("disk image {path}: in use by another disk or VM (cannot lock it: {source})")]
    Locked {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path}: cannot read its size: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path}: {size} bytes is smaller than one 512-byte sector")]
    TooSmall { path: PathBuf, size: u64 },
    #[error("disk id {id:?} is longer than 20 bytes")]
    IdTooLong { id: String },
    #[error("disk image {path}: the device did not finish its I/O in time to switch to it")]
    SwitchTimeout { path: PathBuf },
    #[error("a block device needs between 1 and {max} queues, not {got}")]
    QueueCount { got: u16, max: u16 },
    #[error("disk image {path}: snapshot expects {expected} sectors, the file has {actual}")]
    CapacityMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
}
