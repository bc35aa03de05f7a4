//! `Net`: the virtio-net device model the transport drives. Queue pairs
//! (RX, TX) then the control queue; the config space holds the MAC, the
//! link status, the number of queue pairs and the MTU. The backend (a tap,
//! one file per queue pair) is opened when the device is made, so a bad
//! tap fails before anything boots, and is kept across driver resets.

use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use super::backend::Backend;
use super::ctrl::Ctrl;
use super::features::{self, bit};
use super::metrics::NetMetrics;
use super::persist::NetState;
use super::tap::{Tap, TapError};
use super::worker::{Direction, NetLimits, Worker};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::device_thread::{DeviceThread, DeviceThreads, StopFlag};
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::{
    device_type, ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most queue pairs a device may have.
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// The smallest MTU a guest can be given (IPv4's minimum is 68; Linux
/// wants at least that).
pub const MIN_MTU: u16 = 68;

const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a network device is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSettings {
    /// The host interface (tap) name, for messages and snapshots.
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
    pub queue_pairs: u16,
    pub rx_rate_limiter: RateLimiterConfig,
    pub tx_rate_limiter: RateLimiterConfig,
}

/// Errors setting up a network device (never raised by the guest).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Passt(#[from] super::passt::PasstError),
    #[error("net {tap}: queues={got}: must be 1 to {MAX_QUEUE_PAIRS}")]
    QueuePairs { tap: String, got: u16 },
    #[error("net {tap}: mtu={got}: must be {MIN_MTU} to {max}")]
    Mtu { tap: String, got: u16, max: usize },
    #[error("net {tap}: mac {mac}: a multicast address cannot be a NIC's")]
    MulticastMac { tap: String, mac: String },
}

/// Format a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl NetSettings {
    /// Check what the guest would otherwise trip over.
    pub fn check(&self) -> Result<(), Error> {
        if self.queue_pairs == 0 || self.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(Error::QueuePairs {
                tap: self.tap.clone(),
                got: self.queue_pairs,
            });
        }
        let max = super::frame::MAX_PACKET_LEN - 18;
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU || usize::from(mtu) > max {
                return Err(Error::Mtu {
                    tap: self.tap.clone(),
                    got: mtu,
                    max,
                });
            }
        }
        if self.mac[0] & 1 != 0 {
            return Err(Error::MulticastMac {
                tap: self.tap.clone(),
                mac: format_mac(&self.mac),
            });
        }
        Ok(())
    }
}

/// A virtio-net device.
pub struct Net {
    settings: NetSettings,
    /// One per queue pair.
    backends: Vec<Box<dyn Backend>>,
    avail_features: u64,
    acked_features: u64,
    metrics: Arc<NetMetrics>,
    /// One per queue pair.
    threads: Vec<DeviceThreads>,
    /// Where each running queue pair's worker takes new limiter settings.
    limits: Vec<Arc<NetLimits>>,
}

