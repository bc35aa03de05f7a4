//! The device thread of an activated block device.
//!
//! It waits (epoll) on the kick eventfd of every ready queue, the engine's
//! completion eventfd and a stop eventfd. A kick drains that queue: each
//! chain is parsed (`request.rs`) into a free slot and pushed to the engine;
//! one `submit` starts the whole batch. Completions write the status byte
//! and add the chain to the used ring; after each batch every queue that
//! gained used entries is signalled once (or not at all when EVENT_IDX says
//! the driver does not want it yet).
//!
//! The number of slots bounds the requests in flight, and
//! `MAX_BYTES_IN_FLIGHT` the data they move: when either runs out a queue
//! stops popping and resumes as completions free room. A queue is served at
//! most one queue-size worth of chains per turn so a stop request is never
//! starved by a guest that keeps submitting.
//!
//! Stopping (device reset): the device sets the engine's `StopFlag` and
//! writes the stop eventfd. The worker looks at the flag between chains and
//! between completions, so it stops within one request's work; then it
//! cancels what the engine has not started and waits only for the I/O
//! already running (bounded by `MAX_BYTES_IN_FLIGHT`). It never touches the
//! rings after the flag is set.
//!
//! Durability: without FLUSH negotiated the device is write-through: every
//! request that changes the image (write, discard, write-zeroes) is followed
//! by fdatasync before it completes. A failed fdatasync stays failed: from
//! then on FLUSH (and write-through writes) report IOERR until the device is
//! reset, because the kernel reports a writeback error only once and data
//! the guest believed flushed may be lost.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::disk::{self, Disk};
use super::engine::{Completion, Engine, Op, StopFlag};
use super::metrics::BlockMetrics;
use super::request::{self, ChainBuf, DiskInfo, RequestError, RequestKind};
use crate::rate_limiter::RateLimiter;
use crate::virtio::device_thread::wait_events;
use crate::virtio::pause::PauseGate;
use crate::virtio::{GuestMemory, Interrupt};

/// Most requests in flight per device (the io_uring engine's submission
/// queue is this big and its completion queue twice that, so it never
/// overflows).
pub const MAX_IN_FLIGHT: usize = 4096;

/// Most bytes of reads and writes in flight per device: what a stop may have
/// to wait for. 64 MiB keeps any realistic queue depth of large requests
/// busy (64 requests of 1 MiB) while a reset waits for milliseconds, not
/// for gigabytes of I/O a guest queued with a few KiB of descriptors.
pub const MAX_BYTES_IN_FLIGHT: u64 = 64 << 20;

const TOKEN_STOP: u64 = u64::MAX;
const TOKEN_ENGINE: u64 = u64::MAX - 1;
const TOKEN_LIMITER: u64 = u64::MAX - 2;

const STATUS_OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
const STATUS_IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;

/// A queue the worker serves: its index (for `Interrupt::signal_queue`),
/// the queue, and its kick eventfd (None when driven by `run_once`).
pub struct WorkerQueue {
    pub index: u16,
    pub queue: Queue,
    pub kick: Option<EventFd>,
}

struct QueueState {
    index: u16,
    queue: Queue,
    kick: Option<EventFd>,
    /// Used entries added since the last signal.
    added: bool,
    /// Stopped popping because no slot was free.
    blocked: bool,
    /// Has (or may have) available chains not yet looked at.
    more: bool,
}

#[derive(Default)]
struct Slot {
    queue: usize,
    head: u16,
    status: GuestAddress,
    kind: Option<RequestKind>,
    data_len: u32,
    buf: ChainBuf,
}

/// Serves a block device's queues; see the module comment.
pub struct Worker {
    mem: GuestMemory,
    disk: Arc<Disk>,
    info: DiskInfo,
    queues: Vec<QueueState>,
    interrupt: Arc<dyn Interrupt>,
    engine: Engine,
    slots: Vec<Slot>,
    free: Vec<u32>,
    completions: Vec<Completion>,
    metrics: Arc<BlockMetrics>,
    /// FLUSH was not negotiated: the device must be write-through, so every
    /// request that changes the image is followed by fdatasync.
    write_through: bool,
    /// An fdatasync failed: later flushes fail too (see the module comment).
    flush_failed: bool,
    /// Data bytes of the reads and writes in flight.
    bytes_in_flight: u64,
    stop: StopFlag,
    /// Asked to hold still while the VM is paused (see `virtio::pause`).
    pause: Arc<PauseGate>,
    /// A new backing file to switch to the next time the worker parks.
    swap: DiskSwap,
    /// The disk's rate limit (every queue shares it).
    limiter: RateLimiter,
}

