//! The `cors` plugin: APISIX's field names and defaults.
//!
//! A real preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered here, 200 with an empty
//! body, and goes no further: no authentication plugin sees it and the
//! upstream never does. An allowed origin gets the `Access-Control-Allow-*`
//! headers; any other origin gets the same answer without them, so the
//! browser stops the real request. Everything else, a bare `OPTIONS`
//! included, goes on through the chain; when its origin is allowed, the
//! answer it ends with (the upstream's, or another plugin's refusal) carries
//! `Access-Control-Allow-Origin` and friends.
//!
//! Origins match exactly on `scheme://host[:port]` (ASCII case ignored),
//! and regexes must match the whole origin; `null` is allowed only when
//! `allow_origins` is `null`.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpResponse;

use crate::proxy::Request;
use futures_util::future::LocalBoxFuture;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{Ctx, Plugin};
use crate::model::check::{self, opt, Checked};

/// Configuration of `cors` (APISIX's schema; defaults noted).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CorsConfig {
    /// `*` (any origin, no credentials), `**` (any origin, echoed), `null`,
    /// or a comma-separated list of `scheme://host[:port]`. Default `*`.
    pub allow_origins: String,
    /// `*`, `**` (every method, spelled out) or a comma-separated list.
    /// Default `*`.
    pub allow_methods: String,
    /// `*` (echo `Access-Control-Request-Headers`, else `*`), `**` (echo)
    /// or a comma-separated list. Default `*`.
    pub allow_headers: String,
    /// `*` or a comma-separated list; unset: no
    /// `Access-Control-Expose-Headers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<String>,
    /// Seconds a browser may cache a preflight; -1 disables. Default 5.
    pub max_age: i64,
    /// Send `Access-Control-Allow-Credentials: true`; then no option may be
    /// `*`. Default false.
    pub allow_credential: bool,
    /// Regexes an origin must match in full. When set, `*`/`**` in
    /// `allow_origins` are ignored (listed origins still count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_origins_by_regex: Option<Vec<String>>,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allow_origins: "*".into(),
            allow_methods: "*".into(),
            allow_headers: "*".into(),
            expose_headers: None,
            max_age: 5,
            allow_credential: false,
            allow_origins_by_regex: None,
        }
    }
}

const FIELDS: &[&str] = &[
    "allow_origins",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "max_age",
    "allow_credential",
    "allow_origins_by_regex",
];

/// APISIX fields this build refuses rather than silently ignores.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "allow_origins_by_metadata",
        "not supported: there is no plugin metadata; list the origins in allow_origins",
    ),
    (
        "timing_allow_origins",
        "not supported: Timing-Allow-Origin is not implemented",
    ),
    (
        "timing_allow_origins_by_regex",
        "not supported: Timing-Allow-Origin is not implemented",
    ),
];

/// APISIX's pattern for `allow_origins`.
const ORIGINS_PATTERN: &str = r"^(\*|\*\*|null|\w+://[^,]+(,\w+://[^,]+)*)$";

/// What `**` in `allow_methods` stands for (APISIX's list).
const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

/// Longest accepted string option.
const MAX_LEN: usize = 16384;

