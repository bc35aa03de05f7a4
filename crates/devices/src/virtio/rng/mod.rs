//! virtio-rng: an entropy source for the guest (virtio 1.2, 5.4), filled
//! from the host's `getrandom(2)`, optionally rate limited.
//!
//! - `device.rs`: `Rng`, the `VirtioDevice` the transport drives.
//! - `request.rs`: turns an untrusted descriptor chain into the guest
//!   buffers to fill, or says why it cannot.
//! - `worker.rs`: the device thread: waits on the queue's kick, the rate
//!   limiter's timer and its wake eventfd, fills buffers and signals once
//!   per batch.
//! - `persist.rs`: the plain serializable state a snapshot needs.
//! - `metrics.rs`: counters the device keeps while it runs.

mod device;
mod metrics;
mod persist;
pub mod request;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Rng, QUEUE_SIZE};
pub use metrics::RngMetrics;
pub use persist::RngState;
pub use worker::Worker;
