//! The API server: HTTP/1.1 on a Unix socket, every connection served by
//! one thread ("vireo-api") with epoll over non-blocking sockets, so a
//! client that stalls half-way through a request costs a buffer, never a
//! thread. Parsed requests go to a second thread ("vireo-api-vmm") that
//! hands them to the VMM one at a time and waits for each reply, so the
//! epoll thread never blocks. Two fixed threads, each with one job, keep a
//! per-thread seccomp filter simple. See docs/api.md.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::ApiError;
use crate::http::{self, Framed};
use crate::response::ApiResponse;
use crate::router::{parse_request, ApiRequest};

/// One request for the VMM. The VMM answers it by sending exactly one
/// [`ApiResponse`] on `reply`; dropping `reply` unanswered makes the client
/// get a 500.
#[derive(Debug)]
pub struct VmmRequest {
    pub request: ApiRequest,
    pub reply: SyncSender<ApiResponse>,
}

/// The server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest request body; larger ones get 413 (Firecracker's
    /// `--http-api-max-payload-size` defaults to the same 51200 bytes).
    pub max_body_bytes: usize,
    /// The largest request line plus headers; larger ones get 431.
    pub max_header_bytes: usize,
    /// Open connections at most. A new one past this closes the connection
    /// that has been quiet longest and is not waiting on the VMM.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body_bytes: 51_200,
            max_header_bytes: 8_192,
            max_connections: 256,
        }
    }
}

/// A bound, not yet serving, API socket.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    limits: ServerLimits,
}

impl ApiServer {
    /// Binds the socket at `path`. An existing file there is an error
    /// ([`ApiError::SocketExists`]): like Firecracker, we remove nothing.
    pub fn bind(path: &Path) -> Result<ApiServer, ApiError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiError::SocketExists(path.to_path_buf()));
        }
        let listener = UnixListener::bind(path).map_err(|source| {
            if source.kind() == ErrorKind::AddrInUse {
                ApiError::SocketExists(path.to_path_buf())
            } else {
                ApiError::Bind {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ApiError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
            limits: ServerLimits::default(),
        })
    }

    /// The same server with other limits.
    pub fn with_limits(mut self, limits: ServerLimits) -> ApiServer {
        self.limits = limits;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts serving on a thread named "vireo-api". Each parsed request is
    /// sent to `vmm` as a [`VmmRequest`], then `wake` is written 1 so the
    /// VMM's event loop looks at the channel. The returned handle finishes
    /// only if epoll itself fails.
    pub fn spawn(self, vmm: Sender<VmmRequest>, wake: EventFd) -> std::io::Result<JoinHandle<()>> {
        let done = EventFd::new(EFD_NONBLOCK)?;
        let done_for_dispatcher = done.try_clone()?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            done.as_raw_fd(),
            EpollEvent::new(EventSet::IN, DONE),
        )?;
        let (to_dispatcher, dispatcher_rx) = mpsc::channel::<(u64, ApiRequest)>();
        let (completed_tx, completed) = mpsc::channel::<(u64, ApiResponse)>();
        let dispatcher = std::thread::Builder::new()
            .name("vireo-api-vmm".to_string())
            .spawn(move || dispatch(dispatcher_rx, vmm, wake, completed_tx, done_for_dispatcher))?;
        let event_loop = EventLoop {
            listener: self.listener,
            limits: self.limits,
            epoll,
            done,
            to_dispatcher,
            completed,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            clock: 0,
        };
        std::thread::Builder::new()
            .name("vireo-api".to_string())
            .spawn(move || {
                if let Err(e) = event_loop.run() {
                    eprintln!("vireo-api: the API server stopped: {e}");
                }
                // Dropping the loop closes the dispatcher's channel.
                let _ = dispatcher.join();
            })
    }
}

/// The dispatcher thread: one request to the VMM at a time, in the order
/// the epoll thread parsed them, each reply passed back through `done`.
fn dispatch(
    requests: Receiver<(u64, ApiRequest)>,
    vmm: Sender<VmmRequest>,
    wake: EventFd,
    completed: Sender<(u64, ApiResponse)>,
    done: EventFd,
) {
    for (token, request) in requests {
        let (reply, reply_rx) = mpsc::sync_channel(1);
        let response = match vmm.send(VmmRequest { request, reply }) {
            Err(_) => ApiResponse::fault(
                503,
                "the VMM is not taking requests (its request channel is closed)",
            ),
            Ok(()) => {
                if let Err(e) = wake.write(1) {
                    eprintln!("vireo-api: cannot wake the VMM: {e}");
                }
                match reply_rx.recv() {
                    Ok(r) => r,
                    Err(_) => ApiResponse::fault(500, "the VMM dropped the request unanswered"),
                }
            }
        };
        if completed.send((token, response)).is_err() {
            return;
        }
        if let Err(e) = done.write(1) {
            eprintln!("vireo-api: cannot signal a finished request: {e}");
        }
    }
}

const LISTENER: u64 = 0;
const DONE: u64 = 1;
const FIRST_CONN: u64 = 2;
/// Bytes read from a socket per read call.
const READ_CHUNK: usize = 4096;
/// Past this many unsent response bytes a connection's further pipelined
/// requests wait until the client reads.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// One client connection.
struct Conn {
    stream: UnixStream,
    /// Bytes received and not yet framed into a request.
    input: Vec<u8>,
    /// Response bytes not yet written.
    output: Vec<u8>,
    /// A request of this connection is with the VMM.
    waiting: bool,
    /// The connection closes once `output` is written (no further reading).
    closing: bool,
    /// The client shut its sending side or hung up.
    eof: bool,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
    /// The loop's clock when this connection last did something.
    last_active: u64,
    /// The events currently registered with epoll.
    interest: EventSet,
}

