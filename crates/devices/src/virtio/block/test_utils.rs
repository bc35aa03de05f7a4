//! Test helpers: temporary disk images, guest memory, a mock driver that
//! builds descriptor chains in guest memory (on virtio-queue's
//! `MockSplitQueue`), and an `Interrupt` that counts signals.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::disk::Disk;
use super::engine::{Engine, EngineKind};
use super::metrics::BlockMetrics;
use super::worker::{Worker, WorkerQueue};
use crate::virtio::{GuestMemory, Interrupt};

/// Where test data buffers start (the queue's rings live below).
pub const DATA_START: u64 = 0x10_0000;
/// Guest memory: two adjacent 2 MiB regions (a buffer may straddle them).
pub const REGION: u64 = 0x20_0000;

/// Every engine, for tests that must hold whichever one serves the device
/// (IoUring falls back to Pool on a host without io_uring).
pub const ALL_ENGINES: [EngineKind; 3] = [EngineKind::IoUring, EngineKind::Pool, EngineKind::Sync];

pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// A temporary file removed on drop.
pub struct TempImage {
    pub path: PathBuf,
}

impl TempImage {
    /// An image of `len` bytes whose every 512-byte sector `s` is filled with
    /// the byte `s as u8 ^ 0x5a` (so reads can be checked).
    pub fn patterned(len: u64) -> Self {
        let img = Self::empty();
        let mut f = File::create(&img.path).unwrap();
        let mut buf = Vec::with_capacity(len as usize);
        for s in 0..len.div_ceil(512) {
            buf.extend(std::iter::repeat_n(pattern_byte(s), 512));
        }
        buf.truncate(len as usize);
        f.write_all(&buf).unwrap();
        f.sync_all().unwrap();
        img
    }

