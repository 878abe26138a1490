//! The proxy listener's own HTTP/1.1 server (`src/proxy/server.rs`,
//! `request.rs`, `framing.rs`), black-box: the real binary in front of real
//! upstreams, spoken to over raw TCP. Pipelining, HEAD, HTTP/1.0
//! keep-alive, `Expect: 100-continue`, unread bodies, head limits and
//! timeouts, chunked request bodies, the absolute-form target, and the
//! headers of the gateway's own answers.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{EchoUpstream, Gateway};

const WAIT: Duration = Duration::from_secs(10);
/// APISIX's no-match body, newline included.
const NOT_FOUND_BODY: &str = "{\"error_msg\":\"404 Route Not Found\"}\n";
/// A request that must never reach an upstream; tests hide it in bodies.
const SMUGGLED: &str = "GET /echo/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

// ---------------------------------------------------------------------------
// a raw client connection

/// One answer read off a connection.
#[derive(Clone)]
struct Answer {
    status: u16,
    /// Headers in order, names as received.
    headers: Vec<(String, String)>,
    /// The body, de-chunked.
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo upstream's JSON (panics if the body is not one).
    fn echo(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo body ({e}); status {} {:?}: {}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "headers {:?}, body {:?}",
            self.headers,
            self.text()
        );
        self
    }
}

/// What came after an answer on a connection.
#[derive(Debug, PartialEq, Eq)]
enum After {
    /// The gateway closed (FIN or reset).
    Closed,
    /// Nothing arrived and the connection stayed open.
    Open,
    /// Unexpected bytes.
    Data(String),
}

