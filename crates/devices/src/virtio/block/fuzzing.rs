//! Fuzzing harness: arbitrary bytes become guest memory (descriptor table,
//! avail ring, headers, data) and queue parameters, and one round of the
//! device worker (synchronous engine) serves whatever that describes.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/virtio_blk.rs`) and
//! the deterministic fuzz-lite unit test. The invariants checked on every
//! input: no panic, no hang (the worker returns), and a read-only image is
//! never modified.
//!
//! Input layout (dense, so a fuzzer reaches the rings with short inputs):
//! byte 0 picks the queue size (1 << (b % 9)); byte 1: bit 0 turns
//! EVENT_IDX on, bit 1 picks the read-only disk, bit 2 folds descriptor
//! addresses into the neighbourhood of guest memory (addr % FOLD) so that
//! short inputs reach the deeper checks; bytes 2..4 are the queue's starting
//! next_avail. Then 16 * size bytes of descriptor table, 6 + 2 * size bytes
//! of avail ring, and the rest goes to the data area. Guest memory is two
//! 64 KiB regions with a 64 KiB hole between them; the descriptor table sits
//! at 0, the avail ring at 0x1000, the used ring at 0x2000, the data area at
//! 0x3000.

use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::disk::Disk;
use super::engine::{Engine, EngineKind};
use super::metrics::BlockMetrics;
use super::worker::{Worker, WorkerQueue};
use crate::virtio::{GuestMemory, Interrupt};

/// Guest memory regions: (start, size).
pub const REGIONS: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
pub const DESC_TABLE: u64 = 0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
pub const DATA_AREA: u64 = 0x3000;
/// Folded descriptor addresses fall in [0, FOLD): both regions, the hole
/// and a little past the end.
pub const FOLD: u64 = 0x3_1000;
/// Size of the disk image the harness serves.
pub const IMAGE_LEN: u64 = 64 * 1024;

struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn signal_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What one input did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// Chains put on the used ring.
    pub used: u16,
    /// Reads, flushes and GET_IDs served.
    pub served: u64,
    /// Writes, discards and write-zeroes served (the image may change).
    pub modifying: u64,
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
    /// Create two images (read-only and read-write) in the temp directory.
    pub fn new() -> Harness {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(REGIONS[0].0), REGIONS[0].1),
            (GuestAddress(REGIONS[1].0), REGIONS[1].1),
        ])
        .expect("guest memory");
        let original: Vec<u8> = (0..IMAGE_LEN).map(|i| (i / 512) as u8 ^ 0xa5).collect();
        let tag = format!(
            "{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let dir = std::env::temp_dir();
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

    /// Serve one input. Panics if the read-only image changed, or if the
    /// read-write one changed without a write, discard or write-zeroes
    /// request having been served.
    pub fn run(&self, input: &[u8]) -> RunStats {
        let (size_sel, flags, next_avail) = match input {
            [a, b, c, d, ..] => (*a, *b, u16::from_le_bytes([*c, *d])),
            _ => return RunStats::default(),
        };
        let size = 1u16 << (size_sel % 9);
        // Fresh memory: zero, then the input's sections.
        for (start, len) in REGIONS {
            let _ = self.mem.write_slice(&vec![0u8; len], GuestAddress(start));
        }
        let mut rest = &input[4..];
        let mut section = |addr: u64, len: usize| {
            let n = rest.len().min(len);
            let _ = self.mem.write_slice(&rest[..n], GuestAddress(addr));
            rest = &rest[n..];
        };
        section(DESC_TABLE, 16 * usize::from(size));
        section(AVAIL_RING, 6 + 2 * usize::from(size));
        section(DATA_AREA, REGIONS[0].1 - DATA_AREA as usize);
        if flags & 4 != 0 {
            for i in 0..u64::from(size) {
                let at = GuestAddress(DESC_TABLE + 16 * i);
                let addr: u64 = self.mem.read_obj(at).unwrap_or(0);
                let _ = self.mem.write_obj(addr % FOLD, at);
            }
        }
        // The used index starts where the queue's next_used does.
        let _ = self.mem.write_obj(next_avail, GuestAddress(USED_RING + 2));

        let mut queue = Queue::new(256).expect("queue");
        queue.set_size(size);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_next_avail(next_avail);
        queue.set_next_used(next_avail);
        queue.set_event_idx(flags & 1 != 0);
        queue.set_ready(true);
        let readonly = flags & 2 != 0;
        let disk = if readonly { &self.ro } else { &self.rw };
        let metrics = Arc::new(BlockMetrics::default());
        let mut worker = Worker::new(
            self.mem.clone(),
            disk.clone(),
            vec![WorkerQueue {
                index: 0,
                queue,
                kick: None,
            }],
            Arc::new(NoInterrupt),
            Engine::new(disk.clone(), EngineKind::Sync, u32::from(size)),
            metrics.clone(),
            false,
        );
        worker.run_once();
        drop(worker);
        if readonly {
            assert!(self.ro_unchanged(), "read-only image modified");
        }
        let used: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap_or(0);
        let m = &metrics;
        let get = |c| BlockMetrics::get(c);
        let stats = RunStats {
            used: used.wrapping_sub(next_avail),
            served: get(&m.reads) + get(&m.flushes) + get(&m.get_ids),
            modifying: get(&m.writes) + get(&m.discards) + get(&m.write_zeroes),
        };
        if !readonly && stats.modifying == 0 {
            assert!(
                self.rw_unchanged(),
                "image modified without a write request"
            );
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

    /// Put the read-write image back to its original bytes.
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
