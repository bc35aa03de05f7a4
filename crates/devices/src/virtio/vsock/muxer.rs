//! The host side of a vsock device: every connection between guest sockets
//! and host Unix sockets, with Firecracker's conventions so its users'
//! tools work unchanged:
//!
//! * host-initiated: a host program connects to the device's Unix socket
//!   `PATH` and writes `CONNECT <port>\n`; the muxer sends the guest a
//!   REQUEST to that port from a fresh host port, and once the guest's
//!   listener accepts (RESPONSE) writes `OK <hostport>\n` back and streams
//!   both ways. A refused connection (RST) closes the host socket.
//! * guest-initiated: a guest connection to host port P is connected to
//!   the Unix socket `PATH_P`, where a host program listens; nobody there
//!   means an RST to the guest.
//!
//! The muxer owns its own epoll set (the listener, host sockets still
//! sending their CONNECT line, and connected host sockets, all
//! edge-triggered except the listener); the device thread polls its fd
//! with the queues and calls `process_host_events` when it is readable.
//! Packets the guest sends go to `on_tx`; `next_rx` gives the next packet
//! for the guest, control packets first, connections served in turn.
//!
//! Nothing the guest sends is trusted: packets with a wrong CID or type,
//! for unknown connections, out of order for the connection's state, or
//! beyond the credit we gave are answered with RST (the connection, if
//! any, goes); host programs that send garbage instead of a CONNECT line
//! are dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, State};
use super::metrics::VsockMetrics;
use super::packet::{op, Header, HOST_CID, MAX_PAYLOAD, SHUTDOWN_SEND, TYPE_STREAM};

/// Host ports handed to host-initiated connections start here (as in
/// Firecracker), well above the ports guests listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Most connections per device; more are refused with RST.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host sockets still sending their CONNECT line.
const MAX_PENDING: usize = 64;
/// Longest CONNECT line accepted ("CONNECT 4294967295\n" is 19 bytes).
const MAX_CONNECT_LINE: usize = 32;
const TOKEN_LISTENER: u64 = u64::MAX;
/// Most RSTs for unknown connections waiting for RX buffers.
const MAX_CTRL: usize = 512;

/// A connection: (host port, guest port).
type Key = (u32, u32);

/// How a guest connection to host port P reaches a host program.
pub trait HostConnector: Send + Sync {
    /// A connected stream to port `port`'s listener; an error refuses the
    /// guest's connection (RST). Must not block for long: the device
    /// thread waits for it.
    fn connect(&self, port: u32) -> io::Result<UnixStream>;
}

/// Firecracker's convention: port P is the Unix socket `<uds_path>_P`.
pub struct UdsConnector {
    pub uds_path: PathBuf,
}

impl HostConnector for UdsConnector {
    fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let path = format!("{}_{}", self.uds_path.display(), port);
        let stream = connect_nonblocking(Path::new(&path))?;
        Ok(stream)
    }
}

