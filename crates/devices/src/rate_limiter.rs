//! Token-bucket rate limiting, Firecracker's shape: a limiter has up to two
//! buckets, one counting bytes (bandwidth) and one counting operations,
//! each with a `size` (the tokens it holds when full, refilled evenly over
//! `refill_time` milliseconds), and an optional `one_time_burst` of extra
//! tokens at start that never refill.
//!
//! One implementation for every device that throttles (block, net, rng).
//! A device thread asks `consume(ops, bytes)` before serving a request;
//! when a bucket is short, nothing is taken, the limiter arms its timerfd
//! for the moment enough tokens will be there, and the device stops serving
//! that queue until the timerfd (which it polls with its other events)
//! fires: a throttled device sleeps, it never polls.
//!
//! A request bigger than a whole bucket is let through when the bucket is
//! full and leaves it in debt, paid off by later refills before anything
//! else passes, so the average rate holds for any request size.
//!
//! Arithmetic is exact: the budget is kept in token-nanoseconds (tokens
//! times the refill time), so refills of any length lose no fraction.

use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// One bucket's settings (Firecracker's `TokenBucket` JSON object).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens in a full bucket (bytes or operations).
    pub size: u64,
    /// Extra tokens available once at start, never refilled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket to `size`.
    pub refill_time: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A limiter's settings (Firecracker's `RateLimiter` JSON object). A bucket
/// left out, or with size or refill time 0, does not limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<BucketConfig>,
}

impl RateLimiterConfig {
    /// `bytes_per_sec` and `ops_per_sec` (0: unlimited), refilled over one
    /// second, each bucket holding one second's worth.
    pub fn per_second(bytes_per_sec: u64, ops_per_sec: u64) -> Self {
        let bucket = |size| {
            (size > 0).then_some(BucketConfig {
                size,
                one_time_burst: 0,
                refill_time: 1000,
            })
        };
        RateLimiterConfig {
            bandwidth: bucket(bytes_per_sec),
            ops: bucket(ops_per_sec),
        }
    }

    /// These settings with `patch` applied, Firecracker's PATCH semantics:
    /// a bucket the patch names replaces ours (one with size or refill
    /// time 0 turns that limit off), a bucket it leaves out stays.
    pub fn patched(&self, patch: &RateLimiterConfig) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: patch.bandwidth.or(self.bandwidth),
            ops: patch.ops.or(self.ops),
        }
    }

    /// Whether any bucket limits anything.
    pub fn is_limited(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .flatten()
            .any(|b| b.size > 0 && b.refill_time > 0)
    }
}

/// A token bucket; see the module comment.
#[derive(Debug)]
pub struct TokenBucket {
    size: u64,
    /// Nanoseconds to refill `size` tokens.
    refill_ns: u128,
    /// Available tokens times `refill_ns`; at most `size * refill_ns`.
    budget: u128,
    /// Owed by a request larger than the bucket (same units).
    debt: u128,
    /// Left of the one-time burst, in tokens.
    burst: u64,
    last: Instant,
}