/// A client connection to the gateway with its own read buffer, so answers
/// can be read one at a time as they arrive.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .expect("write timeout");
        Conn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .unwrap_or_else(|e| panic!("write to the gateway: {e}"));
    }

    /// Writes, ignoring a gateway that already closed.
    fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.stream.write_all(bytes.as_ref()).is_ok()
    }

    /// Reads more bytes until `deadline`; false on timeout. A reset counts
    /// as the end of the stream.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        self.stream
            .set_read_timeout(Some(deadline - now))
            .expect("read timeout");
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return true;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => {
                    self.eof = true;
                    return true;
                }
            }
        }
    }

    /// The next answer; `head_only` for an answer to HEAD.
    fn try_answer(&mut self, head_only: bool, within: Duration) -> Result<Answer, String> {
        let deadline = Instant::now() + within;
        loop {
            match parse_answer(&self.buf, head_only, self.eof)? {
                Some((answer, used)) => {
                    self.buf.drain(..used);
                    return Ok(answer);
                }
                None if self.eof => {
                    return Err(format!(
                        "closed before a whole answer; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                None => {}
            }
            if !self.fill(deadline) {
                return Err(format!(
                    "no whole answer within {within:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    fn answer(&mut self) -> Answer {
        self.try_answer(false, WAIT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn head_answer(&mut self) -> Answer {
        self.try_answer(true, WAIT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What the gateway does next: closes, stays quiet, or sends more.
    fn after(&mut self, within: Duration) -> After {
        if self.buf.is_empty() && !self.eof {
            self.fill(Instant::now() + within);
        }
        if !self.buf.is_empty() {
            After::Data(String::from_utf8_lossy(&self.buf).into_owned())
        } else if self.eof {
            After::Closed
        } else {
            After::Open
        }
    }
}

/// One answer from the start of `buf` and the bytes it used; `None` while
/// incomplete (`eof`: nothing more will come).
fn parse_answer(buf: &[u8], head_only: bool, eof: bool) -> Result<Option<(Answer, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| format!("answer head is not UTF-8: {:?}", &buf[..end]))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not a status line: {status_line:?} (all: {head:?})"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let rest = &buf[end + 4..];
    let bodiless = head_only || (100..200).contains(&status) || status == 204 || status == 304;
    let (body, used) = if bodiless {
        (Vec::new(), 0)
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match dechunk(rest)? {
            Some(x) => x,
            None => return Ok(None),
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| format!("content-length {len:?}"))?;
        if rest.len() < len {
            return Ok(None);
        }
        (rest[..len].to_vec(), len)
    } else if eof {
        (rest.to_vec(), rest.len())
    } else {
        return Ok(None);
    };
    Ok(Some((
        Answer {
            status,
            headers,
            body,
        },
        end + 4 + used,
    )))
}

/// A whole chunked body and the bytes it used; `None` while incomplete.
fn dechunk(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&data[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[at..at + eol]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        at += eol + 2;
        if size == 0 {
            loop {
                let Some(eol) = find(&data[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[at..at + size]);
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `bytes` on a fresh connection and returns the first answer and
/// what followed it (for refusals that close the connection).
fn refused(gw: &Gateway, bytes: &[u8]) -> (Answer, After) {
    let mut c = Conn::open(gw.proxy_addr());
    let _ = c.try_send(bytes);
    let a = c
        .try_answer(false, WAIT)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(bytes)));
    let after = c.after(Duration::from_secs(3));
    (a, after)
}

// ---------------------------------------------------------------------------
// an upstream that returns the body it received

/// One request as the [`BodyUpstream`] read it.
#[derive(Debug, Clone)]
struct Seen {
    /// Request line and headers, CRLFs included.
    head: String,
    body: Vec<u8>,
}

/// An upstream that answers every request with the exact body it
/// received, so a test can compare bytes end to end (`100 Continue`
/// first when asked, unless started with [`BodyUpstream::ignoring_expect`]). Targets containing
/// `/chunked` are answered chunked (no length): `<`, the body, `>`.
struct BodyUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl BodyUpstream {
    fn start() -> BodyUpstream {
        BodyUpstream::start_with(true)
    }

    /// One that never sends `100 Continue`: it waits for the body (RFC
    /// 9110 §10.1.1 lets a server ignore the expectation).
    fn ignoring_expect() -> BodyUpstream {
        BodyUpstream::start_with(false)
    }

    fn start_with(honour_expect: bool) -> BodyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the body upstream");
        let addr = listener.local_addr().expect("body upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                thread::spawn(move || serve_body(conn, &log, honour_expect));
            }
        });
        BodyUpstream { addr, seen }
    }

    fn node(&self) -> String {
        self.addr.to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves one upstream connection: strict CRLF framing, chunked or
/// Content-Length bodies, `100 Continue` when asked.
fn serve_body(mut conn: TcpStream, log: &Mutex<Vec<Seen>>, honour_expect: bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    // Reads until `buf` holds at least `n` bytes; false at the end.
    let mut more = |conn: &mut TcpStream, buf: &mut Vec<u8>| match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(k) => {
            buf.extend_from_slice(&chunk[..k]);
            true
        }
    };
    loop {
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            if !more(&mut conn, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
        buf.drain(..end + 4);
        let lower = head.to_ascii_lowercase();
        let header = |name: &str| {
            lower
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        if honour_expect
            && header("expect").as_deref() == Some("100-continue")
            && conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let mut body = Vec::new();
        if header("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let eol = loop {
                    if let Some(eol) = find(&buf, b"\r\n") {
                        break eol;
                    }
                    if !more(&mut conn, &mut buf) {
                        return;
                    }
                };
                let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
                buf.drain(..eol + 2);
                let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or(""), 16)
                else {
                    let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    return;
                };
                if size == 0 {
                    // Trailers up to the empty line.
                    loop {
                        let eol = loop {
                            if let Some(eol) = find(&buf, b"\r\n") {
                                break eol;
                            }
                            if !more(&mut conn, &mut buf) {
                                return;
                            }
                        };
                        buf.drain(..eol + 2);
                        if eol == 0 {
                            break;
                        }
                    }
                    break;
                }
                while buf.len() < size + 2 {
                    if !more(&mut conn, &mut buf) {
                        return;
                    }
                }
                body.extend_from_slice(&buf[..size]);
                if &buf[size..size + 2] != b"\r\n" {
                    return;
                }
                buf.drain(..size + 2);
            }
        } else if let Some(len) = header("content-length") {
            let len: usize = len.parse().unwrap_or(0);
            while buf.len() < len {
                if !more(&mut conn, &mut buf) {
                    return;
                }
            }
            body.extend(buf.drain(..len));
        }
        let chunked = head
            .split("\r\n")
            .next()
            .is_some_and(|l| l.contains("/chunked"));
        let close = header("connection").is_some_and(|v| v.contains("close"));
        log.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
            head,
            body: body.clone(),
        });
        let mut out = Vec::new();
        if chunked {
            out.extend_from_slice(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n<\r\n",
            );
            if !body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"1\r\n>\r\n0\r\n\r\n");
        } else {
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&body);
        }
        if conn.write_all(&out).is_err() || close {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// fixture

/// A gateway with `/echo/*` (echo upstream), `/body/*` (body upstream) and
/// `/auth/*` (bearer-only openid-connect in front of the echo upstream).
struct Fixture {
    gw: Gateway,
    echo: EchoUpstream,
    body: BodyUpstream,
}

impl Fixture {
    fn start() -> Fixture {
        let echo = EchoUpstream::start();
        let body = BodyUpstream::start();
        let gw = Gateway::start();
        gw.put_route(
            "echo",
            json!({"uri": "/echo/*", "upstream": {"nodes": {echo.node(): 1}}}),
        );
        gw.put_route(
            "body",
            json!({"uri": "/body/*", "upstream": {"nodes": {body.node(): 1}}}),
        );
        gw.put_route(
            "auth",
            json!({"uri": "/auth/*", "plugins": {"openid-connect": {
                "client_id": "c", "client_secret": "s", "bearer_only": true,
                "discovery": "http://127.0.0.1:1/.well-known/openid-configuration"}},
                "upstream": {"nodes": {echo.node(): 1}}}),
        );
        Fixture { gw, echo, body }
    }

    fn conn(&self) -> Conn {
        Conn::open(self.gw.proxy_addr())
    }

    /// Targets the echo upstream recorded, in order.
    fn echo_targets(&self) -> Vec<String> {
        self.echo
            .requests()
            .into_iter()
            .map(|r| r.raw_target)
            .collect()
    }

    /// Panics if any upstream saw the smuggled request.
    fn assert_nothing_smuggled(&self, label: &str) {
        let targets = self.echo_targets();
        assert!(
            targets.iter().all(|t| !t.contains("smuggled")),
            "{label}: the echo upstream saw {targets:?}"
        );
        for s in self.body.seen() {
            assert!(
                !s.head.contains("smuggled"),
                "{label}: the body upstream saw {:?}",
                s.head
            );
        }
    }
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

// ---------------------------------------------------------------------------
// pipelining, HEAD, HTTP/1.0

#[test]
fn pipelined_requests_are_answered_in_order() {
    let f = Fixture::start();
    let mut c = f.conn();
    // Six requests in one write: bodies framed both ways, a 404 with a
    // body in between, and a last request asking to close.
    let mut all = String::new();
    all += &get("/echo/one");
    all += "POST /body/two HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello";
    all += "POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc";
    all += "POST /body/four HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            3\r\nfou\r\n1\r\nr\r\n0\r\n\r\n";
    all += &get("/echo/five");
    all += "GET /echo/six HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    // Never answered: the previous request closed the connection.
    all += &get("/echo/seven");
    c.send(&all);

    let one = c.answer();
    one.expect(200);
    assert_eq!(one.echo()["raw_target"], "/echo/one");
    let two = c.answer();
    assert_eq!((two.status, two.text().as_str()), (200, "hello"));
    let three = c.answer();
    assert_eq!((three.status, three.text().as_str()), (404, NOT_FOUND_BODY));
    let four = c.answer();
    assert_eq!((four.status, four.text().as_str()), (200, "four"));
    let five = c.answer();
    assert_eq!(five.expect(200).echo()["raw_target"], "/echo/five");
    let six = c.answer();
    assert_eq!(six.expect(200).echo()["raw_target"], "/echo/six");
    assert_eq!(six.header("connection"), Some("close"));
    assert_eq!(c.after(Duration::from_secs(3)), After::Closed);
    assert_eq!(
        f.echo_targets(),
        ["/echo/one", "/echo/five", "/echo/six"],
        "the request after `Connection: close` was served"
    );
}

#[test]
fn pipelined_requests_split_across_writes_are_answered_in_order() {
    let f = Fixture::start();
    let mut c = f.conn();
    // Cut every few bytes, boundaries falling inside heads and bodies.
    let all = format!(
        "{}POST /body/b HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
         a;x=y\r\n0123456789\r\n0\r\n\r\n{}",
        get("/echo/a"),
        get("/echo/c")
    );
    for piece in all.as_bytes().chunks(7) {
        c.send(piece);
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/a");
    assert_eq!(c.answer().expect(200).text(), "0123456789");
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/c");
    assert_eq!(c.after(Duration::from_millis(300)), After::Open);
}

#[test]
fn head_gets_the_upstream_length_and_no_body_and_the_connection_stays_usable() {
    let f = Fixture::start();
    let mut c = f.conn();
    c.send("HEAD /echo/bytes/1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let head = c.head_answer();
    head.expect(200);
    assert_eq!(head.header("content-length"), Some("1000"), "{head:?}");
    assert!(!head.has("transfer-encoding"), "{head:?}");
    // No body bytes: the next answer starts right away.
    c.send(get("/echo/after-head"));
    let next = c.answer();
    assert_eq!(next.expect(200).echo()["raw_target"], "/echo/after-head");

    // HEAD of the gateway's own answer, pipelined with a GET.
    c.send(format!(
        "HEAD /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n{}",
        get("/echo/again")
    ));
    let own = c.head_answer();
    own.expect(404);
    assert_eq!(
        own.header("content-length"),
        Some(NOT_FOUND_BODY.len().to_string().as_str())
    );
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/again");

    // HEAD of an echo answer (a JSON body of the upstream's length).
    c.send("HEAD /echo/json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let json = c.head_answer();
    json.expect(200);
    let len: usize = json
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length on {json:?}"));
    assert!(len > 20, "{json:?}");
    assert_eq!(c.after(Duration::from_millis(500)), After::Open);
}

#[test]
fn http10_closes_after_the_answer_unless_kept_alive() {
    let f = Fixture::start();

    let mut c = f.conn();
    c.send("GET /echo/plain HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.expect(200).echo()["raw_target"], "/echo/plain");
    assert_ne!(a.header("connection"), Some("keep-alive"), "{a:?}");
    assert_eq!(c.after(Duration::from_secs(3)), After::Closed);

    let mut c = f.conn();
    c.send("GET /echo/ka1 HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.expect(200).echo()["raw_target"], "/echo/ka1");
    assert_eq!(
        a.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive")
    );
    assert_eq!(c.after(Duration::from_millis(500)), After::Open);
    c.send("GET /echo/ka2 HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/ka2");
    // A keep-alive HTTP/1.0 request that does not ask again ends it.
    c.send("GET /echo/ka3 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/ka3");
    assert_eq!(c.after(Duration::from_secs(3)), After::Closed);

    // An answer without a length goes to an HTTP/1.0 client unchunked,
    // delimited by the close, even when keep-alive was asked for.
    let mut c = f.conn();
    c.send("GET /body/chunked HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n");
    let a = c.try_answer(false, WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((a.status, a.text().as_str()), (200, "<>"), "{a:?}");
    assert!(!a.has("transfer-encoding"), "{a:?}");
    assert_eq!(c.after(Duration::from_secs(1)), After::Closed);
}

#[test]
fn an_http11_chunked_answer_is_relayed_chunked_on_a_kept_connection() {
    let f = Fixture::start();
    let mut c = f.conn();
    c.send("POST /body/chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nmid");
    let a = c.answer();
    assert_eq!((a.status, a.text().as_str()), (200, "<mid>"), "{a:?}");
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    c.send(get("/echo/next"));
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/next");
}

// ---------------------------------------------------------------------------
// Expect: 100-continue

#[test]
fn expect_100_continue_gets_the_interim_answer_then_the_real_one() {
    let f = Fixture::start();
    let mut c = f.conn();
    c.send(
        "POST /body/expect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\n\
         Expect: 100-continue\r\n\r\n",
    );
    // The body is held back until the gateway says to go on.
    let interim = c.answer();
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send("hello world");
    let a = c.answer();
    assert_eq!((a.status, a.text().as_str()), (200, "hello world"), "{a:?}");
    let seen = f.body.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].body, b"hello world");

    // Chunked, on the same connection, with an upper-case expectation.
    c.send(
        "PUT /body/expect2 HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
         Expect: 100-Continue\r\n\r\n",
    );
    assert_eq!(c.answer().status, 100);
    c.send("4\r\nabcd\r\n0\r\n\r\n");
    let a = c.answer();
    assert_eq!((a.status, a.text().as_str()), (200, "abcd"), "{a:?}");

    // No body: no interim answer, only the real one.
    c.send("GET /echo/noexp HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.expect(200).echo()["raw_target"], "/echo/noexp");
}

// ---------------------------------------------------------------------------
// bodies nobody read

#[test]
fn a_refused_request_drains_its_small_body_and_keeps_the_connection() {
    let f = Fixture::start();
    let mut c = f.conn();
    // The body looks like a request; it must be skipped, never served.
    let body = format!("{SMUGGLED}{}", "x".repeat(1000));
    c.send(format!(
        "POST /auth/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let a = c.answer();
    a.expect(401);
    assert!(a.has("www-authenticate"), "{a:?}");
    c.send(get("/echo/next"));
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/next");

    // A 404 with a chunked body, pipelined with the next request.
    let chunk = SMUGGLED;
    c.send(format!(
        "POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{chunk}\r\n0\r\nX-T: 1\r\n\r\n{}",
        chunk.len(),
        get("/echo/after-404")
    ));
    assert_eq!(c.answer().expect(404).text(), NOT_FOUND_BODY);
    assert_eq!(
        c.answer().expect(200).echo()["raw_target"],
        "/echo/after-404"
    );

    // The body arriving after the answer (the client waited for nothing).
    c.send("POST /auth/later HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n");
    c.answer().expect(401);
    c.send("0123456789");
    c.send(get("/echo/last"));
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/last");
    assert_eq!(
        f.echo_targets(),
        ["/echo/next", "/echo/after-404", "/echo/last"]
    );
    f.assert_nothing_smuggled("drained bodies");
}

#[test]
fn an_unread_body_over_a_mebibyte_gets_the_answer_then_the_connection_closes() {
    let f = Fixture::start();
    // More than loopback socket buffers can absorb, so a feeder that gets
    // to the end means the gateway read it all.
    let total = 32 * 1024 * 1024;
    let mut c = f.conn();
    c.send(format!(
        "POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {total}\r\n\r\n"
    ));
    c.send(vec![b'x'; 64 * 1024]);
    assert_eq!(c.answer().expect(404).text(), NOT_FOUND_BODY);
    // The rest, from another thread, while this one watches for the close.
    let mut writer = c.stream.try_clone().expect("clone the client socket");
    let feeder = thread::spawn(move || {
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 64 * 1024;
        while sent < total {
            if writer.write_all(&piece).is_err() {
                return sent;
            }
            sent += piece.len();
        }
        sent
    });
    assert_eq!(c.after(Duration::from_secs(5)), After::Closed);
    let sent = feeder.join().expect("feeder");
    assert!(sent < total, "the gateway read all {total} bytes");

    // Same with a chunked body the gateway cannot know the size of.
    let mut c = f.conn();
    c.send("POST /auth/big HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.answer().expect(401);
    let mut writer = c.stream.try_clone().expect("clone the client socket");
    let feeder = thread::spawn(move || {
        let mut piece = format!("{:x}\r\n", 64 * 1024).into_bytes();
        piece.extend_from_slice(&[b'y'; 64 * 1024]);
        piece.extend_from_slice(b"\r\n");
        for _ in 0..512 {
            if writer.write_all(&piece).is_err() {
                return false;
            }
        }
        true
    });
    assert_eq!(c.after(Duration::from_secs(5)), After::Closed);
    assert!(!feeder.join().expect("feeder"), "32 MiB were all accepted");
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo.requests());
}

#[test]
fn an_unread_body_that_stalls_closes_the_connection() {
    let f = Fixture::start();
    let mut c = f.conn();
    c.send("POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nonly-part");
    c.answer().expect(404);
    let started = Instant::now();
    assert_eq!(c.after(Duration::from_secs(6)), After::Closed);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// heads the server refuses

#[test]
fn a_head_that_never_completes_is_answered_408_after_ten_seconds() {
    let f = Fixture::start();
    // A client that trickles one header line a second for nine seconds
    // (slowloris): the ten seconds run from the head's first byte, not
    // from the last read.
    let addr = f.gw.proxy_addr();
    let trickler = thread::spawn(move || {
        let mut c = Conn::open(addr);
        let started = Instant::now();
        c.send("GET /echo/slowloris HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(9) {
            thread::sleep(Duration::from_millis(900));
            if !c.try_send(format!("X-Trickle-{i}: {i}\r\n")) {
                break;
            }
            i += 1;
        }
        let answer = c.try_answer(
            false,
            Duration::from_secs(12).saturating_sub(started.elapsed()),
        );
        let took = started.elapsed();
        let after = c.after(Duration::from_secs(1));
        (answer, took, after)
    });
    // A client that stops in the middle of a line.
    let mut c = f.conn();
    let started = Instant::now();
    c.send("GET /echo/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ");
    let a = c
        .try_answer(false, Duration::from_secs(12))
        .unwrap_or_else(|e| panic!("{e}"));
    let took = started.elapsed();
    a.expect(408);
    let window = Duration::from_millis(9_500)..=Duration::from_millis(11_500);
    assert!(window.contains(&took), "408 after {took:?}");
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(c.after(Duration::from_secs(1)), After::Closed);

    let (answer, took, after) = trickler.join().expect("trickler");
    let a = answer.unwrap_or_else(|e| panic!("trickled head, after {took:?}: {e}"));
    a.expect(408);
    assert!(window.contains(&took), "trickled head: 408 after {took:?}");
    assert_eq!(after, After::Closed);
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo_targets());
}

#[test]
fn an_oversized_head_is_431_and_closed() {
    let f = Fixture::start();
    // ~56 KiB of headers, each under the 8 KiB value limit, never ended.
    let mut head = String::from("GET /echo/big HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..8 {
        head += &format!("X-Big-{i}: {}\r\n", "v".repeat(7 * 1024));
    }
    let (a, after) = refused(&f.gw, head.as_bytes());
    a.expect(431);
    assert_eq!(after, After::Closed);

    // Complete heads over the header limits: one value over 8 KiB, or
    // over 32 KiB in all.
    let one = format!(
        "GET /echo/one HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {}\r\n\r\n",
        "v".repeat(9 * 1024)
    );
    let mut all = String::from("GET /echo/all HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..5 {
        all += &format!("X-Part-{i}: {}\r\n", "v".repeat(7 * 1024));
    }
    all += "\r\n";
    for req in [one, all] {
        let mut c = f.conn();
        c.send(&req);
        c.answer().expect(431);
    }
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo.requests());
}

#[test]
fn too_many_header_lines_are_431_and_closed() {
    let f = Fixture::start();
    let mut head = String::from("GET /echo/many HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..101 {
        head += &format!("X-H{i}: v\r\n");
    }
    head += "\r\n";
    let (a, after) = refused(&f.gw, head.as_bytes());
    a.expect(431);
    assert_eq!(after, After::Closed);

    // 99 lines plus Host is the most accepted.
    let mut head = String::from("GET /echo/many HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..99 {
        head += &format!("X-H{i}: v\r\n");
    }
    head += "\r\n";
    let mut c = f.conn();
    c.send(&head);
    c.answer().expect(200);
    assert_eq!(f.echo_targets(), ["/echo/many"]);
}

#[test]
fn transfer_codings_other_than_chunked_are_501_and_never_forwarded() {
    let f = Fixture::start();
    for coding in [
        "gzip",
        "gzip, chunked",
        "chunked, gzip",
        "identity",
        "deflate",
    ] {
        let req = format!(
            "POST /echo/te HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: {coding}\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let (a, after) = refused(&f.gw, req.as_bytes());
        assert_eq!(a.status, 501, "{coding}: {a:?}");
        assert_eq!(after, After::Closed, "{coding}");
    }
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo.requests());
}

#[test]
fn garbage_and_malformed_heads_are_400_and_closed() {
    let f = Fixture::start();
    let bad: &[&[u8]] = &[
        b"HELLO\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /echo/x\r\n\r\n",
        b"GET /echo/x HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        b"GET  /echo/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /echo/x HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET /echo/x HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET /echo/x FTP/1.1\r\nHost: a\r\n\r\n",
        b"G\x00T /echo/x HTTP/1.1\r\n\r\n",
        b"G(T /echo/x HTTP/1.1\r\n\r\n",
        b"GET echo/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ftp://a/echo/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /echo/\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /echo/\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        // Header lines: obs-fold, space before the colon, no colon, bare
        // CR, NUL, empty name.
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: one\r\n\ttwo\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: a\rX-Injected: 1\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
        b"GET /echo/x HTTP/1.1\r\nHost: a\r\nX\x01A: v\r\n\r\n",
        // Framing headers that cannot be trusted.
        b"POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
        b"POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n",
        b"POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /echo/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo/x HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx",
    ];
    for req in bad {
        let label = String::from_utf8_lossy(req).into_owned();
        let mut c = f.conn();
        let _ = c.try_send(req);
        let a = c
            .try_answer(false, WAIT)
            .unwrap_or_else(|e| panic!("{label:?}: {e}"));
        assert!(
            a.status == 400 || (label.contains("Expect") && a.status == 417),
            "{label:?}: {a:?}"
        );
        assert!(a.has("content-length") && a.has("date"), "{label:?}: {a:?}");
        assert_eq!(a.header("connection"), Some("close"), "{label:?}");
        assert_eq!(c.after(Duration::from_secs(3)), After::Closed, "{label:?}");
    }
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo.requests());
}

// ---------------------------------------------------------------------------
// chunked request bodies

#[test]
fn chunked_bodies_with_extensions_and_trailers_arrive_intact() {
    let f = Fixture::start();
    let mut c = f.conn();
    let cases: &[(&str, &[u8])] = &[
        (
            "5;name=value\r\nhello\r\n6 ; q=\"a;b\"\r\n world\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",
            b"hello world",
        ),
        ("A\r\n0123456789\r\n000\r\n\r\n", b"0123456789"),
        ("0000000003;x\r\nabc\r\n0;last\r\n\r\n", b"abc"),
        ("1\r\n\r\r\n1\r\n\n\r\n2\r\n\r\n\r\n0\r\n\r\n", b"\r\n\r\n"),
        ("0\r\n\r\n", b""),
        ("f\r\n0\r\n\r\nGET / HTTP\r\n0\r\n\r\n", b"0\r\n\r\nGET / HTTP"),
    ];
    for (i, (wire, want)) in cases.iter().enumerate() {
        c.send(format!(
            "POST /body/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{wire}"
        ));
        let a = c.answer();
        assert_eq!(a.status, 200, "{wire:?}: {a:?}");
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            String::from_utf8_lossy(want),
            "{wire:?}"
        );
    }
    // A large body in uneven chunks and writes.
    let data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    c.send("POST /body/large HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut wire = Vec::new();
    for piece in data.chunks(12_345) {
        wire.extend_from_slice(format!("{:x};i=1\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\nX-Sum: 1\r\n\r\n");
    for piece in wire.chunks(40_000) {
        c.send(piece);
    }
    let a = c.answer();
    assert_eq!(a.status, 200);
    assert!(
        a.body == data,
        "large body differs ({} bytes)",
        a.body.len()
    );

    let seen = f.body.seen();
    assert_eq!(seen.len(), cases.len() + 1);
    for s in &seen {
        // Trailers and extensions stay at the gateway.
        assert!(
            !s.head.to_ascii_lowercase().contains("x-trailer"),
            "{}",
            s.head
        );
    }
}

#[test]
fn malformed_chunk_sizes_never_let_a_second_request_through() {
    let f = Fixture::start();
    let variants: &[&str] = &[
        "+5\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5 5\r\nhello\r\n0\r\n\r\n",
        "5x\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhello0\r\n\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhello\n0\r\n\r\n",
        "\r\nhello\r\n0\r\n\r\n",
        "g\r\nhello\r\n0\r\n\r\n",
        "11111111111111111\r\nhello\r\n0\r\n\r\n",
        "00000000000000000000005\r\nhello\r\n0\r\n\r\n",
    ];
    // Forwarded (the upstream reads the body) and refused (the gateway
    // skips it) alike.
    let targets = ["/echo/chunks", "/nowhere"];
    for (body, target) in variants
        .iter()
        .flat_map(|b| targets.iter().map(move |t| (b, t)))
    {
        let before = f.echo.count();
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             {body}{SMUGGLED}"
        );
        let mut c = f.conn();
        let _ = c.try_send(&req);
        let mut answers = Vec::new();
        while let Ok(a) = c.try_answer(false, Duration::from_secs(3)) {
            answers.push(a);
        }
        assert!(
            answers.len() <= 1,
            "{target} {body:?}: more than one answer: {answers:?}"
        );
        for a in &answers {
            assert_ne!(a.status, 200, "{target} {body:?} was accepted: {a:?}");
        }
        // Whatever reached the upstream is the POST, never the GET.
        for r in &f.echo.requests()[before..] {
            assert_eq!(r.method, "POST", "{body:?}: {r:?}");
        }
    }
    f.assert_nothing_smuggled("malformed chunks");
}

#[test]
fn huge_chunk_sizes_stream_and_close_instead_of_buffering() {
    let f = Fixture::start();
    // The largest size that parses, then a few bytes and the client
    // gives up: the gateway neither waits for memory nor answers twice.
    let mut c = f.conn();
    c.send(format!(
        "POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
         ffffffffffffffff\r\nabc{SMUGGLED}"
    ));
    assert_eq!(c.answer().expect(404).text(), NOT_FOUND_BODY);
    // The stalled body is given up on.
    assert_eq!(c.after(Duration::from_secs(5)), After::Closed);

    // Toward an upstream: the body streams, nothing is smuggled.
    let mut c = f.conn();
    c.send(format!(
        "POST /echo/huge HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
         ffffffffffffffff\r\nabc{SMUGGLED}"
    ));
    c.stream.shutdown(Shutdown::Write).expect("half-close");
    let _ = c.try_answer(false, Duration::from_secs(5));
    assert_ne!(c.after(Duration::from_secs(5)), After::Open);
    f.assert_nothing_smuggled("huge chunk");
    // The gateway still serves.
    let mut c = f.conn();
    c.send(get("/echo/alive"));
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/alive");
}

// ---------------------------------------------------------------------------
// targets and the gateway's own answers

#[test]
fn an_absolute_form_target_is_routed_by_its_path() {
    let f = Fixture::start();
    let mut c = f.conn();
    c.send("GET http://127.0.0.1/echo/abs?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.expect(200).echo()["raw_target"], "/echo/abs?q=1");
    // Without a Host header, and upper-case scheme with a port.
    c.send("GET HTTP://127.0.0.1:9/echo/abs2 HTTP/1.1\r\n\r\n");
    assert_eq!(c.answer().expect(200).echo()["raw_target"], "/echo/abs2");
    // An authority alone is the path "/" (no route there).
    c.send("GET http://127.0.0.1 HTTP/1.1\r\n\r\n");
    c.answer().expect(404);
    // Not a route-able path once canonical.
    c.send("GET http://127.0.0.1/echo/../nowhere HTTP/1.1\r\n\r\n");
    c.answer().expect(404);
    let seen = f.echo.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].raw_target, "/echo/abs2");
    assert_eq!(seen[1].header("host"), Some("127.0.0.1:9"));
}

#[test]
fn an_absolute_form_authority_selects_host_routes_over_the_host_header() {
    let f = Fixture::start();
    let api = EchoUpstream::start_named("api");
    f.gw.put_route(
        "api",
        json!({"uri": "/echo/*", "host": "api.example.com",
               "upstream": {"nodes": {api.node(): 1}}}),
    );
    let mut c = f.conn();
    c.send("GET http://api.example.com/echo/h HTTP/1.1\r\n\r\n");
    assert_eq!(c.answer().expect(200).echo()["server"], "api");
    // RFC 9112 §3.2.2: with an absolute-form target, Host is ignored.
    c.send("GET http://api.example.com/echo/h2 HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
    assert_eq!(
        c.answer().expect(200).echo()["server"],
        "api",
        "routed by Host"
    );
    c.send("GET http://www.example.com/echo/h3 HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    assert_eq!(
        c.answer().expect(200).echo()["server"],
        "echo",
        "routed by Host"
    );
    let seen = api.wait_for(2, WAIT);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].header("host"), Some("api.example.com"));
    assert_eq!(f.echo.requests()[0].header("host"), Some("www.example.com"));
}

#[test]
fn the_gateways_own_answers_carry_date_and_content_length() {
    let f = Fixture::start();
    let mut c = f.conn();
    let check = |a: &Answer, label: &str| {
        let date = a
            .header("date")
            .unwrap_or_else(|| panic!("{label}: no date: {a:?}"));
        let when = httpdate::parse_http_date(date)
            .unwrap_or_else(|e| panic!("{label}: date {date:?}: {e}"));
        let skew = when
            .duration_since(std::time::SystemTime::now())
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap_or_default();
        assert!(skew < Duration::from_secs(5), "{label}: date {date:?}");
        assert_eq!(
            a.header("content-length"),
            Some(a.body.len().to_string().as_str()),
            "{label}: {a:?}"
        );
        assert!(!a.has("transfer-encoding"), "{label}: {a:?}");
        assert_eq!(
            a.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("date"))
                .count(),
            1,
            "{label}: {a:?}"
        );
    };
    c.send(get("/nowhere"));
    let a = c.answer();
    assert_eq!(a.expect(404).text(), NOT_FOUND_BODY);
    check(&a, "404");
    c.send(get("/auth/x"));
    let a = c.answer();
    check(a.expect(401), "401");
    c.send(get("/echo/%2F"));
    let a = c.answer();
    check(a.expect(400), "400 path");
    // A proxied answer keeps the upstream's length and gets a date.
    c.send(get("/echo/bytes/10"));
    let a = c.answer();
    check(a.expect(200), "proxied");
    // The refusal of a head, on its own connection.
    let (a, _) = refused(&f.gw, b"BAD\r\n\r\n");
    check(a.expect(400), "400 head");
}

// ---------------------------------------------------------------------------
// attacks

#[test]
fn bare_lf_heads_are_refused_or_forwarded_clean() {
    let f = Fixture::start();
    // Bare LF line ends, and a CR hidden in a value: never a second
    // header or request at the upstream.
    for req in [
        "GET /echo/lf HTTP/1.1\nHost: 127.0.0.1\nX-A: 1\n\n",
        "GET /echo/lf HTTP/1.1\r\nHost: 127.0.0.1\nX-A: 1\r\n\r\n",
        "GET /echo/lf HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\nX-Injected: 2\r\n\r\n",
    ] {
        let mut c = f.conn();
        c.send(req);
        let a = c.answer();
        match a.status {
            400 => assert_eq!(c.after(Duration::from_secs(3)), After::Closed, "{req:?}"),
            200 => {
                let headers = a.echo()["headers"].clone();
                let text = headers.to_string();
                assert!(
                    !text.contains('\r') && !text.contains('\n'),
                    "{req:?}: {text}"
                );
            }
            s => panic!("{req:?}: {s} {a:?}"),
        }
    }
    f.assert_nothing_smuggled("bare LF");
}

#[test]
fn a_body_framed_twice_in_one_pipeline_is_refused_before_the_next_request() {
    let f = Fixture::start();
    // CL.TE and TE.CL, with the smuggled request where either reading
    // would find it.
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 60\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 4\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
    ] {
        let req =
            format!("POST /echo/te HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n0\r\n\r\n{SMUGGLED}");
        let (a, after) = refused(&f.gw, req.as_bytes());
        assert_eq!(a.status, 400, "{head:?}: {a:?}");
        assert_eq!(after, After::Closed, "{head:?}");
    }
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo.requests());
}

#[test]
fn many_idle_connections_do_not_lock_others_out() {
    let f = Fixture::start();
    // Idle connections, and connections holding a half-sent head.
    let mut idle = Vec::new();
    for i in 0..600 {
        let mut c = f.conn();
        if i % 2 == 0 {
            c.send("GET /echo/held HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        }
        idle.push(c);
    }
    let started = Instant::now();
    for i in 0..20 {
        let mut c = f.conn();
        c.send(get(&format!("/echo/fresh{i}")));
        assert_eq!(
            c.answer().expect(200).echo()["raw_target"],
            format!("/echo/fresh{i}")
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "20 requests took {:?} next to 600 idle connections",
        started.elapsed()
    );
    drop(idle);
}

#[test]
fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    let mut f = Fixture::start();
    let mut idle = f.conn();
    idle.send(get("/echo/before"));
    idle.answer().expect(200);
    let mut busy = f.conn();
    busy.send(get("/echo/delay/1500"));
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = f.gw.stop().expect("the gateway was running");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    let a = busy.answer();
    assert_eq!(a.expect(200).echo()["raw_target"], "/echo/delay/1500");
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(busy.after(Duration::from_secs(1)), After::Closed);
    assert_eq!(idle.after(Duration::from_secs(1)), After::Closed);
}

// ---------------------------------------------------------------------------
// known bugs

#[test]

fn a_fragment_in_the_target_never_gets_around_an_exact_route() {
    let f = Fixture::start();
    f.gw.put_route(
        "secret",
        json!({"uri": "/echo/secret", "plugins": {"openid-connect": {
            "client_id": "c", "client_secret": "s", "bearer_only": true,
            "discovery": "http://127.0.0.1:1/.well-known/openid-configuration"}},
            "upstream": {"nodes": {f.echo.node(): 1}}}),
    );
    for target in [
        "/echo/secret",
        "/echo/secret#x",
        "/echo/secret#",
        "/echo/secret#/../open",
    ] {
        let mut c = f.conn();
        c.send(get(target));
        let a = c.answer();
        // Refused as a malformed target, or read without the fragment
        // (and so refused by the plugin): never forwarded.
        assert!(
            a.status == 400 || a.status == 401,
            "{target}: {} {:?}",
            a.status,
            a.text()
        );
    }
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo_targets());
}

#[test]

fn a_complete_head_over_the_limit_is_refused_however_it_arrives() {
    let f = Fixture::start();
    let long = format!("/echo/{}", "a".repeat(60 * 1024));
    let (a, after) = refused(&f.gw, get(&long).as_bytes());
    assert!(
        a.status == 431 || a.status == 414,
        "{} {:?}",
        a.status,
        a.headers
    );
    assert_eq!(after, After::Closed);
    assert!(f.echo.requests().is_empty());
}

#[test]

fn host_must_be_sent_exactly_once() {
    let f = Fixture::start();
    for req in [
        "GET /echo/nohost HTTP/1.1\r\n\r\n",
        "GET /echo/twohosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    ] {
        let mut c = f.conn();
        c.send(req);
        let a = c.answer();
        assert_eq!(a.status, 400, "{req:?}: {a:?}");
    }
    assert!(f.echo.requests().is_empty(), "{:?}", f.echo_targets());
}

#[test]

fn an_upstream_that_ignores_expect_still_gets_the_body() {
    let up = BodyUpstream::ignoring_expect();
    let gw = Gateway::start();
    gw.put_route(
        "noexp",
        json!({"uri": "/noexp/*", "upstream": {"nodes": {up.node(): 1},
               "timeout": {"connect": 2, "send": 2, "read": 2}}}),
    );
    let mut c = Conn::open(gw.proxy_addr());
    c.send(
        "POST /noexp/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\
         Expect: 100-continue\r\n\r\n",
    );
    assert_eq!(c.answer().status, 100);
    c.send("hello");
    let started = Instant::now();
    let a = c
        .try_answer(false, Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("after {:?}: {e}", started.elapsed()));
    // The body reaches the upstream; at the very least the route's
    // timeouts end the wait.
    assert!(
        (a.status == 200 && a.body == b"hello") || a.status == 504,
        "{a:?}"
    );
}

/// A WebSocket upstream that accepts the upgrade, says one word and hangs
/// up.
fn ws_upstream_that_hangs_up() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&got, b"\r\n\r\n").is_none() {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\n\r\nbye",
                );
                thread::sleep(Duration::from_millis(100));
            });
        }
    });
    addr
}

#[cfg(target_os = "linux")]
#[test]

fn an_ended_tunnel_releases_the_client_socket() {
    let up = ws_upstream_that_hangs_up();
    let gw = Gateway::start_with(crate::support::GatewayOpts::new().args(["--workers", "1"]));
    gw.put_route(
        "ws",
        json!({"uri": "/ws/*", "enable_websocket": true,
               "upstream": {"nodes": {up.to_string(): 1}}}),
    );
    let pid = gw.pid().expect("running");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = Conn::open(gw.proxy_addr());
        c.send(
            "GET /ws/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        let a = c.answer();
        assert_eq!(a.status, 101, "{a:?}");
        assert_eq!(c.after(Duration::from_secs(3)), After::Data("bye".into()));
        c.buf.clear();
        assert_eq!(c.after(Duration::from_secs(3)), After::Closed);
        clients.push(c);
    }
    thread::sleep(Duration::from_millis(500));
    let after = fds();
    // The clients keep their sockets open and say nothing.
    assert!(
        after <= before + 2,
        "{} descriptors before, {after} with 20 ended tunnels",
        before
    );
    drop(clients);
}

// ---------------------------------------------------------------------------
// pooled upstream connections

/// An upstream that answers HEAD with its head and, a moment later, bytes
/// shaped like another answer; any other request gets `genuine`.
fn stray_bytes_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = find(&pending, b"\r\n\r\n") {
                        let head_request = pending.starts_with(b"HEAD ");
                        pending.drain(..end + 4);
                        let ok = if head_request {
                            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
                                .is_ok()
                                && {
                                    thread::sleep(Duration::from_millis(50));
                                    conn.write_all(
                                        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED",
                                    )
                                    .is_ok()
                                }
                        } else {
                            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngenuine")
                                .is_ok()
                        };
                        if !ok {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn stray_bytes_on_an_idle_upstream_connection_never_answer_another_request() {
    let upstream = stray_bytes_upstream();
    let gw = Gateway::start();
    gw.put_route(
        "h",
        json!({"uri": "/h/*", "upstream": {"nodes": {upstream.to_string(): 1}}}),
    );
    // The victim comes after the stray bytes arrived, and before.
    for (round, pause) in [200, 200, 0, 0, 0, 0].into_iter().enumerate() {
        let mut c = Conn::open(gw.proxy_addr());
        c.send("HEAD /h/attacker HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        c.try_answer(true, Duration::from_secs(2))
            .expect("HEAD answer")
            .expect(200);
        thread::sleep(Duration::from_millis(pause));
        let mut v = Conn::open(gw.proxy_addr());
        v.send(get("/h/victim"));
        assert_eq!(v.answer().expect(200).text(), "genuine", "round {round}");
    }
}

#[test]
fn a_malformed_chunked_body_is_the_clients_fault() {
    let f = Fixture::start();
    for body in ["3\r\nabcX\r\n0\r\n\r\n", "zz\r\nabc\r\n0\r\n\r\n"] {
        let mut c = f.conn();
        c.send(format!(
            "POST /body/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        ));
        c.answer().expect(400);
    }
}
