//! A lean HTTP/1.1 client for plain-http upstreams and requests without a
//! body, the common case of a proxied API call.
//!
//! awc builds a fresh codec for every request, and with it a date-service
//! task and a timer (an extra task, timer and eventfd write per request);
//! this client writes the request head straight to a pooled connection and
//! parses the answer with `httparse`. Requests with a body and https
//! upstreams still go through awc.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::http::{Method, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framing::{decode, invalid, ChunkState, Framing, Step};

/// Idle connections older than this are not reused: upstreams close idle
/// keep-alive connections (nginx after 60 s by default).
const IDLE_MAX_AGE: Duration = Duration::from_secs(30);
/// Most idle connections kept per upstream node, per worker.
const MAX_IDLE_PER_NODE: usize = 256;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// Why a request failed, and whether another node may be tried.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("the upstream closed the connection or sent an invalid answer: {0}")]
    Broken(String),
    #[error("the upstream did not answer in time")]
    ReadTimeout,
}

impl H1Error {
    /// The gateway's answer for this failure, and whether another node
    /// may be tried (only when nothing reached the upstream).
    pub fn outcome(&self) -> (super::ProxyError, bool) {
        use super::ProxyError as P;
        match self {
            H1Error::Connect(_) => (P::UpstreamUnreachable, true),
            H1Error::ConnectTimeout => (P::UpstreamTimedOut, true),
            H1Error::Broken(_) => (P::UpstreamBroken, false),
            H1Error::ReadTimeout => (P::UpstreamTimedOut, false),
        }
    }
}

/// Idle keep-alive connections of one worker, by node.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<String, Vec<(Conn, Instant)>>>,
}

impl Pool {
    fn take(&self, node: &str) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(node)?;
        while let Some((conn, since)) = list.pop() {
            // Anything readable on an idle connection — bytes nobody asked
            // for (a body after a HEAD answer, say) or the upstream closing
            // — means it cannot carry another exchange: those bytes would
            // be read as the next client's answer.
            let readable = futures_util::FutureExt::now_or_never(
                conn.stream.ready(tokio::io::Interest::READABLE),
            )
            .is_some();
            if since.elapsed() < IDLE_MAX_AGE && !readable {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        match idle.get_mut(&*conn.node) {
            Some(list) if list.len() < MAX_IDLE_PER_NODE => list.push((conn, Instant::now())),
            Some(_) => {}
            None => {
                idle.insert(conn.node.to_string(), vec![(conn, Instant::now())]);
            }
        }
    }
}

type Span = std::ops::Range<usize>;

/// A connection to an upstream node, with its timer for the read timeout.
///
/// The timer is armed lazily, as the client side's: it moves only when it
/// would fire too late, so a busy pooled connection costs no timer-wheel
/// insertion and removal per request; when it fires early, the real
/// deadline is checked and it is armed again.
struct Conn {
    stream: TcpStream,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The node it goes to, the key of its pool list.
    node: Rc<str>,
    /// The read buffer, kept with the connection so its memory is reused.
    buf: BytesMut,
}

impl Conn {
    fn new(stream: TcpStream, node: &str, deadline: tokio::time::Instant) -> Conn {
        Conn {
            stream,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            node: node.into(),
            buf: BytesMut::new(),
        }
    }

