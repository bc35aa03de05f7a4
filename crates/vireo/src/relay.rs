//! The API relay of Firecracker mode through the nested rig. The host's
//! vireo serves the API socket; the VM runs in a vireo inside L1. Requests
//! the host cannot answer itself cross L1's third serial port (a Unix
//! socket on the host, `/dev/ttyS2` in L1) one at a time, as one line of
//! JSON (`api::ApiRequest`), and come back as one line (`api::ApiResponse`).
//! The inner vireo feeds them to the same controller a direct run uses, so
//! a request means the same on both paths.
//!
//! The inner side sends [`READY`] once its VM runs; the host answers the
//! client's `InstanceStart` only then.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api::{ApiRequest, ApiResponse, VmmRequest};
use vmm_sys_util::eventfd::EventFd;

/// The line the inner vireo writes when its VM has started.
pub const READY: &str = "VIREO-RELAY-READY";

/// Put the tty `fd` in raw mode: no echo, no line editing, no CR/LF
/// translation, so JSON lines cross byte for byte.
fn make_raw(fd: std::os::unix::io::RawFd) -> std::io::Result<()> {
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open tty; `t` is a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw edits the local struct.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: applying a termios derived from the tty's own.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Inner side: serve the requests arriving on the tty at `path` into the
/// VMM's request channel (waking `wake`, as the API server does).
pub fn serve_tty(
    path: &Path,
    vmm: Sender<VmmRequest>,
    wake: EventFd,
) -> std::io::Result<JoinHandle<()>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    make_raw(tty.as_raw_fd())?;
    let mut out = tty.try_clone()?;
    std::thread::Builder::new()
        .name("vireo-relay".into())
        .spawn(move || {
            let _ = writeln!(out, "{READY}");
            let mut reader = BufReader::new(tty);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                // Line noise is answered like any malformed request.
                let line = String::from_utf8_lossy(&raw);
                if line.trim().is_empty() {
                    continue;
                }
                let response = match serde_json::from_str::<ApiRequest>(&line) {
                    Ok(request) => ask(&vmm, &wake, request),
                    Err(e) => ApiResponse::fault(400, &format!("relay: malformed request: {e}")),
                };
                let text = serde_json::to_string(&response).unwrap_or_default();
                if writeln!(out, "{text}").is_err() {
                    break;
                }
            }
        })
}

/// One request through the VMM channel, waiting for its answer.
fn ask(vmm: &Sender<VmmRequest>, wake: &EventFd, request: ApiRequest) -> ApiResponse {
    let (reply, answer) = mpsc::sync_channel(1);
    if vmm.send(VmmRequest { request, reply }).is_err() {
        return ApiResponse::fault(503, "the VMM has stopped");
    }
    let _ = wake.write(1);
    answer
        .recv()
        .unwrap_or_else(|_| ApiResponse::fault(500, "the VMM dropped the request"))
}

/// Host side: the connection to the inner vireo.
pub struct Relay {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// A call timed out or failed mid-answer: a late answer could be taken
    /// for the next request's, so the relay is not used again.
    broken: bool,
}

/// How long one relayed request may take (a pause waits out device I/O;
/// the rig is slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Relay {
    /// Wait for QEMU to connect to `listener` and the inner vireo to say
    /// its VM runs. `alive` says whether the rig is still running; waiting
    /// ends early when it is not.
    pub fn connect(
        listener: &UnixListener,
        timeout: Duration,
        alive: impl Fn() -> bool,
    ) -> Result<Relay, String> {
        let deadline = Instant::now() + timeout;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("relay socket: {e}"))?;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("relay socket: {e}")),
            }
            if !alive() {
                return Err("the nested rig ended before the VM started".into());
            }
            if Instant::now() >= deadline {
                return Err(format!("the nested rig did not start within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let io = |e: std::io::Error| format!("relay: {e}");
        stream.set_nonblocking(false).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => return Err("the nested rig ended before the VM started".into()),
                Ok(_) if line.ends_with(b"\n") => {
                    // The marker ends its line; anything before it on the
                    // line, or on earlier lines, is noise from L1's boot.
                    if String::from_utf8_lossy(&line).trim_end().ends_with(READY) {
                        break;
                    }
                    line.clear();
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(io(e)),
            }
            if !alive() {
                return Err("the VM in the nested rig ended before it started".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the VM in the nested rig did not start within {timeout:?}"
                ));
            }
        }
        reader
            .get_ref()
            .set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(io)?;
        Ok(Relay {
            reader,
            writer,
            broken: false,
        })
    }

    /// Relay one request and return the inner VMM's answer.
    pub fn call(&mut self, request: &ApiRequest) -> ApiResponse {
        let gone = |e: String| ApiResponse::fault(503, &format!("the VM in the nested rig: {e}"));
        if self.broken {
            return gone("the relay stopped answering in step after an earlier timeout".into());
        }
        let Ok(text) = serde_json::to_string(request) else {
            return ApiResponse::fault(500, "cannot encode the request for the relay");
        };
        if let Err(e) = writeln!(self.writer, "{text}") {
            return gone(e.to_string());
        }
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => gone("it has stopped".into()),
            Ok(_) if line.ends_with(b"\n") => serde_json::from_slice(&line).unwrap_or_else(|e| {
                ApiResponse::fault(502, &format!("relay: malformed answer: {e}"))
            }),
            Ok(_) => {
                self.broken = true;
                gone("its answer was cut short".into())
            }
            Err(e) => {
                self.broken = true;
                gone(e.to_string())
            }
        }
    }
}
