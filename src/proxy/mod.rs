//! The data plane: canonicalise the path → match a route → (plugins) →
//! pick a node → forward with streamed bodies → stream the answer back.

pub mod balancer;
pub mod framing;
pub mod h1;
pub mod headers;
pub mod path;
pub mod request;
pub mod server;
pub mod websocket;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use ipnet::IpNet;

use crate::plugins::Ctx;
use crate::snapshot::{CompiledRoute, Snapshot, Target};
pub use request::{Payload, Request};

use balancer::{Balancer, PassHost};
pub use headers::IDENTITY_HEADERS;

/// What every proxy worker shares.
pub struct ProxyState {
    /// The live configuration, swapped by the reloader.
    pub live: Arc<ArcSwap<Snapshot>>,
    /// Peers whose forwarding headers are believed.
    pub trusted: Vec<IpNet>,
}

/// Why a request was not forwarded; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadPath(#[from] path::PathError),
    #[error("invalid Host header")]
    BadHost,
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("malformed request body")]
    BadBody,
    #[error("404 Route Not Found")]
    RouteNotFound,
    #[error("the route's service {0} does not exist")]
    ServiceMissing(String),
    #[error("the route's upstream {0} does not exist")]
    UpstreamMissing(String),
    #[error("missing upstream configuration in route or service")]
    NoUpstream,
    #[error("no valid upstream node")]
    NoNode,
    #[error("the route is unavailable: {0}")]
    PluginUnavailable(String),
    #[error("could not connect to the upstream")]
    UpstreamUnreachable,
    #[error("the upstream did not answer in time")]
    UpstreamTimedOut,
    #[error("the upstream answered with an invalid response")]
    UpstreamBroken,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::BadHost | ProxyError::BadBody => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::RouteNotFound | ProxyError::ServiceMissing(_) => StatusCode::NOT_FOUND,
            ProxyError::UpstreamMissing(_)
            | ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamBroken => StatusCode::BAD_GATEWAY,
            ProxyError::NoUpstream | ProxyError::NoNode | ProxyError::PluginUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamTimedOut => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn response(&self) -> HttpResponse {
        let mut body = serde_json::json!({ "error_msg": self.to_string() }).to_string();
        body.push('\n');
        HttpResponse::build(self.status())
            .content_type("application/json")
            .body(body)
    }
}

/// What the proxy answers a request with.
pub enum Reply {
    /// An answer made here, or relayed through awc.
    Response(HttpResponse),
    /// An upstream answer read by the lean client, relayed as received.
    Upstream(UpstreamReply),
}

/// An upstream answer to relay, with the plugins' response headers.
pub struct UpstreamReply {
    pub answer: h1::Answer,
    /// Headers plugins add to the answer: `Set-Cookie` and `Vary` are added
    /// to the upstream's, anything else replaces them.
    pub extra: header::HeaderMap,
    /// The longest pause allowed between two pieces of the body.
    pub idle: Duration,
}

/// Handles every request on the proxy listener.
pub async fn handle(
    req: &Request,
    payload: Payload,
    state: &ProxyState,
    clients: &Clients,
) -> Reply {
    match forward(req, payload, state, clients).await {
        Ok(reply) => reply,
        Err(e) => Reply::Response(e.response()),
    }
}

