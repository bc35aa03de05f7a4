//! vsock's host side carried over one byte stream: how the nested rig
//! gives a vireo running inside L1 the host's Unix sockets, so `--vsock
//! cid=N,uds=PATH` means the same through the rig as on a host with
//! hardware virtualization.
//!
//! The stream is a virtio-serial port of L1 (`PORT_NAME`), a Unix socket on
//! the host. Both ends run a [`Tunnel`] over it: every connection is a
//! local Unix stream on each side, and bytes, half-closes and closes cross
//! as frames `[kind: u8][id: u32 LE][len: u32 LE][len bytes]`:
//!
//! * `OPEN_IN` (host to L1): a host program connected to `PATH`; the L1 end
//!   connects to the inner device's own socket, so the inner muxer sees an
//!   ordinary host program (and does the CONNECT/OK handshake itself);
//! * `OPEN_OUT` (L1 to host, payload: the port): the guest connects to host
//!   port P; the host end connects to `PATH_P` and answers `ACK` (payload
//!   1 or 0), so a refused port is refused in the guest too;
//! * `DATA`, `EOF` (the sender's side will send no more), `CLOSE`.
//!
//! Host-originated ids have the top bit set, L1-originated ones not. Each
//! connection has a reader thread per side; incoming data is written by the
//! stream's reader thread, so one host program that stops reading holds up
//! the others (acceptable for a test rig; a direct run has no relay).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::muxer::HostConnector;

/// The name of L1's virtio-serial port that carries the relay.
pub const PORT_NAME: &str = "vireo.vsock";

const OPEN_IN: u8 = 1;
const OPEN_OUT: u8 = 2;
const ACK: u8 = 3;
const DATA: u8 = 4;
const EOF: u8 = 5;
const CLOSE: u8 = 6;

const FRAME_HDR: usize = 9;
/// Largest frame payload either end sends or accepts.
const MAX_FRAME: usize = 64 * 1024;
/// How long a guest connection waits for the host's answer.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const HOST_ID_BIT: u32 = 1 << 31;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read one frame into `buf`: (kind, id).
fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<(u8, u32)> {
    let mut hdr = [0u8; FRAME_HDR];
    r.read_exact(&mut hdr)?;
    let id = u32::from_le_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]);
    let len = u32::from_le_bytes([hdr[5], hdr[6], hdr[7], hdr[8]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vsock relay frame of {len} bytes"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok((hdr[0], id))
}

struct Conn {
    /// Our side of the connection (a clone; the reader thread has another).
    stream: UnixStream,
    /// We told the other end EOF (our program sends no more).
    sent_eof: bool,
    /// The other end told us EOF.
    got_eof: bool,
}

/// One end of the relay; see the module comment.
pub struct Tunnel {
    out: Mutex<File>,
    conns: Mutex<HashMap<u32, Conn>>,
    acks: Mutex<HashMap<u32, mpsc::Sender<bool>>>,
    next_id: AtomicU32,
    id_bit: u32,
}

impl Tunnel {
    fn new(channel: &File, id_bit: u32) -> io::Result<Arc<Tunnel>> {
        Ok(Arc::new(Tunnel {
            out: Mutex::new(channel.try_clone()?),
            conns: Mutex::default(),
            acks: Mutex::default(),
            next_id: AtomicU32::new(1),
            id_bit,
        }))
    }

    fn new_id(&self) -> u32 {
        (self.next_id.fetch_add(1, Ordering::Relaxed) & !HOST_ID_BIT) | self.id_bit
    }

    fn send(&self, kind: u8, id: u32, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(FRAME_HDR + payload.len());
        frame.push(kind);
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        lock(&self.out).write_all(&frame)
    }

    /// Track connection `id` on `stream` (incoming data goes to it).
    fn register(&self, id: u32, stream: &UnixStream) -> io::Result<()> {
        let conn = Conn {
            stream: stream.try_clone()?,
            sent_eof: false,
            got_eof: false,
        };
        lock(&self.conns).insert(id, conn);
        Ok(())
    }

    /// Start forwarding what our program writes on `stream`.
    fn start_reader(self: &Arc<Self>, id: u32, mut stream: UnixStream) {
        let tunnel = self.clone();
        let spawned = std::thread::Builder::new()
            .name("vireo-vsock-rly".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => {
                            let _ = tunnel.send(EOF, id, &[]);
                            tunnel.eof_sent(id);
                            return;
                        }
                        Ok(n) => {
                            if tunnel.send(DATA, id, &buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            let _ = tunnel.send(CLOSE, id, &[]);
                            tunnel.forget(id);
                            return;
                        }
                    }
                }
            });
        if spawned.is_err() {
            let _ = self.send(CLOSE, id, &[]);
            self.forget(id);
        }
    }

    fn forget(&self, id: u32) {
        if let Some(c) = lock(&self.conns).remove(&id) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn eof_sent(&self, id: u32) {
        let mut conns = lock(&self.conns);
        let done = conns.get_mut(&id).is_some_and(|c| {
            c.sent_eof = true;
            c.got_eof
        });
        if done {
            conns.remove(&id);
        }
    }

    /// Handle a frame both ends treat alike; false if it was not one.
    fn common(&self, kind: u8, id: u32, payload: &[u8]) -> bool {
        match kind {
            DATA => {
                let stream = lock(&self.conns)
                    .get(&id)
                    .and_then(|c| c.stream.try_clone().ok());
                match stream {
                    Some(mut s) => {
                        if s.write_all(payload).is_err() {
                            let _ = self.send(CLOSE, id, &[]);
                            self.forget(id);
                        }
                    }
                    // Nobody here: tell the other end to stop.
                    None => {
                        let _ = self.send(CLOSE, id, &[]);
                    }
                }
            }
            EOF => {
                let mut conns = lock(&self.conns);
                let done = conns.get_mut(&id).is_some_and(|c| {
                    c.got_eof = true;
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    c.sent_eof
                });
                if done {
                    conns.remove(&id);
                }
            }
            CLOSE => self.forget(id),
            ACK => {
                if let Some(tx) = lock(&self.acks).remove(&id) {
                    let _ = tx.send(payload.first() == Some(&1));
                }
            }
            _ => return false,
        }
        true
    }
}

