//! The device thread of an activated entropy device.
//!
//! It waits (epoll) on the queue's kick eventfd, the rate limiter's timerfd
//! and its wake eventfd (stop and pause). A kick serves the queue: each
//! chain is parsed (`request.rs`), let through by the rate limiter, filled
//! from `getrandom(2)` and put on the used ring; after each batch the queue
//! is signalled once (or not at all when EVENT_IDX says the driver does not
//! want it yet). A throttled queue is left alone, its chains still on the
//! ring, until the limiter's timer fires; at most one queue-size of chains
//! is served per turn so a stop or pause is never starved.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::RngMetrics;
use super::request::{self, Request, MAX_REQUEST_BYTES};
use crate::rate_limiter::RateLimiter;
use crate::virtio::device_thread::{wait_events, WorkerControl};
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::{GuestMemory, Interrupt};

const TOKEN_WAKE: u64 = 0;
const TOKEN_KICK: u64 = 1;
const TOKEN_TIMER: u64 = 2;

/// What one serving turn ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// The ring is empty (until the next kick).
    Drained,
    /// Chains may remain: the turn's budget ran out, or a stop or pause
    /// came.
    More,
    /// The rate limiter holds the queue until its timer fires.
    Throttled,
}

/// Serves an entropy device's queue; see the module comment.
pub struct Worker {
    mem: GuestMemory,
    queue: ServedQueue,
    interrupt: Arc<dyn Interrupt>,
    limiter: RateLimiter,
    metrics: Arc<RngMetrics>,
    buf: Vec<u8>,
}

impl Worker {
    pub fn new(
        mem: GuestMemory,
        queue: Queue,
        interrupt: Arc<dyn Interrupt>,
        limiter: RateLimiter,
        metrics: Arc<RngMetrics>,
    ) -> Self {
        Worker {
            mem,
            queue: ServedQueue::new(0, queue),
            interrupt,
            limiter,
            metrics,
            buf: vec![0; MAX_REQUEST_BYTES as usize],
        }
    }

    /// The queue (for tests: its used index).
    pub fn queue(&self) -> &Queue {
        &self.queue.queue
    }

    /// Serve up to one queue-size of chains; `holding` says when to stop
    /// early (a stop or pause). Does not signal.
    pub fn serve(&mut self, holding: &dyn Fn() -> bool) -> Served {
        let mut budget = self.queue.queue.size();
        self.queue.begin(&self.mem);
        loop {
            if holding() || budget == 0 {
                return Served::More;
            }
            let Some(chain) = self.queue.pop(&self.mem) else {
                return Served::Drained;
            };
            budget -= 1;
            let head = chain.head_index();
            let written = match request::parse(chain, &self.mem) {
                Ok(req) => {
                    if self.limiter.consume(1, u64::from(req.len)).is_err() {
                        // Served again when the timer fires.
                        self.queue.undo_pop();
                        RngMetrics::add(&self.metrics.throttled, 1);
                        return Served::Throttled;
                    }
                    self.fill(&req)
                }
                Err(_) => {
                    RngMetrics::add(&self.metrics.invalid_requests, 1);
                    0
                }
            };
            self.queue.add_used(&self.mem, head, written);
        }
    }

    /// Fill the request's buffers with random bytes; returns the bytes
    /// written (0 if the host could not give any).
    fn fill(&mut self, req: &Request) -> u32 {
        let buf = &mut self.buf[..req.len as usize];
        if getrandom(buf).is_err() {
            RngMetrics::add(&self.metrics.host_errors, 1);
            return 0;
        }
        let mut at = 0usize;
        for &(addr, len) in &req.segments {
            let len = len as usize;
            if self.mem.write_slice(&buf[at..at + len], addr).is_err() {
                break;
            }
            at += len;
        }
        RngMetrics::add(&self.metrics.requests, 1);
        RngMetrics::add(&self.metrics.bytes, at as u64);
        at as u32
    }

    /// Signal the queue if it gained used entries and the driver wants it.
    pub fn signal(&mut self) {
        if self.queue.signal(&self.mem, self.interrupt.as_ref()) {
            RngMetrics::add(&self.metrics.interrupts, 1);
        }
    }

    /// The device thread's loop; returns when the device stops, or on a
    /// fatal epoll error.
    pub fn run(mut self, kick: &EventFd, control: &WorkerControl) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd, token, events| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(control.wake.as_raw_fd(), TOKEN_WAKE, EventSet::IN)?;
        // Kicks are edge-triggered: every write wakes epoll again, so the
        // counter never needs reading.
        add(
            kick.as_raw_fd(),
            TOKEN_KICK,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )?;
        if let Some(fd) = self.limiter.timer_fd() {
            add(fd, TOKEN_TIMER, EventSet::IN)?;
        }
        let mut events = [EpollEvent::default(); 3];
        // Chains made available before activation are served right away.
        let mut pending = true;
        loop {
            if pending && !self.limiter.is_blocked() {
                pending = self.serve(&|| control.holding()) == Served::More;
                self.signal();
            }
            if control.stop.is_set() {
                return Ok(());
            }
            if control.pause.requested() {
                control.pause.park();
                pending = true;
                continue;
            }
            let timeout = if pending && !self.limiter.is_blocked() {
                0
            } else {
                -1
            };
            let n = wait_events(&epoll, timeout, &mut events)?;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        let _ = control.wake.read();
                    }
                    TOKEN_TIMER => {
                        self.limiter.on_timer();
                        pending = true;
                    }
                    _ => pending = true,
                }
            }
        }
    }
}

/// Fill `buf` from the kernel's CSPRNG (never blocks once the host's pool
/// is initialized, which it is long before a VMM runs).
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let rest = &mut buf[at..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        at += n as usize;
    }
    Ok(())
}
