//! virtio-net worker, control queue and device tests on a mock driver,
//! with a real kernel socket pair as the backend (frames keep their
//! boundaries, and its fd polls like a tap's), and a real tap in a private
//! network namespace for the tap's own ioctls.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ctrl::Ctrl;
use super::features::{self, bit};
use super::frame::{MAX_FRAME_LEN, VNET_HDR_LEN};
use super::fuzzing::Pair;
use super::*;
use crate::rate_limiter::{BucketConfig, RateLimiter, RateLimiterConfig};
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::test_utils::*;
use crate::virtio::{ActiveQueue, GuestMemory, VirtioDevice};

fn pair() -> (Pair, UnixDatagram) {
    super::fuzzing::pair().unwrap()
}

/// A frame as the host sends it: a zeroed header and `n` payload bytes.
fn host_frame(n: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn direction(d: &Driver, index: u16, limit: &RateLimiterConfig) -> Direction {
    Direction {
        queue: ServedQueue::new(index, d.queue()),
        limiter: RateLimiter::new(limit).unwrap(),
    }
}

struct Setup<'a> {
    rx: Driver<'a>,
    tx: Driver<'a>,
}

/// The RX queue is big enough for a 64 KiB frame in 1536-byte buffers
/// (virtio-queue's mock rings overlap past half the avail ring, so only
/// half of it is used).
fn setup(mem: &GuestMemory) -> Setup<'_> {
    Setup {
        rx: Driver::at(mem, 0, 128, 0x10_0000),
        tx: Driver::at(mem, 0x8000, 64, 0x28_0000),
    }
}

fn worker<B: Backend>(
    s: &Setup,
    backend: B,
    mergeable: bool,
    rx_limit: &RateLimiterConfig,
    tx_limit: &RateLimiterConfig,
) -> (Worker<B>, Arc<NetMetrics>) {
    let m = Arc::new(NetMetrics::default());
    let w = Worker::new(
        s.rx.mem.clone(),
        direction(&s.rx, 0, rx_limit),
        direction(&s.tx, 1, tx_limit),
        backend,
        Arc::new(TestInterrupt::default()),
        m.clone(),
        mergeable,
    );
    (w, m)
}

fn no_limit() -> RateLimiterConfig {
    RateLimiterConfig::default()
}

/// A backend without `send_iovecs`: frames are copied out of guest memory.
struct Copying(Pair);

impl Backend for Copying {
    fn raw_fd(&self) -> std::os::unix::io::RawFd {
        self.0.raw_fd()
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.send(frame)
    }
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Backend>> {
        self.0.try_clone_box()
    }
}

#[test]
fn guest_frames_reach_the_backend_whole() {
    guest_frames_reach_the_backend_whole_on(|b| b);
    guest_frames_reach_the_backend_whole_on(Copying);
}

/// With `wrap`'s backend: iovecs straight from guest memory (a `Pair`) or
/// a copy (`Copying`), the same frame arrives.
fn guest_frames_reach_the_backend_whole_on<B: Backend>(wrap: impl Fn(Pair) -> B) {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    let frame = host_frame(3000, 1);
    // Header and the first bytes in one buffer, the rest straddling the
    // region boundary.
    let a = s.tx.alloc(100);
    mem.write_slice(&frame[..100], a).unwrap();
    let straddle = GuestAddress(REGION - 1000);
    mem.write_slice(&frame[100..], straddle).unwrap();
    let head =
        s.tx.add_chain(&[(a, 100, false), (straddle, frame.len() as u32 - 100, false)]);
    let (mut w, m) = worker(&s, wrap(b), true, &no_limit(), &no_limit());
    assert_eq!(w.run_once().0, Served::Idle);
    let mut got = vec![0u8; MAX_FRAME_LEN];
    let n = host.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &frame[..]);
    assert_eq!(s.tx.used_len(head), 0);
    assert_eq!(NetMetrics::get(&m.tx_packets), 1);
    assert_eq!(NetMetrics::get(&m.tx_bytes), 3000);
    assert!(host.recv(&mut got).is_err(), "one frame only");
}

