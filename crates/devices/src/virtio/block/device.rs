//! `Block`: the virtio-blk device model the transport drives. It owns the
//! disk, the feature bits and the config space; `activate` starts the device
//! thread (`worker.rs`), `reset` tells it to stop without waiting, and
//! `reset_done` reports (and joins) the thread once it has.

use std::path::Path;
use std::sync::Arc;

use super::disk::Disk;
use super::engine::{Engine, EngineKind};
use super::metrics::BlockMetrics;
use super::persist::BlockState;
use super::request::{MAX_DESCRIPTORS, MAX_ZERO_SECTORS, SEG_MAX, SIZE_MAX};
use super::worker::{DiskSwap, Worker, WorkerQueue};
use super::{Error, SECTOR_SIZE};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::device_thread::{DeviceThread, DeviceThreads};
use crate::virtio::{
    device_type, ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;

/// Size of every queue.
pub const QUEUE_SIZE: u16 = MAX_DESCRIPTORS as u16;
/// Most queues a block device offers.
pub const MAX_QUEUES: u16 = 64;
/// Length of the config space we expose (`struct virtio_blk_config` up to
/// and including `write_zeroes_may_unmap` and its padding).
pub const CONFIG_LEN: usize = 60;

/// Byte offsets in `struct virtio_blk_config` (virtio 1.2, 5.2.4).
mod offset {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// How long a pause waits for the worker's in-flight I/O.
const PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A virtio-blk device.
pub struct Block {
    disk: Arc<Disk>,
    id: Option<String>,
    num_queues: u16,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    metrics: Arc<BlockMetrics>,
    engine_pref: EngineKind,
    engine_used: Option<EngineKind>,
    /// The device thread (and one that may still be stopping).
    threads: DeviceThreads,
    /// Where `replace_disk` leaves a new disk for the running worker.
    swap: DiskSwap,
    /// Bytes and requests per second (default: unlimited).
    limit: RateLimiterConfig,
    /// The VM is paused (`pause` without `resume`).
    paused: bool,
}

impl Block {
    /// Open `path` (raw image or host block device) as a virtio-blk disk
    /// with `num_queues` queues (one per vCPU is the usual choice). `id` is
    /// the serial the guest reads with GET_ID (at most 20 bytes).
    pub fn new(
        path: impl AsRef<Path>,
        readonly: bool,
        id: Option<String>,
        num_queues: u16,
    ) -> Result<Block, Error> {
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(Error::QueueCount {
                got: num_queues,
                max: MAX_QUEUES,
            });
        }
        let disk = Disk::open(path.as_ref(), readonly, id.as_deref())?;
        let mut avail_features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_MQ
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if readonly {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let config = build_config(&disk, num_queues);
        Ok(Block {
            disk: Arc::new(disk),
            id,
            num_queues,
            avail_features,
            acked_features: 0,
            config,
            metrics: Arc::new(BlockMetrics::default()),
            engine_pref: EngineKind::default(),
            engine_used: None,
            threads: DeviceThreads::default(),
            swap: DiskSwap::default(),
            limit: RateLimiterConfig::default(),
            paused: false,
        })
    }

    /// Rebuild a device from a snapshot; the image must still have the
    /// size it had. The transport then activates it with restored queues.
    pub fn restore(state: &BlockState) -> Result<Block, Error> {
        let mut block = Block::new(
            &state.path,
            state.readonly,
            state.id.clone(),
            state.num_queues,
        )?;
        let actual = block.disk.capacity_sectors();
        if actual != state.capacity_sectors {
            return Err(Error::CapacityMismatch {
                path: state.path.clone(),
                expected: state.capacity_sectors,
                actual,
            });
        }
        block.acked_features = state.acked_features & block.avail_features;
        block.engine_pref = state.engine;
        Ok(block)
    }

    /// The state a snapshot records.
    pub fn save(&self) -> BlockState {
        BlockState {
            path: self.disk.path().to_path_buf(),
            readonly: self.disk.readonly(),
            id: self.id.clone(),
            num_queues: self.num_queues,
            capacity_sectors: self.disk.capacity_sectors(),
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            engine: self.engine_pref,
            activated: self.threads.is_running(),
        }
    }

    /// Choose the I/O engine for the next activation (default: io_uring,
    /// falling back to the thread pool).
    pub fn set_engine(&mut self, kind: EngineKind) {
        self.engine_pref = kind;
    }

    /// Limit the disk's bytes and requests per second from the next
    /// activation on.
    pub fn set_rate_limit(&mut self, limit: RateLimiterConfig) {
        self.limit = limit;
    }

    /// The engine the running worker uses (None before activation).
    pub fn engine(&self) -> Option<EngineKind> {
        self.engine_used
    }

    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn is_active(&self) -> bool {
        self.threads.is_running()
    }
}

fn build_config(disk: &Disk, num_queues: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset::CAPACITY, &disk.capacity_sectors().to_le_bytes());
    put(offset::SIZE_MAX, &SIZE_MAX.to_le_bytes());
    put(offset::SEG_MAX, &SEG_MAX.to_le_bytes());
    put(offset::BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
    put(offset::NUM_QUEUES, &num_queues.to_le_bytes());
    let align = disk.host_block_size() / SECTOR_SIZE as u32;
    put(offset::MAX_DISCARD_SECTORS, &MAX_ZERO_SECTORS.to_le_bytes());
    put(offset::MAX_DISCARD_SEG, &1u32.to_le_bytes());
    put(offset::DISCARD_SECTOR_ALIGNMENT, &align.to_le_bytes());
    put(
        offset::MAX_WRITE_ZEROES_SECTORS,
        &MAX_ZERO_SECTORS.to_le_bytes(),
    );
    put(offset::MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
    put(offset::WRITE_ZEROES_MAY_UNMAP, &[1]);
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; usize::from(self.num_queues)]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    /// Nothing in our config space is writable (no CONFIG_WCE).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<(), ActivateError> {
        if queues.is_empty() || queues.len() > usize::from(self.num_queues) {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                need: usize::from(self.num_queues),
            });
        }
        self.threads.join_all();
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut served = Vec::with_capacity(queues.len());
        for (i, mut aq) in queues.into_iter().enumerate() {
            // The driver may use fewer queues than offered; those it did not
            // enable stay idle.
            if !aq.queue.ready() {
                continue;
            }
            if !aq.queue.is_valid(&mem) {
                return Err(ActivateError::Other(format!(
                    "virtio-blk queue {i}: rings outside guest memory or misaligned"
                )));
            }
            aq.queue.set_event_idx(event_idx);
            served.push(WorkerQueue {
                index: i as u16,
                queue: aq.queue,
                kick: Some(aq.kick),
            });
        }
        if served.is_empty() {
            return Err(ActivateError::Other(
                "virtio-blk: the driver enabled no queue".to_string(),
            ));
        }
        let depth: u32 = served.iter().map(|q| u32::from(q.queue.size())).sum();
        let engine = Engine::new(self.disk.clone(), self.engine_pref, depth);
        self.engine_used = Some(engine.kind());
        let stop = engine.stop_flag().clone();
        let limiter = RateLimiter::new(&self.limit).map_err(ActivateError::Worker)?;
        let write_through = self.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
        let disk = self.disk.clone();
        let metrics = self.metrics.clone();
        // A disk left for an earlier worker is already `self.disk`.
        crate::bus::lock(&self.swap).take();
        let swap = self.swap.clone();
        let name = format!("vireo-blk-{}", self.id.as_deref().unwrap_or("disk"));
        let path = self.disk.path().display().to_string();
        let thread = DeviceThread::spawn(&name, stop, move |control| {
            // Built here: its request buffers hold raw host pointers and
            // stay on this thread.
            let worker = Worker::new(mem, disk, served, interrupt, engine, metrics, write_through)
                .with_pause_gate(control.pause.clone())
                .with_disk_swap(swap)
                .with_rate_limiter(limiter);
            if let Err(e) = worker.run(&control.wake) {
                eprintln!("vireo: virtio-blk {path}: device thread stopped: {e}");
            }
        })
        .map_err(ActivateError::Worker)?;
        self.threads.start(thread);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let m = &self.metrics;
        let get = BlockMetrics::get;
        vec![
            ("read_count", get(&m.reads)),
            ("read_bytes", get(&m.read_bytes)),
            ("write_count", get(&m.writes)),
            ("write_bytes", get(&m.write_bytes)),
            ("flush_count", get(&m.flushes)),
            ("write_through_syncs", get(&m.write_through_syncs)),
            ("discard_count", get(&m.discards)),
            ("write_zeroes_count", get(&m.write_zeroes)),
            ("get_id_count", get(&m.get_ids)),
            ("invalid_reqs_count", get(&m.invalid_requests)),
            ("unsupported_count", get(&m.unsupported)),
            ("io_errors", get(&m.io_errors)),
            ("no_status_count", get(&m.no_status)),
            ("rate_limiter_throttled_events", get(&m.throttled)),
            ("interrupts", get(&m.interrupts)),
        ]
    }

    fn replace_backing(&mut self, path: &Path) -> Result<(), String> {
        self.replace_disk(path).map_err(|e| e.to_string())
    }

    fn pause(&mut self) {
        self.paused = true;
        // Bounded by MAX_BYTES_IN_FLIGHT of I/O; a worker that does not
        // park in time (a host disk that hangs) is reported, and the pause
        // goes on without it.
        if !self.threads.pause(PAUSE_TIMEOUT) {
            eprintln!(
                "vireo: virtio-blk {}: I/O still running after {:?} of pause",
                self.disk.path().display(),
                PAUSE_TIMEOUT
            );
        }
    }

    fn resume(&mut self) {
        self.paused = false;
        self.threads.resume();
    }

    fn reset_done(&mut self) -> bool {
        self.threads.done()
    }
}

