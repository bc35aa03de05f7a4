//! I/O engines: how a validated request reaches the disk.
//!
//! Both engines have the same shape: `push` queues an operation under a
//! token, `submit` hands the queued batch to the kernel, `reap` collects
//! finished operations as `(token, result)` pairs, `drain` waits for
//! everything still in flight. The io_uring engine does the I/O
//! asynchronously (one `io_uring_enter` per batch, completions signalled on
//! an eventfd the worker polls); the synchronous engine does each operation
//! inside `push` with preadv/pwritev/fdatasync/fallocate and reports it at
//! the next `reap`.
//!
//! Results follow the kernel convention: bytes transferred, or a negative
//! errno. Short transfers and unsupported fallocate modes are finished by the
//! worker (see `worker.rs`).

mod sync;
mod uring;

use std::io;
use std::os::unix::io::RawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::disk::Disk;

pub use sync::SyncEngine;
pub use uring::UringEngine;

/// Which engine serves a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineKind {
    /// io_uring when the host supports the operations we need, else Sync.
    #[default]
    IoUring,
    /// preadv/pwritev in the device thread.
    Sync,
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

/// The engine a worker uses.
#[derive(Debug)]
pub enum Engine {
    Sync(SyncEngine),
    Uring(Box<UringEngine>),
}

impl Engine {
    /// Build the preferred engine; io_uring falls back to Sync when the host
    /// lacks it (old kernel, seccomp, a sysctl turning it off) or one of the
    /// operations we use. `depth` is the most operations in flight at once.
    pub fn new(disk: Arc<Disk>, prefer: EngineKind, depth: u32) -> Engine {
        if prefer == EngineKind::IoUring {
            if let Ok(engine) = UringEngine::new(disk.clone(), depth) {
                return Engine::Uring(Box::new(engine));
            }
        }
        Engine::Sync(SyncEngine::new(disk))
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Sync(_) => EngineKind::Sync,
            Engine::Uring(_) => EngineKind::IoUring,
        }
    }

    /// The eventfd that becomes readable when operations complete (None for
    /// the synchronous engine, whose operations complete inside `push`).
    pub fn event_fd(&self) -> Option<RawFd> {
        match self {
            Engine::Sync(_) => None,
            Engine::Uring(e) => Some(e.event_fd()),
        }
    }

    /// Queue `op` under `token`.
    ///
    /// # Safety
    /// For reads and writes, `iovecs` must point to memory that stays valid
    /// (mapped, not freed) and is not moved until the completion for `token`
    /// has been reaped or `drain` has returned: the kernel reads and writes
    /// it asynchronously. The iovec array itself must stay in place too.
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
            // SAFETY: the caller upholds the contract above.
            Engine::Uring(e) => unsafe { e.push(token, op, iovecs) },
        }
    }

    /// Start everything queued so far.
    pub fn submit(&mut self) -> io::Result<()> {
        match self {
            Engine::Sync(_) => Ok(()),
            Engine::Uring(e) => e.submit(),
        }
    }

    /// Move finished operations into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        match self {
            Engine::Sync(e) => e.reap(out),
            Engine::Uring(e) => e.reap(out),
        }
    }

    /// Wait until nothing is in flight, moving the completions into `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        match self {
            Engine::Sync(e) => e.reap(out),
            Engine::Uring(e) => e.drain(out),
        }
    }

    /// Operations pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        match self {
            Engine::Sync(e) => e.pending(),
            Engine::Uring(e) => e.in_flight(),
        }
    }
}

/// Negative errno for a result.
fn errno_of(err: &io::Error) -> i32 {
    -err.raw_os_error().unwrap_or(libc::EIO)
}
