//! Fuzzing harness for virtio-net frame handling: arbitrary bytes become
//! the RX, TX and control queues and guest memory (`virtio::fuzz_rings`
//! layout: queue 0 RX, 1 TX, 2 control), a worker on a real kernel socket
//! pair serves two rounds, and the result is checked.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/virtio_net.rs`) and
//! the fuzz-lite unit test.
//!
//! Input: byte 0 bit 0 EVENT_IDX, bit 1 folds descriptor addresses into
//! guest memory, bit 2 mergeable RX buffers, bit 3 has the host send three
//! frames first (of 60, 1500 and 9000 bytes, so RX has work of every
//! size). Then the `fuzz_rings` sections.
//!
//! Asserted on every input: no panic, no hang; guest memory changed only
//! in the used rings and in buffers the RX or control queue's descriptors
//! mark device-writable; TX and control chains come back with length 0
//! (TX) or at most the 1-byte ack (control); RX lengths are at most a
//! frame; every frame the backend got is a whole frame (header included,
//! at most `MAX_FRAME_LEN`).

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use super::backend::Backend;
use super::ctrl::Ctrl;
use super::features;
use super::frame::{MAX_FRAME_LEN, VNET_HDR_LEN};
use super::metrics::NetMetrics;
use super::worker::{Direction, Worker};
use crate::rate_limiter::RateLimiter;
use crate::virtio::fuzz_rings;
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::GuestMemory;

/// A backend on one end of a datagram socket pair (frames keep their
/// boundaries, and its fd polls like a tap's); the other end sees frames
/// with their virtio-net header. Also the unit tests' backend.
pub struct Pair(pub UnixDatagram);

/// A `Pair` backend and the host's end, both non-blocking.
pub fn pair() -> std::io::Result<(Pair, UnixDatagram)> {
    let (ours, host) = UnixDatagram::pair()?;
    ours.set_nonblocking(true)?;
    host.set_nonblocking(true)?;
    Ok((Pair(ours), host))
}

impl Backend for Pair {
    fn raw_fd(&self) -> std::os::unix::io::RawFd {
        std::os::unix::io::AsRawFd::as_raw_fd(&self.0)
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.send(frame).map(|_| ())
    }
    // Like a tap: one writev, one datagram (so tests and fuzzing take the
    // copy-free TX path).
    fn vectored(&self) -> bool {
        true
    }
    fn send_iovecs(&mut self, iov: &[libc::iovec]) -> std::io::Result<()> {
        super::backend::writev_all(self.raw_fd(), iov)
    }
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Backend>> {
        Ok(Box::new(Pair(self.0.try_clone()?)))
    }
}

/// What one input did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub rx_used: u16,
    pub tx_used: u16,
    pub ctrl_used: u16,
    pub frames_out: usize,
}