    /// A path that does not exist yet.
    pub fn empty() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "vireo-blk-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&path);
        TempImage { path }
    }

    pub fn contents(&self) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(&self.path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    pub fn read_at(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(&self.path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut v = vec![0; len];
        f.read_exact(&mut v).unwrap();
        v
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(&self.path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }

    /// Allocated 512-byte blocks (st_blocks).
    pub fn blocks(&self) -> u64 {
        fs::metadata(&self.path).unwrap().blocks()
    }

    pub fn disk(&self, readonly: bool) -> Arc<Disk> {
        Arc::new(Disk::open(&self.path, readonly, Some("test-disk")).unwrap())
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub fn pattern_byte(sector: u64) -> u8 {
    (sector as u8) ^ 0x5a
}

/// Counts signals per queue; `wait` blocks until a count is reached.
#[derive(Default)]
pub struct TestInterrupt {
    pub count: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl TestInterrupt {
    pub fn signals(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn wait_for(&self, n: usize) -> bool {
        let mut guard = self.lock.lock().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.signals() < n {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self.cond.wait_timeout(guard, deadline - now).unwrap().0;
        }
        true
    }
}

impl Interrupt for TestInterrupt {
    fn signal_queue(&self, _queue_index: u16) -> std::io::Result<()> {
        let _g = self.lock.lock().unwrap();
        self.count.fetch_add(1, Ordering::SeqCst);
        self.cond.notify_all();
        Ok(())
    }
    fn signal_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A request's guest buffers, to check after completion.
#[derive(Clone, Copy, Debug)]
pub struct Req {
    pub head: u16,
    pub data: GuestAddress,
    pub status: GuestAddress,
}

/// The driver side of one queue.
pub struct Driver<'a> {
    pub mem: &'a GuestMemory,
    pub mock: MockSplitQueue<'a, GuestMemory>,
    size: u16,
    next_desc: u16,
    next_data: u64,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemory, size: u16) -> Self {
        Self::at(mem, 0, size, DATA_START)
    }

    /// A queue whose rings start at `base`, with data buffers from
    /// `data_start` on.
    pub fn at(mem: &'a GuestMemory, base: u64, size: u16, data_start: u64) -> Self {
        Driver {
            mem,
            mock: MockSplitQueue::create(mem, GuestAddress(base), size),
            size,
            next_desc: 0,
            next_data: data_start,
        }
    }

    pub fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().unwrap()
    }

    /// A worker on this queue with the synchronous engine.
    pub fn worker(&self, disk: Arc<Disk>, interrupt: Arc<TestInterrupt>) -> Worker {
        self.worker_with(
            disk,
            interrupt,
            Arc::new(BlockMetrics::default()),
            EngineKind::Sync,
        )
    }

    /// A worker on this queue with `engine`.
    pub fn worker_on(
        &self,
        disk: Arc<Disk>,
        interrupt: Arc<TestInterrupt>,
        engine: EngineKind,
    ) -> Worker {
        self.worker_with(disk, interrupt, Arc::new(BlockMetrics::default()), engine)
    }

    pub fn worker_with(
        &self,
        disk: Arc<Disk>,
        interrupt: Arc<TestInterrupt>,
        metrics: Arc<BlockMetrics>,
        engine: EngineKind,
    ) -> Worker {
        self.worker_mode(disk, interrupt, metrics, engine, false)
    }

    /// A worker on this queue with `engine`, write-through (FLUSH not
    /// negotiated) or not.
    pub fn worker_mode(
        &self,
        disk: Arc<Disk>,
        interrupt: Arc<TestInterrupt>,
        metrics: Arc<BlockMetrics>,
        engine: EngineKind,
        write_through: bool,
    ) -> Worker {
        let engine = Engine::new(disk.clone(), engine, u32::from(self.size));
        Worker::new(
            self.mem.clone(),
            disk,
            vec![WorkerQueue {
                index: 0,
                queue: self.queue(),
                kick: None,
            }],
            interrupt,
            engine,
            metrics,
            write_through,
        )
    }

    /// Reserve `len` bytes of guest memory for buffers.
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let a = GuestAddress(self.next_data);
        self.next_data = (self.next_data + len + 15) & !15;
        a
    }

    /// Put the next buffers at `addr` (e.g. to straddle a region boundary).
    pub fn set_alloc(&mut self, addr: u64) {
        self.next_data = addr;
    }

    /// The table index the next `put_raw` descriptor gets.
    pub fn next_index(&self) -> u16 {
        self.next_desc
    }

    /// Write descriptors as given (flags and next untouched) at the next
    /// free table slots; returns their indexes.
    pub fn put_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> Vec<u16> {
        let mut idx = Vec::new();
        for &(addr, len, flags, next) in descs {
            let i = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let d = SplitDescriptor::new(addr, len, flags, next);
            self.mock
                .desc_table()
                .store(i, RawDescriptor::from(d))
                .unwrap();
            idx.push(i);
        }
        idx
    }

    /// Chain `(addr, len, device_writable)` descriptors in order and make
    /// the chain available; returns the head index.
    pub fn add_chain(&mut self, descs: &[(GuestAddress, u32, bool)]) -> u16 {
        let first = self.next_desc;
        let n = descs.len() as u16;
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(k, &(a, len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                let next = (first + k as u16 + 1) % self.size;
                if (k as u16) + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                (a.0, len, flags, next)
            })
            .collect();
        let idx = self.put_raw(&raw);
        self.make_available(idx[0]);
        idx[0]
    }

    pub fn make_available(&mut self, head: u16) {
        let avail = self.mock.avail();
        let i = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(i % self.size))
            .unwrap()
            .store(head);
        avail.idx().store(i.wrapping_add(1));
    }

    /// Header descriptor contents for `type` at `sector`.
    pub fn header(&mut self, req_type: u32, sector: u64) -> GuestAddress {
        let h = self.alloc(16);
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&req_type.to_le_bytes());
        bytes[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&bytes, h).unwrap();
        h
    }

    /// A status byte pre-set to 0xff (so "never written" is visible).
    pub fn status_byte(&mut self) -> GuestAddress {
        let s = self.alloc(1);
        self.mem.write_obj(0xffu8, s).unwrap();
        s
    }

    pub fn read(&mut self, sector: u64, len: u32) -> Req {
        let h = self.header(0, sector);
        let data = self.alloc(u64::from(len));
        let status = self.status_byte();
        let head = self.add_chain(&[(h, 16, false), (data, len, true), (status, 1, true)]);
        Req { head, data, status }
    }

    pub fn write(&mut self, sector: u64, bytes: &[u8]) -> Req {
        let h = self.header(1, sector);
        let data = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, data).unwrap();
        let status = self.status_byte();
        let head = self.add_chain(&[
            (h, 16, false),
            (data, bytes.len() as u32, false),
            (status, 1, true),
        ]);
        Req { head, data, status }
    }

    /// A request with only a header and a status (FLUSH, or any type).
    pub fn bare(&mut self, req_type: u32) -> Req {
        let h = self.header(req_type, 0);
        let status = self.status_byte();
        let head = self.add_chain(&[(h, 16, false), (status, 1, true)]);
        Req {
            head,
            data: status,
            status,
        }
    }

    pub fn get_id(&mut self, len: u32) -> Req {
        let h = self.header(8, 0);
        let data = self.alloc(u64::from(len));
        self.mem
            .write_slice(&vec![0xee; len as usize], data)
            .unwrap();
        let status = self.status_byte();
        let head = self.add_chain(&[(h, 16, false), (data, len, true), (status, 1, true)]);
        Req { head, data, status }
    }

    /// DISCARD (type 11) or WRITE_ZEROES (type 13) of one range.
    pub fn zero_range(&mut self, req_type: u32, sector: u64, sectors: u32, flags: u32) -> Req {
        let h = self.header(req_type, 0);
        let data = self.alloc(16);
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&sectors.to_le_bytes());
        seg[12..16].copy_from_slice(&flags.to_le_bytes());
        self.mem.write_slice(&seg, data).unwrap();
        let status = self.status_byte();
        let head = self.add_chain(&[(h, 16, false), (data, 16, false), (status, 1, true)]);
        Req { head, data, status }
    }

    pub fn status(&self, r: &Req) -> u8 {
        self.mem.read_obj(r.status).unwrap()
    }

    pub fn bytes(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, addr).unwrap();
        v
    }

    pub fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// (head, len) of used entry `i`.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(i % self.size))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    /// The used entry for `head` (panics if absent).
    pub fn used_len(&self, head: u16) -> u32 {
        (0..self.used_idx())
            .map(|i| self.used(i))
            .find(|(id, _)| *id == u32::from(head))
            .unwrap_or_else(|| panic!("head {head} not used"))
            .1
    }
}