/// Read frames from `channel` until it ends, giving the ones `common` does
/// not handle to `other`.
fn pump_channel(
    tunnel: Arc<Tunnel>,
    mut channel: File,
    other: impl Fn(&Arc<Tunnel>, u8, u32, &[u8]) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("vireo-vsock-rly".into())
        .spawn(move || {
            let mut buf = Vec::new();
            while let Ok((kind, id)) = read_frame(&mut channel, &mut buf) {
                if !tunnel.common(kind, id, &buf) {
                    other(&tunnel, kind, id, &buf);
                }
            }
            // The other end is gone: so are its connections.
            let ids: Vec<u32> = lock(&tunnel.conns).keys().copied().collect();
            for id in ids {
                tunnel.forget(id);
            }
        })
        .map(|_| ())
}

/// The host end: host programs connect to `listener` (the user's PATH);
/// guest connections to port P reach `<uds_path>_P`. Returns at once; the
/// relay runs until the channel ends.
pub fn serve_host(listener: UnixListener, uds_path: &Path, channel: File) -> io::Result<()> {
    let tunnel = Tunnel::new(&channel, HOST_ID_BIT)?;
    let uds = uds_path.to_path_buf();
    pump_channel(tunnel.clone(), channel, move |t, kind, id, payload| {
        if kind != OPEN_OUT || payload.len() != 4 {
            return;
        }
        let port = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let path = format!("{}_{port}", uds.display());
        match UnixStream::connect(&path) {
            Ok(stream) if t.register(id, &stream).is_ok() => {
                let _ = t.send(ACK, id, &[1]);
                t.start_reader(id, stream);
            }
            _ => {
                let _ = t.send(ACK, id, &[0]);
            }
        }
    })?;
    std::thread::Builder::new()
        .name("vireo-vsock-acc".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let id = tunnel.new_id();
                if tunnel.register(id, &stream).is_err() {
                    continue;
                }
                if tunnel.send(OPEN_IN, id, &[]).is_err() {
                    return;
                }
                tunnel.start_reader(id, stream);
            }
        })
        .map(|_| ())
}

/// The L1 end: relayed host programs are connected to the inner device's
/// socket `inner_uds`; guest connections go to the host end (as the
/// device's `HostConnector`).
pub struct InnerEnd {
    tunnel: Arc<Tunnel>,
}

