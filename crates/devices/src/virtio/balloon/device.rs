//! `Balloon`: the virtio-balloon device model the transport drives, and
//! `BalloonHandle`, the VMM's side of it while the VM runs (set the target,
//! read the size the guest reports and its statistics).
//!
//! Config space (virtio 1.2, 5.5.4): `num_pages` (the target, set by the
//! host), `actual` (written by the driver as it inflates and deflates),
//! then `free_page_hint_cmd_id` and `poison_val`, which read 0 (hinting and
//! page poisoning are not offered).
//!
//! Queues, in order, those the negotiated features bring: inflate,
//! deflate, statistics (STATS_VQ), free page reporting (PAGE_REPORTING);
//! Linux numbers them without gaps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::features::{DEFLATE_ON_OOM, PAGE_REPORTING, STATS_VQ};
use super::metrics::BalloonMetrics;
use super::persist::BalloonState;
use super::stats::GuestStats;
use super::worker::{Queues, Worker};
use super::PAGES_PER_MIB;
use crate::virtio::device_thread::{DeviceThread, DeviceThreads, StopFlag};
use crate::virtio::{
    device_type, ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// A worker serves at most a queue of chains per queue before it looks at
/// a pause again: well under this.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the balloon was asked for (`--balloon`, `PUT /balloon`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonSettings {
    /// The target at boot, in MiB.
    #[serde(default)]
    pub amount_mib: u32,
    /// Let the guest take pages back from the balloon when it runs out of
    /// memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests; 0: no statistics queue.
    #[serde(default)]
    pub stats_interval_s: u16,
    /// Free pages the guest reports are given back to the host.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// What the device thread and the VMM share.
pub(super) struct Shared {
    pub target_pages: AtomicU32,
    pub actual_pages: AtomicU32,
    pub stats: Mutex<GuestStats>,
    pub stats_interval_s: AtomicU32,
    /// Set while the device is activated: how a new target reaches the
    /// driver.
    pub interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
    /// Written when the statistics interval changes (the worker re-arms
    /// its timer).
    pub changed: EventFd,
    /// Guest RAM, in 4 KiB pages: the largest possible target.
    pub ram_pages: u32,
    /// How pages go back to the host (the RAM's backing decides).
    pub discard: super::release::Discard,
}

/// The VMM's handle on a balloon (cheap to clone).
#[derive(Clone)]
pub struct BalloonHandle(Arc<Shared>);

impl BalloonHandle {
    /// Set the target to `mib` MiB; the driver hears of it at once when
    /// it runs (a config-change interrupt), else when it starts.
    pub fn set_target_mib(&self, mib: u32) -> Result<(), String> {
        let pages = u64::from(mib) * u64::from(PAGES_PER_MIB);
        if pages > u64::from(self.0.ram_pages) {
            return Err(format!(
                "a balloon of {mib} MiB is larger than the VM's memory ({} MiB)",
                self.0.ram_pages / PAGES_PER_MIB
            ));
        }
        self.0.target_pages.store(pages as u32, Ordering::SeqCst);
        if let Some(irq) = lock(&self.0.interrupt).as_ref() {
            let _ = irq.signal_config();
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn shared(&self) -> Arc<Shared> {
        self.0.clone()
    }

    pub fn target_pages(&self) -> u32 {
        self.0.target_pages.load(Ordering::SeqCst)
    }

    /// The balloon's size as the driver last reported it.
    pub fn actual_pages(&self) -> u32 {
        self.0.actual_pages.load(Ordering::SeqCst)
    }

    /// The guest's statistics as it last sent them.
    pub fn stats(&self) -> GuestStats {
        *lock(&self.0.stats)
    }

    pub fn stats_interval_s(&self) -> u16 {
        self.0.stats_interval_s.load(Ordering::SeqCst) as u16
    }

    /// A new statistics interval (seconds, > 0). Statistics cannot be
    /// turned on or off once the device exists (the queue is there or not
    /// from boot, as in Firecracker).
    pub fn set_stats_interval(&self, secs: u16) -> Result<(), String> {
        let now = self.stats_interval_s();
        if (now == 0) != (secs == 0) {
            return Err(if now == 0 {
                "balloon statistics were not enabled when the VM started".into()
            } else {
                "balloon statistics cannot be turned off while the VM runs".into()
            });
        }
        self.0
            .stats_interval_s
            .store(u32::from(secs), Ordering::SeqCst);
        let _ = self.0.changed.write(1);
        Ok(())
    }
}

/// The shared statistics, for the worker.
pub(super) fn lock_stats(shared: &Shared) -> std::sync::MutexGuard<'_, GuestStats> {
    lock(&shared.stats)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A virtio-balloon device.
pub struct Balloon {
    avail_features: u64,
    acked_features: u64,
    settings: BalloonSettings,
    shared: Arc<Shared>,
    metrics: Arc<BalloonMetrics>,
    threads: DeviceThreads,
}

impl Balloon {
    /// A balloon for a VM of `ram_mib` MiB of private, normal pages;
    /// refused when the target at boot is larger than the VM.
    pub fn new(settings: BalloonSettings, ram_mib: u64) -> Result<Balloon, String> {
        let private = memory::backing::MemoryBacking::default().discard();
        Balloon::with_discard(settings, ram_mib, private)
    }

    /// A balloon whose pages go back to the host as `discard` says (see
    /// `memory::backing::MemoryBacking::discard`).
    pub fn with_discard(
        settings: BalloonSettings,
        ram_mib: u64,
        discard: super::release::Discard,
    ) -> Result<Balloon, String> {
        let ram_pages = u32::try_from(ram_mib.saturating_mul(u64::from(PAGES_PER_MIB)))
            .map_err(|_| format!("a balloon cannot manage {ram_mib} MiB (at most 16 TiB)"))?;
        let changed = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| format!("cannot create the balloon's eventfd: {e}"))?;
        let shared = Arc::new(Shared {
            target_pages: AtomicU32::new(0),
            actual_pages: AtomicU32::new(0),
            stats: Mutex::new(GuestStats::default()),
            stats_interval_s: AtomicU32::new(u32::from(settings.stats_interval_s)),
            interrupt: Mutex::new(None),
            changed,
            ram_pages,
            discard,
        });
        BalloonHandle(shared.clone()).set_target_mib(settings.amount_mib)?;
        let mut avail_features = VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX;
        let mut feature = |on: bool, bit: u32| {
            if on {
                avail_features |= 1 << bit;
            }
        };
        feature(settings.stats_interval_s > 0, STATS_VQ);
        feature(settings.deflate_on_oom, DEFLATE_ON_OOM);
        feature(settings.free_page_reporting, PAGE_REPORTING);
        Ok(Balloon {
            avail_features,
            acked_features: 0,
            settings,
            shared,
            metrics: Arc::new(BalloonMetrics::default()),
            threads: DeviceThreads::default(),
        })
    }

    /// Rebuild a device from a snapshot (`discard` from the restored
    /// RAM's backing).
    pub fn restore(
        state: &BalloonState,
        ram_mib: u64,
        discard: super::release::Discard,
    ) -> Result<Balloon, String> {
        let b = Balloon::with_discard(state.settings, ram_mib, discard)?;
        b.shared
            .target_pages
            .store(state.target_pages.min(b.shared.ram_pages), Ordering::SeqCst);
        b.shared
            .actual_pages
            .store(state.actual_pages, Ordering::SeqCst);
        let mut b = b;
        b.acked_features = state.acked_features & b.avail_features;
        Ok(b)
    }

    /// The state a snapshot records.
    pub fn save(&self) -> BalloonState {
        BalloonState {
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            settings: self.settings,
            target_pages: self.shared.target_pages.load(Ordering::SeqCst),
            actual_pages: self.shared.actual_pages.load(Ordering::SeqCst),
            activated: self.threads.is_running(),
        }
    }

    /// The VMM's handle (set the target, read size and statistics).
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle(self.shared.clone())
    }

    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    fn config_bytes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0..4].copy_from_slice(
            &self
                .shared
                .target_pages
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        c[4..8].copy_from_slice(
            &self
                .shared
                .actual_pages
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let extra = [STATS_VQ, PAGE_REPORTING]
            .iter()
            .filter(|&&bit| self.avail_features & (1 << bit) != 0)
            .count();
        vec![QUEUE_SIZE; 2 + extra]
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

    /// Only `actual` (bytes 4..8) is the driver's to write.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = self.config_bytes();
        for (i, b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                return;
            };
            if (4..8).contains(&at) {
                c[at as usize] = *b;
            }
        }
        let actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        self.shared
            .actual_pages
            .store(actual.min(self.shared.ram_pages), Ordering::SeqCst);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError> {
        let stats = self.acked(STATS_VQ);
        let reporting = self.acked(PAGE_REPORTING);
        let need = 2 + usize::from(stats) + usize::from(reporting);
        if queues.len() != need {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                need,
            });
        }
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = queues.into_iter();
        let mut next = |wanted: bool| -> Result<Option<ActiveQueue>, ActivateError> {
            if !wanted {
                return Ok(None);
            }
            let Some(mut aq) = queues.next() else {
                return Err(ActivateError::QueueCount { got: 0, need });
            };
            if !aq.queue.ready() || !aq.queue.is_valid(&mem) {
                return Err(ActivateError::Other(
                    "virtio-balloon: a queue is not ready, or its rings are outside guest memory"
                        .to_string(),
                ));
            }
            aq.queue.set_event_idx(event_idx);
            Ok(Some(aq))
        };
        let (Some(inflate), Some(deflate)) = (next(true)?, next(true)?) else {
            return Err(ActivateError::QueueCount { got: 0, need });
        };
        let stats_q = next(stats)?;
        let reporting_q = next(reporting)?;
        self.threads.join_all();
        *lock(&self.shared.interrupt) = Some(interrupt.clone());
        let shared = self.shared.clone();
        let metrics = self.metrics.clone();
        let thread = DeviceThread::spawn("vireo-balloon", StopFlag::new(), move |control| {
            let (queues, kicks) = Queues::new(inflate, deflate, stats_q, reporting_q);
            match Worker::new(mem, queues, interrupt, shared, metrics) {
                Ok(worker) => {
                    if let Err(e) = worker.run(&kicks, &control) {
                        eprintln!("vireo: virtio-balloon: device thread stopped: {e}");
                    }
                }
                Err(e) => eprintln!("vireo: virtio-balloon: cannot start: {e}"),
            }
        })
        .map_err(ActivateError::Worker)?;
        self.threads.start(thread);
        // A target set before the driver was ready: tell it now.
        if self.shared.target_pages.load(Ordering::SeqCst) > 0 {
            if let Some(irq) = lock(&self.shared.interrupt).as_ref() {
                let _ = irq.signal_config();
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.threads.stop();
        *lock(&self.shared.interrupt) = None;
        self.acked_features = 0;
        // A new driver starts with an empty balloon and sends its own
        // statistics.
        self.shared.actual_pages.store(0, Ordering::SeqCst);
        *lock(&self.shared.stats) = GuestStats::default();
    }

    fn reset_done(&mut self) -> bool {
        self.threads.done()
    }

    fn pause(&mut self) {
        self.threads.pause_logged("virtio-balloon", PAUSE_TIMEOUT);
    }

    fn resume(&mut self) {
        self.threads.resume();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let m = &self.metrics;
        let get = BalloonMetrics::get;
        vec![
            ("activate_count", u64::from(self.threads.is_running())),
            ("inflate_count", get(&m.inflated_pages)),
            ("deflate_count", get(&m.deflated_pages)),
            ("released_bytes", get(&m.released_bytes)),
            ("release_calls", get(&m.release_calls)),
            ("release_fails", get(&m.release_fails)),
            ("reported_bytes", get(&m.reported_bytes)),
            ("stats_updates_count", get(&m.stats_updates)),
            ("event_fails", get(&m.bad_chains)),
            ("interrupts", get(&m.interrupts)),
            (
                "actual_pages",
                u64::from(self.shared.actual_pages.load(Ordering::SeqCst)),
            ),
            (
                "target_pages",
                u64::from(self.shared.target_pages.load(Ordering::SeqCst)),
            ),
        ]
    }
}