async fn forward(
    req: &Request,
    mut payload: Payload,
    state: &ProxyState,
    clients: &Clients,
) -> Result<Reply, ProxyError> {
    let peer: IpAddr = req.peer_addr().ip();

    // Oversized headers are refused before anything looks at them.
    if req.oversized() {
        return Err(ProxyError::HeadersTooLarge);
    }

    // Canonical path first: routing and every decision use it.
    let path = path::canonicalize(req.path())?;
    // An absolute-form target's authority wins over `Host` (RFC 9112 §3.2.2).
    let raw_host = match req.authority() {
        Some(a) => Some(a),
        None => req
            .header("host")
            .map(|v| std::str::from_utf8(v).map_err(|_| ProxyError::BadHost))
            .transpose()?,
    };
    let normalized = match raw_host {
        Some(h) => Some(headers::normalize_host(h).ok_or(ProxyError::BadHost)?),
        None => None,
    };
    let host_header = normalized.as_deref();
    let host = host_header.map(strip_port).unwrap_or("");

    // Match on the snapshot this request keeps to the end.
    let snapshot = state.live.load_full();
    let route = snapshot
        .router
        .find(host, &path, req.method(), peer)
        .ok_or(ProxyError::RouteNotFound)?;
    let compiled: &CompiledRoute = &route.data;
    let balancer = match &compiled.target {
        Target::Upstream(b) => b,
        Target::NoUpstream => return Err(ProxyError::NoUpstream),
        Target::MissingUpstream(id) => return Err(ProxyError::UpstreamMissing(id.clone())),
        Target::MissingService(id) => return Err(ProxyError::ServiceMissing(id.clone())),
    };
    if balancer.nodes.is_empty() {
        tracing::warn!(route.id = %route.id, "no valid upstream node");
        return Err(ProxyError::NoNode);
    }

    // Plugins, in priority order; any of them may answer instead. What
    // they set for the upstream goes in `overlay`, and replaces the
    // client's headers of the same name.
    let plugins = compiled
        .plugins
        .as_ref()
        .map_err(|e| ProxyError::PluginUnavailable(e.clone()))?;
    let mut overlay = header::HeaderMap::new();
    let mut extra_response_headers = header::HeaderMap::new();
    if !plugins.is_empty() {
        let idp_client = clients.default_client();
        let mut ctx = Ctx {
            req,
            path: &path,
            route_id: &route.id,
            client: &idp_client,
            upstream_headers: &mut overlay,
            response_headers: &mut extra_response_headers,
            payload: &mut payload,
        };
        for plugin in plugins {
            if let Err(mut answer) = plugin.access(&mut ctx).await {
                append_all(answer.headers_mut(), &extra_response_headers);
                return Ok(Reply::Response(answer));
            }
        }
    }
    let forwarding = headers::Forwarding {
        client_ip: req.peer_ip(),
        host: host_header,
        trusted: state.trusted.iter().any(|n| n.contains(&peer)),
    };
    // Room for the upstream head: the client's, what plugins add, and the
    // gateway's own headers.
    let head_size = req.head_len()
        + overlay
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 256;
    // The upstream's headers for one node, handed to `emit`.
    let upstream_fields = |node: &str, emit: &mut dyn FnMut(&[u8], &[u8])| {
        let host = upstream_host(balancer, host_header, node);
        headers::upstream_request_fields(
            req.fields(),
            &overlay,
            Some(host.as_bytes()),
            &forwarding,
            &snapshot.gateway_cookies,
            emit,
        );
    };

    let (content_length, has_body) = match req.body() {
        request::BodyKind::None => (None, false),
        request::BodyKind::Length(n) => (Some(n), true),
        request::BodyKind::Chunked => (None, true),
    };
    let (connect, send_timeout, read) = match compiled.timeout {
        Some(t) => (
            Duration::try_from_secs_f64(t.connect).unwrap_or(balancer.connect_timeout),
            Duration::try_from_secs_f64(t.send).unwrap_or(balancer.send_timeout),
            Duration::try_from_secs_f64(t.read).unwrap_or(balancer.read_timeout),
        ),
        None => (
            balancer.connect_timeout,
            balancer.send_timeout,
            balancer.read_timeout,
        ),
    };

    // An accepted WebSocket upgrade becomes a tunnel to one node.
    if compiled.enable_websocket && websocket::is_upgrade(req) {
        let node = balancer.attempts().next().ok_or(ProxyError::NoNode)?;
        if balancer.https {
            // TODO: WebSocket tunnels to https upstreams are not implemented;
            // such upgrades are refused rather than sent in clear text.
            return Err(ProxyError::UpstreamBroken);
        }
        let mut head = h1::HeadWriter::new(req.method(), &path, req.query(), head_size);
        upstream_fields(&node.authority, &mut |n, v| head.field(n, v));
        head.field(b"connection", b"upgrade");
        head.field(b"upgrade", b"websocket");
        return websocket::tunnel(
            payload,
            req.method(),
            head.finish(),
            &node.authority,
            connect,
            read,
            extra_response_headers,
        )
        .await;
    }

    // Try nodes in turn; only a failed connection moves on, and only while
    // the body has not been handed to a connection.
    let started = Instant::now();
    let body_health = payload.health();
    let mut payload = Some(payload);
    let mut last = ProxyError::UpstreamUnreachable;
    for node in balancer.attempts() {
        if let Some(cap) = balancer.retry_timeout {
            if started.elapsed() > cap {
                break;
            }
        }
        // The common case — plain http, no body — takes the lean client.
        if !balancer.https && !has_body {
            let mut head = h1::HeadWriter::new(req.method(), &path, req.query(), head_size);
            upstream_fields(&node.authority, &mut |n, v| head.field(n, v));
            let sent = h1::send(
                &clients.h1,
                &node.authority,
                req.method(),
                &head.finish(),
                connect,
                read,
            )
            .await;
            match sent {
                Err(h1::H1Error::ReadTimeout) => {
                    tracing::warn!(route.id = %route.id, upstream.node = %node.authority, "upstream read timed out");
                    return Err(ProxyError::UpstreamTimedOut);
                }
                Ok(answer) => {
                    if answer.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(unexpected_switch(&route.id, node));
                    }
                    return Ok(Reply::Upstream(UpstreamReply {
                        answer,
                        extra: extra_response_headers,
                        idle: read,
                    }));
                }
                Err(e) => {
                    tracing::warn!(route.id = %route.id, upstream.node = %node.authority, error = %e, "upstream request failed");
                    let (err, retry) = e.outcome();
                    last = err;
                    if !retry {
                        break;
                    }
                    continue;
                }
            }
        }

        let url = format!(
            "{}://{}{}{}{}",
            if balancer.https { "https" } else { "http" },
            node.authority,
            path,
            if req.query().is_some() { "?" } else { "" },
            req.query().unwrap_or("")
        );
        let client = clients.for_connect_timeout(connect);
        let mut creq = client.request(req.method().clone(), url.as_str());
        {
            let map = creq.headers_mut();
            map.clear();
            upstream_fields(&node.authority, &mut |n, v| {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(n),
                    HeaderValue::from_bytes(v),
                ) {
                    map.append(n, v);
                }
            });
        }

        // `read` runs from the moment the request is fully sent until the
        // response head arrives, and then between body chunks.
        let timed_out = || {
            tracing::warn!(route.id = %route.id, upstream.node = %node.authority, "upstream read timed out");
            ProxyError::UpstreamTimedOut
        };
        let sent = if has_body {
            let Some(p) = payload.take() else {
                break;
            };
            let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
            let body = idle_timeout(p, send_timeout).chain(
                futures_util::stream::once(async move {
                    let _ = sent_tx.send(());
                })
                .filter_map(|()| std::future::ready(None)),
            );
            // Keep the client's framing: a body with a length goes with
            // that length, never re-framed as chunked.
            let send = async {
                match content_length {
                    Some(len) => {
                        creq.send_body(actix_http::body::SizedStream::new(len, body))
                            .await
                    }
                    None => creq.send_stream(body).await,
                }
            };
            let deadline = async {
                let _ = sent_rx.await;
                tokio::time::sleep(read).await;
            };
            tokio::select! {
                r = send => r,
                () = deadline => return Err(timed_out()),
            }
        } else {
            // No body: the request is sent at once, so `read` starts now.
            match tokio::time::timeout(read, creq.send()).await {
                Ok(r) => r,
                Err(_) => return Err(timed_out()),
            }
        };
        match sent {
            Ok(resp) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(unexpected_switch(&route.id, node));
                }
                let mut out = HttpResponse::build(resp.status());
                headers::client_response_fields(
                    headers::map_fields(resp.headers()).into_iter(),
                    |n, v| {
                        if let (Ok(n), Ok(v)) = (
                            header::HeaderName::from_bytes(n),
                            HeaderValue::from_bytes(v),
                        ) {
                            out.append_header((n, v));
                        }
                    },
                );
                let typed = resp.headers().contains_key(header::CONTENT_TYPE);
                let mut answer = streamed(out, idle_timeout(resp, read), typed);
                append_all(answer.headers_mut(), &extra_response_headers);
                return Ok(Reply::Response(answer));
            }
            Err(_) if body_health.failed() => {
                // The client's body broke off or was malformed: its fault,
                // not the upstream's.
                tracing::info!(route.id = %route.id, "request body malformed or cut short");
                return Err(ProxyError::BadBody);
            }
            Err(e) => {
                let (err, retry) = classify(&e);
                tracing::warn!(
                    route.id = %route.id,
                    upstream.node = %node.authority,
                    error = %e,
                    "upstream request failed"
                );
                last = err;
                // TODO: a request with a body is not retried on another node
                // even when the connection was refused before anything was
                // sent; replaying would need the body buffered.
                if !retry || has_body {
                    break;
                }
            }
        }
    }
    Err(last)
}