pub struct Harness {
    mem: GuestMemory,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            mem: fuzz_rings::memory(),
        }
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Serve one input and check it; panics on a violated invariant.
    pub fn run(&self, input: &[u8]) -> RunStats {
        let Some((&config, rest)) = input.split_first() else {
            return RunStats::default();
        };
        let event_idx = config & 1 != 0;
        let fold = config & 2 != 0;
        let mergeable = config & 4 != 0;
        let host_first = config & 8 != 0;
        let Some(specs) = fuzz_rings::load(&self.mem, rest, 3, fold) else {
            return RunStats::default();
        };
        let (rx, tx, cq) = (specs[0], specs[1], specs[2]);
        let allowed = fuzz_rings::writable(&self.mem, &specs, &[0, 2], true);
        // Used entries only read back as written where no buffer the
        // device fills covers them.
        let buffers = fuzz_rings::writable(&self.mem, &specs, &[0, 2], false);
        let trusted = |q: &fuzz_rings::QueueSpec| !fuzz_rings::used_ring_covered(&buffers, q);
        let before = fuzz_rings::snapshot(&self.mem);

        let (backend, host) = pair().expect("socket pair");
        if host_first {
            for n in [60usize, 1500, 9000] {
                let mut f = vec![0u8; VNET_HDR_LEN + n];
                f[VNET_HDR_LEN..].fill(0x5a);
                let _ = host.send(&f);
            }
        }
        let metrics = Arc::new(NetMetrics::default());
        let dir = |q: &fuzz_rings::QueueSpec, index| Direction {
            queue: ServedQueue::new(index, q.queue(event_idx)),
            limiter: RateLimiter::unlimited(),
        };
        let ctrl = Ctrl {
            queue: ServedQueue::new(2, cq.queue(event_idx)),
            backends: vec![backend.try_clone_box().expect("clone")],
            acked: features::offered(None, 1, true),
            commands: 0,
            failed: 0,
        };
        let mut worker = Worker::new(
            self.mem.clone(),
            dir(&rx, 0),
            dir(&tx, 1),
            backend,
            Arc::new(fuzz_rings::NoInterrupt),
            metrics,
            mergeable,
        )
        .with_ctrl(ctrl);
        worker.run_once();
        worker.run_once();
        drop(worker);

        let after = fuzz_rings::snapshot(&self.mem);
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            assert!(
                a == b || allowed[i],
                "guest byte {i:#x} (flat) changed outside the device-writable buffers and used rings"
            );
        }
        let mut frames_out = 0;
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        while let Ok(n) = host.recv(&mut buf) {
            assert!(
                (VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&n),
                "the backend got a {n}-byte frame"
            );
            frames_out += 1;
        }
        let stats = RunStats {
            rx_used: rx.used(&self.mem),
            tx_used: tx.used(&self.mem),
            ctrl_used: cq.used(&self.mem),
            frames_out,
        };
        let tx_n = if trusted(&tx) {
            stats.tx_used.min(tx.size)
        } else {
            0
        };
        let ctrl_n = if trusted(&cq) {
            stats.ctrl_used.min(cq.size)
        } else {
            0
        };
        let rx_n = if trusted(&rx) {
            stats.rx_used.min(rx.size)
        } else {
            0
        };
        for i in 0..tx_n {
            assert_eq!(
                tx.used_entry(&self.mem, i).1,
                0,
                "a TX chain came back with a length"
            );
        }
        for i in 0..ctrl_n {
            assert!(
                cq.used_entry(&self.mem, i).1 <= 1,
                "a control ack longer than a byte"
            );
        }
        for i in 0..rx_n {
            let (_, len) = rx.used_entry(&self.mem, i);
            assert!(len as usize <= MAX_FRAME_LEN, "RX used length {len}");
        }
        stats
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// An input with `rx_buffers` 2 KiB RX buffers, one 100-byte TX frame and
/// one control command (VQ_PAIRS_SET 1), the host sending frames first: a
/// seed that reaches every path.
pub fn seed(rx_buffers: u16) -> Vec<u8> {
    const WRITE: u16 = 2;
    const NEXT: u16 = 1;
    let size: u16 = 8;
    let mut input = vec![8u8 | 4];
    // Queue bytes: size 8 (1 << 3), next_avail 0, for RX, TX and control.
    input.extend([3, 0, 0, 3, 0, 0, 3, 0, 0]);
    let data = fuzz_rings::DATA_AREA;
    let desc = |table: &mut [u8], i: usize, addr: u64, len: u32, flags: u16, next: u16| {
        let d = &mut table[16 * i..][..16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
    };
    let avail = |n: u16| {
        let mut a = vec![0u8; 6 + 2 * usize::from(size)];
        a[2..4].copy_from_slice(&n.to_le_bytes());
        for i in 0..n {
            a[4 + 2 * usize::from(i)..][..2].copy_from_slice(&i.to_le_bytes());
        }
        a
    };
    let n = rx_buffers.min(size);
    let mut rx_table = vec![0u8; 16 * usize::from(size)];
    for i in 0..usize::from(n) {
        desc(
            &mut rx_table,
            i,
            data + 0x1000 + 0x800 * i as u64,
            0x800,
            WRITE,
            0,
        );
    }
    let mut tx_table = vec![0u8; 16 * usize::from(size)];
    desc(&mut tx_table, 0, data, 100, 0, 0);
    let mut ctrl_table = vec![0u8; 16 * usize::from(size)];
    desc(&mut ctrl_table, 0, data + 0x200, 4, NEXT, 1);
    desc(&mut ctrl_table, 1, data + 0x300, 1, WRITE, 0);
    input.extend(rx_table);
    input.extend(avail(n));
    input.extend(tx_table);
    input.extend(avail(1));
    input.extend(ctrl_table);
    input.extend(avail(1));
    // The data area: the TX frame (a zero header, then bytes), then the
    // control command at +0x200.
    let mut area = vec![0u8; 0x204];
    area[VNET_HDR_LEN..100].fill(0x33);
    area[0x200..0x204].copy_from_slice(&[4, 0, 1, 0]);
    input.extend(area);
    input
}