#[test]
fn bad_tx_chains_complete_empty_and_send_nothing() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    let a = s.tx.alloc(MAX_FRAME_LEN as u64 + 64);
    let writable = s.tx.add_chain(&[(a, 64, true)]);
    let short = s.tx.add_chain(&[(a, VNET_HDR_LEN as u32 - 1, false)]);
    let outside = s.tx.add_chain(&[(GuestAddress(2 * REGION - 8), 64, false)]);
    let huge = s.tx.add_chain(&[(a, MAX_FRAME_LEN as u32 + 1, false)]);
    let fine = s.tx.add_chain(&[(a, 60, false)]);
    let (mut w, m) = worker(&s, b, true, &no_limit(), &no_limit());
    w.run_once();
    assert_eq!(s.tx.used_idx(), 5);
    for h in [writable, short, outside, huge, fine] {
        assert_eq!(s.tx.used_len(h), 0);
    }
    assert_eq!(NetMetrics::get(&m.bad_chains), 4);
    let mut got = vec![0u8; 128];
    assert_eq!(host.recv(&mut got).unwrap(), 60, "only the good frame");
    assert!(host.recv(&mut got).is_err());
}

/// Post `n` RX chains of `len` bytes each; returns (head, addr) pairs.
fn post_rx(d: &mut Driver, n: usize, len: u32) -> Vec<(u16, GuestAddress)> {
    (0..n)
        .map(|_| {
            let a = d.alloc(u64::from(len));
            (d.add_chain(&[(a, len, true)]), a)
        })
        .collect()
}

fn num_buffers(d: &Driver, a: GuestAddress) -> u16 {
    let b = d.bytes(GuestAddress(a.0 + 10), 2);
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn host_frames_fill_one_buffer_each_without_mergeable() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    let bufs = post_rx(&mut s.rx, 2, 1526);
    let big = host_frame(2000, 3);
    let small = host_frame(1000, 4);
    host.send(&big).unwrap();
    host.send(&small).unwrap();
    let (mut w, m) = worker(&s, b, false, &no_limit(), &no_limit());
    w.run_once();
    // The big one cannot fit a 1526-byte buffer: dropped, the buffer kept
    // for the small one.
    assert_eq!(s.rx.used_idx(), 1);
    let (head, addr) = bufs[0];
    assert_eq!(s.rx.used_len(head), small.len() as u32);
    let got = s.rx.bytes(addr, small.len());
    assert_eq!(&got[VNET_HDR_LEN..], &small[VNET_HDR_LEN..]);
    assert_eq!(num_buffers(&s.rx, addr), 1);
    assert_eq!(NetMetrics::get(&m.rx_dropped), 1);
    assert_eq!(NetMetrics::get(&m.rx_packets), 1);
    assert_eq!(NetMetrics::get(&m.rx_bytes), 1000);
}

#[test]
fn mergeable_buffers_take_a_big_frame_in_pieces() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    let bufs = post_rx(&mut s.rx, 8, 1536);
    let big = host_frame(65_000, 5);
    host.send(&big).unwrap();
    let (mut w, _m) = worker(&s, b, true, &no_limit(), &no_limit());
    w.run_once();
    // 65012 bytes need 43 buffers: only 8 are posted, so the frame waits.
    assert_eq!(s.rx.used_idx(), 0);
    let more = post_rx(&mut s.rx, 40, 1536);
    w.run_once();
    let used = 65_012usize.div_ceil(1536);
    assert_eq!(s.rx.used_idx() as usize, used);
    let all: Vec<_> = bufs.iter().chain(&more).take(used).collect();
    assert_eq!(num_buffers(&s.rx, all[0].1), used as u16);
    let mut got = Vec::new();
    for (i, &(head, addr)) in all.iter().enumerate() {
        let len = s.rx.used_len(*head) as usize;
        let expect = if i + 1 < used {
            1536
        } else {
            65_012 - 1536 * (used - 1)
        };
        assert_eq!(len, expect, "buffer {i}");
        got.extend(s.rx.bytes(*addr, len));
    }
    assert_eq!(&got[VNET_HDR_LEN..], &big[VNET_HDR_LEN..]);
}

