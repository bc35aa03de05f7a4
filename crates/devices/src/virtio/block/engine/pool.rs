//! The thread-pool engine: a few I/O threads run the synchronous engine's
//! operation code (`sync::execute`: preadv/pwritev, fdatasync, fallocate
//! with its fallbacks) so the device thread never blocks on the disk. The
//! fallback when the host has no usable io_uring.
//!
//! `push` collects operations into a local batch; `submit` moves the batch
//! to a shared job queue (one lock) and wakes as many idle threads as there
//! are new jobs. A thread takes one job at a time, runs it and appends the
//! completion to a shared list; the first completion into an empty list
//! writes the engine's eventfd, which the device thread polls
//! edge-triggered (as it does io_uring's), and `reap` takes the whole list
//! under one lock. So a batch of completions costs one eventfd write and one
//! wakeup of the device thread, however many threads produced it.
//!
//! Dropping the engine (after the worker drained it) stops the threads: each
//! finishes the jobs still queued, then exits, and the drop joins them, so
//! no pool thread touches guest memory once the engine is gone.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::sync::execute;
use super::{Completion, Op, StopFlag};
use crate::virtio::block::disk::Disk;

/// Threads per device. Enough to overlap a flush with reads and writes and
/// to keep several requests at the host's storage at once; more would only
/// compete for the host's cores with the vCPUs.
pub const POOL_THREADS: usize = 4;

/// One operation handed to a pool thread: the iovec array travels as a raw
/// pointer and length.
struct Job {
    token: u32,
    op: Op,
    iov: *mut libc::iovec,
    iov_len: usize,
}

// SAFETY: a `Job` is the `Engine::push` contract moved to another thread.
// The device thread promises that the iovec array (a request slot's buffer)
// and the guest memory its entries point to stay valid, and that it neither
// reads nor writes the array, until it has reaped the job's completion or
// drained the engine; the worker also drains the engine before it (and the
// `GuestMemory` keeping the regions mapped) goes away. So exactly one thread
// uses the array at a time: the pool thread that took the job, between
// taking it and publishing its completion under the `done` mutex (whose
// lock/unlock orders those accesses before the device thread's). The guest
// buffers themselves are only passed to preadv/pwritev, never turned into
// Rust references, exactly as the io_uring engine hands them to the kernel;
// the guest racing on its own buffers cannot break the VMM's memory safety.
unsafe impl Send for Job {}

#[derive(Default)]
struct Jobs {
    queue: VecDeque<Job>,
    /// Threads waiting on `job_ready`.
    idle: usize,
    /// Set on drop: threads exit once the queue is empty.
    stop: bool,
}

#[derive(Default)]
struct Done {
    list: Vec<Completion>,
    /// The device thread waits on `done_ready` (in `drain`).
    waiting: bool,
}

struct Shared {
    disk: Arc<Disk>,
    /// Once set, queued jobs complete with -ECANCELED without running.
    stop: StopFlag,
    jobs: Mutex<Jobs>,
    job_ready: Condvar,
    done: Mutex<Done>,
    done_ready: Condvar,
    event: EventFd,
}

pub struct PoolEngine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Pushed, not yet submitted.
    batch: Vec<Job>,
    /// Pushed and not yet reaped.
    in_flight: usize,
}