impl Net {
    /// A device on tap `settings.tap` (attached to, or created).
    pub fn with_tap(settings: NetSettings) -> Result<Net, Error> {
        settings.check()?;
        let taps = Tap::open(&settings.tap, usize::from(settings.queue_pairs))?;
        let backends = taps
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn Backend>)
            .collect();
        Net::new(settings, backends)
    }

    /// A device on user-mode networking: passt, started for it (and
    /// stopped with it), forwarding `forwards` to the guest.
    pub fn with_passt(
        settings: NetSettings,
        forwards: &[super::passt::Forward],
    ) -> Result<Net, Error> {
        settings.check()?;
        let backend = super::passt::start(forwards)?;
        Net::new(settings, vec![Box::new(backend)])
    }

    /// A device on `backends`, one per queue pair.
    pub fn new(settings: NetSettings, backends: Vec<Box<dyn Backend>>) -> Result<Net, Error> {
        settings.check()?;
        if backends.len() != usize::from(settings.queue_pairs) {
            return Err(Error::QueuePairs {
                tap: settings.tap.clone(),
                got: backends.len() as u16,
            });
        }
        Ok(Net {
            avail_features: features::offered(
                settings.mtu,
                settings.queue_pairs,
                backends.iter().all(|b| b.offloads()),
            ),
            settings,
            backends,
            acked_features: 0,
            metrics: Arc::new(NetMetrics::default()),
            threads: Vec::new(),
            limits: Vec::new(),
        })
    }

    pub fn settings(&self) -> &NetSettings {
        &self.settings
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    pub fn is_active(&self) -> bool {
        self.threads.iter().any(DeviceThreads::is_running)
    }

    /// The state a snapshot records.
    pub fn save(&self) -> NetState {
        let s = &self.settings;
        NetState {
            tap: s.tap.clone(),
            mac: s.mac,
            mtu: s.mtu,
            queue_pairs: s.queue_pairs,
            rx_rate_limiter: s.rx_rate_limiter,
            tx_rate_limiter: s.tx_rate_limiter,
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            activated: self.is_active(),
        }
    }

    /// `struct virtio_net_config`: mac, status, max_virtqueue_pairs, mtu.
    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.settings.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&self.settings.queue_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&self.settings.mtu.unwrap_or(0).to_le_bytes());
        c
    }

    fn acked(&self, feature: u32) -> bool {
        self.acked_features & bit(feature) != 0
    }

    /// Stop every queue pair's thread (without waiting).
    fn stop_all(&mut self) {
        for t in &mut self.threads {
            t.stop();
        }
        self.limits.clear();
    }

    /// The RX and TX limiters from now on, `patched` over the current ones
    /// (Firecracker's PATCH: a bucket left out stays); every running queue
    /// pair takes them at once, and a later activation starts with them.
    pub fn patch_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> (RateLimiterConfig, RateLimiterConfig) {
        let s = &mut self.settings;
        if let Some(p) = rx {
            s.rx_rate_limiter = s.rx_rate_limiter.patched(p);
        }
        if let Some(p) = tx {
            s.tx_rate_limiter = s.tx_rate_limiter.patched(p);
        }
        let new = (s.rx_rate_limiter, s.tx_rate_limiter);
        for l in &self.limits {
            l.post((rx.copied(), tx.copied()));
        }
        for t in &self.threads {
            if let Some(t) = t.running() {
                t.nudge();
            }
        }
        new
    }

    fn worker_error(e: std::io::Error) -> ActivateError {
        ActivateError::Worker(e)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2 * usize::from(self.settings.queue_pairs) + 1]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// The config space is read-only for a modern driver.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError> {
        // Without MQ the driver uses one pair; the control queue, if any,
        // follows the pairs it uses.
        let pairs = if self.acked(features::MQ) {
            usize::from(self.settings.queue_pairs)
        } else {
            1
        };
        let has_ctrl = self.acked(features::CTRL_VQ);
        let need = 2 * pairs + usize::from(has_ctrl);
        if queues.len() != need {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                need,
            });
        }
        let event_idx = self.acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut rings = Vec::with_capacity(need);
        for (i, mut aq) in queues.into_iter().enumerate() {
            if !aq.queue.ready() || !aq.queue.is_valid(&mem) {
                return Err(ActivateError::Other(format!(
                    "virtio-net {} queue {i}: not ready, or rings outside guest memory",
                    self.settings.tap
                )));
            }
            aq.queue.set_event_idx(event_idx);
            rings.push(aq);
        }
        for t in &mut self.threads {
            t.join_all();
        }
        self.threads.clear();
        // The offloads the guest takes, and the tap queues it reads.
        let offloads = features::guest_offloads(self.acked_features);
        self.backends[0]
            .set_offload(features::tun_offload_flags(offloads))
            .map_err(Self::worker_error)?;
        if self.backends.len() > 1 {
            for (i, b) in self.backends.iter().enumerate() {
                b.set_enabled(i < pairs).map_err(Self::worker_error)?;
            }
        }
        let mergeable = self.acked(features::MRG_RXBUF);
        let mut rings = rings.into_iter();
        let mut pair_rings = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            let (Some(rx), Some(tx)) = (rings.next(), rings.next()) else {
                return Err(ActivateError::QueueCount { got: 0, need });
            };
            pair_rings.push((rx, tx));
        }
        let mut ctrl = match rings.next() {
            Some(aq) => Some((aq, self.ctrl_backends().map_err(Self::worker_error)?)),
            None => None,
        };
        for (i, (rx, tx)) in pair_rings.into_iter().enumerate() {
            let s = &self.settings;
            let rx_dir = Direction {
                queue: ServedQueue::new(2 * i as u16, rx.queue),
                limiter: RateLimiter::new(&s.rx_rate_limiter).map_err(Self::worker_error)?,
            };
            let tx_dir = Direction {
                queue: ServedQueue::new(2 * i as u16 + 1, tx.queue),
                limiter: RateLimiter::new(&s.tx_rate_limiter).map_err(Self::worker_error)?,
            };
            let backend = self.backends[i]
                .try_clone_box()
                .map_err(Self::worker_error)?;
            let limits = Arc::new(NetLimits::default());
            self.limits.push(limits.clone());
            let mut worker = Worker::new(
                mem.clone(),
                rx_dir,
                tx_dir,
                backend,
                interrupt.clone(),
                self.metrics.clone(),
                mergeable,
            )
            .with_limits(limits);
            let mut kicks = vec![rx.kick, tx.kick];
            if i == 0 {
                if let Some((aq, backends)) = ctrl.take() {
                    kicks.push(aq.kick);
                    worker = worker.with_ctrl(Ctrl {
                        queue: ServedQueue::new(2 * pairs as u16, aq.queue),
                        backends,
                        acked: self.acked_features,
                        commands: 0,
                        failed: 0,
                    });
                }
            }
            let tap = s.tap.clone();
            let thread =
                DeviceThread::spawn(&format!("vireo-net{i}"), StopFlag::new(), move |control| {
                    if let Err(e) = worker.run(&kicks, &control) {
                        eprintln!("vireo: virtio-net {tap} queue pair {i}: thread stopped: {e}");
                    }
                })
                .map_err(Self::worker_error)?;
            let mut threads = DeviceThreads::default();
            threads.start(thread);
            self.threads.push(threads);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_all();
        self.acked_features = 0;
    }

    fn reset_done(&mut self) -> bool {
        self.threads.iter_mut().all(DeviceThreads::done)
    }

    fn pause(&mut self) {
        for t in &self.threads {
            t.pause_logged("virtio-net", PAUSE_TIMEOUT);
        }
    }

    fn resume(&mut self) {
        for t in &self.threads {
            t.resume();
        }
    }

    fn patch_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(RateLimiterConfig, RateLimiterConfig), String> {
        Ok(Net::patch_rate_limiters(self, rx, tx))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let m = &self.metrics;
        let get = NetMetrics::get;
        vec![
            ("activate_count", u64::from(self.is_active())),
            ("rx_packets_count", get(&m.rx_packets)),
            ("rx_bytes_count", get(&m.rx_bytes)),
            ("rx_dropped", get(&m.rx_dropped)),
            ("rx_rate_limiter_throttled", get(&m.rx_throttled)),
            ("tx_packets_count", get(&m.tx_packets)),
            ("tx_bytes_count", get(&m.tx_bytes)),
            ("tx_fails", get(&m.tx_errors)),
            ("tx_rate_limiter_throttled", get(&m.tx_throttled)),
            ("bad_chains", get(&m.bad_chains)),
            ("ctrl_commands", get(&m.ctrl_commands)),
            ("ctrl_fails", get(&m.ctrl_failed)),
            ("interrupts", get(&m.interrupts)),
        ]
    }
}

impl Net {
    /// Handles on every queue pair's backend for the control queue.
    fn ctrl_backends(&self) -> std::io::Result<Vec<Box<dyn Backend>>> {
        self.backends.iter().map(|b| b.try_clone_box()).collect()
    }
}