/// Where a device leaves a new disk for its parked worker to take.
pub type DiskSwap = Arc<std::sync::Mutex<Option<Arc<Disk>>>>;

impl Worker {
    pub fn new(
        mem: GuestMemory,
        disk: Arc<Disk>,
        queues: Vec<WorkerQueue>,
        interrupt: Arc<dyn Interrupt>,
        engine: Engine,
        metrics: Arc<BlockMetrics>,
        write_through: bool,
    ) -> Self {
        let depth: usize = queues.iter().map(|q| usize::from(q.queue.size())).sum();
        let depth = depth.clamp(1, MAX_IN_FLIGHT);
        let info = DiskInfo {
            capacity_sectors: disk.capacity_sectors(),
            readonly: disk.readonly(),
        };
        let stop = engine.stop_flag().clone();
        Worker {
            mem,
            disk,
            info,
            queues: queues
                .into_iter()
                .map(|q| QueueState {
                    index: q.index,
                    queue: q.queue,
                    kick: q.kick,
                    added: false,
                    blocked: false,
                    more: true,
                })
                .collect(),
            interrupt,
            engine,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free: (0..depth as u32).rev().collect(),
            completions: Vec::with_capacity(depth),
            metrics,
            write_through,
            flush_failed: false,
            bytes_in_flight: 0,
            stop,
            pause: Arc::default(),
            swap: Arc::default(),
            limiter: RateLimiter::unlimited(),
        }
    }

    /// Limit the disk's bytes and requests per second.
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// Take new disks from `swap` when parked (see `Block::replace_disk`).
    pub fn with_disk_swap(mut self, swap: DiskSwap) -> Self {
        self.swap = swap;
        self
    }

    /// After a pause: switch to the disk left in `swap`, if any. Nothing
    /// is in flight (the pause completed it), so the old engine goes at
    /// once; the new one keeps the device's stop flag. Returns whether the
    /// engine (and its completion eventfd) changed.
    fn take_swap(&mut self) -> bool {
        let Some(disk) = crate::bus::lock(&self.swap).take() else {
            return false;
        };
        let kind = self.engine.kind();
        self.engine = Engine::with_stop(
            disk.clone(),
            kind,
            self.slots.len() as u32,
            self.stop.clone(),
        );
        self.info = DiskInfo {
            capacity_sectors: disk.capacity_sectors(),
            readonly: disk.readonly(),
        };
        self.disk = disk;
        self.flush_failed = false;
        true
    }

    /// Use `gate` to hold the worker still while the VM is paused.
    pub fn with_pause_gate(mut self, gate: Arc<PauseGate>) -> Self {
        self.pause = gate;
        self
    }

    /// Stop taking chains off the rings: the device is stopping or pausing.
    fn holding(&self) -> bool {
        self.stop.is_set() || self.pause.requested()
    }

    /// Paused: complete the I/O in flight, signal it, then park until the
    /// pause ends. Returns with every queue marked to be looked at again.
    fn hold_still(&mut self) {
        while self.engine.in_flight() > 0 && !self.stop.is_set() {
            self.engine.drain(&mut self.completions);
            self.handle_completions();
        }
        self.signal();
        self.pause.park();
        for q in &mut self.queues {
            q.more = true;
        }
    }

    /// The number of requests that can be in flight at once.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Serve everything available now, wait for the engine to finish it, and
    /// signal: one synchronous round, for tests and the fuzz target.
    pub fn run_once(&mut self) {
        loop {
            for qi in 0..self.queues.len() {
                self.queues[qi].more = true;
                self.process_queue(qi);
            }
            self.pump();
            if self.engine.in_flight() > 0 {
                self.engine.drain(&mut self.completions);
                self.handle_completions();
            }
            self.signal();
            if !self.queues.iter().any(|q| q.more || q.blocked) {
                return;
            }
        }
    }

