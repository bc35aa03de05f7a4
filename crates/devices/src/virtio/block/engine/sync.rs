//! The synchronous engine: every operation runs to completion inside `push`
//! on the device thread (preadv/pwritev, fdatasync, fallocate with its
//! fallbacks). Used by tests and the fuzz target because it is
//! deterministic, and as the last resort when neither io_uring nor the
//! thread pool can be set up.
//!
//! `execute` is the operation code itself; the thread-pool engine runs the
//! same function on its threads.

use std::sync::Arc;

use super::{errno_of, Completion, Op, StopFlag};
use crate::virtio::block::disk::Disk;

#[derive(Debug)]
pub struct SyncEngine {
    disk: Arc<Disk>,
    done: Vec<Completion>,
    stop: StopFlag,
}

impl SyncEngine {
    pub fn new(disk: Arc<Disk>, stop: StopFlag) -> Self {
        SyncEngine {
            disk,
            done: Vec::with_capacity(64),
            stop,
        }
    }

    /// Run `op` now; its result is reported by the next `reap`.
    ///
    /// # Safety
    /// For reads and writes, `iovecs` must describe memory valid for the
    /// duration of the call (writable for reads).
    pub unsafe fn push(&mut self, token: u32, op: Op, iovecs: &mut [libc::iovec]) {
        // SAFETY: the caller's guarantee is `execute`'s.
        let result = unsafe { execute(&self.disk, op, iovecs, &self.stop) };
        self.done.push(Completion { token, result });
    }

    pub fn stop_flag(&self) -> &StopFlag {
        &self.stop
    }

    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    pub fn pending(&self) -> usize {
        self.done.len()
    }
}

/// Perform one operation with blocking system calls on the calling thread:
/// preadv/pwritev (looping over short transfers), fdatasync, or fallocate
/// with its fallbacks (DISCARD becomes a no-op and WRITE_ZEROES writes zeros
/// where the file system cannot punch holes or zero ranges). Returns the
/// bytes transferred (reads and writes) or 0, or a negative errno
/// (-ECANCELED when `stop` cut a long operation short).
///
/// # Safety
/// For reads and writes, `iovecs` must describe memory valid for the
/// duration of the call (writable for reads); the iovecs themselves are
/// consumed (advanced) as data moves. Other operations ignore `iovecs`.
pub unsafe fn execute(disk: &Disk, op: Op, iovecs: &mut [libc::iovec], stop: &StopFlag) -> i32 {
    let result = match op {
        // SAFETY: the caller guarantees the iovecs (see above).
        Op::Read { offset } => unsafe { disk.rw_vectored(false, iovecs, offset, stop) }.map(clamp),
        // SAFETY: as above.
        Op::Write { offset } => unsafe { disk.rw_vectored(true, iovecs, offset, stop) }.map(clamp),
        Op::Flush => disk.flush().map(|_| 0),
        Op::Discard { offset, len } => disk.discard(offset, len).map(|_| 0),
        Op::WriteZeroes { offset, len, unmap } => {
            disk.write_zeroes(offset, len, unmap, stop).map(|_| 0)
        }
    };
    result.unwrap_or_else(|e| errno_of(&e))
}

/// Byte counts above i32::MAX (which io_uring could not report either) are
/// reported as i32::MAX; the worker then redoes the rest, which is harmless
/// for reads and writes.
fn clamp(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
