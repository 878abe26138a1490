//! The proxy listener's HTTP/1.1 server.
//!
//! Each worker is a thread with its own single-threaded runtime, accepting
//! from the shared listening socket. A connection is one task: read a
//! head, hand the request to the proxy, write the answer — head and the
//! first piece of body in one write — and go round again while the client
//! keeps the connection. The request body is read only as the forwarder
//! pulls it (`request::Payload`), so it streams to the upstream.
//!
//! This replaced actix-web's server on the proxy side (the Admin API keeps
//! it): per request, its dispatcher, service stack and response pooling
//! cost more CPU than the rest of the proxy together (see README,
//! Performance).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::h1::push_field;
use super::request::{parse_head, ConnReader, HeadError, Parsed, Payload};
use super::{headers, Clients, ProxyState, Reply};

/// Largest request head: the header limits of the proxy (32 KiB of names
/// and values) plus the request line and separators.
pub const MAX_HEAD: usize = super::MAX_HEADERS_TOTAL + 16 * 1024;
/// Time to receive a whole head once its first byte has arrived.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most unread request body discarded to keep a connection after an
/// answer that did not need the body (a refusal, say).
const DRAIN_LIMIT: u64 = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the client to take more of an answer (nginx's
/// `send_timeout`).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closing connection still reads and drops what the client sends.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_LIMIT: usize = 1024 * 1024;
/// Pieces of a streamed body smaller than this are copied into one write
/// with their framing; larger ones are written as they are.
const COPY_LIMIT: usize = 16 * 1024;

/// Settings of the proxy listener.
#[derive(Clone)]
pub struct Settings {
    pub workers: usize,
    /// How long an idle client connection is kept.
    pub keep_alive: Duration,
    /// How long in-flight requests get to finish on shutdown.
    pub grace: Duration,
    /// Most open client connections per worker; beyond it the worker stops
    /// accepting until one closes.
    pub max_connections: usize,
}

/// Running workers; `stop` drains them.
pub struct Server {
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts the workers on an already bound, listening socket.
    pub fn start(
        listener: std::net::TcpListener,
        state: Arc<ProxyState>,
        settings: Settings,
    ) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::new();
        for i in 0..settings.workers.max(1) {
            let listener = listener.try_clone()?;
            let state = state.clone();
            let settings = settings.clone();
            let stopped = stopped.clone();
            let handle = std::thread::Builder::new()
                .name(format!("portcullis-proxy-{i}"))
                .spawn(move || worker(listener, state, settings, stopped))?;
            workers.push(handle);
        }
        Ok(Server { stop, workers })
    }

    /// Stops accepting, lets requests in flight finish (up to the grace
    /// period) and closes idle connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
    }
}

/// What a worker's connections share.
struct Worker {
    state: Arc<ProxyState>,
    clients: Clients,
    settings: Settings,
    stopped: watch::Receiver<bool>,
    /// Open connections, to know when a drain is complete.
    open: Cell<usize>,
    idle: tokio::sync::Notify,
    /// Woken when a connection closes (accepting waits for it at the cap).
    freed: tokio::sync::Notify,
}

