//! virtio-vsock device tests: a mock guest driver on the RX and TX queues
//! and real Unix sockets on the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::GuestMemory;

const CID: u64 = 3;

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vireo-vsock-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("v.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest side: a driver on each of RX and TX, and the worker.
struct Guest<'a> {
    rx: Driver<'a>,
    tx: Driver<'a>,
    worker: Worker,
    rx_bufs: HashMap<u16, (GuestAddress, GuestAddress)>,
    seen: u16,
    metrics: Arc<VsockMetrics>,
}

const RX_DATA: u32 = 4096;

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemory, dir: &Dir) -> Guest<'a> {
        let rx = Driver::at(mem, 0, 256, 0x10_0000);
        let tx = Driver::at(mem, 0x8000, 256, 0x28_0000);
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let metrics = Arc::new(VsockMetrics::default());
        let connector = Arc::new(UdsConnector {
            uds_path: dir.sock(),
        });
        let muxer = Muxer::new(CID, listener, connector, metrics.clone()).unwrap();
        let worker = Worker::new(
            mem.clone(),
            rx.queue(),
            tx.queue(),
            Arc::new(TestInterrupt::default()),
            muxer,
            metrics.clone(),
        );
        let mut g = Guest {
            rx,
            tx,
            worker,
            rx_bufs: HashMap::new(),
            seen: 0,
            metrics,
        };
        g.post_rx(16);
        g
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let h = self.rx.alloc(HDR_LEN as u64);
            let d = self.rx.alloc(u64::from(RX_DATA));
            let head = self
                .rx
                .add_chain(&[(h, HDR_LEN as u32, true), (d, RX_DATA, true)]);
            self.rx_bufs.insert(head, (h, d));
        }
    }

    fn hdr(&self, src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
        }
    }

    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let h = self.tx.alloc(HDR_LEN as u64);
        self.tx.mem.write_slice(&hdr.to_bytes(), h).unwrap();
        if payload.is_empty() {
            self.tx.add_chain(&[(h, HDR_LEN as u32, false)]);
        } else {
            let d = self.tx.alloc(payload.len() as u64);
            self.tx.mem.write_slice(payload, d).unwrap();
            self.tx
                .add_chain(&[(h, HDR_LEN as u32, false), (d, payload.len() as u32, false)]);
        }
    }

    /// Run the worker until the host side has settled, and return the
    /// packets the guest received meanwhile (posting new buffers for them).
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(2));
            self.worker.run_once();
            self.collect(&mut out);
        }
        out
    }

    /// The packets one round of the worker delivers: what the device
    /// thread sends before it sleeps until the next event.
    fn recv_one_round(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        self.worker.run_once();
        self.collect(&mut out);
        out
    }

    fn collect(&mut self, out: &mut Vec<(Header, Vec<u8>)>) {
        {
            while self.seen < self.rx.used_idx() {
                let (id, len) = self.rx.used(self.seen);
                self.seen += 1;
                let (h, d) = self.rx_bufs.remove(&(id as u16)).unwrap();
                let mut raw = [0u8; HDR_LEN];
                self.rx.mem.read_slice(&mut raw, h).unwrap();
                let hdr = Header::from_bytes(&raw);
                let data = self.rx.bytes(d, len as usize - HDR_LEN);
                assert_eq!(hdr.len as usize, data.len());
                out.push((hdr, data));
                self.post_rx(1);
            }
        }
    }
}

fn host_connect(dir: &Dir, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    s
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn host_initiated_connect_ok_data_both_ways_and_shutdown() {
    let dir = Dir::new();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, &dir);
    let mut host = host_connect(&dir, 1234);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = pkts[0].0;
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid),
        (op::REQUEST, HOST_CID, CID)
    );
    assert_eq!(req.dst_port, 1234);
    let hostport = req.src_port;
    assert!(hostport >= 1 << 30);
    g.send(g.hdr(1234, hostport, op::RESPONSE, 0), &[]);
    g.recv();
    assert_eq!(read_line(&mut host), format!("OK {hostport}"));

    host.write_all(b"hello guest").unwrap();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RW);
    assert_eq!(pkts[0].1, b"hello guest");

    g.send(g.hdr(1234, hostport, op::RW, 11), b"hello host!");
    g.recv();
    let mut got = [0u8; 11];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host!");

    // The guest closes: the host sees EOF, the device completes with RST.
    let mut shut = g.hdr(1234, hostport, op::SHUTDOWN, 0);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(shut, &[]);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RST);
    assert_eq!(host.read(&mut got).unwrap(), 0);
    assert_eq!(g.worker.muxer().connections(), 0);
}

