//! The thread of one queue pair of an activated network device.
//!
//! It waits (epoll) on the pair's RX and TX kicks, its backend's fd
//! (edge-triggered: readable means frames wait, writable means room after
//! a full backend), the two rate limiters' timers, the control queue's
//! kick (pair 0 only) and its wake eventfd (stop and pause). Each turn:
//! - TX: every frame the guest queued goes to the backend and its chain
//!   back to the driver; a full backend leaves the rest on the ring until
//!   it is writable again;
//! - RX: frames are read from the backend while the guest has buffers for
//!   them (one chain per frame, or several with mergeable buffers); a
//!   frame with nowhere to go waits in the worker, and the backend is not
//!   read again until the driver posts buffers, so a guest that posts none
//!   holds up only its own device (the host kernel queues, then drops);
//! - each queue is signalled once per turn, if the driver wants it.
//!
//! At most one queue-size of chains is served per direction per turn, so
//! neither direction, a stop nor a pause is starved.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::Backend;
use super::ctrl::Ctrl;
use super::frame::{self, RxChain, MAX_FRAME_LEN, VNET_HDR_LEN};
use super::metrics::NetMetrics;
use crate::rate_limiter::{LimitsMailbox, RateLimiter, RateLimiterConfig};

/// Patches to a running worker's RX and TX limiters (None: unchanged).
pub type NetLimits = LimitsMailbox<(Option<RateLimiterConfig>, Option<RateLimiterConfig>)>;
use crate::virtio::chain::{gather, scatter, total_len};
use crate::virtio::device_thread::{wait_events, WorkerControl};
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::{GuestMemory, Interrupt};

const TOKEN_WAKE: u64 = 0;
const TOKEN_RX_KICK: u64 = 1;
const TOKEN_TX_KICK: u64 = 2;
const TOKEN_CTRL_KICK: u64 = 3;
const TOKEN_BACKEND: u64 = 4;
const TOKEN_RX_TIMER: u64 = 5;
const TOKEN_TX_TIMER: u64 = 6;

/// What one direction's turn ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Nothing more to do until an event (a kick, the backend).
    Idle,
    /// More may remain: the turn's budget ran out, or a stop or pause came.
    More,
    /// The rate limiter holds this direction until its timer fires.
    Throttled,
}

/// One direction's queue and rate limiter.
pub struct Direction {
    pub queue: ServedQueue,
    pub limiter: RateLimiter,
}

/// Serves one queue pair; see the module comment.
pub struct Worker<B: Backend> {
    mem: GuestMemory,
    rx: Direction,
    tx: Direction,
    ctrl: Option<Ctrl>,
    backend: B,
    interrupt: Arc<dyn Interrupt>,
    metrics: Arc<NetMetrics>,
    mergeable: bool,
    /// The frame read from the backend and not yet delivered, if any
    /// (`rx_len` bytes of `rx_frame`), and whether the RX limiter has
    /// been charged for it.
    rx_frame: Vec<u8>,
    rx_len: Option<usize>,
    rx_charged: bool,
    /// The chains one frame is being delivered into (kept to reuse its
    /// allocation from frame to frame).
    rx_chains: Vec<RxChain>,
    /// The backend may have frames (an edge was seen and no WouldBlock
    /// since).
    readable: bool,
    /// The backend said WouldBlock on a write; TX waits for writable.
    tx_blocked: bool,
    /// The TX limiter was charged for the frame at the head of the ring
    /// (which went back on it when the backend was full).
    tx_charged: bool,
    tx_frame: Vec<u8>,
    /// The backend takes frames as iovecs (no copy out of guest memory).
    vectored: bool,
    tx_iov: IoVecs,
    /// Where new limiter settings arrive while the worker runs.
    limits: Option<Arc<NetLimits>>,
}

impl<B: Backend> Worker<B> {
    pub fn new(
        mem: GuestMemory,
        rx: Direction,
        tx: Direction,
        backend: B,
        interrupt: Arc<dyn Interrupt>,
        metrics: Arc<NetMetrics>,
        mergeable: bool,
    ) -> Self {
        let vectored = backend.vectored();
        Worker {
            mem,
            rx,
            tx,
            ctrl: None,
            backend,
            interrupt,
            metrics,
            mergeable,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_len: None,
            rx_charged: false,
            rx_chains: Vec::new(),
            readable: true,
            tx_blocked: false,
            tx_charged: false,
            tx_frame: vec![0; MAX_FRAME_LEN],
            vectored,
            tx_iov: IoVecs(Vec::new()),
            limits: None,
        }
    }