    /// Reads more of the answer, or fails once `deadline` has passed.
    async fn read_by(
        &mut self,
        buf: &mut BytesMut,
        deadline: tokio::time::Instant,
    ) -> Result<usize, ReadError> {
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            tokio::select! {
                biased;
                r = self.stream.read_buf(buf) => return r.map_err(ReadError::Io),
                () = self.timer.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ReadError::TimedOut);
                    }
                    self.timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

enum ReadError {
    Io(std::io::Error),
    TimedOut,
}

/// An upstream answer: status, the head as received, and the body as a
/// stream.
pub struct Answer {
    pub status: StatusCode,
    head: Bytes,
    fields: Vec<(Span, Span)>,
    /// The answer's `Content-Length`, when it has one.
    pub length: Option<u64>,
    pub body: Body,
}

impl Answer {
    /// The header fields as received, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields
            .iter()
            .map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }
}

/// Appends one `name: value` header line.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes HTTP/1.1 request heads: request line, header lines (as the
/// header rules hand them over, names in lower case), blank line.
pub struct HeadWriter(pub Vec<u8>);

impl HeadWriter {
    /// Starts a head for `path` and, when there is one, `query`, with room
    /// for about `size` bytes.
    pub fn new(method: &Method, path: &str, query: Option<&str>, size: usize) -> HeadWriter {
        let mut head = Vec::with_capacity(size);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        if let Some(q) = query {
            head.push(b'?');
            head.extend_from_slice(q.as_bytes());
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter(head)
    }

    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        push_field(&mut self.0, name, value);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// Sends a request without a body to `node` and reads the answer's head.
pub async fn send(
    pool: &Rc<Pool>,
    node: &str,
    method: &Method,
    head: &[u8],
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Answer, H1Error> {
    // A pooled connection may have been closed by the upstream meanwhile:
    // when it fails before any byte of an answer, try a fresh one.
    if let Some(conn) = pool.take(node) {
        match exchange(conn, head, method, read_timeout).await {
            Ok(answer) => return Ok(answer.into_answer(Some(pool.clone()))),
            Err(Exchange::Stale) => {}
            Err(Exchange::Failed(e)) => return Err(e),
        }
    }
    let parsed = fresh_exchange(node, method, head, connect_timeout, read_timeout).await?;
    Ok(parsed.into_answer(Some(pool.clone())))
}

/// One exchange over a new connection to `node`.
async fn fresh_exchange(
    node: &str,
    method: &Method,
    head: &[u8],
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Parsed, H1Error> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(node))
        .await
        .map_err(|_| H1Error::ConnectTimeout)?
        .map_err(H1Error::Connect)?;
    let _ = stream.set_nodelay(true);
    let conn = Conn::new(stream, node, tokio::time::Instant::now() + read_timeout);
    match exchange(conn, head, method, read_timeout).await {
        Ok(parsed) => Ok(parsed),
        Err(Exchange::Stale) => Err(H1Error::Broken("closed before answering".into())),
        Err(Exchange::Failed(e)) => Err(e),
    }
}

/// What an upgrade request got back.
pub enum Upgrade {
    /// `101 Switching Protocols`: the connection now belongs to the new
    /// protocol; `early` holds bytes of it that came with the answer.
    Switched {
        answer: Answer,
        stream: TcpStream,
        early: BytesMut,
    },
    /// Any other answer, relayed as usual; the connection is not pooled.
    Refused(Answer),
}

/// Sends an upgrade request over a fresh connection to `node` and reads
/// the answer's head.
pub async fn open_upgrade(
    node: &str,
    method: &Method,
    head: &[u8],
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Upgrade, H1Error> {
    let parsed = fresh_exchange(node, method, head, connect_timeout, read_timeout).await?;
    if parsed.status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Upgrade::Refused(parsed.into_answer(None)));
    }
    let mut answer = parsed.into_answer(None);
    let stream = answer.body.conn.take().map(|c| c.stream);
    let early = std::mem::take(&mut answer.body.buf);
    match stream {
        Some(stream) => Ok(Upgrade::Switched {
            answer,
            stream,
            early,
        }),
        None => Err(H1Error::Broken("connection gone".into())),
    }
}

enum Exchange {
    /// Nothing came back: the connection was dead before we used it.
    Stale,
    Failed(H1Error),
}

struct Parsed {
    status: StatusCode,
    head: Bytes,
    fields: Vec<(Span, Span)>,
    length: Option<u64>,
    framing: Framing,
    reusable: bool,
    conn: Conn,
    rest: BytesMut,
}

impl Parsed {
    fn into_answer(self, pool: Option<Rc<Pool>>) -> Answer {
        Answer {
            status: self.status,
            head: self.head,
            fields: self.fields,
            length: self.length,
            body: Body {
                conn: Some(self.conn),
                buf: self.rest,
                framing: self.framing,
                reusable: self.reusable,
                pool,
            },
        }
    }
}

async fn exchange(
    mut conn: Conn,
    head: &[u8],
    method: &Method,
    read_timeout: Duration,
) -> Result<Parsed, Exchange> {
    let broken = |e: String| Exchange::Failed(H1Error::Broken(e));
    if conn.stream.write_all(head).await.is_err() {
        return Err(Exchange::Stale);
    }
    // The read timeout runs from the moment the request is sent.
    let deadline = tokio::time::Instant::now() + read_timeout;
    let mut buf = std::mem::take(&mut conn.buf);
    buf.clear();
    buf.reserve(4096);
    loop {
        // Read until a complete head is in the buffer.
        let n = match conn.read_by(&mut buf, deadline).await {
            Ok(n) => n,
            Err(ReadError::TimedOut) => return Err(Exchange::Failed(H1Error::ReadTimeout)),
            Err(ReadError::Io(_)) if buf.is_empty() => return Err(Exchange::Stale),
            Err(ReadError::Io(e)) => return Err(broken(e.to_string())),
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                Exchange::Stale
            } else {
                broken("closed in the middle of the answer's head".into())
            });
        }
        loop {
            let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut raw);
            let len = match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => {
                    if buf.len() > MAX_HEAD {
                        return Err(broken("answer head too large".into()));
                    }
                    break;
                }
                Err(e) => return Err(broken(format!("invalid answer head: {e}"))),
            };
            let code = resp.code.unwrap_or(0);
            let status = StatusCode::from_u16(code).map_err(|_| broken("invalid status".into()))?;
            // Interim answers (100 Continue and the like) are skipped,
            // except 101, which the caller refuses.
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                buf.advance(len);
                continue;
            }
            let http10 = resp.version == Some(0);
            let mut fields = Vec::with_capacity(resp.headers.len());
            let mut length = None;
            let mut chunked = false;
            let mut close = http10;
            let base = buf.as_ptr() as usize;
            for h in resp.headers.iter() {
                let name = h.name.as_bytes();
                if name.eq_ignore_ascii_case(b"content-length") {
                    let n = std::str::from_utf8(h.value)
                        .ok()
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| broken("invalid content-length".into()))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(broken("conflicting content-length".into()));
                    }
                    length = Some(n);
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    chunked = h.value.eq_ignore_ascii_case(b"chunked");
                    if !chunked {
                        return Err(broken("unsupported transfer-encoding".into()));
                    }
                } else if name.eq_ignore_ascii_case(b"connection") {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if v.split(',').any(|t| t.trim() == "close") {
                        close = true;
                    } else if http10 && v.split(',').any(|t| t.trim() == "keep-alive") {
                        close = false;
                    }
                }
                let at = |part: &[u8]| {
                    let start = part.as_ptr() as usize - base;
                    start..start + part.len()
                };
                fields.push((at(name), at(h.value)));
            }
            if chunked {
                // A chunked answer's length is the chunks' (RFC 9112 §6.3).
                length = None;
            }
            let no_body = *method == Method::HEAD
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
                || status == StatusCode::SWITCHING_PROTOCOLS;
            let framing = if no_body {
                Framing::Length(0)
            } else if chunked {
                Framing::Chunked(ChunkState::Size)
            } else if let Some(n) = length {
                Framing::Length(n)
            } else {
                close = true;
                Framing::UntilClose
            };
            let head = buf.split_to(len).freeze();
            return Ok(Parsed {
                status,
                head,
                fields,
                length,
                framing,
                // After an answer without a body (HEAD, 204, 304, 101) a
                // misbehaving upstream may still send one, and bytes that
                // arrive after the connection was reused would be read as
                // another client's answer: such connections are not pooled.
                reusable: !close && !no_body,
                conn,
                rest: buf,
            });
        }
    }
}