impl TokenBucket {
    /// None when `config` does not limit.
    pub fn new(config: &BucketConfig, now: Instant) -> Option<TokenBucket> {
        if config.size == 0 || config.refill_time == 0 {
            return None;
        }
        let refill_ns = u128::from(config.refill_time) * 1_000_000;
        Some(TokenBucket {
            size: config.size,
            refill_ns,
            budget: u128::from(config.size).saturating_mul(refill_ns),
            debt: 0,
            burst: config.one_time_burst,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        // Each nanosecond adds `size` token-nanoseconds.
        let mut gained = elapsed.saturating_mul(u128::from(self.size));
        let paid = gained.min(self.debt);
        self.debt -= paid;
        gained -= paid;
        let full = u128::from(self.size).saturating_mul(self.refill_ns);
        self.budget = self.budget.saturating_add(gained).min(full);
    }

    /// How long until `tokens` could be taken (zero: now).
    fn wait_for(&mut self, tokens: u64, now: Instant) -> Duration {
        self.refill(now);
        let from_burst = tokens.min(self.burst);
        // A request bigger than the bucket needs a full bucket.
        let need = u128::from((tokens - from_burst).min(self.size)).saturating_mul(self.refill_ns);
        let short = (need + self.debt).saturating_sub(self.budget);
        if short == 0 {
            return Duration::ZERO;
        }
        let ns = short.div_ceil(u128::from(self.size));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Take `tokens`; the caller checked `wait_for` is zero.
    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = u128::from(tokens - from_burst).saturating_mul(self.refill_ns);
        let from_budget = rest.min(self.budget);
        self.budget -= from_budget;
        self.debt += rest - from_budget;
    }
}

/// A timerfd whose read does not block when it has not fired.
pub(crate) fn new_timer() -> std::io::Result<TimerFd> {
    let t = TimerFd::new()?;
    let fd = t.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t)
}

/// Patches for a running device's limiters, handed from the VMM's thread
/// to the worker thread that owns the limiters, which takes them between
/// steps (the device wakes it). Patches posted before the worker took the
/// last one are merged (a later bucket wins), so none is lost.
#[derive(Debug, Default)]
pub struct LimitsMailbox<T>(std::sync::Mutex<Option<T>>);

/// What a [`LimitsMailbox`] carries: merged with a later post.
pub trait Mergeable {
    fn merge(&mut self, later: Self);
}

impl Mergeable for RateLimiterConfig {
    fn merge(&mut self, later: Self) {
        *self = self.patched(&later);
    }
}

impl<T: Mergeable> Mergeable for Option<T> {
    fn merge(&mut self, later: Self) {
        match (self.as_mut(), later) {
            (Some(a), Some(b)) => a.merge(b),
            (None, b) => *self = b,
            (_, None) => {}
        }
    }
}

impl<A: Mergeable, B: Mergeable> Mergeable for (A, B) {
    fn merge(&mut self, later: Self) {
        self.0.merge(later.0);
        self.1.merge(later.1);
    }
}

impl<T: Mergeable> LimitsMailbox<T> {
    /// Leave a patch (merged into any not yet taken).
    pub fn post(&self, patch: T) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(pending) => pending.merge(patch),
            None => *slot = Some(patch),
        }
    }

    /// The patch left since the last take, if any.
    pub fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Which of a limiter's buckets held a request back (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttled {
    Bandwidth,
    Ops,
}