#[test]
fn a_guest_without_buffers_holds_only_its_own_frames() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    for i in 0..5 {
        host.send(&host_frame(100, i)).unwrap();
    }
    let (mut w, m) = worker(&s, b, true, &no_limit(), &no_limit());
    assert_eq!(w.run_once().1, Served::Idle);
    assert_eq!(NetMetrics::get(&m.rx_packets), 0);
    // One frame waits in the worker; the rest stay in the socket.
    let bufs = post_rx(&mut s.rx, 5, 256);
    w.run_once();
    assert_eq!(s.rx.used_idx(), 5);
    for (i, &(_, a)) in bufs.iter().enumerate() {
        let f = host_frame(100, i as u8);
        assert_eq!(
            s.rx.bytes(GuestAddress(a.0 + 12), 100),
            f[12..],
            "frame {i}"
        );
    }
}

#[test]
fn bad_rx_chains_lose_the_frame_not_the_device() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    let a = s.rx.alloc(256);
    let readable = s.rx.add_chain(&[(a, 256, false)]);
    let good = post_rx(&mut s.rx, 1, 256);
    host.send(&host_frame(50, 1)).unwrap();
    host.send(&host_frame(60, 2)).unwrap();
    let (mut w, m) = worker(&s, b, true, &no_limit(), &no_limit());
    w.run_once();
    assert_eq!(s.rx.used_len(readable), 0);
    assert_eq!(s.rx.used_len(good[0].0), 72, "the second frame arrives");
    assert_eq!(NetMetrics::get(&m.bad_chains), 1);
    assert_eq!(NetMetrics::get(&m.rx_dropped), 1);
}

#[test]
fn rate_limits_hold_each_direction_back() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    // Two operations, never refilled within the test.
    let two_ops = RateLimiterConfig {
        bandwidth: None,
        ops: Some(BucketConfig {
            size: 2,
            one_time_burst: 0,
            refill_time: 3_600_000,
        }),
    };
    let a = s.tx.alloc(64);
    for _ in 0..3 {
        s.tx.add_chain(&[(a, 64, false)]);
    }
    post_rx(&mut s.rx, 3, 256);
    for i in 0..3 {
        host.send(&host_frame(10, i)).unwrap();
    }
    let (mut w, m) = worker(&s, b, true, &two_ops, &two_ops);
    assert_eq!(w.run_once(), (Served::Throttled, Served::Throttled));
    assert_eq!(s.tx.used_idx(), 2);
    assert_eq!(s.rx.used_idx(), 2);
    assert_eq!(NetMetrics::get(&m.tx_throttled), 1);
    assert_eq!(NetMetrics::get(&m.rx_throttled), 1);
    // Still held: nothing more goes through, nothing is lost.
    w.run_once();
    assert_eq!((s.tx.used_idx(), s.rx.used_idx()), (2, 2));
}

/// A control-queue command chain: readable command, writable ack.
fn command(d: &mut Driver, bytes: &[u8]) -> (u16, GuestAddress) {
    let c = d.alloc(bytes.len() as u64);
    d.mem.write_slice(bytes, c).unwrap();
    let ack = d.alloc(1);
    d.mem.write_slice(&[0xee], ack).unwrap();
    (
        d.add_chain(&[(c, bytes.len() as u32, false), (ack, 1, true)]),
        ack,
    )
}