/// The answer's body; the connection goes back to the pool once it has
/// been read to its end.
pub struct Body {
    conn: Option<Conn>,
    /// Bytes read but not yet handed out.
    buf: BytesMut,
    framing: Framing,
    reusable: bool,
    /// Where the connection goes back when the body ends cleanly; `None`
    /// for a connection that is never pooled (an upgrade request's).
    pool: Option<Rc<Pool>>,
}

impl Stream for Body {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            match decode(&mut this.buf, &mut this.framing) {
                Ok(Step::Data(chunk)) => return Poll::Ready(Some(Ok(chunk))),
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 1024 {
                this.buf.reserve(READ_CHUNK);
            }
            let read = tokio_util::io::poll_read_buf(
                std::pin::Pin::new(&mut conn.stream),
                cx,
                &mut this.buf,
            );
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    if this.framing == Framing::UntilClose {
                        this.framing = Framing::DONE;
                        return Poll::Ready(None);
                    }
                    let e = invalid("the upstream closed before the end of the body");
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl Body {
    /// The body was read to its end: keep the connection if it is clean.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let (Some(pool), true) = (&self.pool, self.reusable && self.buf.is_empty()) {
                let mut conn = conn;
                conn.buf = std::mem::take(&mut self.buf);
                pool.give_back(conn);
            }
        }
    }
}