#[test]
fn guest_initiated_reaches_path_port_and_a_refused_port_gets_rst() {
    let dir = Dir::new();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, &dir);
    let listener = UnixListener::bind(format!("{}_5000", dir.sock().display())).unwrap();
    g.send(g.hdr(40000, 5000, op::REQUEST, 0), &[]);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RESPONSE);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 40000));
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.send(g.hdr(40000, 5000, op::RW, 4), b"ping");
    g.recv();
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    host.write_all(b"pong").unwrap();
    // The host closes: the guest gets the data, then SHUTDOWN (send).
    drop(host);
    let pkts = g.recv();
    let ops: Vec<u16> = pkts.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::RW, op::SHUTDOWN], "{pkts:?}");
    assert_eq!(pkts[0].1, b"pong");
    assert_eq!(pkts[1].0.flags, SHUTDOWN_SEND);

    // A guest that only sends (a bulk push) and half-closes: the host
    // reads it all and closes; the SHUTDOWN reaches the guest in the same
    // round the device sees the EOF, without waiting for another event.
    g.send(g.hdr(40002, 5000, op::REQUEST, 0), &[]);
    assert_eq!(g.recv()[0].0.op, op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let chunk = vec![7u8; 32 * 1024];
    for _ in 0..4 {
        g.send(g.hdr(40002, 5000, op::RW, chunk.len() as u32), &chunk);
    }
    let mut shut = g.hdr(40002, 5000, op::SHUTDOWN, 0);
    shut.flags = SHUTDOWN_SEND;
    g.send(shut, &[]);
    g.recv();
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 4 * chunk.len());
    drop(host);
    std::thread::sleep(Duration::from_millis(20));
    let pkts = g.recv_one_round();
    let ops: Vec<u16> = pkts.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::SHUTDOWN], "{pkts:?}");
    assert_eq!(pkts[0].0.flags, SHUTDOWN_SEND);

    // Nobody listens on port 5001.
    g.send(g.hdr(40001, 5001, op::REQUEST, 0), &[]);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RST);
    assert_eq!(pkts[0].0.dst_port, 40001);
    assert_eq!(VsockMetrics::get(&g.metrics.refused), 1);
}

#[test]
fn data_to_the_guest_respects_its_credit() {
    let dir = Dir::new();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, &dir);
    let listener = UnixListener::bind(format!("{}_7", dir.sock().display())).unwrap();
    let mut req = g.hdr(900, 7, op::REQUEST, 0);
    req.buf_alloc = 10;
    g.send(req, &[]);
    assert_eq!(g.recv()[0].0.op, op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[7u8; 100]).unwrap();
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1.len(), 10, "sent beyond the guest's credit");
    // The guest consumed 10 bytes: 10 more may come.
    let mut upd = g.hdr(900, 7, op::CREDIT_UPDATE, 0);
    upd.buf_alloc = 10;
    upd.fwd_cnt = 10;
    g.send(upd, &[]);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1.len(), 10);
    // A credit request is answered with our credit.
    g.send(g.hdr(900, 7, op::CREDIT_REQUEST, 0), &[]);
    let pkts = g.recv();
    assert_eq!(pkts[0].0.op, op::CREDIT_UPDATE);
    assert_eq!(pkts[0].0.buf_alloc, 256 * 1024);
}