/// A device's limiter: its buckets and the timerfd that wakes the device
/// when a throttled request can go.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: Option<TimerFd>,
    /// The timer is armed: the device waits for it.
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with `config`'s buckets (none: it never throttles and has
    /// no timerfd).
    pub fn new(config: &RateLimiterConfig) -> std::io::Result<RateLimiter> {
        let now = Instant::now();
        let bandwidth = config.bandwidth.and_then(|b| TokenBucket::new(&b, now));
        let ops = config.ops.and_then(|b| TokenBucket::new(&b, now));
        let timer = match (&bandwidth, &ops) {
            (None, None) => None,
            _ => Some(new_timer()?),
        };
        Ok(RateLimiter {
            bandwidth,
            ops,
            timer,
            blocked: false,
        })
    }

    /// Apply `patch` from now on: each bucket it names is replaced (a new
    /// one starts full; size or refill time 0 turns the limit off), each
    /// it leaves out keeps its state. A request held back is tried again
    /// at once.
    pub fn patch(&mut self, patch: &RateLimiterConfig) -> std::io::Result<()> {
        let now = Instant::now();
        if let Some(b) = &patch.bandwidth {
            self.bandwidth = TokenBucket::new(b, now);
        }
        if let Some(b) = &patch.ops {
            self.ops = TokenBucket::new(b, now);
        }
        if self.timer.is_none() && (self.bandwidth.is_some() || self.ops.is_some()) {
            self.timer = Some(new_timer()?);
        }
        if let Some(t) = &mut self.timer {
            t.clear()?;
        }
        self.blocked = false;
        Ok(())
    }

    /// A limiter that lets everything through.
    pub fn unlimited() -> RateLimiter {
        RateLimiter {
            bandwidth: None,
            ops: None,
            timer: None,
            blocked: false,
        }
    }

    /// Whether the device is waiting for the timer (it should not serve
    /// throttled queues until `on_timer`).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Let one request of `bytes` through, or take nothing, arm the timer
    /// for when it can go and say which bucket was short.
    pub fn consume(&mut self, ops: u64, bytes: u64) -> Result<(), Throttled> {
        if self.blocked {
            return Err(Throttled::Bandwidth);
        }
        let now = Instant::now();
        let wait_bw = self.bandwidth.as_mut().map(|b| b.wait_for(bytes, now));
        let wait_ops = self.ops.as_mut().map(|b| b.wait_for(ops, now));
        let wait_bw = wait_bw.unwrap_or_default();
        let wait_ops = wait_ops.unwrap_or_default();
        let wait = wait_bw.max(wait_ops);
        if wait.is_zero() {
            if let Some(b) = &mut self.bandwidth {
                b.take(bytes);
            }
            if let Some(b) = &mut self.ops {
                b.take(ops);
            }
            return Ok(());
        }
        if let Some(timer) = &mut self.timer {
            // A failed arm would leave the device asleep: let the request
            // through instead of stalling it forever.
            if timer.reset(wait, None).is_err() {
                return Ok(());
            }
        }
        self.blocked = true;
        Err(if wait_bw >= wait_ops {
            Throttled::Bandwidth
        } else {
            Throttled::Ops
        })
    }

    /// The timerfd fired (the device read it through `timer_fd`): requests
    /// may be tried again. (The read never blocks: the timerfd is
    /// non-blocking, so a stale wake-up costs nothing.)
    pub fn on_timer(&mut self) {
        if let Some(timer) = &mut self.timer {
            let _ = timer.wait();
        }
        self.blocked = false;
    }

    /// The fd to poll for readability, when the limiter can throttle.
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(|t| t.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, refill_ms: u64, now: Instant) -> TokenBucket {
        TokenBucket::new(
            &BucketConfig {
                size,
                one_time_burst: burst,
                refill_time: refill_ms,
            },
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_bucket_refills_at_its_rate_without_losing_fractions() {
        let t0 = Instant::now();
        // 1000 tokens per second.
        let mut b = bucket(1000, 0, 1000, t0);
        assert_eq!(b.wait_for(1000, t0), Duration::ZERO);
        b.take(1000);
        assert_eq!(b.wait_for(1, t0), Duration::from_millis(1));
        assert_eq!(b.wait_for(500, t0), Duration::from_millis(500));
        // Three refills of a third of a millisecond make one token.
        let third = Duration::from_nanos(333_334);
        for i in 1..=3 {
            let w = b.wait_for(1, t0 + third * i);
            assert_eq!(w.is_zero(), i == 3, "after {i} thirds: {w:?}");
        }
        // Never more than a full bucket.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.wait_for(1000, later), Duration::ZERO);
        assert_eq!(b.wait_for(1001, later), Duration::ZERO);
        b.take(1000);
        assert_eq!(b.wait_for(1, later), Duration::from_millis(1));
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_never_refills() {
        let t0 = Instant::now();
        let mut b = bucket(100, 50, 1000, t0);
        assert_eq!(b.wait_for(150, t0), Duration::ZERO);
        b.take(150);
        assert_eq!(b.wait_for(100, t0), Duration::from_secs(1));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.wait_for(100, later), Duration::ZERO);
        b.take(100);
        assert_eq!(b.wait_for(1, later), Duration::from_millis(10));
    }

    #[test]
    fn a_request_bigger_than_the_bucket_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = bucket(100, 0, 1000, t0);
        // 300 tokens: needs a full bucket, takes it and owes 200.
        assert_eq!(b.wait_for(300, t0), Duration::ZERO);
        b.take(300);
        // The debt (2 s) comes before the next token (10 ms).
        assert_eq!(b.wait_for(1, t0), Duration::from_millis(2010));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.wait_for(1, t1), Duration::from_millis(10));
    }

    #[test]
    fn a_limiter_takes_from_both_buckets_or_from_neither() {
        let mut l = RateLimiter::new(&RateLimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 1 << 20,
                one_time_burst: 0,
                refill_time: 1000,
            }),
            ops: Some(BucketConfig {
                size: 2,
                one_time_burst: 0,
                refill_time: 1000,
            }),
        })
        .unwrap();
        assert!(l.timer_fd().is_some());
        assert_eq!(l.consume(1, 4096), Ok(()));
        assert_eq!(l.consume(1, 4096), Ok(()));
        // Out of operations; bandwidth untouched by the refused request.
        assert_eq!(l.consume(1, 4096), Err(Throttled::Ops));
        assert!(l.is_blocked());
        // Blocked until the timer fires (about 500 ms for one op).
        assert!(l.consume(0, 0).is_err());
        wait_readable(l.timer_fd().unwrap());
        l.on_timer();
        assert!(!l.is_blocked());
        assert_eq!(l.consume(1, (1 << 20) - 8192), Ok(()));
        assert_eq!(l.consume(0, 1 << 19), Err(Throttled::Bandwidth));
    }

    /// Wait (up to 5 s) for the device's timer to fire, as its epoll does.
    fn wait_readable(fd: RawFd) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 5000) };
        assert_eq!(n, 1, "the timer did not fire");
    }

    #[test]
    fn an_unlimited_limiter_never_throttles_and_has_no_timer() {
        let mut l = RateLimiter::new(&RateLimiterConfig::default()).unwrap();
        assert!(l.timer_fd().is_none());
        for _ in 0..1000 {
            assert_eq!(l.consume(1, u64::MAX), Ok(()));
        }
        let zero = RateLimiterConfig {
            bandwidth: Some(BucketConfig::default()),
            ops: None,
        };
        assert!(!zero.is_limited());
        assert!(RateLimiter::new(&zero).unwrap().timer_fd().is_none());
        assert!(RateLimiterConfig::per_second(0, 5).is_limited());
        let mut u = RateLimiter::unlimited();
        assert_eq!(u.consume(1, 1), Ok(()));
    }

    #[test]
    fn reconfiguring_releases_a_held_request_and_applies_new_limits() {
        let slow = RateLimiterConfig::per_second(1000, 0);
        let mut l = RateLimiter::new(&RateLimiterConfig::default()).expect("limiter");
        assert!(l.consume(1, 1 << 20).is_ok(), "unlimited at first");
        l.patch(&slow).expect("patch");
        assert!(l.timer_fd().is_some(), "a patch that limits brings a timer");
        assert!(l.consume(1, 1000).is_ok());
        assert!(l.consume(1, 1000).is_err(), "1000 B/s holds the next KB");
        assert!(l.is_blocked());
        // A stale timer wake-up does not block the device thread.
        l.on_timer();
        l.consume(1, 1000).expect_err("still short");
        // Lifting the limit lets the held request go at once.
        let lift = RateLimiterConfig {
            bandwidth: Some(BucketConfig::default()),
            ops: None,
        };
        assert!(!slow.patched(&lift).is_limited());
        l.patch(&lift).expect("patch");
        assert!(!l.is_blocked());
        assert!(l.consume(1, 1 << 30).is_ok());
    }

    #[test]
    fn a_patch_keeps_the_state_of_buckets_it_leaves_out() {
        let mut l = RateLimiter::new(&RateLimiterConfig::per_second(1000, 1000)).expect("limiter");
        assert!(
            l.consume(1, 1000).is_ok(),
            "the bandwidth bucket is now empty"
        );
        // New ops limit only: the empty bandwidth bucket is not refilled.
        l.patch(
            &RateLimiterConfig::per_second(0, 0).patched(&RateLimiterConfig {
                bandwidth: None,
                ops: Some(BucketConfig {
                    size: 500,
                    one_time_burst: 0,
                    refill_time: 1000,
                }),
            }),
        )
        .expect("patch");
        assert!(
            l.consume(1, 1000).is_err(),
            "a patch refilled a bucket it left out"
        );
    }

    #[test]
    fn a_patch_replaces_only_the_buckets_it_names() {
        let both = RateLimiterConfig::per_second(1000, 10);
        let p = both.patched(&RateLimiterConfig::per_second(5000, 0));
        assert_eq!(p.bandwidth.map(|b| b.size), Some(5000));
        assert_eq!(p.ops, both.ops);
        assert_eq!(both.patched(&RateLimiterConfig::default()), both);
        let mailbox = LimitsMailbox::default();
        assert_eq!(mailbox.take(), None::<RateLimiterConfig>);
        mailbox.post(RateLimiterConfig::per_second(1, 0));
        mailbox.post(RateLimiterConfig::per_second(2, 0));
        let size = |c: Option<RateLimiterConfig>| c.and_then(|c| c.bandwidth).map(|b| b.size);
        assert_eq!(
            (size(mailbox.take()), size(mailbox.take())),
            (Some(2), None)
        );
        // Two patches before the worker looked: both count.
        let net = LimitsMailbox::default();
        net.post((Some(RateLimiterConfig::per_second(1000, 0)), None));
        net.post((None, Some(RateLimiterConfig::per_second(0, 10))));
        net.post((Some(RateLimiterConfig::per_second(0, 20)), None));
        let (rx, tx) = net.take().expect("merged");
        let rx = rx.expect("rx");
        assert_eq!(rx.bandwidth.map(|b| b.size), Some(1000));
        assert_eq!(rx.ops.map(|b| b.size), Some(20));
        assert_eq!(tx.and_then(|t| t.ops).map(|b| b.size), Some(10));
    }

    #[test]
    fn firecracker_json_parses() {
        let c: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth":{"size":1000,"one_time_burst":10,"refill_time":100},
                "ops":{"size":5,"refill_time":1000}}"#,
        )
        .unwrap();
        assert_eq!(c.bandwidth.unwrap().one_time_burst, 10);
        assert_eq!(c.ops.unwrap().size, 5);
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bw":{}}"#).is_err());
    }
}
