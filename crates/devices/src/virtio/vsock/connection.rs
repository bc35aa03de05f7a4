//! One vsock stream connection between a guest socket and a host Unix
//! socket: its state, the credit accounting of virtio 1.2, 5.10.6.3, and
//! the data waiting for the slower side.
//!
//! Credit: each side advertises `buf_alloc` (its receive buffer) and
//! `fwd_cnt` (bytes it has consumed); a sender may have at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes outstanding. Towards
//! the guest we never send more than that; from the guest we buffer up to
//! `CONN_BUF` bytes the host socket has not taken yet, and a guest that
//! sends more than the credit we gave is reset.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use super::packet::{op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Our receive buffer per connection: what the guest may send ahead of the
/// host socket.
pub const CONN_BUF: u32 = 256 * 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or queued), waiting for RESPONSE.
    Connecting,
    /// Both sides may send.
    Established,
    /// Being torn down: an RST is queued, then the connection goes.
    Closing,
}

/// Control packets a connection owes the guest, sent before data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owed {
    pub request: bool,
    pub response: bool,
    pub credit_update: bool,
    /// SHUTDOWN flags to send (0: none).
    pub shutdown: u32,
    pub rst: bool,
}

impl Owed {
    pub fn any(&self) -> bool {
        self.request || self.response || self.credit_update || self.shutdown != 0 || self.rst
    }
}

pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    /// Host side port (ours) and guest side port.
    pub local_port: u32,
    pub peer_port: u32,
    pub owed: Owed,
    /// The host socket had data (edge-triggered: until a read would block).
    pub host_readable: bool,
    /// The host socket's write side was shut (no more data to it).
    pub host_write_shut: bool,
    /// The host socket reached EOF.
    pub host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest (wrapping).
    pub rx_cnt: u32,
    /// Bytes of guest data handed to the host socket (wrapping).
    pub fwd_cnt: u32,
    /// `fwd_cnt` the guest last heard from us.
    pub fwd_cnt_told: u32,
    /// Guest data the host socket has not taken yet.
    pub to_host: VecDeque<u8>,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            state,
            local_port,
            peer_port,
            owed: Owed::default(),
            host_readable: true,
            host_write_shut: false,
            host_eof: false,
            peer_shutdown: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            to_host: VecDeque::new(),
        }
    }

    /// A header from us (host) to the guest socket of this connection.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Take the credit the guest advertises in any packet it sends.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether data from the host could go to the guest now.
    pub fn wants_to_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has anything for the RX queue.
    pub fn has_rx(&self) -> bool {
        self.owed.any() || self.wants_to_send_data()
    }

    /// Read host data for one RW packet of at most `room` bytes into
    /// `buf`. Ok(0): nothing now (would block), or EOF (`host_eof` set).
    pub fn read_host(&mut self, buf: &mut [u8], room: usize) -> io::Result<usize> {
        let n = room.min(self.peer_credit() as usize).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        loop {
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                    return Ok(0);
                }
                Ok(got) => {
                    self.rx_cnt = self.rx_cnt.wrapping_add(got as u32);
                    return Ok(got);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Guest data for the host socket: written now as far as it goes, the
    /// rest kept. Err when the guest overran the credit we gave it, or the
    /// host socket failed.
    pub fn send_to_host(&mut self, data: &[u8]) -> io::Result<()> {
        if self.to_host.len() + data.len() > CONN_BUF as usize {
            return Err(io::Error::other("the guest sent more than its credit"));
        }
        if self.host_write_shut {
            // Nobody reads it any more; count it as consumed.
            self.fwd_cnt = self.fwd_cnt.wrapping_add(data.len() as u32);
            return Ok(());
        }
        self.to_host.extend(data);
        self.flush_to_host()
    }

    /// Write what is kept for the host socket until it would block.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // Tell the guest about freed buffer space once a quarter of it is
        // free again, so a sender waiting on credit wakes up.
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= CONN_BUF / 4 {
            self.owed.credit_update = true;
        }
        if self.to_host.is_empty() && self.peer_shutdown & SHUTDOWN_SEND != 0 {
            self.shut_host_write();
        }
        // The guest closed and the last of its data is out: finish with RST.
        if self.peer_done() && self.state != State::Closing {
            self.owed = Owed::default();
            self.owed.rst = true;
            self.state = State::Closing;
        }
        Ok(())
    }

    /// The guest will send no more: pass the EOF on to the host socket.
    pub fn shut_host_write(&mut self) {
        if !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Both directions are finished: the guest said it will neither send
    /// nor receive, and everything it sent reached the host.
    pub fn peer_done(&self) -> bool {
        self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND && self.to_host.is_empty()
    }

    /// The next owed control packet's op and flags, cleared from `owed`.
    pub fn take_owed(&mut self) -> Option<(u16, u32)> {
        let o = &mut self.owed;
        if o.rst {
            *o = Owed::default();
            return Some((op::RST, 0));
        }
        if o.request {
            o.request = false;
            return Some((op::REQUEST, 0));
        }
        if o.response {
            o.response = false;
            return Some((op::RESPONSE, 0));
        }
        if o.shutdown != 0 {
            let flags = std::mem::take(&mut o.shutdown);
            return Some((op::SHUTDOWN, flags));
        }
        if o.credit_update {
            o.credit_update = false;
            return Some((op::CREDIT_UPDATE, 0));
        }
        None
    }
}
