//! HTTP/1.1 framing for the API server: finds one whole request at the
//! front of a connection's buffer (headers parsed by `httparse`, the body
//! delimited by Content-Length) and writes responses. It enforces the size
//! limits and refuses what the API does not speak (chunked bodies, HTTP/2).

use thiserror::Error;

use crate::response::ApiResponse;

/// The most headers one request may carry.
const MAX_HEADERS: usize = 32;

/// Why the bytes on a connection are not a request we serve. Each one is
/// answered and the connection is then closed, since where the next
/// request would start is no longer known.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    #[error("request body of {got} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize, got: u64 },
    #[error("Transfer-Encoding is not supported; send the body with Content-Length")]
    TransferEncoding,
    #[error("invalid Content-Length header: {0}")]
    BadContentLength(String),
}

impl HttpError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::HeadersTooLarge(_) => 431,
            HttpError::TransferEncoding => 501,
            _ => 400,
        }
    }

    pub(crate) fn to_response(&self) -> ApiResponse {
        ApiResponse::fault(self.status(), &self.to_string())
    }
}

/// One whole request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// False for `Connection: close`, and for HTTP/1.0 without keep-alive.
    pub keep_alive: bool,
}

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framed {
    /// Not a whole request yet. `expect_continue` is set once the headers
    /// are in and asked for `100 Continue`.
    Partial { expect_continue: bool },
    /// A whole request, `len` bytes of the buffer.
    Complete { request: HttpRequest, len: usize },
}

/// Finds the request at the front of `buf`.
pub(crate) fn frame(buf: &[u8], max_header: usize, max_body: usize) -> Result<Framed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_header {
                return Err(HttpError::HeadersTooLarge(max_header));
            }
            return Ok(Framed::Partial {
                expect_continue: false,
            });
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if header_len > max_header {
        return Err(HttpError::HeadersTooLarge(max_header));
    }
    // httparse accepts only HTTP/1.0 and HTTP/1.1.
    let mut keep_alive = req.version == Some(1);
    let mut content_length: Option<u64> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = Some(value)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| HttpError::BadContentLength(value.to_string()))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HttpError::BadContentLength(
                    "several different values".to_string(),
                ));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body as u64 {
        return Err(HttpError::BodyTooLarge {
            limit: max_body,
            got: body_len,
        });
    }
    // Bounded by max_body above, so it fits a usize.
    let body_len = body_len as usize;
    let total = header_len + body_len;
    if buf.len() < total {
        return Ok(Framed::Partial {
            expect_continue: expect_continue && buf.len() == header_len,
        });
    }
    let request = HttpRequest {
        method: req.method.unwrap_or_default().to_string(),
        path: req.path.unwrap_or_default().to_string(),
        body: buf[header_len..total].to_vec(),
        keep_alive,
    };
    Ok(Framed::Complete {
        request,
        len: total,
    })
}

/// The interim response a client that sent `Expect: 100-continue` waits for.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Appends `resp` to `out` as an HTTP/1.1 response.
pub(crate) fn write_response(out: &mut Vec<u8>, resp: &ApiResponse, close: bool) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: Vireo API\r\n",
        resp.status,
        reason(resp.status)
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    match &resp.body {
        Some(body) if resp.status != 204 => {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ));
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(body.as_bytes());
        }
        _ => {
            if resp.status != 204 {
                head.push_str("Content-Length: 0\r\n");
            }
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (HttpRequest, usize) {
        match frame(buf, 8192, 100).unwrap() {
            Framed::Complete { request, len } => (request, len),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn get_without_body() {
        let (r, len) = complete(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\nextra");
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/version"));
        assert!(r.body.is_empty() && r.keep_alive);
        assert_eq!(len, 34);
    }

    #[test]
    fn body_by_content_length() {
        let (r, _) = complete(b"PUT /vm HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdef");
        assert_eq!(r.body, b"abcd");
        let partial = frame(
            b"PUT /vm HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
            8192,
            100,
        );
        assert_eq!(
            partial,
            Ok(Framed::Partial {
                expect_continue: false
            })
        );
    }

    #[test]
    fn expect_continue_once_headers_are_in() {
        let buf = b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(
            frame(buf, 8192, 100),
            Ok(Framed::Partial {
                expect_continue: true
            })
        );
    }

    #[test]
    fn connection_header_and_http10() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn refusals() {
        let f = |b: &[u8]| frame(b, 64, 100).unwrap_err();
        assert_eq!(
            f(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::TransferEncoding
        );
        assert_eq!(
            f(b"PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            HttpError::BodyTooLarge {
                limit: 100,
                got: 101
            }
        );
        for bad in ["-1", "+1", "", "1 1", "99999999999999999999999"] {
            let req = format!("PUT / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(
                    frame(req.as_bytes(), 100, 100),
                    Err(HttpError::BadContentLength(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            f(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HttpError::BadContentLength(_)
        ));
        assert!(matches!(
            f(b"\x00\x01garbage\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        assert_eq!(f(&[b'a'; 65]), HttpError::HeadersTooLarge(64));
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_response(&mut out, &ApiResponse::no_content(), false);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nServer: Vireo API\r\n\r\n");
        out.clear();
        write_response(&mut out, &ApiResponse::fault(400, "x"), true);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with("Content-Length: 21\r\n\r\n{\"fault_message\":\"x\"}"));
    }

    /// Mutated and truncated requests, framed and routed: errors, never a
    /// panic.
    #[test]
    fn mangled_requests_never_panic() {
        let seeds: [&[u8]; 4] = [
            b"PUT /drives/rootfs HTTP/1.1\r\nContent-Length: 90\r\n\r\n{\"drive_id\": \"rootfs\", \"path_on_host\": \"/r\", \"is_root_device\": true, \"is_read_only\": true}",
            b"PATCH /machine-config HTTP/1.1\r\nContent-Length: 17\r\n\r\n{\"vcpu_count\": 2}",
            b"GET /version HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
            b"PUT /snapshot/load HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 64\r\n\r\n{\"snapshot_path\": \"/s\", \"mem_backend\": {\"backend_type\": \"File\"}}",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds {
            assert!(matches!(
                frame(seed, 8192, 51_200),
                Ok(Framed::Complete { .. })
            ));
        }
        for _ in 0..20_000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize];
            let mut buf = seed.to_vec();
            for _ in 0..(next() % 4) {
                let at = (next() % buf.len() as u64) as usize;
                match next() % 3 {
                    0 => buf[at] = next() as u8,
                    1 => {
                        buf.remove(at);
                    }
                    _ => buf.insert(at, next() as u8),
                }
            }
            buf.truncate((next() % (buf.len() as u64 + 1)) as usize);
            if let Ok(Framed::Complete { request, .. }) = frame(&buf, 8192, 51_200) {
                let _ = crate::router::parse_request(&request.method, &request.path, &request.body);
            }
        }
    }
}