pub fn assert_path_in(err: &impl std::fmt::Display, path: &Path) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

/// Wait (up to 10 s) until `d`'s used ring has `n` entries.
pub fn wait_used(d: &Driver, n: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.used_idx() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {n} used"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The round the transport tests run on a freshly activated device: a
/// write and a flush on queue 0, a read and a GET_ID on queue 1, kicked by
/// `kick(queue)`, then checked against the image (`serial` is the
/// device's id).
pub fn write_flush_read_id(
    drivers: &mut [Driver],
    img: &TempImage,
    round: u8,
    serial: &[u8],
    mut kick: impl FnMut(u16),
) {
    let data = vec![round + 1; 4096];
    let w = drivers[0].write(16, &data);
    let f = drivers[0].bare(virtio_bindings::virtio_blk::VIRTIO_BLK_T_FLUSH);
    let r = drivers[1].read(3, 1024);
    let id = drivers[1].get_id(20);
    kick(0);
    kick(1);
    wait_used(&drivers[0], 2);
    wait_used(&drivers[1], 2);
    let ok = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
    assert_eq!(drivers[0].status(&w), ok);
    assert_eq!(drivers[0].status(&f), ok);
    assert_eq!(drivers[1].status(&r), ok);
    assert_eq!(drivers[1].bytes(r.data, 1024), img.read_at(3 * 512, 1024));
    assert_eq!(drivers[1].bytes(id.data, serial.len()), serial);
    assert_eq!(img.read_at(16 * 512, 4096), data);
}
