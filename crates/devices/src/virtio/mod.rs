//! Virtio devices: the contract every device implements (`VirtioDevice`),
//! independent of the transport that exposes it to the guest (virtio-pci or
//! virtio-mmio, both through `transport::TransportCore`).
//!
//! Life cycle, driven by the transport as the guest driver goes through the
//! virtio status steps:
//! 1. The driver reads `avail_features` and the device config
//!    (`read_config`), writes the features it accepts (`ack_features`) and
//!    sets up each queue (size, descriptor/avail/used addresses).
//! 2. On DRIVER_OK the transport calls `activate` with the ready queues, one
//!    kick eventfd per queue (registered by the transport as a KVM ioeventfd,
//!    so a guest kick never goes through a vCPU exit handler) and an
//!    `Interrupt` to signal used buffers. The device starts its own worker
//!    (thread or I/O engine) and returns.
//! 3. On a device reset (status 0) the transport calls `reset`: the device
//!    starts stopping its worker and returns to its pre-activation state,
//!    without waiting. The transport then polls `reset_done` and keeps
//!    reading back a non-zero device_status until it is true (virtio 1.2,
//!    4.1.4.3.2: the driver waits for 0), so a worker busy with slow I/O
//!    never holds up the vCPU that wrote the reset. Once done, the device
//!    no longer touches guest memory and the driver may negotiate and
//!    activate again.
//!
//! 4. Pausing the VM (`pause`, `resume`) holds an activated device still
//!    with its state intact; see `pause.rs`.
//!
//! Nothing the guest controls is trusted: descriptor addresses, lengths,
//! chain lengths and config offsets are checked, and a bad request fails that
//! request, never the VMM.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

pub use virtio_queue::Queue;

pub mod device_thread;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_rings;
pub mod pause;
pub mod served_queue;
pub mod transport;

pub mod balloon;
pub mod block;
pub mod chain;
pub mod net;
pub mod rng;
pub mod vsock;

#[cfg(test)]
pub mod test_utils;

/// Guest memory as devices see it.
pub type GuestMemory = memory::GuestMemory;

/// Virtio device type ids (virtio 1.x, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
    pub const BALLOON: u32 = 5;
    pub const VSOCK: u32 = 19;
}

/// VIRTIO_F_VERSION_1: every Vireo device is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Copy a device's config bytes at `offset` into `data`; bytes past the
/// end (or an offset that overflows) read as 0. For `read_config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o).copied())
            .unwrap_or(0);
    }
}

/// How a device tells the driver it has used buffers or changed its config.
pub trait Interrupt: Send + Sync {
    /// Signal that queue `queue_index` has new used buffers.
    fn signal_queue(&self, queue_index: u16) -> std::io::Result<()>;
    /// Signal a configuration change.
    fn signal_config(&self) -> std::io::Result<()>;
}

/// A queue handed to an activated device, with the eventfd the guest's kick
/// for it arrives on.
pub struct ActiveQueue {
    pub queue: Queue,
    pub kick: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {need}")]
    QueueCount { got: usize, need: usize },
    #[error("cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// The contract between a virtio device and its transport.
pub trait VirtioDevice: Send {
    /// One of `device_type::*`.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits the device offers (include `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of `avail_features`).
    fn ack_features(&mut self, features: u64);
    /// Read the device-specific config space; out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific config space; out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start serving `queues` with guest memory `mem`.
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Start stopping and return to the pre-activation state; must not
    /// block on the device's I/O.
    fn reset(&mut self);
    /// Whether the last `reset` has finished: nothing of the device still
    /// reads or writes guest memory. Polled by the transport; must not block.
    fn reset_done(&mut self) -> bool {
        true
    }
    /// The VM is pausing: finish the I/O in flight, then leave guest
    /// memory and the rings alone until `resume`. Called with the vCPUs
    /// already parked; may block until the device is quiet (bounded by the
    /// device's in-flight limits).
    fn pause(&mut self) {}
    /// The VM resumes: serve the queues again, including what the driver
    /// queued before the pause.
    fn resume(&mut self) {}
    /// Serve a new backing file (a disk's image) from now on; the caller
    /// signals the configuration change. Devices without one refuse.
    fn replace_backing(&mut self, _path: &std::path::Path) -> Result<(), String> {
        Err("this device has no backing file".into())
    }
    /// New receive and transmit rate limiters from now on, each patched
    /// over the current one (see `RateLimiterConfig::patched`); returns
    /// the settings in force. Devices without such limiters refuse.
    fn patch_rate_limiters(
        &mut self,
        _rx: Option<&crate::rate_limiter::RateLimiterConfig>,
        _tx: Option<&crate::rate_limiter::RateLimiterConfig>,
    ) -> Result<
        (
            crate::rate_limiter::RateLimiterConfig,
            crate::rate_limiter::RateLimiterConfig,
        ),
        String,
    > {
        Err("this device has no receive and transmit rate limiters".into())
    }
    /// The device's counters for metrics: (name, value) pairs.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
