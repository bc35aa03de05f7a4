//! Network probes for `vireo bench net`, the same program on both ends:
//! servers that run until killed (`serve sink|source|echo ENDPOINT`) and a
//! client that times one test (`probe push|pull|rr ENDPOINT N`) and prints
//! `ns=.. bytes=.. ops=..` for the benchmark's guest script.
//!
//! An endpoint is `tcp:HOST:PORT` (listening: `tcp:PORT` on every
//! address), `vsock:CID:PORT` (listening: `vsock:PORT` on any CID) or
//! `unix:PATH` (a Unix stream socket; Vireo's vsock backend on the host
//! side).
//!
//! * push: send N bytes, half-close, wait for the server's close (a sink
//!   closes after reading everything), so the time covers delivery.
//! * pull: ask a source for N bytes (`N\n`) and read them to its close.
//! * rr: N one-byte request/response round trips with an echo server
//!   (TCP_NODELAY on TCP).

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use crate::Vsock;

/// Where to connect or listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` (or `0.0.0.0:port` to listen).
    Tcp(String),
    Vsock {
        cid: u32,
        port: u32,
    },
    Unix(std::path::PathBuf),
}

impl Endpoint {
    /// Parses `tcp:...`, `vsock:...` or `unix:PATH`; a bare port (for
    /// listening) means every address, any CID.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let bad = || {
            format!("bad endpoint {s:?}: expected tcp:[HOST:]PORT, vsock:[CID:]PORT or unix:PATH")
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u32>().map_err(|_| bad());
        let tcp_port = |p: &str| p.parse::<u16>().map_err(|_| bad());
        match kind {
            "tcp" => match rest.rsplit_once(':') {
                Some((host, p)) if !host.is_empty() => {
                    tcp_port(p)?;
                    Ok(Endpoint::Tcp(rest.to_string()))
                }
                _ => Ok(Endpoint::Tcp(format!("0.0.0.0:{}", tcp_port(rest)?))),
            },
            "vsock" => match rest.split_once(':') {
                Some((cid, p)) => Ok(Endpoint::Vsock {
                    cid: port(cid)?,
                    port: port(p)?,
                }),
                None => Ok(Endpoint::Vsock {
                    cid: libc::VMADDR_CID_ANY,
                    port: port(rest)?,
                }),
            },
            "unix" if !rest.is_empty() => Ok(Endpoint::Unix(rest.into())),
            _ => Err(bad()),
        }
    }

    fn connect(&self) -> io::Result<Conn> {
        Ok(match self {
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            Endpoint::Vsock { cid, port } => Conn::Vsock(Vsock::connect(*cid, *port)?),
            Endpoint::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
        })
    }

    fn listen(&self) -> io::Result<Listener> {
        Ok(match self {
            Endpoint::Tcp(a) => Listener::Tcp(TcpListener::bind(a)?),
            Endpoint::Vsock { port, .. } => Listener::Vsock(Vsock::listen(*port)?),
            Endpoint::Unix(p) => {
                // A socket left by an earlier run.
                let _ = std::fs::remove_file(p);
                Listener::Unix(UnixListener::bind(p)?)
            }
        })
    }
}

/// A connected stream of any kind.
enum Conn {
    Tcp(TcpStream),
    Vsock(Vsock),
    Unix(UnixStream),
}

impl Conn {
    fn close_write(&self) {
        match self {
            Conn::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                crate::wait_acked(s);
            }
            Conn::Vsock(s) => s.shutdown_write(),
            Conn::Unix(s) => drop(s.shutdown(std::net::Shutdown::Write)),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Vsock(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Vsock(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Tcp(TcpListener),
    Vsock(OwnedFd),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Conn> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            Listener::Vsock(l) => Conn::Vsock(Vsock::accept(l)?),
            Listener::Unix(l) => Conn::Unix(l.accept()?.0),
        })
    }
}

/// What a server does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// Read to EOF, then close.
    Sink,
    /// Read `N\n`, send N bytes, close.
    Source,
    /// Echo until EOF.
    Echo,
}

impl std::str::FromStr for Server {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sink" => Ok(Server::Sink),
            "source" => Ok(Server::Source),
            "echo" => Ok(Server::Echo),
            _ => Err(format!(
                "unknown server {s:?}: expected sink, source or echo"
            )),
        }
    }
}

const CHUNK: usize = 64 * 1024;

/// Read to EOF; the byte count.
fn drain(conn: &mut Conn) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write `n` bytes in chunks.
fn fill(conn: &mut Conn, n: u64) -> io::Result<()> {
    let buf = vec![0x5au8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        conn.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn serve_one(kind: Server, mut conn: Conn) -> io::Result<()> {
    match kind {
        Server::Sink => {
            drain(&mut conn)?;
        }
        Server::Source => {
            let mut line = String::new();
            let mut r = io::BufReader::new(&mut conn);
            r.read_line(&mut line)?;
            let n = line
                .trim()
                .parse::<u64>()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad byte count"))?;
            fill(&mut conn, n)?;
        }
        Server::Echo => {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n])?;
            }
        }
    }
    conn.close_write();
    Ok(())
}