fn worker(
    listener: std::net::TcpListener,
    state: Arc<ProxyState>,
    settings: Settings,
    mut stopped: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a proxy worker");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a proxy worker");
                return;
            }
        };
        let grace = settings.grace;
        let w = Rc::new(Worker {
            state,
            clients: Clients::new(),
            settings,
            stopped: stopped.clone(),
            open: Cell::new(0),
            idle: tokio::sync::Notify::new(),
            freed: tokio::sync::Notify::new(),
        });
        let max = w.settings.max_connections.max(1);
        let mut at_cap_logged = false;
        loop {
            tokio::select! {
                () = w.freed.notified(), if w.open.get() >= max => {}
                accepted = listener.accept(), if w.open.get() < max => match accepted {
                    Ok((stream, peer)) => {
                        let w = w.clone();
                        w.open.set(w.open.get() + 1);
                        if w.open.get() >= max && !at_cap_logged {
                            tracing::warn!(connections = max, "connection limit reached; not accepting until one closes");
                        }
                        at_cap_logged = w.open.get() >= max;
                        tokio::task::spawn_local(async move {
                            connection(stream, peer, &w).await;
                            w.open.set(w.open.get() - 1);
                            w.freed.notify_one();
                            if w.open.get() == 0 {
                                w.idle.notify_waiters();
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off a little.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
        drop(listener);
        let drained = async {
            while w.open.get() > 0 {
                let notified = w.idle.notified();
                if w.open.get() == 0 {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                connections = w.open.get(),
                "shutdown: requests still in flight after the grace period"
            );
        }
    });
}

/// Waits for and parses the heads of one connection's requests.
///
/// One timer per connection, armed lazily: it moves only when it would
/// fire too late, and fires at most once per keep-alive period on a busy
/// connection (re-arming on every request costs a timer-wheel insertion
/// and removal each time).
struct Heads {
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    keep_alive: Duration,
    /// When the last answer was sent (or the connection opened).
    last_active: Instant,
    /// When the head being received must be complete.
    head_deadline: Option<Instant>,
    /// Bytes of the buffered head already looked at.
    scanned: usize,
    /// Requests answered on this connection.
    answered: u64,
}

impl Heads {
    fn new(keep_alive: Duration) -> Heads {
        let now = Instant::now();
        Heads {
            timer: Box::pin(tokio::time::sleep_until(now + HEAD_TIMEOUT)),
            keep_alive,
            last_active: now,
            head_deadline: None,
            scanned: 0,
            answered: 0,
        }
    }

    /// An answer was sent: the wait for the next head starts now.
    fn served(&mut self) {
        self.last_active = Instant::now();
        self.head_deadline = None;
        self.answered += 1;
    }

    /// The next complete head, or `None` when the connection is to close:
    /// the client closed or sent a head that was refused (and answered),
    /// a time limit passed, or the server is stopping while the connection
    /// is idle.
    async fn next<F: std::future::Future>(
        &mut self,
        reader: &Rc<RefCell<ConnReader>>,
        wr: &mut OwnedWriteHalf,
        mut stop: std::pin::Pin<&mut F>,
    ) -> Option<Parsed> {
        loop {
            // Parse again only when a line ended since the last try: a
            // head sent a byte at a time is not re-parsed for every byte.
            let (result, empty, eof, len) = {
                let r = reader.borrow();
                let fresh = &r.buf[self.scanned.min(r.buf.len())..];
                let worth = self.scanned == 0 || fresh.contains(&b'\n');
                self.scanned = r.buf.len();
                let result = if worth { parse_head(&r.buf) } else { Ok(None) };
                (result, r.buf.is_empty(), r.eof, r.buf.len())
            };
            match result {
                Ok(Some(p)) if p.len <= MAX_HEAD => {
                    self.scanned = 0;
                    return Some(p);
                }
                Ok(Some(_)) => {
                    let _ = refuse(wr, &HeadError::TooLarge).await;
                    return None;
                }
                Ok(None) if eof => return None,
                Ok(None) if len > MAX_HEAD => {
                    let _ = refuse(wr, &HeadError::TooLarge).await;
                    return None;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = refuse(wr, &e).await;
                    return None;
                }
            }
            // A started head has HEAD_TIMEOUT in all, however it trickles;
            // a new connection has it for its first request, a kept one
            // the keep-alive time.
            if empty {
                self.head_deadline = None;
            } else if self.head_deadline.is_none() {
                self.head_deadline = Some(Instant::now() + HEAD_TIMEOUT);
            }
            let idle = if self.answered == 0 {
                HEAD_TIMEOUT
            } else {
                self.keep_alive
            };
            let deadline = self.head_deadline.unwrap_or(self.last_active + idle);
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            let fill = std::future::poll_fn(|cx| reader.borrow_mut().poll_fill(cx));
            tokio::select! {
                biased;
                r = fill => if r.is_err() {
                    return None;
                },
                () = self.timer.as_mut() => {
                    if Instant::now() < deadline {
                        // Armed for an earlier deadline than this one.
                        self.timer.as_mut().reset(deadline);
                        continue;
                    }
                    if !empty {
                        let _ = write_simple(wr, StatusCode::REQUEST_TIMEOUT, "request head timed out").await;
                    }
                    return None;
                },
                _ = stop.as_mut(), if empty => return None,
            }
        }
    }
}

/// Serves one client connection until it closes, idles out or the server
/// stops.
async fn connection(stream: TcpStream, peer: SocketAddr, w: &Worker) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let reader = Rc::new(RefCell::new(ConnReader::new(rd)));
    let mut out = Vec::with_capacity(4096);
    let peer_ip: Rc<str> = peer.ip().to_string().into();
    let mut stopped = w.stopped.clone();
    let stop = stopped.wait_for(|s| *s);
    tokio::pin!(stop);
    let mut heads = Heads::new(w.settings.keep_alive);
    loop {
        let Some(parsed) = heads.next(&reader, &mut wr, stop.as_mut()).await else {
            return;
        };
        let head = {
            let mut r = reader.borrow_mut();
            r.framing = parsed.framing;
            r.buf.split_to(parsed.len).freeze()
        };
        if parsed.expect_continue
            && send(&mut wr, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let keep_alive = parsed.keep_alive;
        let req = parsed.into_request(head, peer, peer_ip.clone());
        let payload = Payload::new(reader.clone());
        let reply = super::handle(&req, payload, &w.state, &w.clients).await;
        let stopping = *w.stopped.borrow();
        // An unread body longer than the drain allows will close the
        // connection: say so in the answer.
        let too_much_unread = matches!(
            reader.borrow().framing,
            super::framing::Framing::Length(left) if left > DRAIN_LIMIT
        );
        let message = Message {
            head_only: req.method() == actix_web::http::Method::HEAD,
            http10: req.is_http10(),
            keep_alive: keep_alive && !stopping && !too_much_unread,
        };
        match write_reply(&mut wr, &mut out, reply, message).await {
            Ok(true) => {}
            Ok(false) => {
                linger(&reader, &mut wr).await;
                return;
            }
            Err(_) => return,
        }
        heads.served();
        // A body nobody read (an answer that did not need it) is skipped
        // so the connection can be kept; a large or slow one closes it.
        let unread = {
            let r = reader.borrow();
            r.failed || !r.framing.is_done()
        };
        if unread && !drain(&reader).await {
            linger(&reader, &mut wr).await;
            return;
        }
    }
}

/// Closes our side and reads what the client still sends for a moment,
/// so that unread bytes do not make the kernel reset the connection and
/// take the answer just written with it (nginx's lingering close).
async fn linger(reader: &Rc<RefCell<ConnReader>>, wr: &mut OwnedWriteHalf) {
    let _ = wr.shutdown().await;
    // Only unread bytes can turn the close into a reset: with the body read
    // and nothing pipelined there is nothing to wait for. A tunnel's client
    // side belongs to the tunnel.
    {
        let r = reader.borrow();
        let nothing_unread = r.framing.is_done() && r.buf.is_empty() && !r.failed;
        if nothing_unread || r.framing == super::framing::Framing::UntilClose {
            return;
        }
    }
    let discard = async {
        let mut dropped = 0;
        while dropped < LINGER_LIMIT {
            let more = std::future::poll_fn(|cx| {
                let mut r = reader.borrow_mut();
                dropped += r.buf.len();
                r.buf.clear();
                r.poll_fill(cx)
            })
            .await;
            if !matches!(more, Ok(true)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

/// Reads and drops the rest of the current body; whether it ended cleanly.
async fn drain(reader: &Rc<RefCell<ConnReader>>) -> bool {
    use futures_util::StreamExt;
    let mut body = Payload::new(reader.clone());
    let mut seen = 0u64;
    let all = async {
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                return false;
            };
            seen += chunk.len() as u64;
            if seen > DRAIN_LIMIT {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, all)
        .await
        .unwrap_or(false)
}

/// Answers a request head that cannot be served; the connection closes.
async fn refuse(wr: &mut OwnedWriteHalf, e: &HeadError) -> std::io::Result<()> {
    let (status, msg) = match e {
        HeadError::Bad(msg) => (StatusCode::BAD_REQUEST, *msg),
        HeadError::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large",
        ),
        HeadError::UnsupportedCoding => {
            (StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding")
        }
    };
    write_simple(wr, status, msg).await
}

async fn write_simple(
    wr: &mut OwnedWriteHalf,
    status: StatusCode,
    msg: &str,
) -> std::io::Result<()> {
    let body = format!("{}\n", serde_json::json!({ "error_msg": msg }));
    let mut out = Vec::with_capacity(256);
    status_line(&mut out, status);
    out.extend_from_slice(b"content-type: application/json\r\n");
    push_field(&mut out, b"date", date().as_bytes());
    out.extend_from_slice(b"connection: close\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    send(wr, &out).await?;
    wr.shutdown().await
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How the answer's body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes: HTTP/1.0 clients, tunnels.
    Close,
}

/// What the request says about how to answer it.
#[derive(Clone, Copy)]
struct Message {
    head_only: bool,
    http10: bool,
    keep_alive: bool,
}

/// The body framing for an answer with `status`, whose length is `length`
/// when known in advance.
fn out_framing(status: StatusCode, length: Option<u64>, http10: bool) -> Out {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        Out::Close
    } else if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Out::None
    } else {
        match length {
            Some(n) => Out::Length(n),
            None if http10 => Out::Close,
            None => Out::Chunked,
        }
    }
}

/// Headers the server writes itself, never copied from an answer.
fn is_framing_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"connection")
        || name.eq_ignore_ascii_case(b"keep-alive")
}

/// Ends a head: framing, `Date`, `Connection`, blank line. Returns whether
/// the connection may be kept.
fn finish_head(out: &mut Vec<u8>, framing: Out, m: Message, has_date: bool, tunnel: bool) -> bool {
    let keep_alive = m.keep_alive && framing != Out::Close;
    if !has_date {
        push_field(out, b"date", date().as_bytes());
    }
    match framing {
        Out::Length(n) => {
            let mut digits = itoa::Buffer::new();
            push_field(out, b"content-length", digits.format(n).as_bytes());
        }
        Out::Chunked if !m.head_only => push_field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if !tunnel {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if m.http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    keep_alive
}

/// Writes an answer; whether the connection may serve another request.
async fn write_reply(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    reply: Reply,
    m: Message,
) -> std::io::Result<bool> {
    out.clear();
    match reply {
        Reply::Upstream(u) => {
            let status = u.answer.status;
            let framing = out_framing(status, u.answer.length, m.http10);
            status_line(out, status);
            let mut has_date = false;
            headers::client_response_fields(u.answer.fields(), |name, value| {
                let replaced = !u.extra.is_empty()
                    && name != b"set-cookie"
                    && name != b"vary"
                    && u.extra
                        .contains_key(std::str::from_utf8(name).unwrap_or(""));
                if !is_framing_header(name) && !replaced {
                    has_date |= name == b"date";
                    push_field(out, name, value);
                }
            });
            for (name, value) in &u.extra {
                push_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
            let keep_alive = finish_head(out, framing, m, has_date, false);
            let mut body = u.answer.body;
            if m.head_only || framing == Out::None {
                // The (empty) body's end returns the upstream connection
                // to the pool.
                let _ =
                    futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut body));
                send(wr, out).await?;
                return Ok(keep_alive);
            }
            let body_ok = write_body(wr, out, body, framing, Some(u.idle)).await?;
            Ok(keep_alive && body_ok)
        }
        Reply::Response(resp) => {
            let (resp, body) = resp.into_parts();
            let status = resp.status();
            let tunnel = status == StatusCode::SWITCHING_PROTOCOLS;
            let length = match body.size() {
                BodySize::None => Some(0),
                BodySize::Sized(n) => Some(n),
                // A streamed answer with the upstream's length keeps it.
                BodySize::Stream => declared_length(resp.headers()),
            };
            let framing = out_framing(status, length, m.http10);
            status_line(out, status);
            let mut has_date = false;
            for (name, value) in resp.headers() {
                if !tunnel && is_framing_header(name.as_str().as_bytes()) {
                    continue;
                }
                has_date |= name == header::DATE;
                push_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
            let keep_alive = finish_head(out, framing, m, has_date, tunnel);
            if m.head_only || framing == Out::None {
                send(wr, out).await?;
                return Ok(keep_alive);
            }
            // The whole body at hand: one write.
            let mut body = match body.try_into_bytes() {
                Ok(bytes) => {
                    out.extend_from_slice(&bytes);
                    send(wr, out).await?;
                    return Ok(keep_alive && bytes.len() as u64 == length.unwrap_or(0));
                }
                Err(body) => body,
            };
            let stream = futures_util::stream::poll_fn(move |cx| {
                std::pin::Pin::new(&mut body).poll_next(cx)
            });
            let body_ok = write_body(wr, out, stream, framing, None).await?;
            Ok(keep_alive && body_ok)
        }
    }
}

/// Writes a body after the head in `out`: the head goes with the first
/// piece when that is already there, else at once (the client sees the
/// head of a slow answer). `idle` bounds the wait for each piece. Whether
/// the body ended as announced.
async fn write_body<S, E>(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    body: S,
    framing: Out,
    idle: Option<Duration>,
) -> std::io::Result<bool>
where
    S: futures_util::Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    use futures_util::{FutureExt, StreamExt};
    let mut body = std::pin::pin!(body);
    let mut written = 0u64;
    loop {
        let chunk = match body.next().now_or_never() {
            Some(c) => c,
            None => {
                if !out.is_empty() {
                    send(wr, out).await?;
                    out.clear();
                }
                match idle {
                    Some(idle) => match tokio::time::timeout(idle, body.next()).await {
                        Ok(c) => c,
                        Err(_) => {
                            tracing::warn!("upstream answer stalled; closing the connection");
                            return Ok(false);
                        }
                    },
                    None => body.next().await,
                }
            }
        };
        let chunk = match chunk {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answer body ended early");
                if !out.is_empty() {
                    send(wr, out).await?;
                }
                return Ok(false);
            }
            None => {
                if framing == Out::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                if !out.is_empty() {
                    send(wr, out).await?;
                    out.clear();
                }
                if framing == Out::Close {
                    let _ = wr.shutdown().await;
                }
                return Ok(match framing {
                    Out::Length(n) => written == n,
                    _ => true,
                });
            }
        };
        if chunk.is_empty() {
            continue;
        }
        written += chunk.len() as u64;
        if let Out::Length(n) = framing {
            if written > n {
                // More than announced: never let it spill into the next
                // answer on this connection.
                return Ok(false);
            }
        }
        if framing == Out::Chunked {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        }
        if chunk.len() <= COPY_LIMIT {
            out.extend_from_slice(&chunk);
        } else {
            send(wr, out).await?;
            out.clear();
            send(wr, &chunk).await?;
        }
        if framing == Out::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        send(wr, out).await?;
        out.clear();
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::CONTENT_LENGTH)?.to_str().ok()?;
    v.trim().parse().ok()
}

/// The `Date` value, formatted once per second per worker.
fn date() -> Rc<str> {
    thread_local! {
        static CACHED: RefCell<(Instant, Rc<str>)> = RefCell::new((
            Instant::now(),
            httpdate::fmt_http_date(std::time::SystemTime::now()).into(),
        ));
    }
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0.elapsed() >= Duration::from_millis(500) {
            *c = (
                Instant::now(),
                httpdate::fmt_http_date(std::time::SystemTime::now()).into(),
            );
        }
        c.1.clone()
    })
}

/// Writes to the client; a client that stops reading for `SEND_TIMEOUT`
/// loses its connection (and frees the upstream one).
async fn send(wr: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    // Usually the socket takes it all at once, and no timer is needed.
    let written = match wr.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == bytes.len() {
        return Ok(());
    }
    match tokio::time::timeout(SEND_TIMEOUT, wr.write_all(&bytes[written..])).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
    }
}
