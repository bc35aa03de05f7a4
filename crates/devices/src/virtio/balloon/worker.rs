//! The device thread of an activated balloon.
//!
//! It waits (epoll) on the kicks of its queues, the statistics timer, the
//! handle's "changed" eventfd (a new statistics interval) and its wake
//! eventfd (stop and pause). Each turn serves up to one queue-size of
//! chains per queue:
//! - inflate: the page frame numbers are merged into ranges and given back
//!   to the host (`release.rs`);
//! - deflate: counted (the guest may use those pages again at once; a
//!   touch faults a fresh page in);
//! - statistics: the buffer is read into the shared `GuestStats` and held;
//!   when the timer fires it is returned (used, 0 bytes), which asks the
//!   driver for new statistics (virtio 1.2, 5.5.6.3);
//! - free page reporting: each reported range is given back, then the
//!   chain returned.
//!
//! Each queue that gained used entries is signalled once per turn.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::device::Shared;
use super::metrics::BalloonMetrics;
use super::release::{merge_pfns, release_all, Released};
use super::request;
use crate::virtio::device_thread::{wait_events, WorkerControl};
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt};

const TOKEN_WAKE: u64 = 0;
const TOKEN_CHANGED: u64 = 1;
const TOKEN_TIMER: u64 = 2;
/// Kick of queue i (in `Queues::all` order) is TOKEN_KICK + i.
const TOKEN_KICK: u64 = 8;

/// The balloon's queues, by role; their index is their position among
/// the activated queues (what `Interrupt::signal_queue` takes).
pub struct Queues {
    pub inflate: ServedQueue,
    pub deflate: ServedQueue,
    pub stats: Option<ServedQueue>,
    pub reporting: Option<ServedQueue>,
}

impl Queues {
    /// The queues and their kicks, in order.
    pub fn new(
        inflate: ActiveQueue,
        deflate: ActiveQueue,
        stats: Option<ActiveQueue>,
        reporting: Option<ActiveQueue>,
    ) -> (Queues, Vec<EventFd>) {
        let mut kicks = Vec::new();
        let mut index = 0u16;
        let mut take = |aq: ActiveQueue| {
            kicks.push(aq.kick);
            let q = ServedQueue::new(index, aq.queue);
            index += 1;
            q
        };
        let inflate = take(inflate);
        let deflate = take(deflate);
        let stats = stats.map(&mut take);
        let reporting = reporting.map(&mut take);
        (
            Queues {
                inflate,
                deflate,
                stats,
                reporting,
            },
            kicks,
        )
    }

    /// Plain queues, for tests.
    pub fn from_queues(
        inflate: Queue,
        deflate: Queue,
        stats: Option<Queue>,
        reporting: Option<Queue>,
    ) -> Queues {
        let mut index = 0u16;
        let mut take = |q: Queue| {
            let s = ServedQueue::new(index, q);
            index += 1;
            s
        };
        Queues {
            inflate: take(inflate),
            deflate: take(deflate),
            stats: stats.map(&mut take),
            reporting: reporting.map(&mut take),
        }
    }
}

/// Serves a balloon's queues; see the module comment.
pub struct Worker {
    mem: GuestMemory,
    q: Queues,
    interrupt: Arc<dyn Interrupt>,
    shared: Arc<Shared>,
    metrics: Arc<BalloonMetrics>,
    /// The statistics buffer the device holds until it wants new ones.
    held_stats: Option<u16>,
    timer: Option<TimerFd>,
}

impl Worker {
    pub(super) fn new(
        mem: GuestMemory,
        q: Queues,
        interrupt: Arc<dyn Interrupt>,
        shared: Arc<Shared>,
        metrics: Arc<BalloonMetrics>,
    ) -> io::Result<Worker> {
        let timer = match q.stats {
            Some(_) => Some(crate::rate_limiter::new_timer()?),
            None => None,
        };
        let mut w = Worker {
            mem,
            q,
            interrupt,
            shared,
            metrics,
            held_stats: None,
            timer,
        };
        w.arm_timer()?;
        Ok(w)
    }

    /// The queues (for tests: their used indexes).
    pub fn queues(&self) -> &Queues {
        &self.q
    }

    fn arm_timer(&mut self) -> io::Result<()> {
        let secs = self.shared.stats_interval_s.load(Ordering::SeqCst);
        if let (Some(t), true) = (&mut self.timer, secs > 0) {
            let every = Duration::from_secs(u64::from(secs));
            t.reset(every, Some(every))?;
        }
        Ok(())
    }

    /// Serve the inflate (`inflate` true) or deflate queue.
    fn serve_pfns(&mut self, inflate: bool, holding: &dyn Fn() -> bool) -> bool {
        let q = if inflate {
            &mut self.q.inflate
        } else {
            &mut self.q.deflate
        };
        let (mem, shared, m) = (&self.mem, &self.shared, &self.metrics);
        drain(q, mem, holding, |chain| {
            let head = chain.head_index();
            match request::pfns(chain, mem) {
                Ok(mut pfns) if inflate => {
                    BalloonMetrics::add(&m.inflated_pages, pfns.len() as u64);
                    let ranges = merge_pfns(&mut pfns);
                    count_release(m, release_all(mem, &ranges, shared.discard));
                }
                Ok(pfns) => BalloonMetrics::add(&m.deflated_pages, pfns.len() as u64),
                Err(_) => BalloonMetrics::add(&m.bad_chains, 1),
            }
            Some(head)
        })
    }