/// A streamed answer with exactly the upstream's headers: actix-web's
/// `streaming` adds `Content-Type: application/octet-stream` when there
/// is none, which the upstream did not say.
pub fn streamed<S, E>(
    mut head: actix_web::HttpResponseBuilder,
    body: S,
    upstream_had_type: bool,
) -> HttpResponse
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + 'static,
    E: Into<Box<dyn std::error::Error>> + 'static,
{
    let mut answer = head.streaming(body);
    if !upstream_had_type {
        answer.headers_mut().remove(header::CONTENT_TYPE);
    }
    answer
}

/// A switch of protocol is refused: only WebSocket routes tunnel, and they
/// do not come here.
fn unexpected_switch(route_id: &str, node: &crate::model::upstream::NodeAddr) -> ProxyError {
    tracing::warn!(route.id = %route_id, upstream.node = %node.authority, "upstream switched protocols on a route without enable_websocket");
    ProxyError::UpstreamBroken
}

/// The Host header for the upstream, per `pass_host` (the node's address
/// when the client sent none).
fn upstream_host<'a>(b: &'a Balancer, client_host: Option<&'a str>, node: &'a str) -> &'a str {
    match b.pass_host {
        PassHost::Pass => client_host.unwrap_or(node),
        PassHost::Node => node,
        PassHost::Rewrite => b.upstream_host.as_deref().unwrap_or(node),
    }
}