/// Longest accepted regex source, and the compiled size bound.
const MAX_REGEX_LEN: usize = 4096;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Checks a configuration with APISIX's messages.
pub fn check(v: &Value) -> Checked {
    let obj = check::object(v)?;
    for (field, why) in UNSUPPORTED {
        if obj.contains_key(*field) {
            return Err(format!("property \"{field}\" validation failed: {why}"));
        }
    }
    check::known_fields(obj, FIELDS)?;

    opt(obj, "allow_origins", |v| {
        let s = check::string(v, 1, MAX_LEN)?;
        check_origins(s)
    })?;
    opt(obj, "allow_methods", |v| {
        let s = check::string(v, 1, MAX_LEN)?;
        if s == "*" || s == "**" {
            return Ok(());
        }
        token_list(s, "method names")
    })?;
    opt(obj, "allow_headers", |v| {
        let s = check::string(v, 1, MAX_LEN)?;
        if s == "*" || s == "**" {
            return Ok(());
        }
        token_list(s, "header names")
    })?;
    opt(obj, "expose_headers", |v| {
        let s = check::string(v, 1, MAX_LEN)?;
        match s {
            "*" => Ok(()),
            "**" => Err("\"**\" is not supported here: use \"*\" or list the headers".into()),
            _ => token_list(s, "header names"),
        }
    })?;
    opt(obj, "max_age", |v| check::integer_min(v, -1).map(drop))?;
    opt(obj, "allow_credential", |v| check::boolean(v).map(drop))?;
    opt(obj, "allow_origins_by_regex", |v| {
        check::array(v, 1, true, |s| {
            let s = check::string(s, 1, MAX_REGEX_LEN)?;
            compile(s).map(drop)
        })
        .map(drop)
    })?;

    // With credentials, no option may be `*` (defaults included). `*` in
    // `allow_origins` is ignored when regexes are set, so it may stay.
    let credential = obj
        .get("allow_credential")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if credential {
        let s =
            |k: &str, default: Option<&'static str>| obj.get(k).and_then(Value::as_str).or(default);
        let by_regex = obj.contains_key("allow_origins_by_regex");
        let star = |x: Option<&str>| x == Some("*");
        if (!by_regex && star(s("allow_origins", Some("*"))))
            || star(s("allow_methods", Some("*")))
            || star(s("allow_headers", Some("*")))
            || star(s("expose_headers", None))
        {
            return Err(
                "you can not set '*' for other option when 'allow_credential' is true".into(),
            );
        }
    }
    Ok(())
}

fn check_origins(s: &str) -> Checked {
    let pattern = Regex::new(ORIGINS_PATTERN).expect("static pattern");
    if !pattern.is_match(s) {
        return Err(format!(
            "failed to match pattern \"{ORIGINS_PATTERN}\" with \"{s}\""
        ));
    }
    if matches!(s, "*" | "**" | "null") {
        return Ok(());
    }
    for item in s.split(',') {
        if parse_origin(item).is_none() {
            return Err(format!(
                "\"{item}\" is not an origin: expected scheme://host[:port], without path, user or spaces"
            ));
        }
    }
    Ok(())
}

