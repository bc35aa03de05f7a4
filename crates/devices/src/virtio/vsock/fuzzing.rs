//! Fuzzing harness for virtio-vsock packet handling: arbitrary bytes become
//! the RX and TX queues and guest memory (`virtio::fuzz_rings` layout,
//! queue 0 is RX, queue 1 TX), a fresh muxer with real Unix sockets serves
//! one round, and the result is checked.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/virtio_vsock.rs`)
//! and the fuzz-lite unit test.
//!
//! Input: byte 0 bit 0 EVENT_IDX, bit 1 folds descriptor addresses into
//! guest memory, bit 2 has a host program connect first (`CONNECT 5`, then
//! 100 bytes), so RX has a REQUEST to send and RW data once the guest
//! answers. Then the `fuzz_rings` sections. Host port `GUEST_PORT_OK` has a
//! listener (guest connections to it succeed); others are refused.
//!
//! Asserted on every input: no panic, no hang; guest memory changed only in
//! the used rings and in buffers the RX queue's descriptors (direct or in
//! one level of indirect table) mark device-writable; TX chains come back
//! with length 0; RX chains with 0 or a header plus at most `MAX_PAYLOAD`
//! bytes.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use super::metrics::VsockMetrics;
use super::muxer::{Muxer, UdsConnector};
use super::packet::{HDR_LEN, MAX_PAYLOAD};
use super::worker::Worker;
use crate::virtio::fuzz_rings;
use crate::virtio::GuestMemory;

/// The guest CID the harness's device has.
pub const GUEST_CID: u64 = 3;
/// A host port with a listener.
pub const GUEST_PORT_OK: u32 = 1024;

const VRING_DESC_F_WRITE: u16 = 2;

/// What one input did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub rx_used: u16,
    pub tx_used: u16,
    pub connections: usize,
}

pub struct Harness {
    mem: GuestMemory,
    dir: PathBuf,
    listener: UnixListener,
    _port_ok: UnixListener,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "vireo-vsock-fuzz-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        let listener = UnixListener::bind(dir.join("v.sock")).expect("bind");
        let port_ok =
            UnixListener::bind(dir.join(format!("v.sock_{GUEST_PORT_OK}"))).expect("bind");
        Harness {
            mem: fuzz_rings::memory(),
            dir,
            listener,
            _port_ok: port_ok,
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
        let host_first = config & 4 != 0;
        let Some(specs) = fuzz_rings::load(&self.mem, rest, 2, fold) else {
            return RunStats::default();
        };
        let (rx, tx) = (specs[0], specs[1]);
        let allowed = fuzz_rings::writable(&self.mem, &specs, &[0], true);
        let before = fuzz_rings::snapshot(&self.mem);

        let metrics = Arc::new(VsockMetrics::default());
        let connector = Arc::new(UdsConnector {
            uds_path: self.dir.join("v.sock"),
        });
        let listener = self.listener.try_clone().expect("listener");
        let muxer = Muxer::new(GUEST_CID, listener, connector, metrics.clone()).expect("muxer");
        let mut worker = Worker::new(
            self.mem.clone(),
            rx.queue(event_idx),
            tx.queue(event_idx),
            Arc::new(fuzz_rings::NoInterrupt),
            muxer,
            metrics,
        );
        let _host = host_first.then(|| {
            let mut s = UnixStream::connect(self.dir.join("v.sock")).expect("connect");
            let _ = std::io::Write::write_all(&mut s, b"CONNECT 5\n");
            let _ = std::io::Write::write_all(&mut s, &[0x42; 100]);
            s
        });
        worker.run_once();
        // A second round: answers to the first round's packets.
        worker.run_once();
        let connections = worker.muxer().connections();
        drop(worker);

        let after = fuzz_rings::snapshot(&self.mem);
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            assert!(
                a == b || allowed[i],
                "guest byte {i:#x} (flat) changed outside the RX buffers and used rings"
            );
        }
        let stats = RunStats {
            rx_used: rx.used(&self.mem),
            tx_used: tx.used(&self.mem),
            connections,
        };
        for i in 0..stats.tx_used.min(tx.size) {
            let (_, len) = tx.used_entry(&self.mem, i);
            assert_eq!(len, 0, "a TX chain came back with a length");
        }
        for i in 0..stats.rx_used.min(rx.size) {
            let (_, len) = rx.used_entry(&self.mem, i);
            assert!(
                len == 0 || (len as usize >= HDR_LEN && len <= HDR_LEN as u32 + MAX_PAYLOAD),
                "RX used length {len}"
            );
        }
        stats
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An input whose TX queue holds one guest REQUEST to `GUEST_PORT_OK`
/// and whose RX queue holds `rx_buffers` buffers: a seed that reaches the
/// connection paths (the answer is a RESPONSE).
pub fn seed_request(rx_buffers: u16) -> Vec<u8> {
    use super::packet::{op, Header, HOST_CID, TYPE_STREAM};
    let size: u16 = 8;
    let mut input = vec![0u8];
    // Queue bytes: size 8 (1 << 3), next_avail 0, for RX and TX.
    input.extend([3, 0, 0, 3, 0, 0]);
    let data = fuzz_rings::DATA_AREA;
    // RX table: buffers of 44 + 256 bytes in the data area.
    let mut rx_table = vec![0u8; 16 * usize::from(size)];
    for i in 0..rx_buffers.min(size) {
        let d = &mut rx_table[16 * usize::from(i)..][..16];
        d[..8].copy_from_slice(&(data + 0x1000 + 0x200 * u64::from(i)).to_le_bytes());
        d[8..12].copy_from_slice(&(HDR_LEN as u32 + 256).to_le_bytes());
        d[12..14].copy_from_slice(&VRING_DESC_F_WRITE.to_le_bytes());
    }
    let mut rx_avail = vec![0u8; 6 + 2 * usize::from(size)];
    rx_avail[2..4].copy_from_slice(&rx_buffers.min(size).to_le_bytes());
    for i in 0..rx_buffers.min(size) {
        rx_avail[4 + 2 * usize::from(i)..][..2].copy_from_slice(&i.to_le_bytes());
    }
    // TX table: one header-only chain at the start of the data area.
    let mut tx_table = vec![0u8; 16 * usize::from(size)];
    tx_table[..8].copy_from_slice(&data.to_le_bytes());
    tx_table[8..12].copy_from_slice(&(HDR_LEN as u32).to_le_bytes());
    let mut tx_avail = vec![0u8; 6 + 2 * usize::from(size)];
    tx_avail[2..4].copy_from_slice(&1u16.to_le_bytes());
    input.extend(rx_table);
    input.extend(rx_avail);
    input.extend(tx_table);
    input.extend(tx_avail);
    let hdr = Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 40000,
        dst_port: GUEST_PORT_OK,
        len: 0,
        type_: TYPE_STREAM,
        op: op::REQUEST,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    };
    input.extend(hdr.to_bytes());
    input
}