    /// Take new limiter settings from `limits` while running (the
    /// device wakes the worker after posting them).
    pub fn with_limits(mut self, limits: Arc<NetLimits>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Apply settings posted since the last turn; each limiter whose
    /// timerfd is new is added to `epoll`.
    fn take_limits(&mut self, epoll: &Epoll) -> io::Result<()> {
        let Some((rx, tx)) = self.limits.as_ref().and_then(|l| l.take()) else {
            return Ok(());
        };
        for (dir, patch, token) in [
            (&mut self.rx, rx, TOKEN_RX_TIMER),
            (&mut self.tx, tx, TOKEN_TX_TIMER),
        ] {
            let Some(patch) = patch else {
                continue;
            };
            let before = dir.limiter.timer_fd();
            // A patch that cannot be applied (no timerfd to be had) keeps
            // the old limits; the device goes on serving.
            if let Err(e) = dir.limiter.patch(&patch) {
                eprintln!("vireo: virtio-net: new rate limits not applied: {e}");
                continue;
            }
            if let (None, Some(fd)) = (before, dir.limiter.timer_fd()) {
                epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )?;
            }
        }
        // (A frame already charged under the old settings is not charged
        // again.)
        Ok(())
    }

    /// Serve the control queue too (queue pair 0).
    pub fn with_ctrl(mut self, ctrl: Ctrl) -> Self {
        self.ctrl = Some(ctrl);
        self
    }

    /// The RX and TX queues (for tests: their used indexes).
    pub fn queues(&self) -> (&Queue, &Queue) {
        (&self.rx.queue.queue, &self.tx.queue.queue)
    }

    /// Send up to one queue-size of the guest's frames to the backend.
    pub fn serve_tx(&mut self, holding: &dyn Fn() -> bool) -> Served {
        let mut budget = self.tx.queue.queue.size();
        self.tx.queue.begin(&self.mem);
        loop {
            if holding() || budget == 0 {
                return Served::More;
            }
            if self.tx_blocked {
                return Served::Idle;
            }
            if !self.tx_charged && self.tx.limiter.is_blocked() {
                return Served::Throttled;
            }
            let Some(chain) = self.tx.queue.pop(&self.mem) else {
                return Served::Idle;
            };
            budget -= 1;
            let head = chain.head_index();
            let segs = match frame::parse_tx(chain, &self.mem) {
                Ok(s) => s,
                Err(_) => {
                    NetMetrics::add(&self.metrics.bad_chains, 1);
                    self.tx.queue.add_used(&self.mem, head, 0);
                    continue;
                }
            };
            // Straight from guest memory when the backend can, else
            // copied out first.
            let vectored = self.vectored && self.tx_iov.fill(&self.mem, &segs);
            let len = if vectored {
                total_len(&segs) as usize
            } else {
                match gather(&self.mem, &segs, &mut self.tx_frame) {
                    Ok(n) => n,
                    Err(_) => {
                        NetMetrics::add(&self.metrics.bad_chains, 1);
                        self.tx.queue.add_used(&self.mem, head, 0);
                        continue;
                    }
                }
            };
            let payload = (len - VNET_HDR_LEN) as u64;
            if !self.tx_charged && self.tx.limiter.consume(1, payload).is_err() {
                self.tx.queue.undo_pop();
                NetMetrics::add(&self.metrics.tx_throttled, 1);
                return Served::Throttled;
            }
            self.tx_charged = true;
            let sent = if vectored {
                self.backend.send_iovecs(&self.tx_iov.0)
            } else {
                self.backend.send(&self.tx_frame[..len])
            };
            match sent {
                Ok(()) => {
                    NetMetrics::add(&self.metrics.tx_packets, 1);
                    NetMetrics::add(&self.metrics.tx_bytes, payload);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Sent again once the backend is writable.
                    self.tx.queue.undo_pop();
                    self.tx_blocked = true;
                    return Served::Idle;
                }
                Err(_) => NetMetrics::add(&self.metrics.tx_errors, 1),
            }
            self.tx_charged = false;
            self.tx.queue.add_used(&self.mem, head, 0);
        }
    }