#[test]
fn bulk_host_data_arrives_whole_in_order_then_the_shutdown() {
    let dir = Dir::new();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, &dir);
    let listener = UnixListener::bind(format!("{}_9", dir.sock().display())).unwrap();
    g.send(g.hdr(902, 9, op::REQUEST, 0), &[]);
    assert_eq!(g.recv()[0].0.op, op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    // More than one read-ahead's worth, then the host closes.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&data).unwrap();
    drop(host);
    let mut got = Vec::new();
    let mut ops = Vec::new();
    for _ in 0..20 {
        for (hdr, payload) in g.recv() {
            assert!(payload.len() <= RX_DATA as usize);
            ops.push(hdr.op);
            got.extend(payload);
        }
        if ops.last() == Some(&op::SHUTDOWN) {
            break;
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the guest got the host's bytes out of order");
    assert_eq!(ops.last(), Some(&op::SHUTDOWN), "{ops:?}");
    assert!(ops[..ops.len() - 1].iter().all(|&o| o == op::RW), "{ops:?}");
}

#[test]
fn a_guest_that_overruns_our_credit_is_reset() {
    let dir = Dir::new();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, &dir);
    let listener = UnixListener::bind(format!("{}_8", dir.sock().display())).unwrap();
    g.send(g.hdr(901, 8, op::REQUEST, 0), &[]);
    g.recv();
    // Accepted, but the host program never reads: 256 KiB fit, more not.
    let (_host, _) = listener.accept().unwrap();
    let chunk = vec![1u8; 32 * 1024];
    let mut ops = Vec::new();
    // Our 256 KiB plus what the host socket buffers.
    for _ in 0..40 {
        g.send(g.hdr(901, 8, op::RW, chunk.len() as u32), &chunk);
        ops.extend(g.recv().into_iter().map(|p| p.0.op));
    }
    assert!(ops.contains(&op::RST), "{ops:?}");
    assert_eq!(g.worker.muxer().connections(), 0);
}

#[test]
fn bad_packets_and_bad_host_lines_are_refused() {
    let dir = Dir::new();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, &dir);
    // Wrong source CID, wrong destination, datagram type, unknown conn.
    let mut h = g.hdr(1, 2, op::REQUEST, 0);
    h.src_cid = 99;
    g.send(h, &[]);
    let mut h = g.hdr(1, 2, op::REQUEST, 0);
    h.dst_cid = 7;
    g.send(h, &[]);
    let mut h = g.hdr(1, 2, op::REQUEST, 0);
    h.type_ = 2;
    g.send(h, &[]);
    g.send(g.hdr(1, 2, op::RW, 0), &[]);
    // An RST for nothing is not answered.
    g.send(g.hdr(1, 2, op::RST, 0), &[]);
    let pkts = g.recv();
    assert_eq!(pkts.len(), 4, "{pkts:?}");
    assert!(pkts.iter().all(|p| p.0.op == op::RST));
    // A short header and a payload longer than the chain.
    let a = g.tx.alloc(64);
    g.tx.add_chain(&[(a, 20, false)]);
    let big = g.hdr(1, 2, op::RW, 1000);
    g.tx.mem.write_slice(&big.to_bytes(), a).unwrap();
    g.tx.add_chain(&[(a, HDR_LEN as u32 + 10, false)]);
    let before = VsockMetrics::get(&g.metrics.bad_packets);
    g.recv();
    assert_eq!(VsockMetrics::get(&g.metrics.bad_packets), before + 2);
    // Host programs: garbage, a bad port, EOF before the line.
    for line in [&b"HELLO\n"[..], b"CONNECT x\n", b"CONN"] {
        let mut s = UnixStream::connect(dir.sock()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(line).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(g.recv().is_empty());
        let mut b = [0u8; 8];
        let r = s.read(&mut b);
        // Closed, with unread data (a reset) or without.
        let closed = match &r {
            Ok(n) => *n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "{line:?} was not dropped: {r:?}");
    }
}

#[test]
fn many_connections_at_once() {
    let dir = Dir::new();
    let mem = guest_memory();
    let mut g = Guest::new(&mem, &dir);
    g.post_rx(48);
    let mut hosts: Vec<UnixStream> = (0..32).map(|i| host_connect(&dir, 100 + i)).collect();
    let reqs = g.recv();
    assert_eq!(reqs.len(), 32);
    for r in &reqs {
        g.send(g.hdr(r.0.dst_port, r.0.src_port, op::RESPONSE, 0), &[]);
    }
    g.recv();
    for (i, h) in hosts.iter_mut().enumerate() {
        assert!(read_line(h).starts_with("OK "));
        h.write_all(format!("conn-{i}").as_bytes()).unwrap();
    }
    let mut got: Vec<(u32, Vec<u8>)> = g.recv().into_iter().map(|(h, d)| (h.dst_port, d)).collect();
    got.sort();
    assert_eq!(got.len(), 32);
    for (i, (port, data)) in got.iter().enumerate() {
        assert_eq!(*port, 100 + i as u32);
        assert_eq!(data, format!("conn-{i}").as_bytes());
    }
}

#[test]
fn the_device_checks_its_cid_and_socket_path() {
    let dir = Dir::new();
    assert!(matches!(Vsock::new(2, &dir.sock()), Err(Error::BadCid(2))));
    let v = Vsock::new(3, &dir.sock()).unwrap();
    let mut cfg = [0u8; 8];
    crate::virtio::VirtioDevice::read_config(&v, 0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 3);
    let e = Vsock::new(4, &dir.sock()).err().unwrap();
    assert!(e.to_string().contains("already exists"), "{e}");
    drop(v);
    assert!(
        !dir.sock().exists(),
        "the socket is removed with the device"
    );
}

/// Fuzz-lite: the seed (a REQUEST the host accepts, with and without a
/// host program connecting first) and random mutations of it, plus random
/// inputs, through the fuzzing harness's checks.
#[test]
fn fuzz_lite_packets_never_break_the_device() {
    use super::fuzzing::{seed_request, Harness};
    let h = Harness::new();
    let seed = seed_request(4);
    let s = h.run(&seed);
    assert_eq!((s.tx_used, s.rx_used), (1, 1), "{s:?}");
    assert_eq!(s.connections, 1);
    let mut host_first = seed.clone();
    host_first[0] |= 4;
    let s = h.run(&host_first);
    assert!(s.rx_used >= 2, "{s:?}");
    crate::virtio::fuzz_rings::fuzz_lite(&seed, 400, 0x2545_f491_4f6c_dd1d, |input| {
        h.run(input);
    });
}
