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
        // Names with `_` are dropped as nginx does: CGI-style backends
        // read `X_Userinfo` as `X-Userinfo`, which would get around the
        // removal of gateway-owned headers.
        if !is_end_to_end(name, &nominated) || name == "host" || name.as_str().contains('_') {
            continue;
        }
        if !trusted_peer && is_forwarding(name.as_str()) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Validates a `Host` value and returns it with the host name in lower case
/// and without a trailing dot, so `Admin.Example.com.` cannot slip past
/// host-specific routes and reach a backend that treats it as the same
/// host. `None` for anything that is not `name[:port]` or `[v6][:port]`.
pub fn normalize_host(raw: &str) -> Option<String> {
    let (name, port): (&str, Option<&str>) = if raw.starts_with('[') {
        let end = raw.find(']')?;
        raw[1..end].parse::<std::net::Ipv6Addr>().ok()?;
        let after = &raw[end + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':')?)
        };
        (&raw[..=end], port)
    } else {
        match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let name = if name.starts_with('[') {
        name.to_owned()
    } else {
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if trimmed.is_empty()
            || trimmed.len() > 253
            || !trimmed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return None;
        }
        trimmed.to_ascii_lowercase()
    };
    Some(match port {
        Some(p) => format!("{name}:{p}"),
        None => name,
    })
}

/// Removes the named cookies from the `Cookie` header(s).
pub fn strip_cookies(h: &mut HeaderMap, names: &[String]) {
    let kept: Vec<String> = h
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split('=').next().unwrap_or("").trim();
            !names.iter().any(|n| n == name)
        })
        .map(str::to_owned)
        .collect();
    h.remove(actix_web::http::header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            h.insert(actix_web::http::header::COOKIE, v);
        }
    }
}

/// Copies an upstream response's headers that may go to the client.
pub fn client_response_headers(
    from: &awc::http::header::HeaderMap,
    mut to: impl FnMut(&HeaderName, &HeaderValue),
) {
    let nominated = nominated(from);
    for (name, value) in from.iter() {
        if is_end_to_end(name, &nominated) {
            to(name, value);
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
    fn gateway_cookies_never_reach_the_upstream() {
        let mut h = HeaderMap::new();
        h.append(
            actix_web::http::header::COOKIE,
            HeaderValue::from_static("a=1; portcullis_session=secret"),
        );
        h.append(
            actix_web::http::header::COOKIE,
            HeaderValue::from_static("portcullis_session_login=x; b=2"),
        );
        strip_cookies(
            &mut h,
            &[
                "portcullis_session".into(),
                "portcullis_session_login".into(),
            ],
        );
        assert_eq!(h.get(actix_web::http::header::COOKIE).unwrap(), "a=1; b=2");
        let mut only = HeaderMap::new();
        only.insert(
            actix_web::http::header::COOKIE,
            HeaderValue::from_static("portcullis_session=s"),
        );
        strip_cookies(&mut only, &["portcullis_session".into()]);
        assert!(only.get(actix_web::http::header::COOKIE).is_none());
    }

    #[test]
    fn hosts_are_validated_and_normalised() {
        assert_eq!(
            normalize_host("Admin.Example.com.").as_deref(),
            Some("admin.example.com")
        );
        assert_eq!(
            normalize_host("admin.example.com.:80").as_deref(),
            Some("admin.example.com:80")
        );
        assert_eq!(
            normalize_host("127.0.0.1:9080").as_deref(),
            Some("127.0.0.1:9080")
        );
        assert_eq!(normalize_host("[::1]:9080").as_deref(), Some("[::1]:9080"));
        assert_eq!(normalize_host("[::1]").as_deref(), Some("[::1]"));
        for bad in [
            "x@admin.example.com",
            "admin%2eexample.com",
            "a b",
            "",
            ".",
            "h:",
            "h:99x",
            "[zz]:1",
            "[::1]x",
            "a:1:2",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
    }

    #[test]
    fn underscore_names_never_go_upstream() {
        let h = map(&[("x_userinfo", "forged"), ("x-ok", "1")]);
        let out = upstream_request_headers(&h, false);
        assert!(out.get("x_userinfo").is_none());
        assert!(out.get("x-ok").is_some());
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