    /// Read the next frame from the backend into `rx_frame`; false when
    /// none waits.
    fn read_frame(&mut self) -> bool {
        while self.readable {
            match self.backend.recv(&mut self.rx_frame) {
                Ok(n) if n >= VNET_HDR_LEN => {
                    self.rx_len = Some(n);
                    return true;
                }
                // A runt (a backend bug): nothing to deliver.
                Ok(_) => NetMetrics::add(&self.metrics.rx_dropped, 1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        NetMetrics::add(&self.metrics.rx_dropped, 1);
                    }
                    // The next edge says when there is more.
                    self.readable = false;
                }
            }
        }
        false
    }

    /// Deliver up to one queue-size of frames from the backend.
    pub fn serve_rx(&mut self, holding: &dyn Fn() -> bool) -> Served {
        let mut budget = self.rx.queue.queue.size();
        self.rx.queue.begin(&self.mem);
        loop {
            if holding() || budget == 0 {
                return Served::More;
            }
            if self.rx_len.is_none() && !self.read_frame() {
                return Served::Idle;
            }
            let Some(len) = self.rx_len else {
                return Served::Idle;
            };
            if !self.rx_charged {
                if self.rx.limiter.is_blocked()
                    || self
                        .rx
                        .limiter
                        .consume(1, (len - VNET_HDR_LEN) as u64)
                        .is_err()
                {
                    NetMetrics::add(&self.metrics.rx_throttled, 1);
                    return Served::Throttled;
                }
                self.rx_charged = true;
            }
            match self.deliver(len) {
                Delivery::NoBuffers => return Served::Idle,
                Delivery::Delivered(n) => {
                    budget = budget.saturating_sub(n as u16);
                    NetMetrics::add(&self.metrics.rx_packets, 1);
                    NetMetrics::add(&self.metrics.rx_bytes, (len - VNET_HDR_LEN) as u64);
                }
                Delivery::Dropped(n) => {
                    budget = budget.saturating_sub(n.max(1) as u16);
                    NetMetrics::add(&self.metrics.rx_dropped, 1);
                }
            }
            self.rx_len = None;
            self.rx_charged = false;
        }
    }

    /// Put the pending frame (`len` bytes) into the chains it needs.
    fn deliver(&mut self, len: usize) -> Delivery {
        let mut chains = std::mem::take(&mut self.rx_chains);
        chains.clear();
        let delivery = self.deliver_into(len, &mut chains);
        self.rx_chains = chains;
        delivery
    }

    fn deliver_into(&mut self, len: usize, chains: &mut Vec<RxChain>) -> Delivery {
        let mut room = 0u64;
        while room < len as u64 {
            if !self.mergeable && !chains.is_empty() {
                break;
            }
            let Some(chain) = self.rx.queue.pop(&self.mem) else {
                // Wait for the driver's buffers with the frame kept.
                for _ in 0..chains.len() {
                    self.rx.queue.undo_pop();
                }
                return Delivery::NoBuffers;
            };
            let head = chain.head_index();
            match frame::parse_rx(chain, &self.mem) {
                Ok(c) => {
                    room += c.room;
                    chains.push(c);
                }
                Err(_) => {
                    // A driver that posts bad buffers loses this frame;
                    // every chain taken for it completes empty.
                    NetMetrics::add(&self.metrics.bad_chains, 1);
                    self.rx.queue.add_used(&self.mem, head, 0);
                    for c in chains.iter() {
                        self.rx.queue.add_used(&self.mem, c.head, 0);
                    }
                    return Delivery::Dropped(chains.len() + 1);
                }
            }
        }
        if room < len as u64 {
            // One chain too small for the frame: the chain stays for the
            // next frame, this one is dropped.
            self.rx.queue.undo_pop();
            return Delivery::Dropped(0);
        }
        let n = chains.len();
        frame::set_num_buffers(&mut self.rx_frame[..len], n as u16);
        let mut at = 0usize;
        for c in chains.iter() {
            let wrote = scatter(&self.mem, &c.segs, &self.rx_frame[at..len]).unwrap_or(0);
            at += wrote;
            self.rx.queue.add_used(&self.mem, c.head, wrote as u32);
        }
        Delivery::Delivered(n)
    }

    /// Serve the control queue, if this pair has it.
    pub fn serve_ctrl(&mut self) {
        if let Some(ctrl) = &mut self.ctrl {
            let (before, failed) = (ctrl.commands, ctrl.failed);
            ctrl.serve(&self.mem);
            NetMetrics::add(&self.metrics.ctrl_commands, ctrl.commands - before);
            NetMetrics::add(&self.metrics.ctrl_failed, ctrl.failed - failed);
        }
    }

    /// Signal each queue that gained used entries, if the driver wants it.
    pub fn signal(&mut self) {
        let ctrl = self.ctrl.as_mut().map(|c| &mut c.queue);
        for q in [Some(&mut self.rx.queue), Some(&mut self.tx.queue), ctrl]
            .into_iter()
            .flatten()
        {
            if q.signal(&self.mem, self.interrupt.as_ref()) {
                NetMetrics::add(&self.metrics.interrupts, 1);
            }
        }
    }

    /// The backend's fd became readable or writable (or both).
    pub fn on_backend(&mut self, events: EventSet) {
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            // A frame half written is finished first (an error shows again
            // on the next send, which counts it).
            let _ = self.backend.flush();
            self.tx_blocked = false;
        }
    }

    /// One synchronous round (tests): TX, RX, control, signal.
    pub fn run_once(&mut self) -> (Served, Served) {
        let tx = self.serve_tx(&|| false);
        let rx = self.serve_rx(&|| false);
        self.serve_ctrl();
        self.signal();
        (tx, rx)
    }

    /// The thread's loop; returns when the device stops, or on a fatal
    /// epoll error. `kicks` are this pair's RX and TX kicks, then the
    /// control queue's for pair 0.
    pub fn run(mut self, kicks: &[EventFd], control: &WorkerControl) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd, token, events| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(control.wake.as_raw_fd(), TOKEN_WAKE, EventSet::IN)?;
        // Kicks are edge-triggered: every write wakes epoll again, so the
        // counters never need reading.
        for (kick, token) in kicks
            .iter()
            .zip([TOKEN_RX_KICK, TOKEN_TX_KICK, TOKEN_CTRL_KICK])
        {
            add(
                kick.as_raw_fd(),
                token,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            )?;
        }
        add(
            self.backend.raw_fd(),
            TOKEN_BACKEND,
            EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
        )?;
        if let Some(fd) = self.rx.limiter.timer_fd() {
            add(fd, TOKEN_RX_TIMER, EventSet::IN)?;
        }
        if let Some(fd) = self.tx.limiter.timer_fd() {
            add(fd, TOKEN_TX_TIMER, EventSet::IN)?;
        }
        let mut events = [EpollEvent::default(); 8];
        loop {
            if control.stop.is_set() {
                return Ok(());
            }
            if control.pause.requested() {
                control.pause.park();
                continue;
            }
            self.take_limits(&epoll)?;
            let holding = || control.holding();
            // Chains made available before activation are served at once.
            let tx = self.serve_tx(&holding);
            let rx = self.serve_rx(&holding);
            self.serve_ctrl();
            self.signal();
            let timeout = if tx == Served::More || rx == Served::More {
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
                    TOKEN_BACKEND => self.on_backend(ev.event_set()),
                    TOKEN_RX_TIMER => self.rx.limiter.on_timer(),
                    TOKEN_TX_TIMER => self.tx.limiter.on_timer(),
                    _ => {}
                }
            }
        }
    }
}

