//! Fuzzing harness: arbitrary bytes become guest memory (descriptor table,
//! avail ring, headers, data) and queue parameters, and one round of the
//! device worker (synchronous engine) serves whatever that describes.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/virtio_blk.rs`) and
//! the deterministic fuzz-lite unit test. The invariants checked on every
//! input: no panic, no hang (the worker returns), and a read-only image is
//! never modified.
//!
//! Input layout: byte 0 picks the queue size (1 << (b % 9)), byte 1 bit 0
//! turns EVENT_IDX on and bit 1 picks the read-only disk, bytes 2..4 are the
//! queue's starting next_avail; the rest is copied into guest memory from
//! address 0. Guest memory is two 64 KiB regions with a 64 KiB hole between
//! them; the descriptor table sits at 0, the avail ring at 0x1000, the used
//! ring at 0x2000.

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

    /// Serve one input; returns how many chains reached the used ring and
    /// how many valid requests reached the disk. Panics if the read-only
    /// image changed.
    pub fn run(&self, input: &[u8]) -> (u16, u64) {
        let (size_sel, flags, next_avail) = match input {
            [a, b, c, d, ..] => (*a, *b, u16::from_le_bytes([*c, *d])),
            _ => return (0, 0),
        };
        let body = &input[4..];
        // Fresh memory: zero, then the input from address 0.
        for (start, len) in REGIONS {
            let _ = self.mem.write_slice(&vec![0u8; len], GuestAddress(start));
        }
        let n = body.len().min(REGIONS[0].1);
        let _ = self.mem.write_slice(&body[..n], GuestAddress(0));
        // The used index starts where the queue's next_used does.
        let _ = self.mem.write_obj(next_avail, GuestAddress(USED_RING + 2));

        let size = 1u16 << (size_sel % 9);
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
        let served = [
            &m.reads,
            &m.writes,
            &m.flushes,
            &m.get_ids,
            &m.discards,
            &m.write_zeroes,
        ]
        .iter()
        .map(|c| BlockMetrics::get(c))
        .sum();
        (used.wrapping_sub(next_avail), served)
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