/// `a, b,c`: tokens (RFC 9110) separated by commas and optional spaces.
fn token_list(s: &str, what: &str) -> Checked {
    let ok = s.split(',').all(|item| {
        let t = item.trim_matches([' ', '\t']);
        !t.is_empty() && t.bytes().all(is_tchar)
    });
    if ok {
        Ok(())
    } else {
        Err(format!("\"{s}\" is not a comma-separated list of {what}"))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Compiles a regex that must match a whole origin. The source is compiled
/// alone first, so it cannot close the anchoring group early.
fn compile(src: &str) -> Checked<Regex> {
    let build = |s: &str| {
        RegexBuilder::new(s)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
    };
    build(src).map_err(|e| format!("invalid regex \"{src}\": {}", one_line(&e.to_string())))?;
    build(&format!("^(?:{src})$"))
        .map_err(|e| format!("invalid regex \"{src}\": {}", one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The lowercased `scheme://host[:port]` when `s` is exactly one origin as
/// browsers serialise it; `None` for anything else (paths, users, spaces,
/// `null`).
fn parse_origin(s: &str) -> Option<String> {
    let (scheme, authority) = s.split_once("://")?;
    let mut sc = scheme.bytes();
    if !sc.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !sc.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        {
            return None;
        }
        match after {
            "" => (authority, None),
            _ => (
                &authority[..inside.len() + 2],
                Some(after.strip_prefix(':')?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if !host.starts_with('[')
        && (host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
    {
        return None;
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.parse::<u32>().ok()? > 65535 {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// Which origins are allowed.
enum Origins {
    /// `*`: every response says `Access-Control-Allow-Origin: *`.
    Any,
    /// `**`: any well-formed origin, echoed.
    Echo,
    /// Exact origins (lowercased), `null` among them only when configured
    /// as `allow_origins: "null"`.
    List(Vec<String>),
}

/// What `Access-Control-Allow-Headers` says on a preflight.
enum AllowHeaders {
    /// `*`: echo the requested headers, else `*`.
    Star,
    /// `**`: echo the requested headers, else nothing.
    Echo,
    List(HeaderValue),
}

pub struct Cors {
    origins: Origins,
    /// Set: the origin must match one (in full), or be listed.
    regexes: Option<Vec<Regex>>,
    methods: HeaderValue,
    headers: AllowHeaders,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    credential: bool,
}

pub fn build(v: &Value, _env: &super::PluginEnv) -> Result<Arc<dyn Plugin>, String> {
    let conf: CorsConfig = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let value = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| format!("{s:?} is not a valid header value"))
    };
    let regexes = match &conf.allow_origins_by_regex {
        Some(list) => Some(
            list.iter()
                .map(|s| compile(s))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    let origins = match conf.allow_origins.as_str() {
        "*" => Origins::Any,
        "**" => Origins::Echo,
        "null" => Origins::List(vec!["null".into()]),
        list => Origins::List(
            list.split(',')
                .map(|o| parse_origin(o).ok_or_else(|| format!("{o:?} is not an origin")))
                .collect::<Result<_, _>>()?,
        ),
    };
    if conf.allow_credential && matches!(origins, Origins::Echo) && regexes.is_none() {
        tracing::warn!("cors: allow_origins \"**\" with allow_credential lets any site read credentialed answers");
    }
    Ok(Arc::new(Cors {
        origins,
        regexes,
        methods: value(match conf.allow_methods.as_str() {
            "**" => ALL_METHODS,
            m => m,
        })?,
        headers: match conf.allow_headers.as_str() {
            "*" => AllowHeaders::Star,
            "**" => AllowHeaders::Echo,
            h => AllowHeaders::List(value(h)?),
        },
        expose: conf.expose_headers.as_deref().map(value).transpose()?,
        max_age: HeaderValue::from(conf.max_age),
        credential: conf.allow_credential,
    }))
}

/// The answer to `Origin`, decided once per request.
enum Decision {
    /// Allowed: the value of `Access-Control-Allow-Origin`.
    Allow(HeaderValue),
    /// Not allowed (or no single `Origin`).
    Deny,
}

impl Cors {
    /// Whether responses depend on the request's `Origin`.
    fn varies(&self) -> bool {
        !matches!(self.origins, Origins::Any) || self.regexes.is_some()
    }

    fn decide(&self, req: &Request) -> Decision {
        let mut all = req.headers().get_all(header::ORIGIN);
        let origin = match (all.next(), all.next()) {
            (Some(o), None) => o.to_str().ok(),
            _ => None,
        };
        if matches!(self.origins, Origins::Any) && self.regexes.is_none() {
            return Decision::Allow(HeaderValue::from_static("*"));
        }
        let Some(origin) = origin else {
            return Decision::Deny;
        };
        let echo = || match HeaderValue::from_str(origin) {
            Ok(v) => Decision::Allow(v),
            Err(_) => Decision::Deny,
        };
        if origin == "null" {
            return match &self.origins {
                Origins::List(l) if l.iter().any(|o| o == "null") => echo(),
                _ => Decision::Deny,
            };
        }
        let Some(normal) = parse_origin(origin) else {
            return Decision::Deny;
        };
        if let Origins::List(l) = &self.origins {
            if l.contains(&normal) {
                return echo();
            }
        }
        match &self.regexes {
            Some(res) => {
                if res.iter().any(|r| r.is_match(&normal)) {
                    echo()
                } else {
                    Decision::Deny
                }
            }
            None if matches!(self.origins, Origins::Echo) => echo(),
            None => Decision::Deny,
        }
    }

    /// The answer to a preflight: 200, empty, allow headers when allowed.
    fn preflight(&self, req: &Request) -> HttpResponse {
        let mut out = HttpResponse::build(StatusCode::OK);
        out.insert_header((header::VARY, HeaderValue::from_static("Origin")));
        if let Decision::Allow(origin) = self.decide(req) {
            out.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
            if self.credential {
                out.insert_header((
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            out.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone()));
            let requested = requested_headers(req);
            let allow_headers = match &self.headers {
                AllowHeaders::List(v) => Some(v.clone()),
                AllowHeaders::Star => requested.or(Some(HeaderValue::from_static("*"))),
                AllowHeaders::Echo => requested,
            };
            if let Some(h) = allow_headers {
                out.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
            }
            out.insert_header((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        }
        out.finish()
    }

    /// Headers for the answer to any other request.
    fn simple(&self, req: &Request, to: &mut HeaderMap) {
        let has_origin = req.headers().contains_key(header::ORIGIN);
        if self.varies() && has_origin {
            to.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Decision::Allow(origin) = self.decide(req) {
            to.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            if self.credential {
                to.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(e) = &self.expose {
                to.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
            }
        }
    }
}

/// A real preflight: `OPTIONS` with both `Origin` and
/// `Access-Control-Request-Method`.
fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// `Access-Control-Request-Headers`, when it is one well-formed list.
fn requested_headers(req: &Request) -> Option<HeaderValue> {
    let name = HeaderName::from_static("access-control-request-headers");
    let mut all = req.headers().get_all(name);
    let v = match (all.next(), all.next()) {
        (Some(v), None) => v,
        _ => return None,
    };
    let s = v.to_str().ok()?;
    token_list(s, "").ok()?;
    Some(v.clone())
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
        let result = if is_preflight(ctx.req) {
            Err(self.preflight(ctx.req))
        } else {
            self.simple(ctx.req, ctx.response_headers);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn origins_parse_strictly() {
        for ok in [
            "http://spa.example.test",
            "https://a.b:8443",
            "http://[::1]:8080",
            "http://127.0.0.1",
            "HTTP://SPA.Example.Test",
        ] {
            assert!(parse_origin(ok).is_some(), "{ok}");
        }
        for bad in [
            "null",
            "spa.example.test",
            "http://",
            "http://a/",
            "http://a/b",
            "http://u@a",
            "http://a:",
            "http://a:99999",
            "http://a b",
            "http://evil.example/http://spa.example.test",
            "http://a?x",
            "http://[::1",
            "http://[::1]x",
        ] {
            assert!(parse_origin(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn checks_speak_apisix() {
        assert!(check(&json!({})).is_ok());
        assert_eq!(
            check(&json!({"allow_credential": true})).unwrap_err(),
            "you can not set '*' for other option when 'allow_credential' is true"
        );
        assert!(check(&json!({
            "allow_origins": "http://a.test", "allow_methods": "GET,POST",
            "allow_headers": "Authorization, Content-Type", "allow_credential": true
        }))
        .is_ok());
        assert!(check(&json!({"allow_origins": "http://a.test, http://b.test"})).is_err());
        assert!(check(&json!({"allow_origins": "http://a.test/"})).is_err());
        assert!(check(&json!({"allow_origins_by_regex": ["a)|(b"]})).is_err());
        assert!(check(&json!({"allow_origins_by_regex": ["(?=x)"]})).is_err());
        assert!(check(&json!({"allow_origins_by_regex": ["x{1000}{1000}"]})).is_err());
        assert!(check(&json!({"max_age": -2})).is_err());
        assert!(check(&json!({"allow_origins_by_metadata": ["EX"]})).is_err());
        assert!(check(&json!({"allow_methods": "GET\r\nX: y"})).is_err());
    }

    #[test]
    fn regexes_are_anchored() {
        let r = compile(r"http://spa\.example\.test").unwrap();
        assert!(r.is_match("http://spa.example.test"));
        assert!(!r.is_match("http://spa.example.test.evil.example"));
        assert!(!r.is_match("http://x.http://spa.example.test"));
    }
}
