//! Block test helpers: temporary disk images and the block requests the
//! shared mock driver (`virtio::test_utils::Driver`) builds, plus workers on
//! its queue; the driver, guest memory and `TestInterrupt` are re-exported.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::disk::Disk;
use super::engine::{Engine, EngineKind};
use super::metrics::BlockMetrics;
use super::worker::{Worker, WorkerQueue};
pub use crate::virtio::test_utils::*;

/// Every engine, for tests that must hold whichever one serves the device
/// (IoUring falls back to Pool on a host without io_uring).
pub const ALL_ENGINES: [EngineKind; 3] = [EngineKind::IoUring, EngineKind::Pool, EngineKind::Sync];

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

/// A request's guest buffers, to check after completion.
#[derive(Clone, Copy, Debug)]
pub struct Req {
    pub head: u16,
    pub data: GuestAddress,
    pub status: GuestAddress,
}

impl Driver<'_> {
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
        let engine = Engine::new(disk.clone(), engine, u32::from(self.size()));
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
}

pub fn assert_path_in(err: &impl std::fmt::Display, path: &Path) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
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
