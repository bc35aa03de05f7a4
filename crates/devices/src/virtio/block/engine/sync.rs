//! The synchronous engine: every operation runs to completion inside `push`
//! on the device thread (preadv/pwritev, fdatasync, fallocate with its
//! fallbacks). Used where io_uring is unavailable, and by tests and the
//! fuzz target because it is deterministic.

use std::sync::Arc;

use super::{errno_of, Completion, Op};
use crate::virtio::block::disk::Disk;

#[derive(Debug)]
pub struct SyncEngine {
    disk: Arc<Disk>,
    done: Vec<Completion>,
}

impl SyncEngine {
    pub fn new(disk: Arc<Disk>) -> Self {
        SyncEngine {
            disk,
            done: Vec::with_capacity(64),
        }
    }

    /// Run `op` now; its result is reported by the next `reap`.
    ///
    /// # Safety
    /// For reads and writes, `iovecs` must describe memory valid for the
    /// duration of the call (writable for reads).
    pub unsafe fn push(&mut self, token: u32, op: Op, iovecs: &mut [libc::iovec]) {
        let disk = &self.disk;
        let result = match op {
            // SAFETY: the caller guarantees the iovecs (see above).
            Op::Read { offset } => unsafe { disk.rw_vectored(false, iovecs, offset) }.map(clamp),
            // SAFETY: as above.
            Op::Write { offset } => unsafe { disk.rw_vectored(true, iovecs, offset) }.map(clamp),
            Op::Flush => disk.flush().map(|_| 0),
            Op::Discard { offset, len } => disk.discard(offset, len).map(|_| 0),
            Op::WriteZeroes { offset, len, unmap } => {
                disk.write_zeroes(offset, len, unmap).map(|_| 0)
            }
        };
        self.done.push(Completion {
            token,
            result: result.unwrap_or_else(|e| errno_of(&e)),
        });
    }

    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    pub fn pending(&self) -> usize {
        self.done.len()
    }
}

/// Byte counts above i32::MAX (which io_uring could not report either) are
/// reported as i32::MAX; the worker then redoes the rest, which is harmless
/// for reads and writes.
fn clamp(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
