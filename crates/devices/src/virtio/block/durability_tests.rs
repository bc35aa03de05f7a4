//! Durability rules (see `worker.rs`): in write-through mode every request
//! that changes the image is synced before it completes, and a failed
//! fdatasync keeps failing flushes until the device is reset.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

use super::device::QUEUE_SIZE;
use super::test_utils::*;
use super::{BlockMetrics, Disk};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

/// Writes, discards and write-zeroes (both kinds) are each followed by an
/// fdatasync when FLUSH was not negotiated; reads are not; and with FLUSH
/// negotiated nothing is synced until the guest asks.
#[test]
fn write_through_syncs_every_request_that_changes_the_image() {
    for engine in ALL_ENGINES {
        for write_through in [true, false] {
            let img = TempImage::patterned(1 << 20);
            let mem = guest_memory();
            let mut d = Driver::new(&mem, QUEUE_SIZE);
            let metrics = Arc::new(BlockMetrics::default());
            let irq = Arc::new(TestInterrupt::default());
            let mut w = d.worker_mode(img.disk(false), irq, metrics.clone(), engine, write_through);
            let reqs = [
                d.write(0, &[7u8; 4096]),
                d.zero_range(VIRTIO_BLK_T_DISCARD, 64, 8, 0),
                d.zero_range(VIRTIO_BLK_T_WRITE_ZEROES, 128, 8, 0),
                d.zero_range(
                    VIRTIO_BLK_T_WRITE_ZEROES,
                    256,
                    8,
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
                ),
                d.read(512, 4096),
            ];
            w.run_once();
            for r in &reqs {
                assert_eq!(d.status(r), OK, "{engine:?}");
            }
            let syncs = BlockMetrics::get(&metrics.write_through_syncs);
            let want = if write_through { 4 } else { 0 };
            assert_eq!(syncs, want, "{engine:?} write-through {write_through}");
            assert_eq!(img.read_at(128 * 512, 4096), vec![0; 4096]);
        }
    }
}

/// A tmpfs too small for what the guest writes, with a loop device on a
/// file in it: writes land in the loop device's page cache, and writeback
/// fails with ENOSPC, so fdatasync on the loop device reports EIO: a real
/// failing flush. Needs root (mount, losetup).
struct FullDisk {
    dir: PathBuf,
    loop_dev: Option<PathBuf>,
    mounted: bool,
}

impl FullDisk {
    fn new() -> Option<FullDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("vireo-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let mut disk = FullDisk {
            dir,
            loop_dev: None,
            mounted: false,
        };
        disk.mounted = run(
            "mount",
            &["-t", "tmpfs", "-o", "size=256k", "tmpfs"],
            &disk.dir,
        )?;
        let backing = disk.dir.join("backing");
        std::fs::File::create(&backing)
            .ok()?
            .set_len(8 << 20)
            .ok()?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        disk.loop_dev = Some(PathBuf::from(dev));
        Some(disk)
    }

    fn device(&self) -> &Path {
        self.loop_dev
            .as_deref()
            .unwrap_or(Path::new("/nonexistent"))
    }
}

fn run(cmd: &str, args: &[&str], target: &Path) -> Option<bool> {
    let ok = Command::new(cmd).args(args).arg(target).status().ok()?;
    ok.success().then_some(true)
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The first FLUSH after writeback failed reports IOERR, and so does every
/// later one (the kernel reports a writeback error only once; data the
/// guest believed flushed is lost), until the device is reset: a new worker
/// (what activation after a reset builds) flushes fine again.
#[test]
fn a_failed_fdatasync_stays_failed_until_reset() {
    let Some(full) = FullDisk::new() else {
        println!("skipped: needs root, tmpfs and a loop device");
        return;
    };
    println!("loop device {}", full.device().display());
    for engine in ALL_ENGINES {
        let disk = Arc::new(Disk::open(full.device(), false, None).unwrap());
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let metrics = Arc::new(BlockMetrics::default());
        let irq = Arc::new(TestInterrupt::default());
        let mut w = d.worker_mode(disk.clone(), irq.clone(), metrics.clone(), engine, false);
        // 1 MiB of writes (new dirty pages each round) into 256 KiB of tmpfs.
        let base = 2048 * (engine as u64 + 1);
        let writes: Vec<_> = (0..4)
            .map(|i| d.write(base + i * 512, &[0xa5; 256 << 10]))
            .collect();
        w.run_once();
        for r in &writes {
            assert_eq!(d.status(r), OK, "{engine:?}: buffered write");
        }
        let first = d.bare(VIRTIO_BLK_T_FLUSH);
        w.run_once();
        assert_eq!(d.status(&first), IOERR, "{engine:?}: the failing flush");
        let second = d.bare(VIRTIO_BLK_T_FLUSH);
        w.run_once();
        assert_eq!(d.status(&second), IOERR, "{engine:?}: a later flush");
        drop(w);

        // After a reset: a fresh worker, whose flushes succeed again.
        let mem = guest_memory();
        let mut d = Driver::new(&mem, QUEUE_SIZE);
        let mut w = d.worker_mode(disk, irq, metrics, engine, false);
        let after = d.bare(VIRTIO_BLK_T_FLUSH);
        w.run_once();
        assert_eq!(d.status(&after), OK, "{engine:?}: flush after reset");
    }
}
