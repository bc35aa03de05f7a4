//! virtio-net (virtio 1.2, 5.1): an Ethernet NIC for the guest on a host
//! tap device, with checksum and segmentation offloads, mergeable RX
//! buffers, multi-queue and rate limits.
//!
//! - `device.rs`: `Net`, the `VirtioDevice` the transport drives (features,
//!   config space, one thread per queue pair).
//! - `features.rs`: the feature bits offered, and the tap offloads the
//!   accepted ones mean.
//! - `frame.rs`: frames on the rings (the virtio-net header, TX chains, RX
//!   buffers), checked.
//! - `worker.rs`: a queue pair's thread: TX to the backend, RX from it,
//!   signalled once per batch.
//! - `ctrl.rs`: the control queue (queue pairs, run-time offloads).
//! - `backend.rs` / `tap.rs`: where frames go; the tap with IFF_VNET_HDR.
//! - `stream.rs` / `passt.rs`: frames over a stream socket, and passt
//!   (rootless user-mode networking) on one.
//! - `persist.rs`: the plain serializable state a snapshot needs.
//! - `metrics.rs`: counters the device keeps while it runs.
//! - `fuzzing.rs` (tests and the `fuzzing` feature): the harness the
//!   cargo-fuzz target `virtio_net` and the fuzz-lite test share.

mod backend;
mod ctrl;
mod device;
pub mod features;
pub mod frame;
mod metrics;
pub mod passt;
mod persist;
pub mod stream;
pub mod tap;
mod worker;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod tests;

pub use backend::Backend;
pub use device::{format_mac, Error, Net, NetSettings, MAX_QUEUE_PAIRS, MIN_MTU, QUEUE_SIZE};
pub use metrics::NetMetrics;
pub use persist::NetState;
pub use worker::{Direction, Served, Worker};
