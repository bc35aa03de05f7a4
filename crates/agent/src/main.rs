//! `vireo-agent`: the program Vireo's tests (and, later, its container
//! runtime) run inside a guest. Today it speaks vsock, which busybox
//! cannot: an echo server and a sender that checks the echo, so tests
//! drive the guest side of virtio-vsock with the guest's own AF_VSOCK
//! sockets.
//!
//! ```text
//! vireo-agent vsock-echo PORT COUNT    serve COUNT connections on PORT, echoing
//!                                      each until EOF, then exit
//! vireo-agent vsock-send CID PORT N    connect to CID:PORT, send N pattern bytes,
//!                                      read the echo; prints "ok N", "refused",
//!                                      or what went wrong
//! vireo-agent offloads IFACE            the NIC's offloads, `ethtool -k` style
//! vireo-agent serve sink|source|echo ENDPOINT
//!                                      benchmark server, until killed
//! vireo-agent probe push|pull|rr ENDPOINT N
//!                                      one timed benchmark test; prints
//!                                      "ns=.. bytes=.. ops=.." (see probe.rs)
//! ```

mod offloads;
mod probe;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

/// A connected AF_VSOCK stream socket.
struct Vsock(OwnedFd);

impl Vsock {
    fn socket() -> io::Result<OwnedFd> {
        // SAFETY: creating a socket has no memory effects.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new socket that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
        // SAFETY: sockaddr_vm is plain data; all zeroes is valid.
        let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        a.svm_cid = cid;
        a.svm_port = port;
        a
    }

    fn connect(cid: u32, port: u32) -> io::Result<Vsock> {
        let fd = Self::socket()?;
        let a = Self::addr(cid, port);
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `a` is an initialized sockaddr_vm of `len` bytes.
        let rc =
            unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_vm).cast(), len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Vsock(fd))
    }

    fn listen(port: u32) -> io::Result<OwnedFd> {
        let fd = Self::socket()?;
        let a = Self::addr(libc::VMADDR_CID_ANY, port);
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `a` is an initialized sockaddr_vm of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_vm).cast(), len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen on a socket we own.
        if unsafe { libc::listen(fd.as_raw_fd(), 64) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    fn accept(listener: &OwnedFd) -> io::Result<Vsock> {
        // SAFETY: accept without an address buffer.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new socket that nothing else owns.
        Ok(Vsock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn shutdown_write(&self) {
        // SAFETY: shutdown on a socket we own.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) };
    }

    fn try_clone(&self) -> io::Result<Vsock> {
        Ok(Vsock(self.0.try_clone()?))
    }
}

impl Read for Vsock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Write for Vsock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
        let n = unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected byte stream the echo server and the sender use.
trait Stream: Read + Write + Send + Sized + 'static {
    fn clone_stream(&self) -> io::Result<Self>;
    fn close_write(&self);
}

impl Stream for Vsock {
    fn clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        self.shutdown_write()
    }
}

impl Stream for TcpStream {
    fn clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
        wait_acked(self);
    }
}

/// Wait (at most a minute) until the peer has acknowledged every byte
/// written to `s`. A guest that exits and powers off right after closing
/// would otherwise drop what is still queued: over a slow (rate-limited)
/// NIC that can be hundreds of KiB, and the peer waits for it forever.
fn wait_acked(s: &TcpStream) {
    use std::os::unix::io::AsRawFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int, `queued`, which
        // outlives the call.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Byte `i` of the test pattern (not periodic in powers of two).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7) % 251) as u8
}

/// Serve `count` connections from `accept`, echoing each until EOF.
fn echo<S: Stream>(
    what: &str,
    count: usize,
    mut accept: impl FnMut() -> io::Result<S>,
) -> io::Result<()> {
    let mut threads = Vec::new();
    for _ in 0..count {
        let mut conn = accept()?;
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        total += n as u64;
                    }
                }
            }
            conn.close_write();
            total
        }));
    }
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    println!("{what}: served {count} connections, {total} bytes");
    Ok(())
}

/// Connect with `connect`, send `n` pattern bytes and check the echo.
fn send<S: Stream>(connect: impl FnOnce() -> io::Result<S>, n: u64) -> String {
    let mut conn = match connect() {
        Ok(c) => c,
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return "refused".into(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return "refused".into(),
        Err(e) => return format!("connect: {e}"),
    };
    let Ok(mut tx) = conn.clone_stream() else {
        return "cannot clone the socket".into();
    };
    let writer = std::thread::spawn(move || -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < n {
            let k = (n - sent).min(buf.len() as u64) as usize;
            for (j, b) in buf[..k].iter_mut().enumerate() {
                *b = pattern(sent + j as u64);
            }
            tx.write_all(&buf[..k])?;
            sent += k as u64;
        }
        tx.close_write();
        Ok(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                if got + k as u64 > n {
                    let extra = &buf[(n - got) as usize..k];
                    let head: Vec<String> =
                        extra.iter().take(16).map(|b| format!("{b:02x}")).collect();
                    return format!(
                        "long echo: {} bytes past {n}, starting {}",
                        got + k as u64 - n,
                        head.join(" ")
                    );
                }
                if let Some(j) = (0..k).find(|&j| buf[j] != pattern(got + j as u64)) {
                    return format!("mismatch at byte {}", got + j as u64);
                }
                got += k as u64;
            }
            Err(e) => return format!("read: {e}"),
        }
    }
    match writer.join() {
        Ok(Ok(())) if got == n => format!("ok {n}"),
        Ok(Ok(())) => format!("short echo: {got} of {n} bytes"),
        Ok(Err(e)) => format!("write: {e}"),
        Err(_) => "writer panicked".into(),
    }
}

