//! The API server over a real Unix socket, with a fake VMM thread on the
//! other end of the channel.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::models::FirecrackerVersion;
use api::{ApiError, ApiRequest, ApiResponse, ApiServer, ServerLimits, VmmRequest};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh directory for one test's socket.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vireo-api-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the fake VMM does with `PATCH /vm`: answer at once, or wait until
/// the test releases it.
enum Vmm {
    Answering,
    Gated(Receiver<()>),
    Gone,
    Mute,
}

struct Harness {
    socket: PathBuf,
    wake: EventFd,
    served: Arc<Mutex<Vec<ApiRequest>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start(vmm: Vmm) -> Harness {
    start_with(vmm, ServerLimits::default())
}

fn start_with(vmm: Vmm, limits: ServerLimits) -> Harness {
    let socket = temp_dir().join("api.sock");
    let server = ApiServer::bind(&socket).unwrap().with_limits(limits);
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let (tx, rx) = mpsc::channel::<VmmRequest>();
    let served = Arc::new(Mutex::new(Vec::new()));
    let log = served.clone();
    match vmm {
        Vmm::Gone => drop(rx),
        Vmm::Mute => {
            std::thread::spawn(move || {
                for req in rx {
                    drop(req.reply);
                }
            });
        }
        Vmm::Answering | Vmm::Gated(_) => {
            let gate = match vmm {
                Vmm::Gated(g) => Some(g),
                _ => None,
            };
            std::thread::spawn(move || {
                for req in rx {
                    if let (ApiRequest::PatchVm(_), Some(g)) = (&req.request, &gate) {
                        let _ = g.recv();
                    }
                    let response = match &req.request {
                        ApiRequest::GetVersion => ApiResponse::ok_json(&FirecrackerVersion {
                            firecracker_version: "0.1.0".into(),
                        }),
                        _ => ApiResponse::no_content(),
                    };
                    log.lock().unwrap().push(req.request);
                    let _ = req.reply.send(response);
                }
            });
        }
    }
    server.spawn(tx, wake.try_clone().unwrap()).unwrap();
    Harness {
        socket,
        wake,
        served,
    }
}

fn connect(path: &Path) -> BufReader<UnixStream> {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    BufReader::new(s)
}

fn send(c: &mut BufReader<UnixStream>, bytes: &[u8]) {
    c.get_mut().write_all(bytes).unwrap();
}

/// Reads one response: status, headers (lower-cased names), body.
fn response(c: &mut BufReader<UnixStream>) -> (u16, Vec<(String, String)>, String) {
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut h = String::new();
        c.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap();
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_string());
        if name == "content-length" {
            length = value.parse().unwrap();
        }
        headers.push((name, value));
    }
    let mut body = vec![0; length];
    c.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn status(c: &mut BufReader<UnixStream>) -> u16 {
    response(c).0
}

