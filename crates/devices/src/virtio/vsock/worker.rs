//! The device thread of an activated vsock device.
//!
//! It waits (epoll) on the kicks of the RX and TX queues, the muxer's epoll
//! fd (host sockets) and its wake eventfd (stop and pause). Each turn it
//! serves TX (every packet the guest sent goes to the muxer, and its chain
//! back to the driver), then RX (packets the muxer has for the guest fill
//! the buffers the driver posted, until one side runs out), then signals
//! each queue once. A guest that posts no RX buffers holds up only its own
//! connections: host data stays in the host sockets (the muxer's credit
//! and edge-triggered polling make sure nothing spins meanwhile).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::VsockMetrics;
use super::muxer::Muxer;
use super::packet::{self, op, MAX_PAYLOAD};
use crate::virtio::device_thread::{wait_events, WorkerControl};
use crate::virtio::served_queue::ServedQueue;
use crate::virtio::{GuestMemory, Interrupt};

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVT: usize = 2;

const TOKEN_WAKE: u64 = 10;
const TOKEN_MUXER: u64 = 11;

/// Serves a vsock device's queues; see the module comment.
pub struct Worker {
    mem: GuestMemory,
    rx: ServedQueue,
    tx: ServedQueue,
    interrupt: Arc<dyn Interrupt>,
    muxer: Muxer,
    metrics: Arc<VsockMetrics>,
    payload: Vec<u8>,
}

impl Worker {
    /// `queues` are RX, TX and event, in that order.
    pub fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<dyn Interrupt>,
        muxer: Muxer,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        Worker {
            mem,
            rx: ServedQueue::new(RX as u16, rx),
            tx: ServedQueue::new(TX as u16, tx),
            interrupt,
            muxer,
            metrics,
            payload: vec![0; MAX_PAYLOAD as usize],
        }
    }

    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Serve up to one queue-size of TX chains; true if more may remain.
    pub fn serve_tx(&mut self, holding: &dyn Fn() -> bool) -> bool {
        let mut budget = self.tx.queue.size();
        self.tx.begin(&self.mem);
        loop {
            if holding() || budget == 0 {
                return true;
            }
            if self.muxer.tx_blocked() {
                // Served again after RX drains the owed RSTs.
                return false;
            }
            let Some(chain) = self.tx.pop(&self.mem) else {
                return false;
            };
            budget -= 1;
            let head = chain.head_index();
            match packet::parse_tx(chain, &self.mem) {
                Ok(pkt) => {
                    let len = pkt.hdr.len as usize;
                    let data = &mut self.payload[..len];
                    if crate::virtio::chain::gather(&self.mem, &pkt.payload, data).is_ok() {
                        let data = if pkt.hdr.op == op::RW {
                            &data[..]
                        } else {
                            &[][..]
                        };
                        self.muxer.on_tx(&pkt.hdr, data);
                    } else {
                        VsockMetrics::add(&self.metrics.bad_packets, 1);
                    }
                }
                Err(_) => VsockMetrics::add(&self.metrics.bad_packets, 1),
            }
            self.tx.add_used(&self.mem, head, 0);
        }
    }

    /// Fill RX buffers with what the muxer has, up to one queue-size; true
    /// if more may remain with buffers to take it.
    pub fn serve_rx(&mut self, holding: &dyn Fn() -> bool) -> bool {
        let mut budget = self.rx.queue.size();
        self.rx.begin(&self.mem);
        while self.muxer.has_rx() {
            if holding() || budget == 0 {
                return true;
            }
            let Some(chain) = self.rx.pop(&self.mem) else {
                // No buffers: the driver's next kick brings some.
                return false;
            };
            budget -= 1;
            let head = chain.head_index();
            let buf = match packet::parse_rx(chain, &self.mem) {
                Ok(b) => b,
                Err(_) => {
                    VsockMetrics::add(&self.metrics.bad_packets, 1);
                    self.rx.add_used(&self.mem, head, 0);
                    continue;
                }
            };
            let Some(hdr) = self.muxer.next_rx(buf.payload_room()) else {
                self.rx.undo_pop();
                return false;
            };
            let payload = if hdr.op == op::RW {
                self.muxer.payload(hdr.len)
            } else {
                &[]
            };
            let used = packet::write_rx(&self.mem, &buf, &hdr, payload).unwrap_or(0);
            self.rx.add_used(&self.mem, head, used);
        }
        false
    }

    /// Signal each queue that gained used entries, if the driver wants it.
    pub fn signal(&mut self) {
        for q in [&mut self.rx, &mut self.tx] {
            if q.signal(&self.mem, self.interrupt.as_ref()) {
                VsockMetrics::add(&self.metrics.interrupts, 1);
            }
        }
    }

    /// One synchronous round (tests): host events, TX, RX, signal.
    pub fn run_once(&mut self) {
        self.muxer.process_host_events();
        while self.serve_tx(&|| false) {}
        while self.serve_rx(&|| false) {}
        self.signal();
    }

    /// The device thread's loop; returns when the device stops, or on a
    /// fatal epoll error. `kicks` are the RX, TX and event queues' kicks.
    pub fn run(mut self, kicks: &[EventFd], control: &WorkerControl) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd, token, events| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(control.wake.as_raw_fd(), TOKEN_WAKE, EventSet::IN)?;
        add(self.muxer.as_raw_fd(), TOKEN_MUXER, EventSet::IN)?;
        // Kicks are edge-triggered: every write wakes epoll again, so the
        // counters never need reading. The event queue is only written by
        // the device (transport resets after a restore); its kicks are
        // ignored.
        for (i, kick) in kicks.iter().enumerate().take(EVT) {
            add(
                kick.as_raw_fd(),
                i as u64,
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
            let holding = || control.holding();
            // Chains made available before activation are served at once.
            let tx_more = self.serve_tx(&holding);
            let rx_more = self.serve_rx(&holding);
            self.signal();
            let timeout = if tx_more || rx_more { 0 } else { -1 };
            let n = wait_events(&epoll, timeout, &mut events)?;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        let _ = control.wake.read();
                    }
                    TOKEN_MUXER => self.muxer.process_host_events(),
                    _ => {}
                }
            }
        }
    }
}