#[test]
fn the_control_queue_sets_pairs_and_offloads_and_refuses_the_rest() {
    let mem = guest_memory();
    let mut d = Driver::new(&mem, 16);
    let acked = features::offered(None, 2, true);
    let backends: Vec<Box<dyn Backend>> = vec![Box::new(pair().0), Box::new(pair().0)];
    let mut ctrl = Ctrl {
        queue: ServedQueue::new(4, d.queue()),
        backends,
        acked,
        commands: 0,
        failed: 0,
    };
    let mut offloads = vec![5, 0];
    offloads.extend_from_slice(&bit(features::GUEST_CSUM).to_le_bytes());
    let mut bad_offloads = vec![5, 0];
    bad_offloads.extend_from_slice(&bit(features::HOST_TSO4).to_le_bytes());
    let cases: Vec<(Vec<u8>, u8)> = vec![
        (vec![4, 0, 2, 0], 0), // two pairs: fine
        (vec![4, 0, 3, 0], 1), // more than the device has
        (vec![4, 0, 0, 0], 1), // none
        (offloads, 0),         // checksums only
        (bad_offloads, 1),     // not a guest offload
        (vec![0, 0, 1], 1),    // promiscuous mode: not offered
        (vec![4], 1),          // short
    ];
    let sent: Vec<_> = cases.iter().map(|(b, _)| command(&mut d, b)).collect();
    ctrl.serve(&mem);
    for ((head, ack), (bytes, want)) in sent.iter().zip(&cases) {
        assert_eq!(d.used_len(*head), 1, "{bytes:?}");
        assert_eq!(d.bytes(*ack, 1), [*want], "{bytes:?}");
    }
    assert_eq!(ctrl.commands, 7);
    assert_eq!(ctrl.failed, 5);
    // A chain whose ack comes before the command is refused whole.
    let a = d.alloc(4);
    let head = d.add_chain(&[(a, 1, true), (a, 4, false)]);
    ctrl.serve(&mem);
    assert_eq!(d.used_len(head), 0);
}

fn settings(pairs: u16) -> NetSettings {
    NetSettings {
        tap: "test0".into(),
        mac: [0x02, 0, 0, 0, 0, 1],
        mtu: Some(1400),
        queue_pairs: pairs,
        rx_rate_limiter: RateLimiterConfig::default(),
        tx_rate_limiter: RateLimiterConfig::default(),
    }
}

#[test]
fn settings_are_checked() {
    assert!(settings(1).check().is_ok());
    assert!(settings(0).check().is_err());
    assert!(settings(MAX_QUEUE_PAIRS + 1).check().is_err());
    let mut s = settings(1);
    s.mtu = Some(20);
    assert!(s.check().unwrap_err().to_string().contains("mtu=20"));
    s.mtu = None;
    s.mac[0] = 0x01;
    assert!(s.check().unwrap_err().to_string().contains("multicast"));
    assert_eq!(format_mac(&[2, 0xab, 0, 0, 0, 0xff]), "02:ab:00:00:00:ff");
    let wrong = Net::new(settings(2), vec![Box::new(pair().0)]);
    assert!(wrong.is_err(), "one backend for two pairs");
}

