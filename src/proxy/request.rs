//! A client's request as the proxy listener read it: the parsed head and
//! the body, read from the connection only as the forwarder or a plugin
//! asks for it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::net::tcp::OwnedReadHalf;

use super::framing::{decode, invalid, ChunkState, Framing, Step};

/// Most header lines in a request head (nginx and actix-web allow about 100).
pub const MAX_HEADERS: usize = 100;
const READ_CHUNK: usize = 16 * 1024;

type Span = std::ops::Range<usize>;

/// The head of one request, kept as the bytes the client sent; the
/// header map plugins see is built only when one asks for it.
pub struct Request {
    head: Bytes,
    method: Method,
    /// The path (up to `?`) of the request target.
    path: Span,
    /// The query, without its `?`.
    query: Option<Span>,
    /// The authority of an absolute-form request target.
    authority: Option<Span>,
    fields: Vec<(Span, Span)>,
    map: std::cell::OnceCell<HeaderMap>,
    http10: bool,
    body: BodyKind,
    /// A header value over `MAX_HEADER_VALUE`, or all of them over
    /// `MAX_HEADERS_TOTAL` (answered 431 before anything else looks).
    oversized: bool,
    peer: SocketAddr,
    /// The peer's address as text, formatted once per connection.
    peer_ip: Rc<str>,
}

/// How the request's body is framed, as far as forwarding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

impl Request {
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The header fields as sent, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields
            .iter()
            .map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_all(name).next()
    }

    /// Every value of a header, by case-insensitive name.
    pub fn header_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The headers as a map (built on first use).
    pub fn headers(&self) -> &HeaderMap {
        self.map.get_or_init(|| {
            let mut map = HeaderMap::with_capacity(self.fields.len());
            for (n, v) in &self.fields {
                // Both were checked by the parser; slicing shares the bytes.
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(&self.head[n.clone()]),
                    HeaderValue::from_maybe_shared(self.head.slice(v.clone())),
                ) {
                    map.append(name, value);
                }
            }
            map
        })
    }

    /// The path as sent, not yet canonical.
    pub fn path(&self) -> &str {
        match self.str_at(&self.path) {
            "" => "/",
            p => p,
        }
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|q| self.str_at(q))
    }

    /// The query, or `""`.
    pub fn query_string(&self) -> &str {
        self.query().unwrap_or("")
    }

    /// The authority of an absolute-form request target.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_ref().map(|a| self.str_at(a))
    }

    fn str_at(&self, span: &Span) -> &str {
        // The request target was checked to be ASCII by the parser.
        std::str::from_utf8(&self.head[span.clone()]).unwrap_or("")
    }

    pub fn body(&self) -> BodyKind {
        self.body
    }

    /// Whether the headers exceed the gateway's size limits.
    pub fn oversized(&self) -> bool {
        self.oversized
    }

    /// The value of the first cookie called `name`, from any `Cookie` line.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header_all("cookie")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| n.trim() == name)
            .map(|(_, v)| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .unwrap_or(v)
            })
    }

    /// Bytes of the head as received.
    pub fn head_len(&self) -> usize {
        self.head.len()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The peer's IP address as text.
    pub fn peer_ip(&self) -> &str {
        &self.peer_ip
    }

    pub fn is_http10(&self) -> bool {
        self.http10
    }
}

/// Why a request head was refused; the connection closes after the answer.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with the reason.
    Bad(&'static str),
    /// 431: too many header lines or a head too large.
    TooLarge,
    /// 501: a transfer coding other than chunked.
    UnsupportedCoding,
}

/// What parsing a complete head found.
pub struct Parsed {
    /// Bytes of the head, to take from the buffer.
    pub len: usize,
    pub framing: Framing,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    method: Method,
    path: Span,
    query: Option<Span>,
    authority: Option<Span>,
    fields: Vec<(Span, Span)>,
    http10: bool,
    oversized: bool,
}

impl Parsed {
    /// The request, from the head's bytes (the first `len` bytes parsed).
    pub fn into_request(self, head: Bytes, peer: SocketAddr, peer_ip: Rc<str>) -> Request {
        let body = match self.framing {
            Framing::Length(0) => BodyKind::None,
            Framing::Length(n) => BodyKind::Length(n),
            _ => BodyKind::Chunked,
        };
        Request {
            head,
            method: self.method,
            path: self.path,
            query: self.query,
            authority: self.authority,
            fields: self.fields,
            map: Default::default(),
            http10: self.http10,
            body,
            oversized: self.oversized,
            peer,
            peer_ip,
        }
    }
}

