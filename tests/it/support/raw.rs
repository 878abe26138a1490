//! Raw TCP HTTP exchanges, for request-smuggling and path-canonicalisation
//! tests where an HTTP client would normalise or reject the request.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Default idle read timeout: reading stops after this long without data.
pub const RAW_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Hard cap on the total time spent reading one exchange.
const RAW_TOTAL_CAP: Duration = Duration::from_secs(30);

/// Everything the server sent back on one connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The exact bytes received.
    pub bytes: Vec<u8>,
    /// `bytes` decoded lossily as UTF-8.
    pub text: String,
    /// Status code of the first response, if one could be parsed.
    pub status: Option<u16>,
    /// True if the server closed the connection; false if reading stopped
    /// because of the idle timeout.
    pub closed: bool,
}

/// One HTTP response parsed out of a [`RawResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPart {
    /// Status code.
    pub status: u16,
    /// Headers in order, names as received.
    pub headers: Vec<(String, String)>,
    /// The (de-chunked) body.
    pub body: Vec<u8>,
}

impl RawPart {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded lossily as UTF-8.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RawResponse {
    /// All responses that could be parsed, in order (see [`parse_responses`]).
    pub fn responses(&self) -> Vec<RawPart> {
        parse_responses(&self.bytes)
    }

    /// Number of HTTP responses received on the connection.
    pub fn responses_count(&self) -> usize {
        raw_responses_count(self)
    }

    /// Status codes of all parsed responses, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses().iter().map(|p| p.status).collect()
    }
}

/// Writes `bytes` to a fresh TCP connection to `addr` and reads until the
/// server closes or 2 s pass without data.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    raw_request_parts(addr, &[bytes], Duration::ZERO, RAW_READ_TIMEOUT)
}

/// Like [`raw_request`] with a custom idle read timeout.
pub fn raw_request_timeout(addr: SocketAddr, bytes: &[u8], idle: Duration) -> RawResponse {
    raw_request_parts(addr, &[bytes], Duration::ZERO, idle)
}

/// Writes each of `parts` in its own `write`, sleeping `pause` between them,
/// then reads like [`raw_request`] with idle timeout `idle`. Write errors
/// (the server may close early, e.g. after a 400) are ignored; whatever was
/// received is returned.
pub fn raw_request_parts(
    addr: SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
    idle: Duration,
) -> RawResponse {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("raw_request: cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(idle))
        .expect("set read timeout on raw socket");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("set write timeout on raw socket");
    let _ = stream.set_nodelay(true);

    for (i, part) in parts.iter().enumerate() {
        if i > 0 && !pause.is_zero() {
            thread::sleep(pause);
        }
        if stream.write_all(part).and_then(|_| stream.flush()).is_err() {
            break;
        }
    }

    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut closed = false;
    while start.elapsed() < RAW_TOTAL_CAP {
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => {
                // Reset by peer and friends: the server is gone.
                closed = true;
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);

    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = parse_status_line(&bytes);
    RawResponse {
        bytes,
        text,
        status,
        closed,
    }
}

/// Number of complete-or-partial HTTP responses parsed from `raw`.
pub fn raw_responses_count(raw: &RawResponse) -> usize {
    parse_responses(&raw.bytes).len()
}

fn parse_status_line(bytes: &[u8]) -> Option<u16> {
    let line_end = find(bytes, b"\r\n").unwrap_or(bytes.len());
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?;
    let mut it = line.split(' ');
    let version = it.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    it.next()?.parse().ok()
}

/// Splits a byte stream into consecutive HTTP responses, framing bodies by
/// `Transfer-Encoding: chunked`, `Content-Length`, or (for neither) the rest
/// of the stream. 1xx/204/304 responses have no body. Responses to `HEAD`
/// cannot be recognised. Stops at the first thing that is not a response;
/// a truncated final response is included with what was received.
pub fn parse_responses(bytes: &[u8]) -> Vec<RawPart> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(status) = parse_status_line(rest) else {
            break;
        };
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            out.push(RawPart {
                status,
                headers: Vec::new(),
                body: Vec::new(),
            });
            break;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]);
        let headers: Vec<(String, String)> = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect();
        rest = &rest[head_end + 4..];

        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let chunked =
            get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let body;
        if (100..200).contains(&status) || status == 204 || status == 304 {
            body = Vec::new();
        } else if chunked {
            let (b, consumed) = dechunk(rest);
            body = b;
            rest = &rest[consumed..];
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = len.min(rest.len());
            body = rest[..n].to_vec();
            rest = &rest[n..];
        } else {
            body = rest.to_vec();
            rest = &[];
        }
        out.push(RawPart {
            status,
            headers,
            body,
        });
    }
    out
}

/// Decodes a chunked body; returns the body and the bytes consumed
/// (including trailers), or everything on truncation.
fn dechunk(mut data: &[u8]) -> (Vec<u8>, usize) {
    let total = data.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return (body, total);
        };
        let size_str = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_str.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            return (body, total);
        };
        data = &data[line_end + 2..];
        if size == 0 {
            // Skip trailers up to the blank line.
            loop {
                let Some(end) = find(data, b"\r\n") else {
                    return (body, total);
                };
                data = &data[end + 2..];
                if end == 0 {
                    return (body, total - data.len());
                }
            }
        }
        if data.len() < size + 2 {
            body.extend_from_slice(&data[..size.min(data.len())]);
            return (body, total);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