pub struct Muxer {
    guest_cid: u64,
    connector: Arc<dyn HostConnector>,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// The listener is out of the epoll set after an accept failure
    /// (out of fds): back in when a connection goes.
    listener_paused: bool,
    /// Host sockets that have not finished their CONNECT line.
    pending: HashMap<RawFd, UnixStream>,
    /// Connections that may have a packet for the guest, in turn.
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    /// RSTs for packets that named no connection.
    ctrl: VecDeque<Header>,
    next_port: u32,
    buf: Vec<u8>,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    /// Host programs connect on `listener`; guest connections go through
    /// `connector`.
    pub fn new(
        guest_cid: u64,
        listener: UnixListener,
        connector: Arc<dyn HostConnector>,
        metrics: Arc<VsockMetrics>,
    ) -> io::Result<Muxer> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            connector,
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            listener_paused: false,
            pending: HashMap::new(),
            ready: VecDeque::new(),
            queued: HashSet::new(),
            ctrl: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            buf: vec![0; MAX_PAYLOAD as usize],
            metrics,
        })
    }

    /// The fd the device thread polls: readable when a host socket has news.
    pub fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether TX must wait: the RSTs owed to the guest fill their queue
    /// (a guest that sends bad packets and posts no RX buffers cannot grow
    /// the VMM's memory; its TX chains stay on the ring until RX drains).
    pub fn tx_blocked(&self) -> bool {
        self.ctrl.len() >= MAX_CTRL
    }

    /// Whether a packet for the guest may be waiting.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.ready.is_empty()
    }

    fn mark_ready(&mut self, key: Key) {
        if self.queued.insert(key) {
            self.ready.push_back(key);
        }
    }

    /// Handle what happened on host sockets since the last call.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        // Bounded: new events keep coming on a busy host; the device
        // thread comes back for them after serving the queues.
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == TOKEN_LISTENER {
                    self.accept_all();
                    continue;
                }
                let fd = token as RawFd;
                if self.pending.contains_key(&fd) {
                    let hup = ev
                        .event_set()
                        .intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP);
                    self.try_handshake(fd, hup);
                    continue;
                }
                let Some(&key) = self.by_fd.get(&fd) else {
                    continue;
                };
                let set = ev.event_set();
                if let Some(c) = self.conns.get_mut(&key) {
                    if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
                        c.host_readable = true;
                    }
                    if set.contains(EventSet::OUT) && c.flush_to_host().is_err() {
                        c.owed.rst = true;
                        c.state = State::Closing;
                    }
                }
                self.mark_ready(key);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // Out of fds or memory: the level-triggered listener
                    // would wake us forever. Wait for a connection to go.
                    let fd = self.listener.as_raw_fd();
                    let _ = self
                        .epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    self.listener_paused = true;
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            let ev = EpollEvent::new(
                EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
                fd as u64,
            );
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                self.pending.insert(fd, stream);
                // Data may already be there: its edge came before the add.
                self.try_handshake(fd, false);
            }
        }
    }

    /// Look for a complete `CONNECT <port>\n` on pending socket `fd`
    /// without reading past it (what follows is the connection's data).
    /// `hup`: the host program shut its side, so no more is coming.
    fn try_handshake(&mut self, fd: RawFd, hup: bool) {
        let Some(stream) = self.pending.get(&fd) else {
            return;
        };
        let mut peek = [0u8; MAX_CONNECT_LINE];
        // SAFETY: recv writes at most `peek.len()` bytes into `peek`.
        let n = unsafe {
            libc::recv(
                fd,
                peek.as_mut_ptr().cast(),
                peek.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                self.drop_pending(fd);
            }
            return;
        }
        let peeked = &peek[..n as usize];
        let Some(end) = peeked.iter().position(|&b| b == b'\n') else {
            if n == 0 || hup || peeked.len() == MAX_CONNECT_LINE {
                // EOF, or too long to be a CONNECT line.
                self.drop_pending(fd);
            }
            return;
        };
        let port = parse_connect(&peeked[..end]);
        let mut line = vec![0u8; end + 1];
        let consumed = std::io::Read::read(&mut &*stream, &mut line).ok() == Some(end + 1);
        let Some(stream) = self.pending.remove(&fd) else {
            return;
        };
        let (Some(port), true) = (port, consumed) else {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            VsockMetrics::add(&self.metrics.bad_host_requests, 1);
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return;
        }
        let Some(local) = self.alloc_port() else {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return;
        };
        let mut c = Connection::new(stream, State::Connecting, local, port);
        c.owed.request = true;
        c.host_readable = false;
        let key = (local, port);
        // Now a connection: wake on writable too.
        let ev = EpollEvent::new(conn_events(), fd as u64);
        if self.epoll.ctl(ControlOperation::Modify, fd, ev).is_err() {
            return;
        }
        self.by_fd.insert(fd, key);
        self.conns.insert(key, c);
        self.mark_ready(key);
    }

    fn drop_pending(&mut self, fd: RawFd) {
        if self.pending.remove(&fd).is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            VsockMetrics::add(&self.metrics.bad_host_requests, 1);
        }
    }

    fn alloc_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // Guest connections to high ports use them too.
            if !self.conns.keys().any(|k| k.0 == p) {
                return Some(p);
            }
        }
        None
    }

    /// An RST answering `hdr`, for a packet that named no connection.
    fn reset_reply(&mut self, hdr: &Header) {
        VsockMetrics::add(&self.metrics.rst_sent, 1);
        self.ctrl.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.by_fd.remove(&fd);
        }
        if self.listener_paused {
            let ev = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
            let fd = self.listener.as_raw_fd();
            self.listener_paused = self.epoll.ctl(ControlOperation::Add, fd, ev).is_err();
        }
    }

    /// Reset connection `key`: an RST to the guest, then it goes.
    fn reset(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.owed = Default::default();
            c.owed.rst = true;
            c.state = State::Closing;
            self.mark_ready(key);
        }
    }

    /// A packet the guest sent, with `payload` its data (RW only).
    pub fn on_tx(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid || hdr.type_ != TYPE_STREAM {
            VsockMetrics::add(&self.metrics.bad_packets, 1);
            if hdr.op != op::RST {
                self.reset_reply(hdr);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if !self.conns.contains_key(&key) {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr),
                op::RST => {}
                _ => self.reset_reply(hdr),
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.update_peer_credit(hdr);
        let mut reset = false;
        match (hdr.op, c.state) {
            (op::RESPONSE, State::Connecting) => {
                c.state = State::Established;
                c.host_readable = true;
                let ok = format!("OK {}\n", c.local_port);
                // A fresh socket takes a line this short at once.
                reset = (&c.stream).write_all(ok.as_bytes()).is_err();
            }
            (op::RW, State::Established) => {
                VsockMetrics::add(&self.metrics.tx_bytes, payload.len() as u64);
                reset = c.send_to_host(payload).is_err();
            }
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, _) => c.owed.credit_update = true,
            (op::SHUTDOWN, State::Established | State::Connecting) => {
                c.peer_shutdown |= hdr.flags & 3;
                if c.peer_shutdown & SHUTDOWN_SEND != 0 && c.to_host.is_empty() {
                    c.shut_host_write();
                }
                if c.peer_done() {
                    reset = true;
                }
            }
            (op::RST, _) => {
                self.remove(key);
                return;
            }
            (op::SHUTDOWN, State::Closing) => {}
            _ => {
                VsockMetrics::add(&self.metrics.bad_packets, 1);
                reset = true;
            }
        }
        if reset {
            VsockMetrics::add(&self.metrics.rst_sent, 1);
            self.reset(key);
        } else if self.conns.get(&key).is_some_and(|c| c.has_rx()) {
            self.mark_ready(key);
        }
    }

    /// The guest connects to host port `hdr.dst_port`: connect through the
    /// connector (`PATH_<port>`, without blocking), answer RESPONSE or RST.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.reset_reply(hdr);
            return;
        }
        let stream = match self
            .connector
            .connect(hdr.dst_port)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(s) => s,
            Err(_) => {
                VsockMetrics::add(&self.metrics.refused, 1);
                self.reset_reply(hdr);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let key = (hdr.dst_port, hdr.src_port);
        let mut c = Connection::new(stream, State::Established, hdr.dst_port, hdr.src_port);
        c.update_peer_credit(hdr);
        c.owed.response = true;
        let ev = EpollEvent::new(conn_events(), fd as u64);
        if self.epoll.ctl(ControlOperation::Add, fd, ev).is_err() {
            self.reset_reply(hdr);
            return;
        }
        VsockMetrics::add(&self.metrics.connections, 1);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, c);
        self.mark_ready(key);
    }

    /// The next packet for the guest, with at most `room` payload bytes
    /// (left in `payload()`); None when nothing is ready.
    pub fn next_rx(&mut self, room: u32) -> Option<Header> {
        if let Some(h) = self.ctrl.pop_front() {
            return Some(h);
        }
        let room = room.min(MAX_PAYLOAD) as usize;
        // Each connection waiting now is looked at once.
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            self.queued.remove(&key);
            let guest_cid = self.guest_cid;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if let Some((op, flags)) = c.take_owed() {
                let hdr = c.header(guest_cid, op, 0, flags);
                if op == op::RST {
                    self.remove(key);
                } else {
                    if op == op::REQUEST {
                        VsockMetrics::add(&self.metrics.connections, 1);
                    }
                    if c.has_rx() {
                        self.mark_ready(key);
                    }
                }
                return Some(hdr);
            }
            if !c.wants_to_send_data() {
                continue;
            }
            if room == 0 {
                // A header-only buffer: the data waits for a bigger one.
                self.mark_ready(key);
                continue;
            }
            let got = match c.read_host(&mut self.buf, room) {
                Ok(n) => n,
                Err(_) => {
                    self.reset(key);
                    continue;
                }
            };
            if got == 0 {
                if c.host_eof {
                    // The host will send no more: tell the guest now (put
                    // back on `ready`, it could miss this turn, and nothing
                    // would wake the device for it).
                    c.owed.shutdown = SHUTDOWN_SEND;
                    if let Some((op, flags)) = c.take_owed() {
                        let hdr = c.header(guest_cid, op, 0, flags);
                        if c.has_rx() {
                            self.mark_ready(key);
                        }
                        return Some(hdr);
                    }
                }
                continue;
            }
            VsockMetrics::add(&self.metrics.rx_bytes, got as u64);
            let hdr = c.header(guest_cid, op::RW, got as u32, 0);
            if c.has_rx() {
                self.mark_ready(key);
            }
            return Some(hdr);
        }
        None
    }

    /// The payload of the last RW packet `next_rx` returned.
    pub fn payload(&self, len: u32) -> &[u8] {
        &self.buf[..(len as usize).min(self.buf.len())]
    }
}

fn conn_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

/// `CONNECT <port>` (without the newline) to the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connect to a Unix socket without blocking: a listener whose backlog is
/// full refuses (EAGAIN) instead of stalling the device thread.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: creating a socket has no memory effects.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own from here on.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialized sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"connect 5",
            b"CONNECT 5 6",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
