//! `Rng`: the virtio-rng device model the transport drives. It has one
//! queue, no config space and no device features; `activate` starts the
//! device thread (`worker.rs`), `reset` tells it to stop without waiting.

use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use super::metrics::RngMetrics;
use super::persist::RngState;
use super::worker::Worker;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::device_thread::{DeviceThread, DeviceThreads, StopFlag};
use crate::virtio::{
    device_type, ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// A worker fills at most a queue of 64 KiB requests before it looks at a
/// pause again: well under this.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A virtio-rng device.
pub struct Rng {
    avail_features: u64,
    acked_features: u64,
    limit: RateLimiterConfig,
    metrics: Arc<RngMetrics>,
    threads: DeviceThreads,
}

impl Rng {
    /// An entropy device limited by `limit` (the default config: no limit).
    pub fn new(limit: RateLimiterConfig) -> Rng {
        Rng {
            avail_features: VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX,
            acked_features: 0,
            limit,
            metrics: Arc::new(RngMetrics::default()),
            threads: DeviceThreads::default(),
        }
    }

    /// Rebuild a device from a snapshot (the transport then activates it
    /// with restored queues).
    pub fn restore(state: &RngState) -> Rng {
        let mut rng = Rng::new(state.rate_limiter);
        rng.acked_features = state.acked_features & rng.avail_features;
        rng
    }

    /// The state a snapshot records.
    pub fn save(&self) -> RngState {
        RngState {
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            rate_limiter: self.limit,
            activated: self.threads.is_running(),
        }
    }

    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    pub fn is_active(&self) -> bool {
        self.threads.is_running()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// virtio-rng has no config space: every byte reads as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&[], offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Some(mut aq) = queues.into_iter().next().filter(|_| got == 1) else {
            return Err(ActivateError::QueueCount { got, need: 1 });
        };
        if !aq.queue.ready() || !aq.queue.is_valid(&mem) {
            return Err(ActivateError::Other(
                "virtio-rng: the request queue is not ready, or its rings are outside guest memory"
                    .to_string(),
            ));
        }
        self.threads.join_all();
        aq.queue
            .set_event_idx(self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        let limiter = RateLimiter::new(&self.limit).map_err(ActivateError::Worker)?;
        let metrics = self.metrics.clone();
        let thread = DeviceThread::spawn("vireo-rng", StopFlag::new(), move |control| {
            let kick = aq.kick;
            let worker = Worker::new(mem, aq.queue, interrupt, limiter, metrics);
            if let Err(e) = worker.run(&kick, &control) {
                eprintln!("vireo: virtio-rng: device thread stopped: {e}");
            }
        })
        .map_err(ActivateError::Worker)?;
        self.threads.start(thread);
        Ok(())
    }

    fn reset(&mut self) {
        self.threads.stop();
        self.acked_features = 0;
    }

    fn reset_done(&mut self) -> bool {
        self.threads.done()
    }

    fn pause(&mut self) {
        self.threads.pause_logged("virtio-rng", PAUSE_TIMEOUT);
    }

    fn resume(&mut self) {
        self.threads.resume();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let m = &self.metrics;
        let get = RngMetrics::get;
        vec![
            ("activate_count", u64::from(self.threads.is_running())),
            ("entropy_event_count", get(&m.requests)),
            ("entropy_bytes", get(&m.bytes)),
            ("entropy_event_fails", get(&m.invalid_requests)),
            ("entropy_rate_limiter_throttled", get(&m.throttled)),
            ("host_rng_fails", get(&m.host_errors)),
            ("interrupts", get(&m.interrupts)),
        ]
    }
}
