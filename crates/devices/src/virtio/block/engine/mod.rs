//! I/O engines: how a validated request reaches the disk.
//!
//! All engines have the same shape: `push` queues an operation under a
//! token, `submit` hands the queued batch over, `reap` collects finished
//! operations as `(token, result)` pairs, `drain` waits for everything still
//! in flight. The io_uring engine does the I/O asynchronously in the kernel
//! (one `io_uring_enter` per batch, completions signalled on an eventfd the
//! worker polls); the thread-pool engine runs the operations on a few I/O
//! threads and signals completions the same way; the synchronous engine
//! does each operation inside `push` and reports it at the next `reap`. The
//! pool and synchronous engines share the operation code
//! (`sync::execute`: preadv/pwritev, fdatasync, fallocate with fallbacks).
//!
//! Results follow the kernel convention: bytes transferred, or a negative
//! errno. Short transfers and unsupported fallocate modes are finished by the
//! worker (see `worker.rs`).
//!
//! Every engine owns a `StopFlag`, shared with the worker and the device.
//! A device reset sets it; then `cancel` drops what has not started (pool
//! jobs still queued, io_uring requests the kernel can still cancel) and
//! long synchronous operations (the remainder of a short transfer, zeros
//! written by hand) give up between system calls, so a stop waits for at
//! most the I/O that is already running.

mod pool;
mod sync;
mod uring;

use std::io;
use std::os::unix::io::RawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::disk::Disk;

pub use pool::{PoolEngine, POOL_THREADS};
pub use sync::SyncEngine;
pub use uring::UringEngine;

/// Which engine serves a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineKind {
    /// io_uring when the host supports the operations we need, else Pool.
    #[default]
    IoUring,
    /// preadv/pwritev in the device thread (deterministic: tests, fuzzing).
    Sync,
    /// preadv/pwritev on a pool of I/O threads (Sync if the threads cannot
    /// be started).
    Pool,
}

/// One operation on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// A finished operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub token: u32,
    /// Bytes transferred (reads/writes) or 0, or a negative errno.
    pub result: i32,
}

pub use crate::virtio::device_thread::StopFlag;

/// The engine a worker uses.
#[derive(Debug)]
pub enum Engine {
    Sync(SyncEngine),
    Pool(PoolEngine),
    Uring(Box<UringEngine>),
}

impl Engine {
    /// Build the preferred engine; io_uring falls back to the thread pool
    /// when the host lacks it (old kernel, seccomp, a sysctl turning it off)
    /// or one of the operations we use, and the pool to Sync when its
    /// threads cannot be started. `depth` is the most operations in flight
    /// at once (the pool never runs more threads than that).
    pub fn new(disk: Arc<Disk>, prefer: EngineKind, depth: u32) -> Engine {
        Engine::with_stop(disk, prefer, depth, StopFlag::new())
    }

    /// `new`, stopped by an existing `stop` flag (a worker that changes
    /// disks keeps the flag its device sets).
    pub fn with_stop(disk: Arc<Disk>, prefer: EngineKind, depth: u32, stop: StopFlag) -> Engine {
        if prefer == EngineKind::IoUring {
            if let Ok(engine) = UringEngine::new(disk.clone(), depth, stop.clone()) {
                return Engine::Uring(Box::new(engine));
            }
        }
        if prefer != EngineKind::Sync {
            let threads = POOL_THREADS.min(depth.max(1) as usize);
            if let Ok(engine) = PoolEngine::new(disk.clone(), threads, stop.clone()) {
                return Engine::Pool(engine);
            }
        }
        Engine::Sync(SyncEngine::new(disk, stop))
    }

    /// The flag that stops this engine's work (see the module comment).
    pub fn stop_flag(&self) -> &StopFlag {
        match self {
            Engine::Sync(e) => e.stop_flag(),
            Engine::Pool(e) => e.stop_flag(),
            Engine::Uring(e) => e.stop_flag(),
        }
    }

    /// After the stop flag is set: drop the work that has not started.
    /// `tokens` are the operations in flight; each still completes (with
    /// -ECANCELED if it never ran), so `drain` then returns as soon as the
    /// operations already running are done.
    pub fn cancel(&mut self, tokens: impl Iterator<Item = u32>) {
        match self {
            // Its operations completed inside `push`.
            Engine::Sync(_) => {}
            // Queued jobs are skipped by the threads once the flag is set.
            Engine::Pool(e) => e.submit(),
            Engine::Uring(e) => e.cancel(tokens),
        }
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Sync(_) => EngineKind::Sync,
            Engine::Pool(_) => EngineKind::Pool,
            Engine::Uring(_) => EngineKind::IoUring,
        }
    }

    /// The eventfd that becomes readable when operations complete (None for
    /// the synchronous engine, whose operations complete inside `push`).
    pub fn event_fd(&self) -> Option<RawFd> {
        match self {
            Engine::Sync(_) => None,
            Engine::Pool(e) => Some(e.event_fd()),
            Engine::Uring(e) => Some(e.event_fd()),
        }
    }

    /// Queue `op` under `token`.
    ///
    /// # Safety
    /// For reads and writes, `iovecs` must point to memory that stays valid
    /// (mapped, not freed) and is not moved until the completion for `token`
    /// has been reaped or `drain` has returned: the kernel (io_uring) or a
    /// pool thread reads and writes it asynchronously. The iovec array
    /// itself must stay in place, and the caller must neither read nor
    /// write it, until then too (a pool thread advances it as data moves).
    pub unsafe fn push(
        &mut self,
        token: u32,
        op: Op,
        iovecs: &mut [libc::iovec],
    ) -> io::Result<()> {
        match self {
            Engine::Sync(e) => {
                // SAFETY: the caller's guarantee covers the synchronous use.
                unsafe { e.push(token, op, iovecs) };
                Ok(())
            }
            Engine::Pool(e) => {
                // SAFETY: the caller upholds the contract above, which is
                // what lets a pool thread use the iovecs (see `pool.rs`).
                unsafe { e.push(token, op, iovecs) };
                Ok(())
            }
            // SAFETY: the caller upholds the contract above.
            Engine::Uring(e) => unsafe { e.push(token, op, iovecs) },
        }
    }

    /// Start everything queued so far.
    pub fn submit(&mut self) -> io::Result<()> {
        match self {
            Engine::Sync(_) => Ok(()),
            Engine::Pool(e) => {
                e.submit();
                Ok(())
            }
            Engine::Uring(e) => e.submit(),
        }
    }

    /// Move finished operations into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        match self {
            Engine::Sync(e) => e.reap(out),
            Engine::Pool(e) => e.reap(out),
            Engine::Uring(e) => e.reap(out),
        }
    }

    /// Wait until nothing is in flight, moving the completions into `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        match self {
            Engine::Sync(e) => e.reap(out),
            Engine::Pool(e) => e.drain(out),
            Engine::Uring(e) => e.drain(out),
        }
    }

    /// Operations pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        match self {
            Engine::Sync(e) => e.pending(),
            Engine::Pool(e) => e.in_flight(),
            Engine::Uring(e) => e.in_flight(),
        }
    }
}

/// Negative errno for a result.
fn errno_of(err: &io::Error) -> i32 {
    -err.raw_os_error().unwrap_or(libc::EIO)
}