/// Most iovecs one frame is sent with (Linux's IOV_MAX); a chain in more
/// pieces is copied out instead.
const MAX_IOV: usize = 1024;

/// A TX frame as iovecs into guest memory, rebuilt for each frame.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs are only pointers into guest memory, which every
// thread of the VMM may access; they are rebuilt before each use, while
// the worker holds the memory mapping.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Point at `segs` in `mem`; false (use a copy) when a segment is not
    /// guest RAM or the frame has too many pieces.
    fn fill(&mut self, mem: &GuestMemory, segs: &[(vm_memory::GuestAddress, u32)]) -> bool {
        self.0.clear();
        for &(addr, len) in segs {
            for slice in vm_memory::GuestMemoryBackend::get_slices(mem, addr, len as usize) {
                let Ok(slice) = slice else {
                    return false;
                };
                if self.0.len() == MAX_IOV {
                    return false;
                }
                // The mmap backend's pointer stays valid while the mapping
                // does (the guard matters only for Xen's mappings).
                self.0.push(libc::iovec {
                    iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                    iov_len: slice.len(),
                });
            }
        }
        true
    }
}

/// What became of a frame offered to the guest.
enum Delivery {
    /// Written into this many chains.
    Delivered(usize),
    /// The driver has no buffers now; the frame waits.
    NoBuffers,
    /// Lost (no single buffer could hold it, or bad buffers); this many
    /// chains were completed empty.
    Dropped(usize),
}