/// Maps a client error to the gateway's answer, and whether another node
/// may be tried.
fn classify(e: &awc::error::SendRequestError) -> (ProxyError, bool) {
    use awc::error::{ConnectError, SendRequestError as E};
    match e {
        E::Connect(ConnectError::Timeout) => (ProxyError::UpstreamTimedOut, true),
        E::Connect(_) => (ProxyError::UpstreamUnreachable, true),
        E::Timeout => (ProxyError::UpstreamTimedOut, false),
        E::Response(_) => (ProxyError::UpstreamBroken, false),
        _ => (ProxyError::UpstreamUnreachable, false),
    }
}

/// Largest single header value, as nginx's default `large_client_header_buffers`.
pub const MAX_HEADER_VALUE: usize = 8 * 1024;
/// Largest sum of all header names and values.
pub const MAX_HEADERS_TOTAL: usize = 32 * 1024;

/// Ends a body stream with an error when no chunk arrives for `idle`.
fn idle_timeout<S, E>(
    stream: S,
    idle: Duration,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>>>>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin + 'static,
    E: std::fmt::Display,
{
    Box::pin(futures_util::stream::unfold(
        Some(stream),
        move |state| async move {
            let mut s = state?;
            match tokio::time::timeout(idle, s.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(s))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.to_string())), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "body idle too long",
                    )),
                    None,
                )),
            }
        },
    ))
}

/// One upstream client per distinct connect timeout, per worker: awc sets
/// the connect timeout on the connector, not per request.
pub struct Clients {
    by_connect: std::cell::RefCell<std::collections::HashMap<u128, awc::Client>>,
    /// Keep-alive connections of the lean client (plain http, no body).
    h1: std::rc::Rc<h1::Pool>,
    default: std::cell::OnceCell<awc::Client>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

impl Clients {
    pub fn new() -> Clients {
        Clients {
            by_connect: Default::default(),
            h1: Default::default(),
            default: Default::default(),
        }
    }

    /// The client for plugins' calls to identity providers.
    pub fn default_client(&self) -> awc::Client {
        self.default
            .get_or_init(|| self.for_connect_timeout(balancer::DEFAULT_TIMEOUT))
            .clone()
    }

    pub fn for_connect_timeout(&self, connect: Duration) -> awc::Client {
        self.by_connect
            .borrow_mut()
            .entry(connect.as_millis())
            .or_insert_with(|| build_client(connect))
            .clone()
    }
}

/// How long an idle upstream connection stays in the pool.
const UPSTREAM_KEEP_ALIVE: Duration = Duration::from_secs(60);

fn build_client(connect: Duration) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .limit(0)
                .conn_keep_alive(UPSTREAM_KEEP_ALIVE)
                .timeout(connect)
                .max_http_version(awc::http::Version::HTTP_11),
        )
        .disable_redirects()
        .no_default_headers()
        .disable_timeout()
        .finish()
}

/// Adds plugin-set response headers: cookies and `Vary` are added to the
/// upstream's, anything else replaces what the upstream sent.
pub fn append_all(to: &mut header::HeaderMap, from: &header::HeaderMap) {
    for name in from.keys() {
        if name != header::SET_COOKIE && name != header::VARY {
            to.remove(name);
        }
    }
    for (k, v) in from {
        to.append(k.clone(), v.clone());
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}