/// Where `part` (a slice of `buf`) lies in `buf`.
fn span(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Parses a head from `buf`; `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Parsed>, HeadError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    // Methods are case-sensitive and every registered one is upper case;
    // `get` would slip past a route limited to `GET` (RFC 9110 §9.1).
    let raw_method = req.method.unwrap_or("");
    if raw_method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(HeadError::Bad("invalid method"));
    }
    let method =
        Method::from_bytes(raw_method.as_bytes()).map_err(|_| HeadError::Bad("invalid method"))?;
    let http10 = req.version == Some(0);
    let target = req.path.unwrap_or("");
    let (path, authority) = split_target(target).ok_or(HeadError::Bad("invalid request target"))?;
    let base = span(buf, target.as_bytes()).start;
    let query = target[path.end..]
        .strip_prefix('?')
        .map(|q| base + target.len() - q.len()..base + target.len());
    let path = base + path.start..base + path.end;
    let authority = authority.map(|a| base + a.start..base + a.end);

    let mut fields = Vec::with_capacity(req.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coding_seen = false;
    let mut close = http10;
    let mut expect_continue = false;
    let mut total = 0;
    let mut oversized = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        total += name.len() + h.value.len();
        oversized |= h.value.len() > super::MAX_HEADER_VALUE;
        if name.eq_ignore_ascii_case(b"content-length") {
            // One Content-Length of bare digits; repeats and lists are
            // refused rather than reconciled (attack kind K17).
            if length.is_some() {
                return Err(HeadError::Bad("more than one Content-Length"));
            }
            length = Some(parse_length(h.value).ok_or(HeadError::Bad("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Exactly one Transfer-Encoding, exactly `chunked`.
            if coding_seen {
                return Err(HeadError::Bad("more than one Transfer-Encoding"));
            }
            coding_seen = true;
            if h.value.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(HeadError::UnsupportedCoding);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = !http10;
            } else {
                return Err(HeadError::Bad("unsupported Expect"));
            }
        }
        fields.push((span(buf, name), span(buf, h.value)));
    }
    // HTTP/1.1 requires exactly one Host (RFC 9112 §3.2); an absolute-form
    // target carries its own authority.
    let hosts = fields
        .iter()
        .filter(|(n, _): &&(Span, Span)| buf[n.clone()].eq_ignore_ascii_case(b"host"))
        .count();
    if hosts > 1 || (hosts == 0 && !http10 && authority.is_none()) {
        return Err(HeadError::Bad("exactly one Host header is required"));
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => return Err(HeadError::Bad("both Content-Length and Transfer-Encoding")),
        (true, None) if http10 => return Err(HeadError::Bad("Transfer-Encoding in HTTP/1.0")),
        (true, None) => Framing::Chunked(ChunkState::Size),
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::DONE,
    };
    Ok(Some(Parsed {
        len,
        framing,
        keep_alive: !close,
        expect_continue: expect_continue && !framing.is_done(),
        method,
        path,
        query,
        authority,
        fields,
        http10,
        oversized: oversized || total > super::MAX_HEADERS_TOTAL,
    }))
}

/// Digits only, as RFC 9110 §8.6: no sign, no list, no spaces inside.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The path's span and, for the absolute form, the authority's.
fn split_target(target: &str) -> Option<(Span, Option<Span>)> {
    // Printable ASCII only, and none of the characters RFC 3986 never
    // allows unencoded: a `#fragment` in particular must not reach
    // routing, where `/secret#x` would miss the exact route `/secret`.
    if !target
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'<' | b'>' | b'`' | b'"'))
    {
        return None;
    }
    let path_end = |from: usize| from + target[from..].find('?').unwrap_or(target.len() - from);
    if target.starts_with('/') {
        return Some((0..path_end(0), None));
    }
    let scheme_len = if target.len() > 7 && target[..7].eq_ignore_ascii_case("http://") {
        7
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case("https://") {
        8
    } else {
        return None;
    };
    let rest = &target[scheme_len..];
    let auth_len = rest.find(['/', '?']).unwrap_or(rest.len());
    if auth_len == 0 {
        return None;
    }
    let authority = scheme_len..scheme_len + auth_len;
    let path_start = scheme_len + auth_len;
    // `http://host` and `http://host?q` have an empty path, read as "/".
    Some((path_start..path_end(path_start), Some(authority)))
}

/// The reading side of a client connection: what has been read and not
/// used yet, and the framing of the body being read.
pub struct ConnReader {
    pub io: OwnedReadHalf,
    pub buf: BytesMut,
    pub framing: Framing,
    /// The peer closed its side.
    pub eof: bool,
    /// The body could not be read to its end; the connection must close.
    pub failed: bool,
}

impl ConnReader {
    pub fn new(io: OwnedReadHalf) -> ConnReader {
        ConnReader {
            io,
            buf: BytesMut::with_capacity(4096),
            framing: Framing::DONE,
            eof: false,
            failed: false,
        }
    }