/// Send `n` pattern bytes one way and close.
fn push(addr: &str, n: u64) -> String {
    let mut conn = match TcpStream::connect(addr) {
        Ok(c) => c,
        Err(e) => return format!("connect: {e}"),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < n {
        let k = (n - sent).min(buf.len() as u64) as usize;
        for (j, b) in buf[..k].iter_mut().enumerate() {
            *b = pattern(sent + j as u64);
        }
        if let Err(e) = conn.write_all(&buf[..k]) {
            return format!("write: {e}");
        }
        sent += k as u64;
    }
    conn.close_write();
    // Wait for the peer's close, so everything was taken.
    let _ = conn.read(&mut buf);
    format!("pushed {n}")
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: vireo-agent vsock-echo PORT COUNT | vsock-send CID PORT BYTES\n       \
         vireo-agent tcp-echo PORT COUNT | tcp-send ADDR:PORT BYTES | tcp-push ADDR:PORT BYTES\n       \
         vireo-agent serve sink|source|echo ENDPOINT | probe push|pull|rr ENDPOINT N\n       \
         vireo-agent offloads IFACE\n       \
         (ENDPOINT: tcp:[HOST:]PORT, vsock:[CID:]PORT or unix:PATH)"
    );
    ExitCode::from(2)
}

fn served(what: &str, r: io::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    match args.first().map(String::as_str) {
        Some("vsock-echo") => {
            let (Some(port), Some(count)) = (num(1), num(2)) else {
                return usage();
            };
            let r = Vsock::listen(port as u32).and_then(|l| {
                println!("vsock-echo: listening on {port}");
                echo("vsock-echo", count as usize, || Vsock::accept(&l))
            });
            served("vsock-echo", r)
        }
        Some("tcp-echo") => {
            let (Some(port), Some(count)) = (num(1), num(2)) else {
                return usage();
            };
            let r = TcpListener::bind(("0.0.0.0", port as u16)).and_then(|l| {
                println!("tcp-echo: listening on {port}");
                echo("tcp-echo", count as usize, || l.accept().map(|(s, _)| s))
            });
            served("tcp-echo", r)
        }
        Some("tcp-push") => {
            let (Some(addr), Some(n)) = (args.get(1), num(2)) else {
                return usage();
            };
            println!("tcp-push {addr}: {}", push(addr, n));
            ExitCode::SUCCESS
        }
        Some("tcp-send") => {
            let (Some(addr), Some(n)) = (args.get(1), num(2)) else {
                return usage();
            };
            println!("tcp-send {addr}: {}", send(|| TcpStream::connect(addr), n));
            ExitCode::SUCCESS
        }
        Some("vsock-send") => {
            let (Some(cid), Some(port), Some(n)) = (num(1), num(2), num(3)) else {
                return usage();
            };
            let r = send(|| Vsock::connect(cid as u32, port as u32), n);
            println!("vsock-send {port}: {r}");
            ExitCode::SUCCESS
        }
        Some("offloads") => {
            let Some(iface) = args.get(1) else {
                return usage();
            };
            match offloads::offloads(iface) {
                Ok(s) => {
                    println!("offloads {iface}: {s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("offloads {iface}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("serve") => {
            let (Some(kind), Some(ep)) = (args.get(1), args.get(2)) else {
                return usage();
            };
            let r = kind
                .parse::<probe::Server>()
                .and_then(|k| Ok((k, probe::Endpoint::parse(ep)?)));
            match r {
                Ok((k, ep)) => served("serve", probe::serve(k, &ep)),
                Err(e) => {
                    eprintln!("serve: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some("probe") => {
            let (Some(kind), Some(ep), Some(n)) = (args.get(1), args.get(2), num(3)) else {
                return usage();
            };
            let r = kind
                .parse::<probe::Probe>()
                .and_then(|k| Ok((k, probe::Endpoint::parse(ep)?)));
            let (k, ep) = match r {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("probe: {e}");
                    return ExitCode::from(2);
                }
            };
            match probe::probe(k, &ep, n) {
                Ok(r) => {
                    println!("ns={} bytes={} ops={}", r.ns, r.bytes, r.ops);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("probe {kind} {ep:?}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