#[test]
fn the_device_serves_both_ways_on_its_threads_and_resets_without_waiting() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let mut ctl = Driver::at(&mem, 0x10000, 16, 0x38_0000);
    let (b, host) = pair();
    let mut net = Net::new(settings(1), vec![Box::new(b)]).unwrap();
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
    assert_ne!(net.avail_features() & bit(features::MTU), 0);
    assert_eq!(net.queue_max_sizes().len(), 3);
    net.ack_features(net.avail_features() & !bit(VIRTIO_RING_F_EVENT_IDX_BIT));

    let interrupt = Arc::new(TestInterrupt::default());
    let kicks = activate(&mut net, &mem, &[&s.rx, &s.tx, &ctl], interrupt.clone());
    assert!(net.is_active());

    // Host to guest, then guest to host.
    let bufs = post_rx(&mut s.rx, 4, 2048);
    kicks[0].write(1).unwrap();
    host.send(&host_frame(1500, 9)).unwrap();
    wait_used(&s.rx, 1);
    assert_eq!(s.rx.used_len(bufs[0].0), 1512);
    let a = s.tx.alloc(200);
    mem.write_slice(&host_frame(188, 1), a).unwrap();
    s.tx.add_chain(&[(a, 200, false)]);
    kicks[1].write(1).unwrap();
    let mut got = vec![0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let n = loop {
        match host.recv(&mut got) {
            Ok(n) => break n,
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "no TX frame");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    };
    assert_eq!(&got[..n], &host_frame(188, 1)[..]);
    // The control queue answers on the same thread.
    let (head, ack) = command(&mut ctl, &[0, 0, 1]);
    kicks[2].write(1).unwrap();
    wait_used(&ctl, 1);
    assert_eq!(ctl.used_len(head), 1);
    assert_eq!(ctl.bytes(ack, 1), [1]);
    assert!(interrupt.signals() >= 3);

    net.pause();
    net.resume();
    net.reset();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !net.reset_done() {
        assert!(std::time::Instant::now() < deadline, "reset never finished");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(!net.is_active());
    assert_eq!(net.save().acked_features, 0);
    assert_eq!(net.counters()[1], ("rx_packets_count", 1));
}

/// Activate `net` on the drivers' queues; the kicks, in queue order.
fn activate(
    net: &mut Net,
    mem: &GuestMemory,
    drivers: &[&Driver],
    interrupt: Arc<TestInterrupt>,
) -> Vec<EventFd> {
    let queues = drivers
        .iter()
        .map(|d| ActiveQueue {
            queue: d.queue(),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        })
        .collect::<Vec<_>>();
    let kicks = queues.iter().map(|q| q.kick.try_clone().unwrap()).collect();
    net.activate(mem.clone(), queues, interrupt).unwrap();
    kicks
}

const VIRTIO_RING_F_EVENT_IDX_BIT: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

#[test]
fn activation_wants_the_queues_the_features_imply() {
    let mem = guest_memory();
    let s = setup(&mem);
    let mut net = Net::new(settings(2), vec![Box::new(pair().0), Box::new(pair().0)]).unwrap();
    assert_eq!(net.queue_max_sizes().len(), 5);
    net.ack_features(net.avail_features());
    let q = |d: &Driver| ActiveQueue {
        queue: d.queue(),
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    // With MQ: 2 pairs and the control queue, 5 in all.
    let err = net
        .activate(
            mem.clone(),
            vec![q(&s.rx), q(&s.tx), q(&s.rx)],
            Arc::new(TestInterrupt::default()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("needs 5"), "{err}");
    // Without MQ: one pair and the control queue.
    net.ack_features(net.avail_features() & !bit(features::MQ));
    let rings = Driver::at(&mem, 0x10000, 16, 0x38_0000);
    net.activate(
        mem.clone(),
        vec![q(&s.rx), q(&s.tx), q(&rings)],
        Arc::new(TestInterrupt::default()),
    )
    .unwrap();
    net.reset();
}

/// The MTU of interface `name` (SIOCGIFMTU).
fn mtu_of(name: &str) -> i32 {
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a socket, and an ioctl that fills one 40-byte ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let r = libc::ioctl(fd, libc::SIOCGIFMTU, req.as_mut_ptr());
        assert_eq!(r, 0, "SIOCGIFMTU: {}", io::Error::last_os_error());
        libc::close(fd);
    }
    i32::from_ne_bytes([req[16], req[17], req[18], req[19]])
}

/// Create bridge `name` (SIOCBRADDBR) in the current network namespace.
fn make_bridge(name: &str) {
    const SIOCBRADDBR: libc::c_ulong = 0x89a0;
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a socket, and an ioctl that reads a NUL-terminated name.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let r = libc::ioctl(fd, SIOCBRADDBR, c.as_ptr());
        assert_eq!(r, 0, "SIOCBRADDBR: {}", io::Error::last_os_error());
        libc::close(fd);
    }
}

/// Run `f` on a thread in a fresh network namespace (so taps made there
/// vanish with it and never touch the host's interfaces).
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare changes only this thread's namespaces.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {} (tests run as root)",
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn a_real_tap_takes_headers_offloads_and_queues() {
    in_private_netns(|| {
        let taps = tap::Tap::open("vireo-t0", 1).unwrap();
        assert_eq!(taps.len(), 1);
        let t = &taps[0];
        assert_eq!(t.name(), "vireo-t0");
        let all =
            features::tun_offload_flags(features::guest_offloads(features::offered(None, 1, true)));
        t.set_offload(all).unwrap();
        t.set_offload(0).unwrap();
        // A down tap has no frames.
        let mut t2 = t.try_clone().unwrap();
        let mut buf = vec![0u8; 2048];
        assert_eq!(
            t2.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // The single-queue tap exists now: a multi-queue open refuses it
        // with a message saying why.
        let err = tap::Tap::open("vireo-t0", 2).unwrap_err().to_string();
        assert!(err.contains("multi-queue"), "{err}");
        let mq = tap::Tap::open("vireo-t1", 3).unwrap();
        assert_eq!(mq.len(), 3);
        // Attached already: asking again is fine (activation does).
        mq[2].set_enabled(true).unwrap();
        mq[2].set_enabled(false).unwrap();
        mq[2].set_enabled(false).unwrap();
        mq[2].set_enabled(true).unwrap();
        // The rig's L1 joins a tap to a bridge; here a bridge made for it.
        make_bridge("vireo-br0");
        tap::join_bridge("vireo-t0", "vireo-br0", Some(1400)).unwrap();
        // (/sys shows the host's namespace: ask the kernel instead.) A
        // port cannot be added twice, and the MTU was set.
        let again = tap::join_bridge("vireo-t0", "vireo-br0", None).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EBUSY), "{again}");
        assert_eq!(mtu_of("vireo-t0"), 1400);
        assert!(tap::join_bridge("vireo-t0", "no-such-br", None).is_err());
        let net = Net::with_tap(NetSettings {
            tap: "vireo-t2".into(),
            ..settings(2)
        })
        .unwrap();
        assert_eq!(net.settings().queue_pairs, 2);
    });
}