    /// Take the statistics buffer the driver posted, if any; the device
    /// holds it (an older one goes back).
    fn serve_stats(&mut self, holding: &dyn Fn() -> bool) -> bool {
        let Some(q) = &mut self.q.stats else {
            return false;
        };
        let (mem, shared, m, held) = (&self.mem, &self.shared, &self.metrics, &mut self.held_stats);
        drain(q, mem, holding, |chain| {
            let head = chain.head_index();
            match request::stats(chain, mem) {
                Ok(buf) => {
                    super::device::lock_stats(shared).update(&buf);
                    BalloonMetrics::add(&m.stats_updates, 1);
                }
                Err(_) => BalloonMetrics::add(&m.bad_chains, 1),
            }
            held.replace(head)
        })
    }

    /// The statistics interval passed: hand the buffer back, asking for
    /// new statistics.
    pub fn request_stats(&mut self) {
        if let (Some(q), Some(head)) = (&mut self.q.stats, self.held_stats.take()) {
            q.add_used(&self.mem, head, 0);
        }
    }

    /// Give back the ranges the guest reported free.
    fn serve_reporting(&mut self, holding: &dyn Fn() -> bool) -> bool {
        let Some(q) = &mut self.q.reporting else {
            return false;
        };
        let (mem, shared, m) = (&self.mem, &self.shared, &self.metrics);
        drain(q, mem, holding, |chain| {
            let head = chain.head_index();
            match request::free_ranges(chain, mem) {
                Ok(ranges) => {
                    let ranges: Vec<(u64, u64)> =
                        ranges.iter().map(|&(a, l)| (a.0, u64::from(l))).collect();
                    let total: u64 = ranges.iter().map(|r| r.1).sum();
                    BalloonMetrics::add(&m.reported_bytes, total);
                    count_release(m, release_all(mem, &ranges, shared.discard));
                }
                Err(_) => BalloonMetrics::add(&m.bad_chains, 1),
            }
            Some(head)
        })
    }

    /// One turn over every queue; true when more may remain.
    pub fn serve(&mut self, holding: &dyn Fn() -> bool) -> bool {
        let mut more = self.serve_pfns(true, holding);
        more |= self.serve_pfns(false, holding);
        more |= self.serve_stats(holding);
        more |= self.serve_reporting(holding);
        more
    }

    /// Signal each queue that gained used entries, if the driver wants it.
    pub fn signal(&mut self) {
        let q = &mut self.q;
        for sq in [Some(&mut q.inflate), Some(&mut q.deflate)]
            .into_iter()
            .chain([q.stats.as_mut(), q.reporting.as_mut()])
            .flatten()
        {
            if sq.signal(&self.mem, self.interrupt.as_ref()) {
                BalloonMetrics::add(&self.metrics.interrupts, 1);
            }
        }
    }

    /// The device thread's loop; returns when the device stops, or on a
    /// fatal epoll error. `kicks` are the queues' kicks in order.
    pub fn run(mut self, kicks: &[EventFd], control: &WorkerControl) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd, token, events| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(control.wake.as_raw_fd(), TOKEN_WAKE, EventSet::IN)?;
        add(self.shared.changed.as_raw_fd(), TOKEN_CHANGED, EventSet::IN)?;
        if let Some(t) = &self.timer {
            add(t.as_raw_fd(), TOKEN_TIMER, EventSet::IN)?;
        }
        for (i, kick) in kicks.iter().enumerate() {
            add(
                kick.as_raw_fd(),
                TOKEN_KICK + i as u64,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            )?;
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
            let more = self.serve(&|| control.holding());
            self.signal();
            let n = wait_events(&epoll, if more { 0 } else { -1 }, &mut events)?;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        let _ = control.wake.read();
                    }
                    TOKEN_CHANGED => {
                        let _ = self.shared.changed.read();
                        self.arm_timer()?;
                    }
                    TOKEN_TIMER => {
                        if let Some(t) = &mut self.timer {
                            let _ = t.wait();
                        }
                        self.request_stats();
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Serve up to one queue-size of `q`'s chains: `each` handles a chain and
/// names the head to complete (0 bytes written), if any. True when more
/// may remain (the budget ran out, or a stop or pause came).
fn drain<'m>(
    q: &mut ServedQueue,
    mem: &'m GuestMemory,
    holding: &dyn Fn() -> bool,
    mut each: impl FnMut(virtio_queue::DescriptorChain<&'m GuestMemory>) -> Option<u16>,
) -> bool {
    let mut budget = q.queue.size();
    q.begin(mem);
    loop {
        if holding() || budget == 0 {
            return true;
        }
        let Some(chain) = q.pop(mem) else {
            return false;
        };
        budget -= 1;
        if let Some(head) = each(chain) {
            q.add_used(mem, head, 0);
        }
    }
}

fn count_release(m: &BalloonMetrics, r: Released) {
    BalloonMetrics::add(&m.released_bytes, r.bytes);
    BalloonMetrics::add(&m.release_calls, r.calls);
    if r.refused > 0 {
        BalloonMetrics::add(&m.release_fails, 1);
    }
}