impl InnerEnd {
    pub fn start(channel: File, inner_uds: &Path) -> io::Result<Arc<InnerEnd>> {
        let tunnel = Tunnel::new(&channel, 0)?;
        let inner: PathBuf = inner_uds.to_path_buf();
        pump_channel(tunnel.clone(), channel, move |t, kind, id, _| {
            if kind != OPEN_IN {
                return;
            }
            match UnixStream::connect(&inner) {
                Ok(stream) if t.register(id, &stream).is_ok() => t.start_reader(id, stream),
                _ => {
                    let _ = t.send(CLOSE, id, &[]);
                }
            }
        })?;
        Ok(Arc::new(InnerEnd { tunnel }))
    }

    /// Open the relay's virtio-serial port in L1 (found by its name).
    pub fn open_port() -> io::Result<File> {
        for entry in std::fs::read_dir("/sys/class/virtio-ports")? {
            let entry = entry?;
            let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            if name.trim() == PORT_NAME {
                let dev = Path::new("/dev").join(entry.file_name());
                return std::fs::OpenOptions::new().read(true).write(true).open(dev);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no virtio-serial port named {PORT_NAME}"),
        ))
    }
}

impl HostConnector for InnerEnd {
    fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let t = &self.tunnel;
        let id = t.new_id();
        let (ours, theirs) = UnixStream::pair()?;
        // Registered before asking, so data right after the ACK has a home.
        t.register(id, &theirs)?;
        let (tx, rx) = mpsc::channel();
        lock(&t.acks).insert(id, tx);
        let asked = t.send(OPEN_OUT, id, &port.to_le_bytes());
        let ok = asked.is_ok() && rx.recv_timeout(ACK_TIMEOUT).unwrap_or(false);
        lock(&t.acks).remove(&id);
        if !ok {
            // A late ACK must not leave the host side connected.
            let _ = t.send(CLOSE, id, &[]);
            t.forget(id);
            return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
        }
        t.start_reader(id, theirs);
        Ok(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn file(s: UnixStream) -> File {
        File::from(OwnedFd::from(s))
    }

    /// Both ends in one process over a socketpair: a host program reaches
    /// an inner listener through OPEN_IN, and an inner connect reaches a
    /// host listener (or is refused) through OPEN_OUT.
    #[test]
    fn both_directions_cross_the_relay() {
        let dir = std::env::temp_dir().join(format!("vireo-relay-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (host_chan, inner_chan) = UnixStream::pair().unwrap();
        let outer = dir.join("outer.sock");
        let inner = dir.join("inner.sock");
        let host_listener = UnixListener::bind(&outer).unwrap();
        let inner_listener = UnixListener::bind(&inner).unwrap();
        serve_host(host_listener, &outer, file(host_chan)).unwrap();
        let end = InnerEnd::start(file(inner_chan), &inner).unwrap();

        // Host program -> PATH -> relay -> inner socket.
        let mut prog = UnixStream::connect(&outer).unwrap();
        prog.write_all(b"CONNECT 52\n").unwrap();
        let (mut seen, _) = inner_listener.accept().unwrap();
        let mut line = [0u8; 11];
        seen.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"CONNECT 52\n");
        seen.write_all(b"OK 1073741824\n").unwrap();
        let mut back = [0u8; 14];
        prog.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"OK 1073741824\n");
        // Half-close crosses as EOF.
        prog.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        seen.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        // Inner connect -> relay -> PATH_9000 on the host.
        let l9000 = UnixListener::bind(format!("{}_9000", outer.display())).unwrap();
        let mut c = end.connect(9000).unwrap();
        let (mut h, _) = l9000.accept().unwrap();
        c.write_all(b"from the guest").unwrap();
        let mut got = [0u8; 14];
        h.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"from the guest");
        h.write_all(&vec![7u8; 200_000]).unwrap();
        drop(h);
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 200_000);
        // Nobody on 9001.
        let e = end.connect(9001).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn oversized_frames_end_the_channel() {
        let mut bad = vec![DATA, 1, 0, 0, 0];
        bad.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        let mut buf = Vec::new();
        let e = read_frame(&mut &bad[..], &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