impl Block {
    /// Serve `path` from now on instead of the current image (Firecracker's
    /// `PATCH /drives`): same read-only mode and serial. A running worker
    /// finishes its I/O in flight, parks, takes the new disk and goes on;
    /// in a paused VM it takes it on resume. The caller tells the driver
    /// the configuration (capacity) changed.
    pub fn replace_disk(&mut self, path: &Path) -> Result<(), Error> {
        let disk = Arc::new(Disk::open(path, self.disk.readonly(), self.id.as_deref())?);
        if let Some(t) = self.threads.running() {
            if !self.paused && !t.park(PAUSE_TIMEOUT) {
                t.unpark();
                return Err(Error::SwitchTimeout {
                    path: path.to_path_buf(),
                });
            }
            *crate::bus::lock(&self.swap) = Some(disk.clone());
            if !self.paused {
                t.unpark();
            }
        }
        self.config = build_config(&disk, self.num_queues);
        self.disk = disk;
        Ok(())
    }

    /// Tell the device thread to stop: it leaves the rings alone from now
    /// on, cancels the I/O not yet started and exits once the I/O already
    /// running is done (see `worker.rs`). Does not wait.
    fn stop_worker(&mut self) {
        self.threads.stop();
        self.engine_used = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_bindings::virtio_blk::{virtio_blk_config, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};
    use virtio_queue::QueueT;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::virtio::block::test_utils::*;

    #[test]
    fn config_space_matches_the_virtio_layout() {
        use std::mem::offset_of;
        assert_eq!(offset::CAPACITY, offset_of!(virtio_blk_config, capacity));
        assert_eq!(offset::SIZE_MAX, offset_of!(virtio_blk_config, size_max));
        assert_eq!(offset::SEG_MAX, offset_of!(virtio_blk_config, seg_max));
        assert_eq!(offset::BLK_SIZE, offset_of!(virtio_blk_config, blk_size));
        assert_eq!(
            offset::NUM_QUEUES,
            offset_of!(virtio_blk_config, num_queues)
        );
        assert_eq!(
            offset::MAX_DISCARD_SECTORS,
            offset_of!(virtio_blk_config, max_discard_sectors)
        );
        assert_eq!(
            offset::MAX_DISCARD_SEG,
            offset_of!(virtio_blk_config, max_discard_seg)
        );
        assert_eq!(
            offset::DISCARD_SECTOR_ALIGNMENT,
            offset_of!(virtio_blk_config, discard_sector_alignment)
        );
        assert_eq!(
            offset::MAX_WRITE_ZEROES_SECTORS,
            offset_of!(virtio_blk_config, max_write_zeroes_sectors)
        );
        assert_eq!(
            offset::MAX_WRITE_ZEROES_SEG,
            offset_of!(virtio_blk_config, max_write_zeroes_seg)
        );
        assert_eq!(
            offset::WRITE_ZEROES_MAY_UNMAP,
            offset_of!(virtio_blk_config, write_zeroes_may_unmap)
        );
        assert_eq!(
            CONFIG_LEN,
            offset_of!(virtio_blk_config, max_secure_erase_sectors)
        );

        let img = TempImage::patterned(3 << 20);
        let block = Block::new(&img.path, false, Some("x".into()), 2).unwrap();
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 3 << 11);
        let mut nq = [0u8; 2];
        block.read_config(offset::NUM_QUEUES as u64, &mut nq);
        assert_eq!(u16::from_le_bytes(nq), 2);
        // Past the end, and offsets that overflow, read as zero.
        let mut tail = [0xffu8; 8];
        block.read_config(CONFIG_LEN as u64 - 4, &mut tail);
        assert_eq!(tail[4..], [0; 4]);
        block.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 8]);
        assert_eq!(block.queue_max_sizes(), vec![QUEUE_SIZE; 2]);
        assert_eq!(block.device_type(), device_type::BLOCK);
        let f = block.avail_features();
        for bit in [
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
        ] {
            assert_ne!(f & (1 << bit), 0, "feature {bit}");
        }
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    }

    #[test]
    fn open_errors_name_the_path() {
        let missing = TempImage::empty();
        let e = Block::new(&missing.path, false, None, 1).err().unwrap();
        assert!(matches!(e, Error::Open { .. }));
        assert_path_in(&e, &missing.path);
        let dir = std::env::temp_dir();
        let e = Block::new(&dir, false, None, 1).err().unwrap();
        assert!(matches!(e, Error::IsDirectory { .. }), "{e}");
        assert_path_in(&e, &dir);
        let tiny = TempImage::patterned(100);
        let e = Block::new(&tiny.path, false, None, 1).err().unwrap();
        assert!(matches!(e, Error::TooSmall { .. }), "{e}");
        let img = TempImage::patterned(4096);
        let e = Block::new(&img.path, false, Some("x".repeat(21)), 1)
            .err()
            .unwrap();
        assert!(matches!(e, Error::IdTooLong { .. }), "{e}");
        let e = Block::new(&img.path, false, None, 0).err().unwrap();
        assert!(matches!(e, Error::QueueCount { .. }), "{e}");
    }

    #[test]
    fn an_image_is_not_opened_writable_twice() {
        let img = TempImage::patterned(1 << 20);
        let first = Block::new(&img.path, false, None, 1).unwrap();
        let e = Block::new(&img.path, false, None, 1).err().unwrap();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        assert_path_in(&e, &img.path);
        let e = Block::new(&img.path, true, None, 1).err().unwrap();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        drop(first);
        let ro1 = Block::new(&img.path, true, None, 1).unwrap();
        let _ro2 = Block::new(&img.path, true, None, 1).unwrap();
        assert!(Block::new(&img.path, false, None, 1).is_err());
        drop(ro1);
    }

    /// Activate with a real device thread, serve a kick, reset (joins the
    /// thread and, with the pool engine, its I/O threads), then negotiate
    /// and activate again: for every engine.
    #[test]
    fn activate_serve_reset_and_reactivate() {
        for engine in ALL_ENGINES {
            let img = TempImage::patterned(1 << 20);
            let mem = guest_memory();
            let mut block = Block::new(&img.path, false, Some("t".into()), 1).unwrap();
            block.set_engine(engine);
            for round in 0..2 {
                let mut d = Driver::new(&mem, QUEUE_SIZE);
                block.ack_features(block.avail_features());
                let irq = Arc::new(TestInterrupt::default());
                let kick = EventFd::new(EFD_NONBLOCK).unwrap();
                let guest_kick = kick.try_clone().unwrap();
                let aq = ActiveQueue {
                    queue: d.queue(),
                    kick,
                };
                block.activate(mem.clone(), vec![aq], irq.clone()).unwrap();
                assert!(block.is_active());
                if engine != EngineKind::IoUring {
                    assert_eq!(block.engine(), Some(engine));
                }
                let data = vec![round as u8 + 1; 4096];
                let w = d.write(8, &data);
                let f = d.bare(VIRTIO_BLK_T_FLUSH);
                guest_kick.write(1).unwrap();
                // With EVENT_IDX and a driver that never moves used_event,
                // only the first batch is signalled: poll the used ring.
                assert!(irq.wait_for(1), "{engine:?} round {round}");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while d.used_idx() < 2 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                assert_eq!(d.status(&w), VIRTIO_BLK_S_OK as u8);
                assert_eq!(d.status(&f), VIRTIO_BLK_S_OK as u8);
                assert_eq!(img.read_at(8 * 512, 4096), data);
                block.reset();
                assert!(!block.is_active());
                assert_eq!(block.acked_features(), 0);
                // Zero the rings for the next round's fresh driver.
                vm_memory::Bytes::write_slice(&mem, &[0u8; 0x3000], vm_memory::GuestAddress(0))
                    .unwrap();
            }
        }
    }

    /// A block device on `path` with `engine`, activated with one queue of
    /// `d`; returns it and the eventfd the guest kicks.
    fn activated(
        path: &std::path::Path,
        engine: EngineKind,
        mem: &GuestMemory,
        d: &Driver,
    ) -> (Block, EventFd) {
        let mut block = Block::new(path, false, None, 1).unwrap();
        block.set_engine(engine);
        block.ack_features(block.avail_features());
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let guest_kick = kick.try_clone().unwrap();
        let aq = ActiveQueue {
            queue: d.queue(),
            kick,
        };
        block
            .activate(mem.clone(), vec![aq], Arc::new(TestInterrupt::default()))
            .unwrap();
        (block, guest_kick)
    }

    /// Wait (up to 10 s) until `d`'s used ring has `n` entries.
    fn served(d: &Driver, n: u16) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while d.used_idx() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        d.used_idx() >= n
    }

    /// A paused device serves nothing, even when kicked, and writes
    /// nothing to guest memory; on resume it serves what was queued
    /// during the pause.
    #[test]
    fn pause_holds_the_device_still_and_resume_serves_what_queued() {
        use std::time::{Duration, Instant};
        for engine in ALL_ENGINES {
            let img = TempImage::patterned(1 << 20);
            let mem = guest_memory();
            let mut d = Driver::new(&mem, QUEUE_SIZE);
            let (mut block, guest_kick) = activated(&img.path, engine, &mem, &d);
            let wait_used = served;
            let first = d.write(0, &[1u8; 4096]);
            guest_kick.write(1).unwrap();
            assert!(wait_used(&d, 1), "{engine:?}");
            assert_eq!(d.status(&first), VIRTIO_BLK_S_OK as u8);

            block.pause();
            let before: Vec<u8> = {
                let mut m = vec![0u8; 0x3000];
                vm_memory::Bytes::read_slice(&mem, &mut m, vm_memory::GuestAddress(0)).unwrap();
                m
            };
            let during = d.write(16, &[2u8; 4096]);
            let after_queue: Vec<u8> = {
                let mut m = vec![0u8; 0x3000];
                vm_memory::Bytes::read_slice(&mem, &mut m, vm_memory::GuestAddress(0)).unwrap();
                m
            };
            assert_ne!(before, after_queue, "the driver queued a request");
            guest_kick.write(1).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(d.used_idx(), 1, "{engine:?}: served while paused");
            let mut now = vec![0u8; 0x3000];
            vm_memory::Bytes::read_slice(&mem, &mut now, vm_memory::GuestAddress(0)).unwrap();
            assert_eq!(
                now, after_queue,
                "{engine:?}: wrote guest memory while paused"
            );
            let untouched: Vec<u8> = (16..24)
                .flat_map(|sector| [pattern_byte(sector); 512])
                .collect();
            assert_eq!(
                img.read_at(16 * 512, 4096),
                untouched,
                "{engine:?}: written while paused"
            );

            block.resume();
            assert!(wait_used(&d, 2), "{engine:?}: not served after resume");
            assert_eq!(d.status(&during), VIRTIO_BLK_S_OK as u8);
            assert_eq!(img.read_at(16 * 512, 4096), vec![2u8; 4096]);
            // A paused device can still be reset and dropped.
            block.pause();
            block.reset();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !block.reset_done() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(block.reset_done());
        }
    }

    /// `replace_disk` on an active device: requests after it are served
    /// from the new image (on every engine), the capacity in the config
    /// space follows, and the old image is left alone; in a paused VM the
    /// switch waits for the resume.
    #[test]
    fn a_running_disk_switches_to_a_new_image() {
        use std::time::Duration;
        for engine in ALL_ENGINES {
            let old = TempImage::patterned(1 << 20);
            let new = TempImage::empty();
            std::fs::write(&new.path, vec![0x77u8; 2 << 20]).unwrap();
            let mem = guest_memory();
            let mut d = Driver::new(&mem, QUEUE_SIZE);
            let (mut block, guest_kick) = activated(&old.path, engine, &mem, &d);
            let first = d.read(0, 512);
            guest_kick.write(1).unwrap();
            assert!(served(&d, 1), "{engine:?}");
            assert_eq!(d.bytes(first.data, 512), vec![pattern_byte(0); 512]);

            block.replace_disk(&new.path).unwrap();
            let mut cap = [0u8; 8];
            block.read_config(offset::CAPACITY as u64, &mut cap);
            assert_eq!(u64::from_le_bytes(cap), (2 << 20) / 512, "{engine:?}");
            let second = d.read(0, 512);
            let w = d.write(8, &[0x11; 512]);
            guest_kick.write(1).unwrap();
            assert!(served(&d, 3), "{engine:?}");
            assert_eq!(d.bytes(second.data, 512), vec![0x77; 512], "{engine:?}");
            assert_eq!(d.status(&w), VIRTIO_BLK_S_OK as u8);
            assert_eq!(new.read_at(8 * 512, 512), vec![0x11; 512]);
            assert_eq!(old.read_at(8 * 512, 512), vec![pattern_byte(8); 512]);

            // Paused: switched on resume, not before.
            block.pause();
            block.replace_disk(&old.path).unwrap();
            let third = d.read(0, 512);
            guest_kick.write(1).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(d.used_idx(), 3, "{engine:?}: served while paused");
            block.resume();
            assert!(served(&d, 4), "{engine:?}");
            assert_eq!(d.bytes(third.data, 512), vec![pattern_byte(0); 512]);
            // A missing image is refused and changes nothing.
            assert!(block
                .replace_disk(std::path::Path::new("/nonexistent.img"))
                .is_err());
        }
    }

    /// io_uring when the host has it, else the thread pool.
    #[test]
    fn io_uring_engine_is_used_when_the_host_has_it() {
        let img = TempImage::patterned(1 << 20);
        let mem = guest_memory();
        let d = Driver::new(&mem, QUEUE_SIZE);
        let mut block = Block::new(&img.path, false, None, 1).unwrap();
        let aq = ActiveQueue {
            queue: d.queue(),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        block
            .activate(mem.clone(), vec![aq], Arc::new(TestInterrupt::default()))
            .unwrap();
        let probe = io_uring::IoUring::new(8).is_ok();
        let want = if probe {
            EngineKind::IoUring
        } else {
            EngineKind::Pool
        };
        println!("engine in use: {:?}", block.engine());
        assert_eq!(block.engine(), Some(want));
    }

    #[test]
    fn activate_checks_queue_count_and_skips_queues_not_enabled() {
        let img = TempImage::patterned(1 << 20);
        let mem = guest_memory();
        let d = Driver::new(&mem, QUEUE_SIZE);
        let mut block = Block::new(&img.path, false, None, 2).unwrap();
        let irq = Arc::new(TestInterrupt::default());
        let e = block
            .activate(mem.clone(), vec![], irq.clone())
            .err()
            .unwrap();
        assert!(matches!(e, ActivateError::QueueCount { .. }));
        let mut idle = d.queue();
        idle.set_ready(false);
        let queues = vec![
            ActiveQueue {
                queue: d.queue(),
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            },
            ActiveQueue {
                queue: idle,
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            },
        ];
        block.activate(mem.clone(), queues, irq).unwrap();
        block.reset();
    }

    #[test]
    fn save_and_restore() {
        let img = TempImage::patterned(1 << 20);
        let mut block = Block::new(&img.path, true, Some("snap".into()), 2).unwrap();
        block.ack_features(block.avail_features());
        let state = block.save();
        assert_eq!(state.capacity_sectors, 2048);
        assert!(!state.activated);
        drop(block);
        let restored = Block::restore(&state).unwrap();
        assert_eq!(restored.save(), state);
        drop(restored);
        img.write_at(1 << 20, &[0; 512]);
        let e = Block::restore(&state).err().unwrap();
        assert!(matches!(e, Error::CapacityMismatch { .. }), "{e}");
    }
}