/// Serve connections on `ep` until killed, one thread each.
pub fn serve(kind: Server, ep: &Endpoint) -> io::Result<()> {
    let listener = ep.listen()?;
    println!("serve {kind:?}: listening on {ep:?}");
    loop {
        let conn = listener.accept()?;
        std::thread::spawn(move || {
            if let Err(e) = serve_one(kind, conn) {
                eprintln!("serve {kind:?}: {e}");
            }
        });
    }
}

/// One test's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub ns: u128,
    pub bytes: u64,
    pub ops: u64,
}

/// A client test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Push,
    Pull,
    Rr,
}

impl std::str::FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "push" => Ok(Probe::Push),
            "pull" => Ok(Probe::Pull),
            "rr" => Ok(Probe::Rr),
            _ => Err(format!("unknown probe {s:?}: expected push, pull or rr")),
        }
    }
}

/// Run one probe of `n` bytes (push, pull) or round trips (rr) against
/// `ep`; the connection set-up is not timed.
pub fn probe(kind: Probe, ep: &Endpoint, n: u64) -> io::Result<Reading> {
    let mut conn = ep.connect()?;
    let start = Instant::now();
    let (bytes, ops) = match kind {
        Probe::Push => {
            fill(&mut conn, n)?;
            conn.close_write();
            drain(&mut conn)?;
            (n, 1)
        }
        Probe::Pull => {
            conn.write_all(format!("{n}\n").as_bytes())?;
            let got = drain(&mut conn)?;
            if got != n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("pulled {got} of {n} bytes"),
                ));
            }
            (n, 1)
        }
        Probe::Rr => {
            let mut b = [0u8; 1];
            for i in 0..n {
                b[0] = i as u8;
                conn.write_all(&b)?;
                conn.read_exact(&mut b)?;
                if b[0] != i as u8 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("round trip {i}: wrong byte back"),
                    ));
                }
            }
            conn.close_write();
            (n, n)
        }
    };
    Ok(Reading {
        ns: start.elapsed().as_nanos(),
        bytes,
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("tcp:10.9.0.1:5001"),
            Ok(Endpoint::Tcp("10.9.0.1:5001".into()))
        );
        assert_eq!(
            Endpoint::parse("tcp:5001"),
            Ok(Endpoint::Tcp("0.0.0.0:5001".into()))
        );
        assert_eq!(
            Endpoint::parse("vsock:2:5004"),
            Ok(Endpoint::Vsock { cid: 2, port: 5004 })
        );
        assert_eq!(
            Endpoint::parse("vsock:5004"),
            Ok(Endpoint::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 5004
            })
        );
        assert_eq!(
            Endpoint::parse("unix:/tmp/v.sock_5"),
            Ok(Endpoint::Unix("/tmp/v.sock_5".into()))
        );
        for bad in [
            "tcp:",
            "tcp:x",
            "tcp:70000",
            "tcp:h:70000",
            "vsock:a:1",
            "unix:",
            "udp:1",
            "5001",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    /// Every probe against its server over a real Unix socket and TCP on
    /// the loopback.
    #[test]
    fn probes_against_servers() {
        let dir = std::env::temp_dir().join(format!("vireo-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (i, (server, probe_kind, n)) in [
            (Server::Sink, Probe::Push, 3 << 20),
            (Server::Source, Probe::Pull, 3 << 20),
            (Server::Echo, Probe::Rr, 200),
        ]
        .into_iter()
        .enumerate()
        {
            let unix = Endpoint::Unix(dir.join(format!("s{i}")));
            let tcp_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = tcp_listener.local_addr().expect("addr").port();
            drop(tcp_listener);
            let tcp = Endpoint::Tcp(format!("127.0.0.1:{port}"));
            for ep in [unix, tcp] {
                let listener = ep.listen().expect("listen");
                let t = std::thread::spawn(move || {
                    let conn = listener.accept().expect("accept");
                    serve_one(server, conn).expect("serve");
                });
                let r = probe(probe_kind, &ep, n).expect("probe");
                t.join().expect("server thread");
                assert_eq!(r.bytes, n, "{ep:?}");
                assert_eq!(r.ops, if probe_kind == Probe::Rr { n } else { 1 });
                assert!(r.ns > 0);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_short_pull_is_an_error() {
        let dir = std::env::temp_dir().join(format!("vireo-probe-short-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ep = Endpoint::Unix(dir.join("short"));
        let listener = ep.listen().expect("listen");
        let t = std::thread::spawn(move || {
            let mut conn = listener.accept().expect("accept");
            let mut req = [0u8; 4];
            conn.read_exact(&mut req).expect("request");
            let _ = fill(&mut conn, 10);
        });
        let err = probe(Probe::Pull, &ep, 100).expect_err("short");
        t.join().expect("server");
        assert!(err.to_string().contains("pulled 10 of 100"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