impl std::fmt::Debug for PoolEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolEngine")
            .field("threads", &self.threads.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// A poisoned lock only means a pool thread panicked outside `execute`
/// (which is caught); the data under it is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PoolEngine {
    /// Start `threads` I/O threads (at least one); fails if the eventfd or a
    /// thread cannot be created.
    pub fn new(disk: Arc<Disk>, threads: usize, stop: StopFlag) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            disk,
            stop,
            jobs: Mutex::new(Jobs::default()),
            job_ready: Condvar::new(),
            done: Mutex::new(Done::default()),
            done_ready: Condvar::new(),
            event: EventFd::new(EFD_NONBLOCK)?,
        });
        let mut engine = PoolEngine {
            shared,
            threads: Vec::new(),
            batch: Vec::with_capacity(64),
            in_flight: 0,
        };
        for i in 0..threads.max(1) {
            let shared = engine.shared.clone();
            // On failure `engine` is dropped, which stops the threads
            // already started.
            let thread = std::thread::Builder::new()
                .name(format!("vireo-blk-io{i}"))
                .spawn(move || serve(&shared))?;
            engine.threads.push(thread);
        }
        Ok(engine)
    }

    pub fn event_fd(&self) -> RawFd {
        self.shared.event.as_raw_fd()
    }

    pub fn stop_flag(&self) -> &StopFlag {
        &self.shared.stop
    }

    /// # Safety
    /// See `Engine::push`: the iovecs and the memory they point to must stay
    /// valid, and the iovecs untouched by the caller, until the completion
    /// is reaped or `drain` has returned.
    pub unsafe fn push(&mut self, token: u32, op: Op, iovecs: &mut [libc::iovec]) {
        let (iov, iov_len) = match op {
            Op::Read { .. } | Op::Write { .. } => (iovecs.as_mut_ptr(), iovecs.len()),
            _ => (std::ptr::null_mut(), 0),
        };
        self.batch.push(Job {
            token,
            op,
            iov,
            iov_len,
        });
        self.in_flight += 1;
    }

    /// Hand the batch to the threads, waking as many idle ones as needed.
    pub fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len();
        let wake = {
            let mut jobs = lock(&self.shared.jobs);
            jobs.queue.extend(self.batch.drain(..));
            n.min(jobs.idle)
        };
        // Busy threads look at the queue again before they sleep: only the
        // idle ones need a (syscall-costing) wakeup.
        for _ in 0..wake {
            self.shared.job_ready.notify_one();
        }
    }

    /// Take every completion published so far.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        // The eventfd is never read: the worker polls it edge-triggered.
        let mut done = lock(&self.shared.done);
        self.in_flight = self.in_flight.saturating_sub(done.list.len());
        out.append(&mut done.list);
    }

    /// Submit what is still batched and wait for everything in flight.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        self.submit();
        while self.in_flight > 0 {
            let mut done = lock(&self.shared.done);
            while done.list.is_empty() {
                done.waiting = true;
                done = self
                    .shared
                    .done_ready
                    .wait(done)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            done.waiting = false;
            self.in_flight = self.in_flight.saturating_sub(done.list.len());
            out.append(&mut done.list);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for PoolEngine {
    fn drop(&mut self) {
        // Never submitted: no thread has seen these.
        self.batch.clear();
        lock(&self.shared.jobs).stop = true;
        self.shared.job_ready.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A pool thread: take jobs until stopped and the queue is empty.
fn serve(shared: &Shared) {
    loop {
        let job = {
            let mut jobs = lock(&shared.jobs);
            loop {
                if let Some(job) = jobs.queue.pop_front() {
                    break job;
                }
                if jobs.stop {
                    return;
                }
                jobs.idle += 1;
                jobs = shared
                    .job_ready
                    .wait(jobs)
                    .unwrap_or_else(PoisonError::into_inner);
                jobs.idle -= 1;
            }
        };
        if shared.stop.is_set() {
            publish(shared, job.token, -libc::ECANCELED);
            continue;
        }
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let iovecs: &mut [libc::iovec] = if job.iov_len == 0 {
                &mut []
            } else {
                // SAFETY: see `impl Send for Job`: the array is valid and
                // used by this thread alone until the completion is
                // published below.
                unsafe { std::slice::from_raw_parts_mut(job.iov, job.iov_len) }
            };
            // SAFETY: the iovecs point to guest memory that stays mapped
            // until the completion is reaped (the `Engine::push` contract).
            unsafe { execute(&shared.disk, job.op, iovecs, &shared.stop) }
        }))
        .unwrap_or(-libc::EIO);
        publish(shared, job.token, result);
    }
}

/// Hand a finished job to the device thread.
fn publish(shared: &Shared, token: u32, result: i32) {
    let (first, waiting) = {
        let mut done = lock(&shared.done);
        let first = done.list.is_empty();
        done.list.push(Completion { token, result });
        (first, done.waiting)
    };
    if waiting {
        shared.done_ready.notify_one();
    }
    // Later completions join a list the device thread has yet to reap,
    // so it is already due a wakeup from this first one.
    if first {
        let _ = shared.event.write(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::virtio::block::test_utils::{pattern_byte, TempImage};

    const IMG: u64 = 1 << 20;

    fn iovec(buf: &mut [u8]) -> Vec<libc::iovec> {
        vec![libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }]
    }

    /// Every token completes exactly once with the right result, reads see
    /// the image, the eventfd fires, and `drain` leaves nothing in flight.
    #[test]
    fn completes_every_job_once_and_signals_the_eventfd() {
        let img = TempImage::patterned(IMG);
        let disk = img.disk(false);
        let mut pool = PoolEngine::new(disk.clone(), POOL_THREADS, StopFlag::new()).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..200).map(|_| vec![0u8; 4096]).collect();
        let mut iovs: Vec<Vec<libc::iovec>> = bufs.iter_mut().map(|b| iovec(b)).collect();
        for (i, iov) in iovs.iter_mut().enumerate() {
            let op = Op::Read {
                offset: (i as u64 % 250) * 4096,
            };
            // SAFETY: `bufs` and `iovs` outlive the drain below and are not
            // touched until then.
            unsafe { pool.push(i as u32, op, iov) };
        }
        // SAFETY: no memory involved.
        unsafe { pool.push(1000, Op::Flush, &mut []) };
        assert_eq!(pool.in_flight(), 201);
        pool.submit();
        let mut done = Vec::new();
        // Completions are announced on the eventfd.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.shared.event.read().is_err() {
            assert!(Instant::now() < deadline, "no eventfd signal");
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.reap(&mut done);
        pool.drain(&mut done);
        assert_eq!(pool.in_flight(), 0);
        let mut tokens: Vec<u32> = done.iter().map(|c| c.token).collect();
        tokens.sort_unstable();
        let want: Vec<u32> = (0..200).chain([1000]).collect();
        assert_eq!(tokens, want);
        for c in &done {
            let want = if c.token == 1000 { 0 } else { 4096 };
            assert_eq!(c.result, want, "token {}", c.token);
        }
        for (i, buf) in bufs.iter().enumerate() {
            let sector = (i as u64 % 250) * 8;
            assert_eq!(buf[0], pattern_byte(sector));
            assert_eq!(buf[4095], pattern_byte(sector + 7));
        }
    }

    /// Errors come back as negative errnos: a write to a disk opened
    /// read-only fails with EBADF.
    #[test]
    fn reports_errors() {
        let img = TempImage::patterned(IMG);
        let mut pool = PoolEngine::new(img.disk(true), 2, StopFlag::new()).unwrap();
        let mut buf = vec![0u8; 512];
        let mut iov = iovec(&mut buf);
        // SAFETY: `buf` outlives the drain.
        unsafe { pool.push(1, Op::Write { offset: 0 }, &mut iov) };
        let mut done = Vec::new();
        pool.drain(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].result, -libc::EBADF, "{:?}", done[0]);
    }

    /// Dropping the engine with jobs still queued lets them finish (the
    /// writes land) and joins the threads (nothing keeps the disk alive).
    #[test]
    fn drop_finishes_queued_jobs_and_joins_the_threads() {
        let img = TempImage::patterned(IMG);
        let disk = img.disk(false);
        let mut pool = PoolEngine::new(disk.clone(), POOL_THREADS, StopFlag::new()).unwrap();
        assert_eq!(Arc::strong_count(&disk), 2);
        let mut bufs: Vec<Vec<u8>> = (0..128u8).map(|i| vec![i; 4096]).collect();
        let mut iovs: Vec<Vec<libc::iovec>> = bufs.iter_mut().map(|b| iovec(b)).collect();
        for (i, iov) in iovs.iter_mut().enumerate() {
            let op = Op::Write {
                offset: i as u64 * 4096,
            };
            // SAFETY: `bufs` and `iovs` outlive the engine.
            unsafe { pool.push(i as u32, op, iov) };
        }
        pool.submit();
        drop(pool);
        assert_eq!(Arc::strong_count(&disk), 1);
        for i in 0..128u8 {
            assert_eq!(img.read_at(u64::from(i) * 4096, 4096), vec![i; 4096]);
        }
        drop(iovs);
        drop(bufs);
    }

    /// Once the stop flag is set, jobs still queued complete with
    /// -ECANCELED without touching the disk, so a drain waits only for the
    /// jobs already running.
    #[test]
    fn a_stop_cancels_queued_jobs() {
        let img = TempImage::patterned(IMG);
        let before = img.contents();
        let stop = StopFlag::new();
        let mut pool = PoolEngine::new(img.disk(false), 1, stop.clone()).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 4096]).collect();
        let mut iovs: Vec<Vec<libc::iovec>> = bufs.iter_mut().map(|b| iovec(b)).collect();
        stop.set();
        for (i, iov) in iovs.iter_mut().enumerate() {
            let op = Op::Write {
                offset: i as u64 * 4096,
            };
            // SAFETY: `bufs` and `iovs` outlive the drain.
            unsafe { pool.push(i as u32, op, iov) };
        }
        let mut done = Vec::new();
        pool.drain(&mut done);
        assert_eq!(done.len(), 64);
        assert!(
            done.iter().all(|c| c.result == -libc::ECANCELED),
            "{done:?}"
        );
        assert!(
            img.contents() == before,
            "a cancelled write reached the image"
        );
        drop(iovs);
        drop(bufs);
    }
}
