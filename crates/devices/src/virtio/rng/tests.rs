//! virtio-rng device and worker tests on a mock driver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::MAX_REQUEST_BYTES;
use super::*;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::test_utils::*;
use crate::virtio::{ActiveQueue, VirtioDevice};

fn worker(d: &Driver, limit: &RateLimiterConfig) -> (Worker, Arc<RngMetrics>) {
    let metrics = Arc::new(RngMetrics::default());
    let w = Worker::new(
        d.mem.clone(),
        d.queue(),
        Arc::new(TestInterrupt::default()),
        RateLimiter::new(limit).unwrap(),
        metrics.clone(),
    );
    (w, metrics)
}

/// A buffer of `len` bytes preset to 0xee (so "never written" shows).
fn buffer(d: &mut Driver, len: u32) -> GuestAddress {
    let a = d.alloc(u64::from(len));
    vm_memory::Bytes::write_slice(d.mem, &vec![0xee; len as usize], a).unwrap();
    a
}

#[test]
fn writable_buffers_are_filled_with_random_bytes() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, 16);
    let a = buffer(&mut d, 64);
    let b = buffer(&mut d, 4096);
    let c = buffer(&mut d, 100);
    let one = d.add_chain(&[(a, 64, true)]);
    // Two buffers in one chain, the second straddling the region boundary.
    d.set_alloc(REGION - 50);
    let s = buffer(&mut d, 100);
    let two = d.add_chain(&[(b, 4096, true), (s, 100, true)]);
    let (mut w, m) = worker(&d, &RateLimiterConfig::default());
    assert_eq!(w.serve(&|| false), worker::Served::Drained);
    assert_eq!(d.used_idx(), 2);
    assert_eq!(d.used_len(one), 64);
    assert_eq!(d.used_len(two), 4196);
    for (addr, len) in [(a, 64), (b, 4096), (s, 100)] {
        let bytes = d.bytes(addr, len);
        // 64 random bytes all 0xee: chance 2^-512.
        assert!(bytes.iter().any(|&x| x != 0xee), "{addr:?} not filled");
    }
    // Two fills differ.
    assert_ne!(d.bytes(a, 64), d.bytes(b, 64));
    // The untouched buffer stays untouched.
    assert!(d.bytes(c, 100).iter().all(|&x| x == 0xee));
    assert_eq!(RngMetrics::get(&m.requests), 2);
    assert_eq!(RngMetrics::get(&m.bytes), 4260);
}

#[test]
fn bad_chains_complete_empty_and_big_ones_are_capped() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, 16);
    let a = buffer(&mut d, 64);
    let readable = d.add_chain(&[(a, 64, false)]);
    let outside = d.add_chain(&[(GuestAddress(2 * REGION - 8), 64, true)]);
    let empty = d.add_chain(&[(a, 0, true)]);
    let big = buffer(&mut d, MAX_REQUEST_BYTES + 4096);
    let capped = d.add_chain(&[(big, MAX_REQUEST_BYTES + 4096, true)]);
    let (mut w, m) = worker(&d, &RateLimiterConfig::default());
    w.serve(&|| false);
    assert_eq!(d.used_idx(), 4);
    assert_eq!(d.used_len(readable), 0);
    assert!(d.bytes(a, 64).iter().all(|&x| x == 0xee));
    assert_eq!(d.used_len(outside), 0);
    assert_eq!(d.used_len(empty), 0);
    assert_eq!(d.used_len(capped), MAX_REQUEST_BYTES);
    let tail = d.bytes(GuestAddress(big.0 + u64::from(MAX_REQUEST_BYTES)), 4096);
    assert!(tail.iter().all(|&x| x == 0xee));
    assert_eq!(RngMetrics::get(&m.invalid_requests), 3);
}

