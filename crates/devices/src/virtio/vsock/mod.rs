//! virtio-vsock: stream sockets between the guest and host programs with
//! no network (virtio 1.2, 5.10), with Firecracker's host-side convention
//! on a Unix socket.
//!
//! - `device.rs`: `Vsock`, the `VirtioDevice` the transport drives (CID
//!   config, three queues, the listening Unix socket).
//! - `packet.rs`: the packet header and turning untrusted RX/TX chains
//!   into checked buffers.
//! - `connection.rs`: one connection's state and credit accounting.
//! - `muxer.rs`: every connection and host socket, Firecracker's CONNECT /
//!   OK handshake and `PATH_<port>` convention.
//! - `worker.rs`: the device thread serving the queues and host sockets.
//! - `relay.rs`: vsock's host side carried over one byte stream (the
//!   nested rig's virtio-serial port), both ends.
//! - `persist.rs`: the plain serializable state a snapshot needs.
//! - `metrics.rs`: counters the device keeps while it runs.
//! - `fuzzing.rs` (tests and the `fuzzing` feature): the harness the
//!   cargo-fuzz target `virtio_vsock` and the fuzz-lite test share.

mod connection;
mod device;
mod metrics;
mod muxer;
pub mod packet;
mod persist;
pub mod relay;
mod worker;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod tests;

pub use device::{Error, Vsock, MIN_GUEST_CID, QUEUE_SIZE};
pub use metrics::VsockMetrics;
pub use muxer::{HostConnector, Muxer, UdsConnector};
pub use persist::VsockState;
pub use worker::Worker;