struct EventLoop {
    listener: UnixListener,
    limits: ServerLimits,
    epoll: Epoll,
    done: EventFd,
    to_dispatcher: Sender<(u64, ApiRequest)>,
    completed: Receiver<(u64, ApiResponse)>,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    clock: u64,
}

impl EventLoop {
    fn run(mut self) -> std::io::Result<()> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                self.clock += 1;
                match ev.data() {
                    LISTENER => self.accept_all(),
                    DONE => self.finish_requests(),
                    token => self.serve(token, ev.event_set()),
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors and the like: drop this round; the
                    // listener stays readable and is retried next wake.
                    eprintln!("vireo-api: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add(&mut self, stream: UnixStream) {
        if self.conns.len() >= self.limits.max_connections && !self.evict_one() {
            return; // Every connection waits on the VMM: refuse this one.
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let interest = EventSet::IN | EventSet::READ_HANG_UP;
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(interest, token),
            )
            .is_err()
        {
            return;
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                waiting: false,
                closing: false,
                eof: false,
                continued: false,
                last_active: self.clock,
                interest,
            },
        );
    }

    /// Closes the quietest connection not waiting on the VMM.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| !c.waiting)
            .min_by_key(|(_, c)| c.last_active)
            .map(|(t, _)| *t);
        match victim {
            Some(token) => {
                self.close(token);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            // Closing the socket removes it from the epoll set as well.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    /// Replies from the VMM: queue each on its connection, then carry on
    /// with that connection's pipelined requests.
    fn finish_requests(&mut self) {
        let _ = self.done.read();
        while let Ok((token, response)) = self.completed.try_recv() {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue; // The client left while the VMM worked.
            };
            conn.waiting = false;
            conn.last_active = self.clock;
            let close = conn.closing;
            http::write_response(&mut conn.output, &response, close);
            self.progress(token);
        }
    }

    fn serve(&mut self, token: u64, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.last_active = self.clock;
        if events.contains(EventSet::ERROR) {
            self.close(token);
            return;
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            read_available(conn, self.limits);
        }
        if events.contains(EventSet::HANG_UP) {
            // Both directions are gone: nobody will read an answer.
            self.close(token);
            return;
        }
        self.progress(token);
    }

    /// Frames and routes what a connection has received, writes what it
    /// has to send, and closes it or updates its epoll interest.
    fn progress(&mut self, token: u64) {
        let limits = self.limits;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        while !conn.waiting && !conn.closing && conn.output.len() < MAX_PENDING_OUTPUT {
            match http::frame(&conn.input, limits.max_header_bytes, limits.max_body_bytes) {
                Ok(Framed::Partial { expect_continue }) => {
                    if expect_continue && !conn.continued {
                        conn.output.extend_from_slice(http::CONTINUE);
                        conn.continued = true;
                    }
                    break;
                }
                Ok(Framed::Complete { request, len }) => {
                    conn.input.drain(..len);
                    conn.continued = false;
                    conn.closing = !request.keep_alive;
                    match parse_request(&request.method, &request.path, &request.body) {
                        Ok(api_request) => {
                            if self.to_dispatcher.send((token, api_request)).is_err() {
                                let r = ApiResponse::fault(503, "the API dispatcher has stopped");
                                http::write_response(&mut conn.output, &r, conn.closing);
                            } else {
                                conn.waiting = true;
                            }
                        }
                        Err(e) => {
                            http::write_response(&mut conn.output, &e.to_response(), conn.closing)
                        }
                    }
                }
                Err(e) => {
                    conn.input.clear();
                    conn.closing = true;
                    http::write_response(&mut conn.output, &e.to_response(), true);
                }
            }
        }
        if conn.eof && !conn.waiting {
            // Whatever is left is half a request that will never finish.
            conn.closing = true;
        }
        if write_pending(conn).is_err() {
            self.close(token);
            return;
        }
        if conn.closing && !conn.waiting && conn.output.is_empty() {
            self.close(token);
            return;
        }
        let mut want = EventSet::empty();
        let input_cap = limits.max_header_bytes + limits.max_body_bytes;
        if !conn.eof && !conn.closing && conn.input.len() < input_cap {
            want |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if !conn.output.is_empty() {
            want |= EventSet::OUT;
        }
        if want != conn.interest {
            let fd = conn.stream.as_raw_fd();
            conn.interest = want;
            if self
                .epoll
                .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token))
                .is_err()
            {
                self.close(token);
            }
        }
    }
}

/// Reads what the socket has, up to one request's worth beyond what is
/// buffered; notes end of input.
fn read_available(conn: &mut Conn, limits: ServerLimits) {
    let cap = limits.max_header_bytes + limits.max_body_bytes;
    let mut chunk = [0u8; READ_CHUNK];
    while conn.input.len() < cap && !conn.eof {
        match conn.stream.read(&mut chunk) {
            Ok(0) => conn.eof = true,
            Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => conn.eof = true,
        }
    }
}

/// Writes as much pending output as the socket takes.
fn write_pending(conn: &mut Conn) -> std::io::Result<()> {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
