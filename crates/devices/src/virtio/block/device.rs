//! `Block`: the virtio-blk device model the transport drives. It owns the
//! disk, the feature bits and the config space; `activate` starts the device
//! thread (`worker.rs`) and `reset` stops and joins it.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::disk::Disk;
use super::engine::{Engine, EngineKind};
use super::metrics::BlockMetrics;
use super::persist::BlockState;
use super::request::{MAX_DESCRIPTORS, MAX_ZERO_SECTORS};
use super::worker::{Worker, WorkerQueue};
use super::{Error, SECTOR_SIZE};
use crate::virtio::{
    device_type, ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

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

struct Running {
    stop: EventFd,
    thread: JoinHandle<()>,
}

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
    running: Option<Running>,
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
            running: None,
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
            activated: self.running.is_some(),
        }
    }

    /// Choose the I/O engine for the next activation (default: io_uring
    /// with a synchronous fallback).
    pub fn set_engine(&mut self, kind: EngineKind) {
        self.engine_pref = kind;
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
        self.running.is_some()
    }
}

fn build_config(disk: &Disk, num_queues: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset::CAPACITY, &disk.capacity_sectors().to_le_bytes());
    put(offset::SEG_MAX, &(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
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
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
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
        self.stop_worker();
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
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let worker_stop = stop.try_clone().map_err(ActivateError::Worker)?;
        let write_through = self.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
        let disk = self.disk.clone();
        let metrics = self.metrics.clone();
        let name = format!("vireo-blk-{}", self.id.as_deref().unwrap_or("disk"));
        let path = self.disk.path().display().to_string();
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                // Built here: its request buffers hold raw host pointers and
                // stay on this thread.
                let worker =
                    Worker::new(mem, disk, served, interrupt, engine, metrics, write_through);
                if let Err(e) = worker.run(&worker_stop) {
                    eprintln!("vireo: virtio-blk {path}: device thread stopped: {e}");
                }
            })
            .map_err(ActivateError::Worker)?;
        self.running = Some(Running { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }
}

impl Block {
    /// Stop the device thread (it finishes the I/O in flight, without
    /// touching the rings) and wait for it.
    fn stop_worker(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.write(1);
            let _ = running.thread.join();
        }
        self.engine_used = None;
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
