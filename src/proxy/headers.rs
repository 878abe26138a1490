//! Header rules at the gateway's edge.
//!
//! Hop-by-hop headers, and every header the client names in `Connection`,
//! are removed from the request as it is read, before any plugin or the
//! gateway adds its own headers, so a client can never remove a header the
//! gateway set. Forwarding headers from the client are trusted only when
//! the peer is in `trusted_addresses`.

use actix_web::http::header::HeaderMap;

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
const FORWARDING: &[&str] = &[
    "x-real-ip",
    "forwarded",
    "x-original-uri",
    "x-original-url",
    "x-rewrite-url",
];

fn is_forwarding(name: &[u8]) -> bool {
    name.starts_with(b"x-forwarded-") || listed(FORWARDING, name)
}

/// A header field as sent: name and value bytes.
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// Headers only the gateway may set; client copies never reach upstream,
/// whatever the route and the outcome (attack kind K04).
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-access-token",
    "x-userinfo",
    "x-id-token",
    "x-refresh-token",
    "x-raw-id-token",
];

/// A header name in lower case, on the stack for the usual short names.
struct Lower {
    buf: [u8; 64],
    long: Option<Vec<u8>>,
    len: usize,
}

impl Lower {
    fn new(name: &[u8]) -> Lower {
        let mut l = Lower {
            buf: [0; 64],
            long: None,
            len: name.len(),
        };
        if name.len() <= l.buf.len() {
            for (d, s) in l.buf.iter_mut().zip(name) {
                *d = s.to_ascii_lowercase();
            }
        } else {
            l.long = Some(name.to_ascii_lowercase());
        }
        l
    }

    fn bytes(&self) -> &[u8] {
        match &self.long {
            Some(v) => v,
            None => &self.buf[..self.len],
        }
    }
}

/// Whether `name` (lower case) is one of `list`.
fn listed(list: &[&str], name: &[u8]) -> bool {
    list.iter().any(|x| x.as_bytes() == name)
}

/// Names listed in the `Connection` field(s), lower-cased.
fn nominated<'a>(fields: impl Iterator<Item = Field<'a>>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"connection") {
            out.extend(
                String::from_utf8_lossy(value)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    out
}

/// Whether a header (name in lower case) may be copied from one side to
/// the other.
fn is_end_to_end(name: &[u8], nominated: &[String]) -> bool {
    !listed(HOP_BY_HOP, name) && !nominated.iter().any(|x| x.as_bytes() == name)
}

/// Who the client is and which host it asked for, for the forwarding
/// headers the gateway sets.
pub struct Forwarding<'a> {
    /// The peer's address, as text.
    pub client_ip: &'a str,
    /// The client's `Host`, normalised.
    pub host: Option<&'a str>,
    /// The peer is in `trusted_addresses`: its forwarding headers are
    /// believed and extended.
    pub trusted: bool,
}