    /// Reads more into the buffer; `Ready(Ok(false))` at end of stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
            Poll::Ready(Ok(0)) => {
                self.eof = true;
                Poll::Ready(Ok(false))
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(true)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if self.failed {
            return Poll::Ready(Some(Err(invalid("the request body could not be read"))));
        }
        loop {
            match decode(&mut self.buf, &mut self.framing) {
                Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(d))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if self.eof {
                if self.framing == Framing::UntilClose {
                    self.framing = Framing::DONE;
                    return Poll::Ready(None);
                }
                self.failed = true;
                return Poll::Ready(Some(Err(invalid(
                    "the client closed before the end of the body",
                ))));
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// See `Payload::health`.
pub struct BodyHealth(Rc<RefCell<ConnReader>>);

impl BodyHealth {
    pub fn failed(&self) -> bool {
        self.0.borrow().failed
    }
}

/// The body of the request being handled, as a stream of chunks.
pub struct Payload {
    conn: Rc<RefCell<ConnReader>>,
}

impl Payload {
    pub fn new(conn: Rc<RefCell<ConnReader>>) -> Payload {
        Payload { conn }
    }

    /// A handle that tells, after the body was handed away, whether it
    /// could not be read (malformed chunks, a client gone mid-body).
    pub fn health(&self) -> BodyHealth {
        BodyHealth(self.conn.clone())
    }

    /// Turns the rest of the connection into this body: after a protocol
    /// switch every byte the client sends belongs to the tunnel.
    pub fn into_tunnel(self) -> Payload {
        {
            let mut c = self.conn.borrow_mut();
            if c.framing.is_done() {
                c.framing = Framing::UntilClose;
            }
        }
        self
    }
}

impl Stream for Payload {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.conn.borrow_mut().poll_body(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    struct Head {
        request: Request,
        framing: Framing,
        keep_alive: bool,
        expect_continue: bool,
    }

    /// Parses `s`, with a Host line added to HTTP/1.1 origin-form heads
    /// that have none.
    fn head(s: &str) -> Result<Option<Head>, HeadError> {
        let s = if s.contains("HTTP/1.1\r\n") && (s.starts_with("GET /") || s.starts_with("POST /"))
        {
            if s.to_ascii_lowercase().contains("\r\nhost:") {
                s.to_owned()
            } else {
                s.replacen("HTTP/1.1\r\n", "HTTP/1.1\r\nHost: h\r\n", 1)
            }
        } else {
            s.to_owned()
        };
        let bytes = Bytes::copy_from_slice(s.as_bytes());
        Ok(parse_head(&bytes)?.map(|p| Head {
            framing: p.framing,
            keep_alive: p.keep_alive,
            expect_continue: p.expect_continue,
            request: p.into_request(bytes.clone(), peer(), "127.0.0.1".into()),
        }))
    }

    #[test]
    fn targets_split_into_path_query_and_authority() {
        let p = head("GET /a/b?x=1&y HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(p.request.path(), "/a/b");
        assert_eq!(p.request.query(), Some("x=1&y"));
        assert_eq!(p.request.authority(), None);
        assert!(p.keep_alive);
        assert!(p.framing.is_done());

        let p = head("GET http://Example.com:8080/p?q HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(p.request.authority(), Some("Example.com:8080"));
        assert_eq!(p.request.path(), "/p");
        assert_eq!(p.request.query(), Some("q"));

        for bad in ["*", "example.com:443", "ftp://x/", "http:///x"] {
            let r = head(&format!("GET {bad} HTTP/1.1\r\n\r\n"));
            assert!(matches!(r, Err(HeadError::Bad(_))), "{bad}");
        }
    }

    #[test]
    fn framing_is_refused_when_ambiguous() {
        let bad = [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: \r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ];
        for h in bad {
            let r = head(&format!("POST / HTTP/1.1\r\n{h}\r\n"));
            assert!(matches!(r, Err(HeadError::Bad(_))), "{h:?}");
        }
        let r = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(matches!(r, Err(HeadError::UnsupportedCoding)));
        let r = head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(r, Err(HeadError::Bad(_))));

        let p = head("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(p.framing, Framing::Length(12));
        let p =
            head("POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(p.framing, Framing::Chunked(ChunkState::Size));
        assert!(p.expect_continue);
    }

    #[test]
    fn cookies_are_found_on_any_line() {
        let p = head("GET / HTTP/1.1\r\nCookie: a=1; b=\"2\"\r\nCookie: c=3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(p.request.cookie("a"), Some("1"));
        assert_eq!(p.request.cookie("b"), Some("2"));
        assert_eq!(p.request.cookie("c"), Some("3"));
        assert_eq!(p.request.cookie("d"), None);
        assert_eq!(p.request.headers().get_all("cookie").count(), 2);
        assert_eq!(p.request.header("COOKIE"), Some(&b"a=1; b=\"2\""[..]));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |s: &str| head(s).unwrap().unwrap().keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn host_is_required_once_in_http11() {
        let bad = |s: &str| parse_head(s.as_bytes()).err();
        assert!(bad("GET / HTTP/1.1\r\n\r\n").is_some());
        assert!(bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").is_some());
        assert!(bad("GET / HTTP/1.0\r\n\r\n").is_none());
        assert!(bad("GET http://a/ HTTP/1.1\r\n\r\n").is_none());
        assert!(bad("GET /#x HTTP/1.1\r\nHost: a\r\n\r\n").is_some());
        assert!(bad("GET /<x> HTTP/1.1\r\nHost: a\r\n\r\n").is_some());
        assert!(bad("get / HTTP/1.1\r\nHost: a\r\n\r\n").is_some());
    }

    #[test]
    fn incomplete_and_oversized_heads() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let r = head(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        assert!(matches!(r, Err(HeadError::TooLarge)));
    }
}
