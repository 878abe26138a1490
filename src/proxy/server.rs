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
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::request::{parse_head, ConnReader, HeadError, Payload};
use super::{Clients, ProxyState};

/// Largest request head: the header limits of the proxy (32 KiB of names
/// and values) plus the request line and separators.
pub const MAX_HEAD: usize = super::MAX_HEADERS_TOTAL + 16 * 1024;
/// Time to receive a whole head once its first byte has arrived.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most unread request body discarded to keep a connection after an
/// answer that did not need the body (a refusal, say).
const DRAIN_LIMIT: u64 = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
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
        });
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let w = w.clone();
                        w.open.set(w.open.get() + 1);
                        tokio::task::spawn_local(async move {
                            connection(stream, peer, &w).await;
                            w.open.set(w.open.get() - 1);
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

/// Serves one client connection until it closes, idles out or the server
/// stops.
async fn connection(stream: TcpStream, peer: SocketAddr, w: &Worker) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let reader = Rc::new(RefCell::new(ConnReader::new(rd)));
    let mut out = Vec::with_capacity(4096);
    let mut stopped = w.stopped.clone();
    loop {
        // The next head: idle time is bounded by keep-alive, a started
        // head by HEAD_TIMEOUT, and a stopping server closes idle
        // connections.
        let parsed = loop {
            let result = {
                let r = reader.borrow();
                parse_head(&r.buf, peer)
            };
            match result {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => {
                    let _ = refuse(&mut wr, &e).await;
                    return;
                }
            }
            let (empty, eof, len) = {
                let r = reader.borrow();
                (r.buf.is_empty(), r.eof, r.buf.len())
            };
            if eof {
                return;
            }
            if len > MAX_HEAD {
                let _ = refuse(&mut wr, &HeadError::TooLarge).await;
                return;
            }
            let wait = if empty {
                w.settings.keep_alive
            } else {
                HEAD_TIMEOUT
            };
            let fill = std::future::poll_fn(|cx| reader.borrow_mut().poll_fill(cx));
            tokio::select! {
                r = tokio::time::timeout(wait, fill) => match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        if !empty {
                            let _ = write_simple(&mut wr, StatusCode::REQUEST_TIMEOUT, "request head timed out").await;
                        }
                        return;
                    }
                },
                _ = stopped.wait_for(|s| *s), if empty => return,
            }
        };
        {
            let mut r = reader.borrow_mut();
            let _ = r.buf.split_to(parsed.len);
            r.framing = parsed.framing;
        }
        if parsed.expect_continue
            && wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let req = parsed.request;
        let payload = Payload::new(reader.clone());
        let resp = super::handle(&req, payload, &w.state, &w.clients).await;
        let stopping = *w.stopped.borrow();
        let keep_alive = parsed.keep_alive && !stopping;
        let head_only = req.method() == actix_web::http::Method::HEAD;
        match write_response(
            &mut wr,
            &mut out,
            resp,
            head_only,
            req.is_http10(),
            keep_alive,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        // A body nobody read (an answer that did not need it) is skipped
        // so the connection can be kept; a large or slow one closes it.
        let unread = {
            let r = reader.borrow();
            r.failed || !r.framing.is_done()
        };
        if unread && !drain(&reader).await {
            return;
        }
    }
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
    push_header(&mut out, b"date", date().as_bytes());
    out.extend_from_slice(b"connection: close\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    wr.write_all(&out).await?;
    wr.shutdown().await
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
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

/// Writes an answer; whether the connection may serve another request.
async fn write_response(
    wr: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    resp: HttpResponse,
    head_only: bool,
    http10: bool,
    mut keep_alive: bool,
) -> std::io::Result<bool> {
    let (resp, body) = resp.into_parts();
    let status = resp.status();
    let headers = resp.headers();
    let tunnel = status == StatusCode::SWITCHING_PROTOCOLS;
    let size = body.size();

    let framing = if tunnel {
        keep_alive = false;
        Out::Close
    } else if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Out::None
    } else {
        match size {
            BodySize::None => Out::Length(0),
            BodySize::Sized(n) => Out::Length(n),
            // A streamed answer with the upstream's length keeps it.
            BodySize::Stream => match declared_length(headers) {
                Some(n) => Out::Length(n),
                None if http10 => Out::Close,
                None => Out::Chunked,
            },
        }
    };
    if framing == Out::Close {
        keep_alive = false;
    }

    out.clear();
    status_line(out, status);
    let mut has_date = false;
    for (name, value) in headers {
        if !tunnel
            && (name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::CONNECTION
                || name == "keep-alive")
        {
            continue;
        }
        has_date |= name == header::DATE;
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        push_header(out, b"date", date().as_bytes());
    }
    match framing {
        Out::Length(n) => {
            let mut digits = itoa::Buffer::new();
            push_header(out, b"content-length", digits.format(n).as_bytes());
        }
        Out::Chunked if !head_only => push_header(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if !tunnel {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");

    if head_only || framing == Out::None {
        wr.write_all(out).await?;
        return Ok(keep_alive);
    }

    // The whole body at hand: one write.
    let body = match body.try_into_bytes() {
        Ok(bytes) => {
            out.extend_from_slice(&bytes);
            wr.write_all(out).await?;
            return Ok(keep_alive);
        }
        Err(body) => body,
    };

    // A stream: the head goes with the first piece when that is already
    // there, else at once (the client sees the head of a slow answer).
    let mut body = std::pin::pin!(body);
    let mut written = 0u64;
    let mut pending_head = true;
    loop {
        let next = std::future::poll_fn(|cx| body.as_mut().poll_next(cx));
        let chunk = if pending_head {
            match futures_util::FutureExt::now_or_never(next) {
                Some(c) => c,
                None => {
                    wr.write_all(out).await?;
                    out.clear();
                    pending_head = false;
                    std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await
                }
            }
        } else {
            next.await
        };
        let chunk: Option<Bytes> = match chunk {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answer body ended early");
                if pending_head {
                    wr.write_all(out).await?;
                }
                return Ok(false);
            }
            None => None,
        };
        let Some(chunk) = chunk else {
            if framing == Out::Chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            if !out.is_empty() {
                wr.write_all(out).await?;
                out.clear();
            }
            if let Out::Length(n) = framing {
                if written != n {
                    return Ok(false);
                }
            }
            if framing == Out::Close {
                let _ = wr.shutdown().await;
            }
            return Ok(keep_alive);
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
            wr.write_all(out).await?;
            out.clear();
            wr.write_all(&chunk).await?;
        }
        if framing == Out::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        wr.write_all(out).await?;
        out.clear();
        pending_head = false;
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