/// The request headers for the upstream, handed to `emit` in order (names
/// in lower case):
///
/// - the client's, without hop-by-hop headers and those it nominated in
///   `Connection`, without `Host`, without `Expect` (the gateway answers
///   `100-continue` itself), names with `_` (CGI-style backends read
///   `X_Userinfo` as `X-Userinfo`), the gateway-owned identity headers,
///   the gateway's own cookies, anything a plugin set in `overlay`, and
///   forwarding headers unless the peer is trusted;
/// - then the plugins' `overlay`, the `host` for the upstream, and
///   `X-Forwarded-For`/`-Proto`/`-Host` and `X-Real-IP`: for a trusted peer
///   its chain is extended (several `X-Forwarded-For` lines are one list,
///   RFC 9110 §5.3), otherwise it starts here.
pub fn upstream_request_fields<'a, I>(
    client: I,
    overlay: &HeaderMap,
    host: Option<&[u8]>,
    fwd: &Forwarding<'_>,
    gateway_cookies: &[String],
    mut emit: impl FnMut(&[u8], &[u8]),
) where
    I: Iterator<Item = Field<'a>> + Clone,
{
    let nominated = nominated(client.clone());
    let mut chain = String::new();
    let (mut real_ip, mut proto, mut fwd_host) = (false, false, false);
    let mut cookies: Option<String> = None;
    for (name, value) in client {
        let lower = Lower::new(name);
        let n = lower.bytes();
        let overlaid = || std::str::from_utf8(n).is_ok_and(|n| overlay.contains_key(n));
        if !is_end_to_end(n, &nominated)
            || n == b"host"
            || n == b"expect"
            || n.contains(&b'_')
            || listed(IDENTITY_HEADERS, n)
            || (!overlay.is_empty() && overlaid())
        {
            continue;
        }
        if is_forwarding(n) {
            if !fwd.trusted {
                continue;
            }
            match n {
                b"x-forwarded-for" => {
                    for hop in String::from_utf8_lossy(value).split(',').map(str::trim) {
                        if !hop.is_empty() {
                            chain.push_str(hop);
                            chain.push_str(", ");
                        }
                    }
                    continue;
                }
                b"x-real-ip" => real_ip = true,
                b"x-forwarded-proto" => proto = true,
                b"x-forwarded-host" => fwd_host = true,
                _ => {}
            }
        }
        if n == b"cookie" && !gateway_cookies.is_empty() {
            let kept = cookies.get_or_insert_with(String::new);
            for pair in String::from_utf8_lossy(value).split(';').map(str::trim) {
                let cookie_name = pair.split('=').next().unwrap_or("").trim();
                if !pair.is_empty() && !gateway_cookies.iter().any(|g| g == cookie_name) {
                    if !kept.is_empty() {
                        kept.push_str("; ");
                    }
                    kept.push_str(pair);
                }
            }
            continue;
        }
        emit(n, value);
    }
    if let Some(kept) = cookies.filter(|k| !k.is_empty()) {
        emit(b"cookie", kept.as_bytes());
    }
    for (name, value) in overlay {
        emit(name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(host) = host {
        emit(b"host", host);
    }
    let ip = fwd.client_ip.as_bytes();
    if chain.is_empty() {
        emit(b"x-forwarded-for", ip);
    } else {
        chain.push_str(std::str::from_utf8(ip).unwrap_or(""));
        emit(b"x-forwarded-for", chain.as_bytes());
    }
    if !real_ip {
        emit(b"x-real-ip", ip);
    }
    if !proto {
        emit(b"x-forwarded-proto", b"http");
    }
    if let (Some(h), false) = (fwd.host, fwd_host) {
        emit(b"x-forwarded-host", h.as_bytes());
    }
}

/// An upstream answer's headers that may go to the client (names in lower
/// case): no hop-by-hop headers and none the upstream nominated.
pub fn client_response_fields<'a, I>(fields: I, mut to: impl FnMut(&[u8], &[u8]))
where
    I: Iterator<Item = Field<'a>> + Clone,
{
    let nominated = nominated(fields.clone());
    for (name, value) in fields {
        let lower = Lower::new(name);
        if is_end_to_end(lower.bytes(), &nominated) {
            to(lower.bytes(), value);
        }
    }
}

/// The fields of a header map, for the functions above.
pub fn map_fields(map: &HeaderMap) -> Vec<Field<'_>> {
    map.iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect()
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
        // One trailing dot (the root) is dropped; an empty label anywhere
        // else (`a..b`, `.a`, `a..`) is refused, so the name matched is
        // the name every backend sees.
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if trimmed.is_empty()
            || trimmed.len() > 253
            || trimmed.split('.').any(str::is_empty)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<Field<'a>> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect()
    }

    /// The upstream headers for `pairs`, as (name, value) strings.
    fn upstream(
        pairs: &[(&str, &str)],
        trusted: bool,
        cookies: &[String],
    ) -> Vec<(String, String)> {
        let f = fields(pairs);
        let mut out = Vec::new();
        let fwd = Forwarding {
            client_ip: "127.0.0.1",
            host: Some("h"),
            trusted,
        };
        upstream_request_fields(
            f.iter().copied(),
            &HeaderMap::new(),
            Some(b"up"),
            &fwd,
            cookies,
            |n, v| {
                out.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            },
        );
        out
    }

    fn get<'a>(out: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        out.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The names the gateway adds to every upstream request.
    const ADDED: usize = 5;

    #[test]
    fn gateway_cookies_never_reach_the_upstream() {
        let names = [
            "portcullis_session".to_owned(),
            "portcullis_session_login".to_owned(),
        ];
        let out = upstream(
            &[
                ("Cookie", "a=1; portcullis_session=secret"),
                ("cookie", "portcullis_session_login=x; b=2"),
            ],
            false,
            &names,
        );
        assert_eq!(get(&out, "cookie"), ["a=1; b=2"]);
        let out = upstream(&[("cookie", "portcullis_session=s")], false, &names);
        assert!(get(&out, "cookie").is_empty());
        let out = upstream(&[("cookie", "portcullis_session=s")], false, &[]);
        assert_eq!(get(&out, "cookie"), ["portcullis_session=s"]);
    }

    #[test]
    fn gateway_headers_and_host_are_set_last() {
        let out = upstream(
            &[
                ("Host", "evil"),
                ("X-Userinfo", "forged"),
                ("Accept", "*/*"),
            ],
            false,
            &[],
        );
        assert_eq!(
            out.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            [
                "accept",
                "host",
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "x-forwarded-host"
            ]
        );
        assert_eq!(get(&out, "host"), ["up"]);
        assert_eq!(get(&out, "x-forwarded-host"), ["h"]);
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
            "admin.example..",
            "admin.example...:80",
            ".admin.example",
            "admin..example",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
    }

    #[test]
    fn underscore_names_never_go_upstream() {
        let out = upstream(&[("x_userinfo", "forged"), ("x-ok", "1")], false, &[]);
        assert!(get(&out, "x_userinfo").is_empty());
        assert_eq!(get(&out, "x-ok"), ["1"]);
    }

    #[test]
    fn connection_nominated_headers_are_dropped_on_input() {
        let out = upstream(
            &[
                ("connection", "keep-alive, X-Foo, X-Userinfo"),
                ("x-foo", "1"),
                ("x-userinfo", "forged"),
                ("x-bar", "2"),
                ("upgrade", "websocket"),
                ("host", "a"),
            ],
            false,
            &[],
        );
        assert_eq!(out.len(), 1 + ADDED, "{out:?}");
        assert_eq!(get(&out, "x-bar"), ["2"]);
    }

    #[test]
    fn forwarding_headers_only_from_trusted_peers() {
        let h = [("x-forwarded-for", "10.9.9.9"), ("x-real-ip", "10.9.9.9")];
        let out = upstream(&h, false, &[]);
        assert_eq!(get(&out, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(get(&out, "x-real-ip"), ["127.0.0.1"]);
        let out = upstream(&h, true, &[]);
        assert_eq!(get(&out, "x-forwarded-for"), ["10.9.9.9, 127.0.0.1"]);
        assert_eq!(get(&out, "x-real-ip"), ["10.9.9.9"]);
    }

    #[test]
    fn the_whole_forwarding_family_is_dropped_from_untrusted_peers() {
        let h = [
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-uri", "/admin/x"),
            ("x-forwarded-port", "8443"),
            ("x-original-uri", "/admin/x"),
            ("x-original-url", "/admin/x"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwardedness", "kept"),
        ];
        let out = upstream(&h, false, &[]);
        assert_eq!(out.len(), 1 + ADDED, "{out:?}");
        assert_eq!(get(&out, "x-forwardedness"), ["kept"]);
        assert_eq!(upstream(&h, true, &[]).len(), h.len() + ADDED);
    }

    #[test]
    fn trusted_chains_join_every_x_forwarded_for_line() {
        let out = upstream(
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("X-Forwarded-For", "5.6.7.8, ,9.9.9.9"),
            ],
            true,
            &[],
        );
        assert_eq!(
            get(&out, "x-forwarded-for"),
            ["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]
        );
    }
}
