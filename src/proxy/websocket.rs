//! WebSocket proxying for routes with `enable_websocket: true`.
//!
//! After the plugins have accepted the request, the upgrade request is
//! written to the upstream node over a fresh connection; when the node
//! answers `101 Switching Protocols`, bytes are relayed both ways until
//! either side closes. Any other answer is passed back to the client and
//! no tunnel opens. On routes without `enable_websocket` an upgrade is
//! forwarded as a plain request with its `Upgrade` header removed.

use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framing::{decode, ChunkState, Framing, Step};
use super::{Payload, ProxyError, Request};

/// Largest upstream response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Whether the client asks for a WebSocket upgrade.
pub fn is_upgrade(req: &Request) -> bool {
    req.header("upgrade")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// Opens the tunnel to `authority` (plain HTTP only) with the upgrade
/// request `head`.
pub async fn tunnel(
    payload: Payload,
    head: Vec<u8>,
    authority: &str,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<HttpResponse, ProxyError> {
    // Connect and send the upgrade request.
    let mut upstream = tokio::time::timeout(connect_timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| ProxyError::UpstreamTimedOut)?
        .map_err(|_| ProxyError::UpstreamUnreachable)?;
    upstream
        .write_all(&head)
        .await
        .map_err(|_| ProxyError::UpstreamUnreachable)?;

    // Read the answer's head.
    let mut buf = Vec::with_capacity(1024);
    let head_len = tokio::time::timeout(read_timeout, async {
        loop {
            let mut chunk = [0u8; 2048];
            let n = upstream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end + 4);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
        }
    })
    .await
    .map_err(|_| ProxyError::UpstreamTimedOut)?
    .ok_or(ProxyError::UpstreamBroken)?;
    let mut parsed_headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut parsed_headers);
    parsed
        .parse(&buf[..head_len])
        .map_err(|_| ProxyError::UpstreamBroken)?;
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ProxyError::UpstreamBroken)?;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;

    let mut resp = HttpResponse::build(status);
    for h in parsed.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        let hop = matches!(
            lower.as_str(),
            "connection" | "upgrade" | "keep-alive" | "transfer-encoding"
        );
        if hop && !switching {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            resp.append_header((n, v));
        }
    }
    if !switching {
        // No tunnel: pass on the answer with its whole body, framed as the
        // upstream framed it.
        let mut length = None;
        let mut chunked = false;
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                if length.is_none() {
                    return Err(ProxyError::UpstreamBroken);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h.value.eq_ignore_ascii_case(b"chunked");
            }
        }
        let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::DONE
        } else if chunked {
            Framing::Chunked(ChunkState::Size)
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let rest = bytes::BytesMut::from(&buf[head_len..]);
        return Ok(resp.streaming(answer_body(upstream, rest, framing, read_timeout)));
    }
    let early = bytes::Bytes::copy_from_slice(&buf[head_len..]);

    // Relay both ways until either side closes: from here on, whatever
    // the client sends belongs to the tunnel.
    let mut payload = payload.into_tunnel();
    let (from_upstream, mut to_upstream) = upstream.into_split();
    let client_to_upstream = tokio::task::spawn_local(async move {
        while let Some(Ok(chunk)) = payload.next().await {
            if to_upstream.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_upstream.shutdown().await;
    });
    // When the upstream's side ends (or the client's connection is
    // dropped), the other direction stops too: its task holds the client
    // socket and the upstream connection.
    let stop_other = AbortOnDrop(client_to_upstream.abort_handle());
    let stream = futures_util::stream::iter((!early.is_empty()).then_some(Ok(early)))
        .chain(tokio_util::io::ReaderStream::new(from_upstream))
        .map(move |chunk| {
            let _ = &stop_other;
            chunk
        });
    Ok(resp.streaming(stream))
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The body of an answer that opened no tunnel, read from `conn` after the
/// bytes already in `buf`, as `framing` says.
fn answer_body(
    conn: TcpStream,
    buf: bytes::BytesMut,
    framing: Framing,
    idle: Duration,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(Some((conn, buf, framing)), move |state| async move {
        let (mut conn, mut buf, mut framing) = state?;
        loop {
            match decode(&mut buf, &mut framing) {
                Ok(Step::Data(d)) => return Some((Ok(d), Some((conn, buf, framing)))),
                Ok(Step::End) => return None,
                Ok(Step::NeedMore) => {}
                Err(e) => return Some((Err(e), None)),
            }
            buf.reserve(16 * 1024);
            match tokio::time::timeout(idle, conn.read_buf(&mut buf)).await {
                Ok(Ok(0)) if framing == Framing::UntilClose => return None,
                Ok(Ok(0)) => {
                    let e = super::framing::invalid("the upstream closed early");
                    return Some((Err(e), None));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Some((Err(e), None)),
                Err(_) => {
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream stalled");
                    return Some((Err(e), None));
                }
            }
        }
    })
}
