//! Header rules at the gateway's edge.
//!
//! Hop-by-hop headers, and every header the client names in `Connection`,
//! are removed from the request as it is read, before any plugin or the
//! gateway adds its own headers, so a client can never remove a header the
//! gateway set. Forwarding headers from the client are trusted only when
//! the peer is in `trusted_addresses`.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

/// Always hop-by-hop (RFC 9110 §7.6.1, plus the common non-standard ones).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that describe the client or the original request as a proxy
/// saw it. From an untrusted peer they are dropped whatever their name's
/// suffix: `X-Forwarded-*` as a family (`-Prefix`, `-Uri`, `-Port`, …),
/// not only the ones the gateway sets.
const FORWARDING: &[&str] = &["x-real-ip", "forwarded", "x-original-uri", "x-original-url"];

fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-") || FORWARDING.contains(&name)
}

/// Names listed in the `Connection` header(s), lower-cased.
fn nominated(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a header may be copied from one side to the other.
pub fn is_end_to_end(name: &HeaderName, nominated: &[String]) -> bool {
    let n = name.as_str();
    !HOP_BY_HOP.contains(&n) && !nominated.iter().any(|x| x == n)
}

/// Copies the client's request headers that may go upstream: no hop-by-hop
/// headers, none the client nominated, no `Host` (set from `pass_host`),
/// and no forwarding headers unless the peer is trusted.
pub fn upstream_request_headers(from: &HeaderMap, trusted_peer: bool) -> HeaderMap {
    let nominated = nominated(from);
    let mut out = HeaderMap::with_capacity(from.len() + 4);
    for (name, value) in from.iter() {
        if !is_end_to_end(name, &nominated) || name == "host" {
            continue;
        }
        if !trusted_peer && is_forwarding(name.as_str()) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Copies an upstream response's headers that may go to the client.
pub fn client_response_headers(from: &awc::http::header::HeaderMap, to: &mut HeaderMap) {
    let nominated = nominated(from);
    for (name, value) in from.iter() {
        if is_end_to_end(name, &nominated) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP`. For a
/// trusted peer the client's chain is extended; otherwise it starts here.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &str,
    host: Option<&str>,
    trusted_peer: bool,
) {
    // Several X-Forwarded-For lines are one list (RFC 9110 §5.3).
    let mut chain: Vec<&str> = Vec::new();
    if trusted_peer {
        chain = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
    }
    chain.push(client_ip);
    let xff = chain.join(", ");
    let set = |h: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(headers, "x-forwarded-for", &xff);
    if !(trusted_peer && headers.contains_key("x-real-ip")) {
        set(headers, "x-real-ip", client_ip);
    }
    if !(trusted_peer && headers.contains_key("x-forwarded-proto")) {
        set(headers, "x-forwarded-proto", "http");
    }
    if let Some(host) = host {
        if !(trusted_peer && headers.contains_key("x-forwarded-host")) {
            set(headers, "x-forwarded-host", host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_nominated_headers_are_dropped_on_input() {
        let h = map(&[
            ("connection", "keep-alive, X-Foo, X-Userinfo"),
            ("x-foo", "1"),
            ("x-userinfo", "forged"),
            ("x-bar", "2"),
            ("upgrade", "websocket"),
            ("host", "a"),
        ]);
        let out = upstream_request_headers(&h, false);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("x-bar"));
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers() {
        let h = map(&[("x-forwarded-for", "10.9.9.9"), ("x-real-ip", "10.9.9.9")]);
        let mut out = upstream_request_headers(&h, false);
        set_forwarded(&mut out, "127.0.0.1", Some("h"), false);
        assert_eq!(out.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(out.get("x-real-ip").unwrap(), "127.0.0.1");
        let mut out = upstream_request_headers(&h, true);
        set_forwarded(&mut out, "127.0.0.1", Some("h"), true);
        assert_eq!(out.get("x-forwarded-for").unwrap(), "10.9.9.9, 127.0.0.1");
    }

    #[test]
    fn the_whole_forwarding_family_is_dropped_from_untrusted_peers() {
        let h = map(&[
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-uri", "/admin/x"),
            ("x-forwarded-port", "8443"),
            ("x-original-uri", "/admin/x"),
            ("x-original-url", "/admin/x"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwardedness", "kept"),
        ]);
        let out = upstream_request_headers(&h, false);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key("x-forwardedness"));
        assert_eq!(upstream_request_headers(&h, true).len(), h.len());
    }

    #[test]
    fn trusted_chains_join_every_x_forwarded_for_line() {
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8, ,9.9.9.9"),
        ]);
        let mut out = upstream_request_headers(&h, true);
        set_forwarded(&mut out, "127.0.0.1", None, true);
        assert_eq!(
            out.get_all("x-forwarded-for").collect::<Vec<_>>(),
            ["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]
        );
    }
}
