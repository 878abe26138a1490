//! WebSocket proxying for routes with `enable_websocket: true`.
//!
//! After the plugins have accepted the request, the upgrade request is
//! written to the upstream node over a fresh connection; when the node
//! answers `101 Switching Protocols`, bytes are relayed both ways until
//! either side closes. Any other answer is passed back to the client and
//! no tunnel opens. On routes without `enable_websocket` an upgrade is
//! forwarded as a plain request with its `Upgrade` header removed.

use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpResponse;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::h1::{self, Upgrade};
use super::{Payload, ProxyError, Reply, Request, UpstreamReply};

/// Whether the client asks for a WebSocket upgrade.
pub fn is_upgrade(req: &Request) -> bool {
    req.header("upgrade")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// Sends the upgrade request `head` to `authority` (plain HTTP only). On
/// `101` the connection becomes a tunnel; any other answer is relayed as
/// an ordinary upstream answer, with the plugins' `extra` headers.
pub async fn tunnel(
    payload: Payload,
    method: &Method,
    head: Vec<u8>,
    authority: &str,
    connect_timeout: Duration,
    read_timeout: Duration,
    extra: HeaderMap,
) -> Result<Reply, ProxyError> {
    let opened = h1::open_upgrade(authority, method, &head, connect_timeout, read_timeout)
        .await
        .map_err(|e| e.outcome().0)?;
    let (answer, upstream, early) = match opened {
        Upgrade::Refused(answer) => {
            return Ok(Reply::Upstream(UpstreamReply {
                answer,
                extra,
                idle: read_timeout,
            }))
        }
        Upgrade::Switched {
            answer,
            stream,
            early,
        } => (answer, stream, early.freeze()),
    };

    // The switch is passed on with all its headers, `Connection` and
    // `Upgrade` included.
    let mut resp = HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in answer.fields() {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            resp.append_header((n, v));
        }
    }

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
    let typed = answer
        .fields()
        .any(|(n, _)| n.eq_ignore_ascii_case(b"content-type"));
    Ok(Reply::Response(super::streamed(resp, stream, typed)))
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