#[test]
fn a_rate_limited_queue_waits_for_its_timer() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, 16);
    let heads: Vec<u16> = (0..4)
        .map(|_| {
            let a = buffer(&mut d, 1000);
            d.add_chain(&[(a, 1000, true)])
        })
        .collect();
    // 2000 bytes per second: two requests now, the rest as it refills.
    let limit = RateLimiterConfig::per_second(2000, 0);
    let (mut w, m) = worker(&d, &limit);
    assert_eq!(w.serve(&|| false), worker::Served::Throttled);
    assert_eq!(d.used_idx(), 2);
    assert_eq!(RngMetrics::get(&m.throttled), 1);
    // The throttled chain is still on the ring, not lost.
    assert_eq!(w.queue().next_avail(), 2);
    assert_eq!(d.used_len(heads[0]), 1000);
}

/// The device on a mock transport: activate, serve through the kick
/// eventfd, pause, resume, reset and activate again.
#[test]
fn the_device_thread_serves_kicks_pauses_and_resets() {
    let mem = guest_memory();
    let mut rng = Rng::new(RateLimiterConfig::default());
    assert_eq!(rng.device_type(), crate::virtio::device_type::RNG);
    assert_eq!(rng.queue_max_sizes(), vec![QUEUE_SIZE]);
    let mut cfg = [0xffu8; 8];
    rng.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 8]);
    for round in 0..2u16 {
        let mut d = Driver::new(&mem, 16);
        rng.ack_features(rng.avail_features());
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(TestInterrupt::default());
        let mut q = d.queue();
        q.set_ready(true);
        rng.activate(
            mem.clone(),
            vec![ActiveQueue {
                queue: q,
                kick: kick.try_clone().unwrap(),
            }],
            irq.clone(),
        )
        .unwrap();
        assert!(rng.is_active());
        let a = buffer(&mut d, 32);
        d.add_chain(&[(a, 32, true)]);
        kick.write(1).unwrap();
        wait_used(&d, 1);
        assert!(irq.wait_for(1), "round {round}: no interrupt");
        rng.pause();
        let b = buffer(&mut d, 32);
        d.add_chain(&[(b, 32, true)]);
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(d.used_idx(), 1, "served while paused");
        rng.resume();
        wait_used(&d, 2);
        rng.reset();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !rng.reset_done() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!rng.is_active());
    }
    assert_eq!(RngMetrics::get(&rng.metrics().requests), 4);
}

#[test]
fn activation_needs_one_ready_queue() {
    let mem = guest_memory();
    let mut rng = Rng::new(RateLimiterConfig::default());
    let irq = Arc::new(TestInterrupt::default());
    assert!(rng.activate(mem.clone(), vec![], irq.clone()).is_err());
    let d = Driver::new(&mem, 16);
    let mut q = d.queue();
    q.set_ready(false);
    let aq = ActiveQueue {
        queue: q,
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    // Not ready.
    assert!(rng.activate(mem.clone(), vec![aq], irq).is_err());
    assert!(!rng.is_active());
}

#[test]
fn state_round_trips() {
    let rng = Rng::new(RateLimiterConfig::per_second(1 << 20, 100));
    let state = rng.save();
    let json = serde_json::to_string(&state).unwrap();
    let back: RngState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    assert_eq!(Rng::restore(&back).save(), state);
}

/// Random chains (any flags, lengths, addresses, next links) never panic
/// the worker, and every popped chain is returned with at most the
/// writable bytes it offered.
#[test]
fn fuzz_lite_random_chains_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mem = guest_memory();
        let mut d = Driver::new(&mem, 8);
        let n = (next() % 12) as usize;
        let raw: Vec<(u64, u32, u16, u16)> = (0..n)
            .map(|_| {
                let addr = match next() % 3 {
                    0 => next() % (2 * REGION + 0x1000),
                    1 => DATA_START + next() % 0x1000,
                    _ => next(),
                };
                let len = match next() % 3 {
                    0 => (next() % 5000) as u32,
                    1 => next() as u32,
                    _ => 0,
                };
                (addr, len, (next() % 8) as u16, (next() % 10) as u16)
            })
            .collect();
        d.put_raw(&raw);
        for _ in 0..(next() % 10) {
            d.make_available((next() % 10) as u16);
        }
        let (mut w, _) = worker(&d, &RateLimiterConfig::default());
        w.serve(&|| false);
        w.signal();
        for i in 0..d.used_idx() {
            let (_, len) = d.used(i);
            assert!(len <= MAX_REQUEST_BYTES);
        }
    }
}