/// Whether the server closed the connection (EOF on read).
fn closed(c: &mut BufReader<UnixStream>) -> bool {
    let mut rest = Vec::new();
    matches!(c.read_to_end(&mut rest), Ok(0))
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

fn put(path: &str, body: &str) -> Vec<u8> {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn patch(path: &str, body: &str) -> Vec<u8> {
    let mut r = put(path, body);
    r.splice(0..3, b"PATCH".iter().copied());
    r
}

const BOOT: &str = r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#;

#[test]
fn bind_refuses_an_existing_path() {
    let dir = temp_dir();
    let path = dir.join("taken.sock");
    std::fs::write(&path, b"").unwrap();
    match ApiServer::bind(&path) {
        Err(ApiError::SocketExists(p)) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    assert!(
        std::fs::metadata(&path).is_ok(),
        "the file must be left alone"
    );
    let missing = dir.join("no/such/dir/api.sock");
    let e = ApiServer::bind(&missing).unwrap_err();
    assert!(
        matches!(e, ApiError::Bind { .. }) && e.to_string().contains("no/such/dir"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let h = start(Vmm::Answering);
    let mut c = connect(&h.socket);
    send(&mut c, &get("/version"));
    let (s, headers, body) = response(&mut c);
    assert_eq!(s, 200);
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    assert_eq!(body, r#"{"firecracker_version":"0.1.0"}"#);
    send(&mut c, &put("/boot-source", BOOT));
    assert_eq!(status(&mut c), 204);
    // A refused body is answered by the server and keeps the connection.
    send(&mut c, &put("/boot-source", "{oops"));
    let (s, _, body) = response(&mut c);
    assert_eq!(s, 400);
    assert!(body.contains("fault_message"), "{body}");
    send(&mut c, &get("/nowhere"));
    let (s, _, body) = response(&mut c);
    assert_eq!(s, 400);
    assert!(
        body.contains("Invalid request method and/or path"),
        "{body}"
    );
    send(
        &mut c,
        &put("/actions", r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status(&mut c), 204);
    let served = h.served.lock().unwrap().clone();
    assert_eq!(
        served.len(),
        3,
        "parse errors never reach the VMM: {served:?}"
    );
    assert!(h.wake.read().unwrap() >= 1, "the VMM was woken");
}

#[test]
fn twenty_concurrent_connections() {
    let h = start(Vmm::Answering);
    let mut conns: Vec<_> = (0..20).map(|_| connect(&h.socket)).collect();
    for c in conns.iter_mut() {
        send(c, &get("/version"));
    }
    for c in conns.iter_mut() {
        assert_eq!(status(c), 200);
    }
    let path = h.socket.clone();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = connect(&path);
                for _ in 0..5 {
                    let body = format!(
                        r#"{{"drive_id": "d{i}", "path_on_host": "/d", "is_root_device": false, "is_read_only": true}}"#
                    );
                    send(&mut c, &put(&format!("/drives/d{i}"), &body));
                    assert_eq!(status(&mut c), 204);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The first twenty connections are still open and served.
    for c in conns.iter_mut() {
        send(c, &get("/"));
        assert_eq!(status(c), 204);
    }
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let h = start(Vmm::Answering);
    let mut half_body = connect(&h.socket);
    send(
        &mut half_body,
        b"PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"kernel",
    );
    let mut half_headers = connect(&h.socket);
    send(&mut half_headers, b"GET /vers");
    let start = Instant::now();
    let mut other = connect(&h.socket);
    send(&mut other, &get("/version"));
    assert_eq!(status(&mut other), 200);
    assert!(start.elapsed() < Duration::from_secs(2));
    // The stalled client can still finish its request.
    send(&mut half_headers, b"ion HTTP/1.1\r\n\r\n");
    assert_eq!(status(&mut half_headers), 200);
}

#[test]
fn oversized_body_is_refused_and_closed() {
    let h = start(Vmm::Answering);
    let mut c = connect(&h.socket);
    send(
        &mut c,
        b"PUT /mmds HTTP/1.1\r\nContent-Length: 51201\r\n\r\n{\"a\": 1}",
    );
    let (s, _, body) = response(&mut c);
    assert_eq!(s, 413);
    assert!(body.contains("51200"), "{body}");
    assert!(closed(&mut c));
    // A body at the limit is fine.
    let big = format!(r#"{{"k": "{}"}}"#, "x".repeat(51_200 - 9));
    assert_eq!(big.len(), 51_200);
    let mut c = connect(&h.socket);
    send(&mut c, &put("/mmds", &big));
    assert_eq!(status(&mut c), 204);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let h = start(Vmm::Answering);
    let mut c = connect(&h.socket);
    let mut all = Vec::new();
    all.extend(get("/version"));
    all.extend(put(
        "/drives/a",
        r#"{"drive_id": "b", "is_root_device": false, "socket": "/s"}"#,
    ));
    all.extend(put("/boot-source", BOOT));
    all.extend(get("/bogus"));
    all.extend(get("/version"));
    send(&mut c, &all);
    assert_eq!(status(&mut c), 200);
    let (s, _, body) = response(&mut c);
    assert_eq!(s, 400);
    assert!(body.contains("does not match"), "{body}");
    assert_eq!(status(&mut c), 204);
    assert_eq!(status(&mut c), 400);
    assert_eq!(status(&mut c), 200);
    let served = h.served.lock().unwrap().clone();
    assert_eq!(served.len(), 3);
    assert!(matches!(served[1], ApiRequest::PutBootSource(_)));
}

#[test]
fn garbage_gets_400_and_the_connection_closes() {
    let h = start(Vmm::Answering);
    for bytes in [
        &b"\x00\x01\x02\xff garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"PUT /vm HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
    ] {
        let mut c = connect(&h.socket);
        send(&mut c, bytes);
        let (s, _, body) = response(&mut c);
        assert_eq!(s, 400, "{bytes:?}: {body}");
        assert!(closed(&mut c), "{bytes:?}");
    }
    let mut c = connect(&h.socket);
    send(
        &mut c,
        b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let (s, _, body) = response(&mut c);
    assert_eq!(s, 501);
    assert!(body.contains("Content-Length"), "{body}");
    assert!(closed(&mut c));
    let mut c = connect(&h.socket);
    send(
        &mut c,
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000)).as_bytes(),
    );
    assert_eq!(status(&mut c), 431);
    // The server is still fine.
    let mut c = connect(&h.socket);
    send(&mut c, &get("/version"));
    assert_eq!(status(&mut c), 200);
}

#[test]
fn clients_that_leave_mid_request_are_forgotten() {
    let h = start(Vmm::Answering);
    for bytes in [
        &b"PUT /boot-source HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"ker"[..],
        b"GET /ver",
    ] {
        let mut c = UnixStream::connect(&h.socket).unwrap();
        c.write_all(bytes).unwrap();
        drop(c);
    }
    // Half-closed: the request is complete, the client still reads.
    let mut c = connect(&h.socket);
    send(&mut c, &get("/version"));
    c.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(status(&mut c), 200);
    assert!(closed(&mut c));
    // Gone before the answer.
    let mut c = UnixStream::connect(&h.socket).unwrap();
    c.write_all(&put("/boot-source", BOOT)).unwrap();
    drop(c);
    let mut c = connect(&h.socket);
    send(&mut c, &get("/version"));
    assert_eq!(status(&mut c), 200);
}

#[test]
fn connection_close_and_http10() {
    let h = start(Vmm::Answering);
    let mut c = connect(&h.socket);
    send(
        &mut c,
        b"GET /version HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let (s, headers, _) = response(&mut c);
    assert_eq!(s, 200);
    assert!(headers.contains(&("connection".into(), "close".into())));
    assert!(closed(&mut c));
    let mut c = connect(&h.socket);
    send(&mut c, b"GET /version HTTP/1.0\r\n\r\n");
    assert_eq!(status(&mut c), 200);
    assert!(closed(&mut c));
}

#[test]
fn expect_100_continue() {
    let h = start(Vmm::Answering);
    let mut c = connect(&h.socket);
    send(
        &mut c,
        format!(
            "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            BOOT.len()
        )
        .as_bytes(),
    );
    assert_eq!(status(&mut c), 100);
    send(&mut c, BOOT.as_bytes());
    assert_eq!(status(&mut c), 204);
}

#[test]
fn others_are_read_while_the_vmm_is_busy() {
    let (release, gate) = mpsc::channel();
    let h = start(Vmm::Gated(gate));
    let mut busy = connect(&h.socket);
    send(&mut busy, &patch("/vm", r#"{"state": "Paused"}"#));
    // While the VMM holds PATCH /vm, new clients connect and are read:
    // refusals come back at once, VMM requests queue.
    std::thread::sleep(Duration::from_millis(50));
    let mut other = connect(&h.socket);
    send(&mut other, &get("/nope"));
    assert_eq!(status(&mut other), 400);
    let mut queued = connect(&h.socket);
    send(&mut queued, &get("/version"));
    release.send(()).unwrap();
    assert_eq!(status(&mut busy), 204);
    assert_eq!(status(&mut queued), 200);
}

#[test]
fn a_vmm_that_is_gone_gets_503_and_one_that_drops_replies_500() {
    let h = start(Vmm::Gone);
    let mut c = connect(&h.socket);
    send(&mut c, &get("/version"));
    let (s, _, body) = response(&mut c);
    assert_eq!(s, 503);
    assert!(body.contains("VMM"), "{body}");
    send(&mut c, &get("/version"));
    assert_eq!(status(&mut c), 503);

    let h = start(Vmm::Mute);
    let mut c = connect(&h.socket);
    send(&mut c, &get("/"));
    let (s, _, body) = response(&mut c);
    assert_eq!(s, 500);
    assert!(body.contains("unanswered"), "{body}");
}

#[test]
fn past_the_connection_limit_the_quietest_idle_one_goes() {
    let limits = ServerLimits {
        max_connections: 4,
        ..ServerLimits::default()
    };
    let h = start_with(Vmm::Answering, limits);
    let mut conns: Vec<_> = (0..4).map(|_| connect(&h.socket)).collect();
    for c in conns.iter_mut().skip(1) {
        send(c, &get("/version"));
        assert_eq!(status(c), 200);
    }
    let mut fresh = connect(&h.socket);
    send(&mut fresh, &get("/version"));
    assert_eq!(status(&mut fresh), 200);
    assert!(
        closed(&mut conns[0]),
        "the oldest idle connection was closed"
    );
    send(&mut conns[3], &get("/version"));
    assert_eq!(status(&mut conns[3]), 200);
}