/// Seeds and random inputs through the fuzzing harness's checks.
#[test]
fn fuzz_lite_frames_never_break_the_device() {
    use super::fuzzing::{seed, Harness};
    let h = Harness::new();
    let s = h.run(&seed(4));
    assert_eq!((s.tx_used, s.ctrl_used, s.frames_out), (1, 1, 1), "{s:?}");
    // 72 and 1512 bytes take a 2 KiB buffer each; the 9012-byte frame
    // needs 5 and waits for them.
    assert_eq!(s.rx_used, 2, "{s:?}");
    let s = h.run(&seed(8));
    assert_eq!(s.rx_used, 7, "{s:?}");
    crate::virtio::fuzz_rings::fuzz_lite(&seed(8), 400, 0x9e37_79b9_7f4a_7c15, |input| {
        h.run(input);
    });
}

/// One operation per hour: after the first, a direction is held.
fn one_op_an_hour() -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: None,
        ops: Some(BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time: 3_600_000,
        }),
    }
}

#[test]
fn rate_limiters_change_while_the_device_runs() {
    let mem = guest_memory();
    let mut s = setup(&mem);
    let (b, host) = pair();
    host.set_nonblocking(true).unwrap();
    let mut cfg = settings(1);
    cfg.tx_rate_limiter = one_op_an_hour();
    let mut net = Net::new(cfg, vec![Box::new(b)]).unwrap();
    net.ack_features(net.avail_features() & !bit(VIRTIO_RING_F_EVENT_IDX_BIT));
    let interrupt = Arc::new(TestInterrupt::default());
    let ctl = Driver::at(&mem, 0x10000, 16, 0x38_0000);
    let kicks = activate(&mut net, &mem, &[&s.rx, &s.tx, &ctl], interrupt);

    // TX: the first frame passes, the second is held by the limiter ...
    let a = s.tx.alloc(200);
    mem.write_slice(&host_frame(188, 1), a).unwrap();
    s.tx.add_chain(&[(a, 200, false)]);
    s.tx.add_chain(&[(a, 200, false)]);
    kicks[1].write(1).unwrap();
    wait_used(&s.tx, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(s.tx.used_idx(), 1, "the limiter let the second frame by");
    // ... until the limit is lifted (an ops bucket of size 0): the held
    // frame goes at once, without another kick.
    let lift = RateLimiterConfig {
        bandwidth: None,
        ops: Some(BucketConfig::default()),
    };
    let (rx_now, tx_now) = net.patch_rate_limiters(Some(&one_op_an_hour()), Some(&lift));
    assert!(!tx_now.is_limited() && rx_now.is_limited());
    wait_used(&s.tx, 2);

    // RX, unlimited at activation, is limited from now on: one frame in,
    // the next held.
    post_rx(&mut s.rx, 4, 2048);
    kicks[0].write(1).unwrap();
    host.send(&host_frame(100, 2)).unwrap();
    host.send(&host_frame(100, 3)).unwrap();
    wait_used(&s.rx, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(s.rx.used_idx(), 1, "the new RX limit was not applied");
    net.reset();
}
