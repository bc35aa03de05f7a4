//! Fuzzing harness: arbitrary bytes become the device's configuration
//! (engine, write-through, read-only, EVENT_IDX, 1 to 4 queues) and guest
//! memory (descriptor tables, avail rings, headers, data), one round of the
//! device worker serves whatever that describes, and an oracle checks the
//! result.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/virtio_blk.rs`) and
//! the deterministic fuzz-lite unit test.
//!
//! # What is asserted
//!
//! On every input: no panic, no hang (`Worker::run_once` returns after the
//! engine, synchronous or not, has completed every chain), the image keeps
//! its length, a read-only image never changes, and a read-write image does
//! not change unless a write, discard or write-zeroes was served.
//!
//! Before the run the oracle (`fuzzing/oracle.rs`) walks, with its own code,
//! every chain each queue will pop and works out what the device must do
//! with it. When no byte a chain may write is a byte the device reads (the
//! rings, indirect tables, readable buffers) the input is *clean*: the
//! device's view cannot depend on the order it serves chains in, so these
//! exact checks apply too:
//! - guest memory changed only inside the device-writable descriptors of the
//!   popped chains and inside the used rings;
//! - each queue's used index advanced by the number of popped chains with a
//!   head below the queue size, and its used entries are exactly those heads
//!   (in any order: async engines complete out of order), each with the
//!   length `Worker::complete` reports: 0 when the chain has no usable status
//!   byte, else 1 plus the data bytes written to the guest (a served read's
//!   data length; for GET_ID, at most 20);
//! - a status byte only one chain may write holds its code (OK, IOERR or
//!   UNSUPP);
//! - image bytes no served write, discard or write-zeroes names keep their
//!   value; bytes exactly one names hold the write's data (from guest
//!   memory), zeros (write-zeroes) or zeros or the old value (discard);
//! - a served read whose sectors no modifying request names, and whose
//!   buffers no other chain may write, returned the image's bytes; GET_ID
//!   returned the disk id.
//!
//! # Input layout
//!
//! Dense, so a fuzzer reaches the rings with short inputs. Byte 0: bits 0-1
//! pick the engine (Sync, Pool, IoUring, Sync), bit 2 write-through mode,
//! bit 3 the read-only disk, bit 4 EVENT_IDX, bit 5 folds descriptor
//! addresses into guest memory's neighbourhood (addr % FOLD) so that short
//! inputs reach the deeper checks, bits 6-7 the number of queues minus 1.
//! Then three bytes per queue: the size (1 << (b % 9)) and the starting
//! next_avail (LE). Then per queue 16 * size bytes of descriptor table and
//! 6 + 2 * size bytes of avail ring; the rest is the data area, from
//! `DATA_AREA` to the end of region 1 and then region 2.
//!
//! Guest memory is three 64 KiB regions: region 1 starts exactly where
//! region 0 ends (a buffer may cross from one into the other, which the
//! device maps as two host iovecs), region 2 comes after a 64 KiB hole.
//! Queue q's descriptor table is at `desc_table(q)`, its avail ring at
//! `avail_ring(q)`, its used ring at `used_ring(q)`, all in region 0.
//!
//! The images live in /dev/shm when it exists, so write-through fdatasync
//! costs nothing.

mod oracle;

use std::path::PathBuf;
use std::sync::Arc;

use super::disk::Disk;
use super::engine::{Engine, EngineKind};
use super::metrics::BlockMetrics;
use super::worker::{Worker, WorkerQueue};
use crate::virtio::GuestMemory;
use oracle::Plan;

pub use crate::virtio::fuzz_rings::{
    self, avail_ring, desc_table, flat_index, used_ring, QueueSpec, DATA_AREA, FOLD, MEM_LEN,
    REGIONS,
};

pub use oracle::Checked;

/// Most queues an input sets up.
pub const MAX_QUEUES: usize = 4;
/// Size of the disk image the harness serves.
pub const IMAGE_LEN: u64 = 64 * 1024;

/// The first input byte for the given configuration.
pub fn config_byte(
    engine: EngineKind,
    write_through: bool,
    readonly: bool,
    event_idx: bool,
    fold: bool,
    queues: usize,
) -> u8 {
    let e = match engine {
        EngineKind::Sync => 0,
        EngineKind::Pool => 1,
        EngineKind::IoUring => 2,
    };
    e | u8::from(write_through) << 2
        | u8::from(readonly) << 3
        | u8::from(event_idx) << 4
        | u8::from(fold) << 5
        | ((queues.clamp(1, MAX_QUEUES) - 1) as u8) << 6
}

/// What one input did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// The engine that served it (None when the input was too short).
    pub engine: Option<EngineKind>,
    pub write_through: bool,
    pub queues: usize,
    /// Chains put on the used rings.
    pub used: u32,
    /// Reads, flushes and GET_IDs served.
    pub served: u64,
    /// Writes, discards and write-zeroes served (the image may change).
    pub modifying: u64,
    /// The input was clean and the exact checks ran.
    pub clean: bool,
    /// What the exact checks covered.
    pub checked: Checked,
}