    /// The device thread's loop; returns when `stop` is signalled (after
    /// cancelling what has not started and waiting for the I/O already
    /// running) or on a fatal epoll error.
    pub fn run(mut self, stop: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd, token, events| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        // Kicks and completions are edge-triggered: every eventfd write
        // wakes epoll again, so their counters never need reading (one
        // syscall less per kick and per batch).
        let edge = EventSet::IN | EventSet::EDGE_TRIGGERED;
        add(stop.as_raw_fd(), TOKEN_STOP, EventSet::IN)?;
        if let Some(fd) = self.engine.event_fd() {
            add(fd, TOKEN_ENGINE, edge)?;
        }
        for (qi, q) in self.queues.iter().enumerate() {
            if let Some(kick) = &q.kick {
                add(kick.as_raw_fd(), qi as u64, edge)?;
            }
        }
        if let Some(fd) = self.limiter.timer_fd() {
            add(fd, TOKEN_LIMITER, EventSet::IN)?;
        }
        let mut events = vec![EpollEvent::default(); self.queues.len() + 3];
        // Chains made available before activation are served right away.
        let mut timeout = 0;
        loop {
            let n = wait_events(&epoll, timeout, &mut events)?;
            for ev in &events[..n] {
                match ev.data() {
                    // The same eventfd wakes the worker for a stop and for
                    // a pause; the flags say which.
                    TOKEN_STOP if self.stop.is_set() => return Ok(()),
                    TOKEN_STOP => {
                        let _ = stop.read();
                    }
                    TOKEN_ENGINE => {}
                    TOKEN_LIMITER => self.limiter.on_timer(),
                    qi => {
                        if let Some(q) = self.queues.get_mut(qi as usize) {
                            q.more = true;
                        }
                    }
                }
            }
            for qi in 0..self.queues.len() {
                if self.queues[qi].more {
                    self.process_queue(qi);
                }
            }
            self.pump();
            if self.stop.is_set() {
                return Ok(());
            }
            if self.pause.requested() {
                let old_fd = self.engine.event_fd();
                self.hold_still();
                if self.stop.is_set() {
                    return Ok(());
                }
                if self.take_swap() {
                    if let Some(fd) = old_fd {
                        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                    if let Some(fd) = self.engine.event_fd() {
                        add(fd, TOKEN_ENGINE, edge)?;
                    }
                }
                timeout = 0;
                continue;
            }
            self.signal();
            // A throttled disk sleeps until the limiter's timer.
            timeout = if self.queues.iter().any(|q| q.more) && !self.limiter.is_blocked() {
                0
            } else {
                -1
            };
        }
    }

    /// Pop up to one queue-size of chains from queue `qi`, parse them and
    /// start them.
    fn process_queue(&mut self, qi: usize) {
        let q = &mut self.queues[qi];
        q.blocked = false;
        q.more = false;
        let mut budget = q.queue.size();
        loop {
            let _ = self.queues[qi].queue.disable_notification(&self.mem);
            let mut popped = false;
            loop {
                if self.holding() {
                    // Looked at again after the pause.
                    self.queues[qi].more = true;
                    return;
                }
                if budget == 0 || self.limiter.is_blocked() {
                    self.queues[qi].more = true;
                    return;
                }
                if self.bytes_in_flight
                    >= MAX_BYTES_IN_FLIGHT - u64::from(request::MAX_REQUEST_BYTES)
                {
                    self.queues[qi].blocked = true;
                    return;
                }
                let Some(slot_id) = self.free.pop() else {
                    self.queues[qi].blocked = true;
                    return;
                };
                let Some(chain) = self.queues[qi].queue.pop_descriptor_chain(&self.mem) else {
                    self.free.push(slot_id);
                    break;
                };
                popped = true;
                budget -= 1;
                let head = chain.head_index();
                let slot = &mut self.slots[slot_id as usize];
                match request::parse(chain, &self.mem, self.info, &mut slot.buf) {
                    Ok(req) => {
                        let bytes = match req.kind {
                            RequestKind::Read { .. } | RequestKind::Write { .. } => req.data_len,
                            _ => 0,
                        };
                        if self.limiter.consume(1, u64::from(bytes)).is_err() {
                            // Served again when the limiter's timer fires.
                            self.queues[qi].queue.go_to_previous_position();
                            self.free.push(slot_id);
                            BlockMetrics::add(&self.metrics.throttled, 1);
                            self.queues[qi].more = true;
                            return;
                        }
                        slot.queue = qi;
                        slot.head = head;
                        slot.status = req.status;
                        slot.kind = Some(req.kind);
                        slot.data_len = req.data_len;
                        self.start(slot_id);
                    }
                    Err(rejected) => {
                        self.free.push(slot_id);
                        self.count_rejection(&rejected.error);
                        self.complete(qi, head, rejected.status, rejected.error.status(), 0);
                    }
                }
            }
            // Re-enable notifications; if chains arrived meanwhile, go on.
            // A ring that claims more chains but yields none (an avail index
            // more than a queue size ahead) is left alone until the next kick
            // rather than spun on.
            match self.queues[qi].queue.enable_notification(&self.mem) {
                Ok(true) if popped => continue,
                _ => return,
            }
        }
    }

    /// Start the request parsed into `slot_id`.
    fn start(&mut self, slot_id: u32) {
        let slot = &mut self.slots[slot_id as usize];
        let (qi, head, status) = (slot.queue, slot.head, slot.status);
        let op = match slot.kind {
            Some(RequestKind::Read { offset }) => Op::Read { offset },
            Some(RequestKind::Write { offset }) => Op::Write { offset },
            Some(RequestKind::Flush) => Op::Flush,
            Some(RequestKind::Discard { offset, len }) if len > 0 => Op::Discard { offset, len },
            Some(RequestKind::WriteZeroes { offset, len, unmap }) if len > 0 => {
                Op::WriteZeroes { offset, len, unmap }
            }
            Some(RequestKind::GetId) => {
                BlockMetrics::add(&self.metrics.get_ids, 1);
                let written = request::scatter(&self.mem, &slot.buf.data, self.disk.id());
                self.free.push(slot_id);
                match written {
                    Ok(n) => self.complete(qi, head, Some(status), STATUS_OK, n),
                    Err(_) => self.complete(qi, head, Some(status), STATUS_IOERR, 0),
                }
                return;
            }
            // Zero-length discard / write-zeroes: nothing to do.
            _ => {
                self.free.push(slot_id);
                self.complete(qi, head, Some(status), STATUS_OK, 0);
                return;
            }
        };
        // SAFETY: the iovecs live in this slot's buffer, which is neither
        // touched nor reallocated until the slot's completion is handled
        // (the slot is off the free list until then); they point into guest
        // memory that `self.mem` keeps mapped, and the engine is drained
        // before the worker (and so `self.mem`) goes away.
        let pushed = unsafe { self.engine.push(slot_id, op, &mut slot.buf.iovecs) };
        if pushed.is_ok() {
            self.bytes_in_flight += u64::from(slot.data_len);
        } else {
            BlockMetrics::add(&self.metrics.io_errors, 1);
            self.free.push(slot_id);
            self.complete(qi, head, Some(status), STATUS_IOERR, 0);
        }
    }

    /// Submit what was queued and handle completions until none are ready;
    /// queues that ran out of slots are served again as slots free up.
    fn pump(&mut self) {
        loop {
            // A failed submit (EBUSY/EAGAIN with a full completion queue)
            // leaves the entries queued; reaping below makes room.
            let _ = self.engine.submit();
            self.engine.reap(&mut self.completions);
            if self.completions.is_empty() || self.stop.is_set() {
                return;
            }
            self.handle_completions();
            for qi in 0..self.queues.len() {
                if self.queues[qi].blocked {
                    self.process_queue(qi);
                }
            }
        }
    }

    fn handle_completions(&mut self) {
        let mut batch = std::mem::take(&mut self.completions);
        for c in batch.drain(..) {
            // Stopping: the rings are no longer ours to write.
            if self.stop.is_set() {
                continue;
            }
            self.on_completion(c);
        }
        self.completions = batch;
    }

    fn on_completion(&mut self, c: Completion) {
        let Some(slot) = self.slots.get_mut(c.token as usize) else {
            return;
        };
        let Some(kind) = slot.kind.take() else {
            return;
        };
        let res = c.result;
        let data_len = slot.data_len;
        let disk = &self.disk;
        let stop = &self.stop;
        let m = &self.metrics;
        let outcome: io::Result<u32> = match kind {
            RequestKind::Read { offset } | RequestKind::Write { offset } => {
                self.bytes_in_flight = self.bytes_in_flight.saturating_sub(u64::from(data_len));
                let write = matches!(kind, RequestKind::Write { .. });
                let done = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else if res as u32 >= data_len {
                    Ok(())
                } else if res == 0 {
                    Err(io::Error::from(io::ErrorKind::UnexpectedEof))
                } else {
                    // Short transfer: finish it here.
                    let mut start = 0;
                    disk::advance_iovecs(&mut slot.buf.iovecs, &mut start, res as usize);
                    let rest = &mut slot.buf.iovecs[start..];
                    // SAFETY: the slot's iovecs point into guest memory that
                    // `self.mem` keeps mapped; the kernel is done with them
                    // (this is their completion).
                    unsafe { disk.rw_vectored(write, rest, offset + res as u64, stop) }.map(|_| ())
                };
                done.map(|_| {
                    let (count, bytes) = if write {
                        (&m.writes, &m.write_bytes)
                    } else {
                        (&m.reads, &m.read_bytes)
                    };
                    BlockMetrics::add(count, 1);
                    BlockMetrics::add(bytes, u64::from(data_len));
                    if write {
                        0
                    } else {
                        data_len
                    }
                })
            }
            RequestKind::Flush => {
                BlockMetrics::add(&m.flushes, 1);
                errno(res).map(|_| 0)
            }
            RequestKind::Discard { .. } => {
                BlockMetrics::add(&m.discards, 1);
                match errno(res) {
                    Err(e) if disk::is_unsupported(&e) => Ok(0),
                    other => other.map(|_| 0),
                }
            }
            RequestKind::WriteZeroes { offset, len, .. } => {
                BlockMetrics::add(&m.write_zeroes, 1);
                match errno(res) {
                    Err(e) if disk::is_unsupported(&e) => {
                        disk.zero_range_or_write(offset, len, stop).map(|_| 0)
                    }
                    other => other.map(|_| 0),
                }
            }
            RequestKind::GetId => Ok(0),
        };
        let (qi, head, status) = (slot.queue, slot.head, slot.status);
        let outcome = self.make_durable(kind, outcome);
        self.free.push(c.token);
        match outcome {
            Ok(written) => self.complete(qi, head, Some(status), STATUS_OK, written),
            Err(_) => {
                BlockMetrics::add(&self.metrics.io_errors, 1);
                self.complete(qi, head, Some(status), STATUS_IOERR, 0);
            }
        }
    }

    /// The durability rules (module comment): a FLUSH that failed, or any
    /// flush after an fdatasync failed, is an error; in write-through mode a
    /// request that changed the image is synced before it completes.
    fn make_durable(&mut self, kind: RequestKind, outcome: io::Result<u32>) -> io::Result<u32> {
        let changes_image = matches!(
            kind,
            RequestKind::Write { .. }
                | RequestKind::Discard { .. }
                | RequestKind::WriteZeroes { .. }
        );
        match kind {
            RequestKind::Flush if outcome.is_err() => self.flush_failed = true,
            RequestKind::Flush => {}
            _ if changes_image && self.write_through && outcome.is_ok() => {
                BlockMetrics::add(&self.metrics.write_through_syncs, 1);
                if self.disk.flush().is_err() {
                    self.flush_failed = true;
                }
            }
            _ => return outcome,
        }
        if self.flush_failed {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        outcome
    }

    /// Write the status byte (if there is one) and put the chain on the
    /// used ring. `written` counts data bytes written to the guest.
    fn complete(
        &mut self,
        qi: usize,
        head: u16,
        status: Option<GuestAddress>,
        code: u8,
        written: u32,
    ) {
        let used_len = match status {
            Some(addr) if self.mem.write_obj(code, addr).is_ok() => written.saturating_add(1),
            _ => {
                BlockMetrics::add(&self.metrics.no_status, 1);
                0
            }
        };
        let q = &mut self.queues[qi];
        if q.queue.add_used(&self.mem, head, used_len).is_ok() {
            q.added = true;
        }
    }

    fn count_rejection(&self, error: &RequestError) {
        let counter = match error.status() {
            s if s == STATUS_IOERR => &self.metrics.invalid_requests,
            _ => &self.metrics.unsupported,
        };
        BlockMetrics::add(counter, 1);
    }

    /// Signal every queue that gained used entries, once, if the driver
    /// wants it.
    fn signal(&mut self) {
        for q in &mut self.queues {
            if !q.added {
                continue;
            }
            q.added = false;
            if q.queue.needs_notification(&self.mem).unwrap_or(true) {
                BlockMetrics::add(&self.metrics.interrupts, 1);
                let _ = self.interrupt.signal_queue(q.index);
            }
        }
    }
}

impl Drop for Worker {
    /// Never let the kernel write into guest memory after the worker is
    /// gone: wait for everything in flight. When stopping, first cancel what
    /// has not started, so only the I/O already running is waited for.
    fn drop(&mut self) {
        if self.stop.is_set() {
            let busy = self.slots.iter().enumerate();
            let tokens = busy
                .filter(|(_, s)| s.kind.is_some())
                .map(|(i, _)| i as u32);
            self.engine.cancel(tokens);
        }
        let mut done = Vec::new();
        self.engine.drain(&mut done);
    }
}

fn errno(res: i32) -> io::Result<i32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res)
    }
}