/// Temporary images and guest memory reused across inputs.
pub struct Harness {
    mem: GuestMemory,
    ro: Arc<Disk>,
    rw: Arc<Disk>,
    ro_path: PathBuf,
    rw_path: PathBuf,
    original: Vec<u8>,
}

impl Harness {
    /// Create two images (read-only and read-write).
    pub fn new() -> Harness {
        let mem = fuzz_rings::memory();
        let original: Vec<u8> = (0..IMAGE_LEN).map(|i| (i / 512) as u8 ^ 0xa5).collect();
        let tag = format!(
            "{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let ro_path = dir.join(format!("vireo-blk-fuzz-ro-{tag}"));
        let rw_path = dir.join(format!("vireo-blk-fuzz-rw-{tag}"));
        std::fs::write(&ro_path, &original).expect("write image");
        std::fs::write(&rw_path, &original).expect("write image");
        let ro = Arc::new(Disk::open(&ro_path, true, Some("fuzz-ro")).expect("open image"));
        let rw = Arc::new(Disk::open(&rw_path, false, None).expect("open image"));
        Harness {
            mem,
            ro,
            rw,
            ro_path,
            rw_path,
            original,
        }
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    fn snapshot(&self) -> Vec<u8> {
        fuzz_rings::snapshot(&self.mem)
    }

    /// Serve one input and check it (see the module comment); panics on a
    /// violated invariant. The read-write image is put back afterwards.
    pub fn run(&self, input: &[u8]) -> RunStats {
        let Some((&config, rest)) = input.split_first() else {
            return RunStats::default();
        };
        let queues = usize::from(config >> 6) + 1;
        let engine_kind = match config & 3 {
            1 => EngineKind::Pool,
            2 => EngineKind::IoUring,
            _ => EngineKind::Sync,
        };
        let write_through = config & 4 != 0;
        let readonly = config & 8 != 0;
        let event_idx = config & 16 != 0;
        let fold = config & 32 != 0;
        let Some(specs) = fuzz_rings::load(&self.mem, rest, queues, fold) else {
            return RunStats::default();
        };

        let disk = if readonly { &self.ro } else { &self.rw };
        let plan = Plan::new(&self.mem, &specs, disk.capacity_sectors(), readonly);
        let before = self.snapshot();

        let worker_queues = specs
            .iter()
            .enumerate()
            .map(|(i, q)| WorkerQueue {
                index: i as u16,
                queue: q.queue(event_idx),
                kick: None,
            })
            .collect();
        let depth: u32 = specs.iter().map(|q| u32::from(q.size)).sum();
        let engine = Engine::new(disk.clone(), engine_kind, depth);
        let engine_used = engine.kind();
        let metrics = Arc::new(BlockMetrics::default());
        let mut worker = Worker::new(
            self.mem.clone(),
            disk.clone(),
            worker_queues,
            Arc::new(fuzz_rings::NoInterrupt),
            engine,
            metrics.clone(),
            write_through,
        );
        // Serves every queue until nothing is left, waiting for the engine.
        worker.run_once();
        drop(worker);

        let path = if readonly {
            &self.ro_path
        } else {
            &self.rw_path
        };
        let image = std::fs::read(path).expect("read image");
        assert_eq!(image.len() as u64, IMAGE_LEN, "image length changed");
        if readonly {
            assert!(image == self.original, "read-only image modified");
        }
        let get = |c| BlockMetrics::get(c);
        let m = &metrics;
        let mut stats = RunStats {
            engine: Some(engine_used),
            write_through,
            queues,
            used: specs.iter().map(|q| u32::from(q.used(&self.mem))).sum(),
            served: get(&m.reads) + get(&m.flushes) + get(&m.get_ids),
            modifying: get(&m.writes) + get(&m.discards) + get(&m.write_zeroes),
            clean: plan.clean,
            checked: Checked::default(),
        };
        if stats.modifying == 0 {
            assert!(
                image == self.original,
                "image modified without a write request"
            );
        }
        if plan.clean {
            let after = self.snapshot();
            stats.checked = plan.check(
                &self.mem,
                &before,
                &after,
                &image,
                &self.original,
                disk.id(),
            );
        }
        if image != self.original {
            self.restore_rw();
        }
        stats
    }

    /// Whether the read-only image still holds its original bytes.
    pub fn ro_unchanged(&self) -> bool {
        std::fs::read(&self.ro_path).is_ok_and(|b| b == self.original)
    }

    /// Whether the read-write image still holds its original bytes.
    pub fn rw_unchanged(&self) -> bool {
        std::fs::read(&self.rw_path).is_ok_and(|b| b == self.original)
    }

    /// Put the read-write image back to its original bytes (`run` does this
    /// itself after a run that changed it).
    pub fn restore_rw(&self) {
        let _ = std::fs::write(&self.rw_path, &self.original);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ro_path);
        let _ = std::fs::remove_file(&self.rw_path);
    }
}
