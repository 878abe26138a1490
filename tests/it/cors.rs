//! The `cors` plugin: configuration checks, preflights answered at the
//! gateway before any authentication (K18, case B40), exact origin
//! matching, regex origins and credentials mode.

use serde_json::{json, Value};

use crate::support::{raw_request, EchoUpstream, Gateway, Resp};

const SPA: &str = "http://spa.example.test";

/// B40's `cors` configuration.
fn b40_cors() -> Value {
    json!({
        "allow_origins": SPA,
        "allow_methods": "GET,POST",
        "allow_headers": "Authorization,Content-Type",
        "allow_credential": true
    })
}

/// Bearer-only `openid-connect` against a provider that cannot be reached:
/// any call to it would fail, so an answer that needs none proves none was
/// made.
fn oidc_bearer() -> Value {
    json!({
        "client_id": "gw-client",
        "client_secret": "gw-secret-123",
        "discovery": "http://127.0.0.1:1/.well-known/openid-configuration",
        "bearer_only": true,
        "use_jwks": true
    })
}

fn route(up: &EchoUpstream, uri: &str, plugins: Value) -> Value {
    json!({
        "uri": uri,
        "plugins": plugins,
        "upstream": {"type": "roundrobin", "nodes": {up.node(): 1}}
    })
}

/// A browser's preflight for `method` from `origin`.
fn preflight(gw: &Gateway, path: &str, origin: &str, method: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![
        ("Origin", origin),
        ("Access-Control-Request-Method", method),
    ];
    headers.extend_from_slice(extra);
    gw.proxy("OPTIONS", path, &headers)
}

/// Every `access-control-*` and `vary` header, sorted, for exact checks.
fn cors_headers(r: &Resp) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            n.starts_with("access-control-") || n == "vary"
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    h
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn put_refused(gw: &Gateway, id: &str, up: &EchoUpstream, conf: Value) -> String {
    let r = gw.admin(
        "PUT",
        &format!("/apisix/admin/routes/{id}"),
        Some(route(up, "/x", json!({ "cors": conf }))),
    );
    assert_eq!(r.status, 400, "accepted {conf}: {}", r.body);
    let msg = r.json()["error_msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_msg: {}", r.body))
        .to_string();
    msg.strip_prefix("failed to check the configuration of plugin cors err: ")
        .unwrap_or_else(|| panic!("unexpected error_msg: {msg}"))
        .to_string()
}

#[test]
fn configuration_errors_are_refused_in_apisix_words() {
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    let star = "you can not set '*' for other option when 'allow_credential' is true";

    let exact: Vec<(Value, String)> = vec![
        // Credentials with any `*`, defaults included.
        (json!({"allow_credential": true}), star.into()),
        (
            json!({"allow_origins": SPA, "allow_credential": true,
                   "allow_methods": "GET", "allow_headers": "*"}),
            star.into(),
        ),
        (
            json!({"allow_origins": "*", "allow_credential": true,
                   "allow_methods": "GET", "allow_headers": "X-A"}),
            star.into(),
        ),
        (
            json!({"allow_origins": SPA, "allow_credential": true, "allow_methods": "GET",
                   "allow_headers": "X-A", "expose_headers": "*"}),
            star.into(),
        ),
        // APISIX's pattern: no spaces after commas, `*`/`**`/`null` alone.
        (
            json!({"allow_origins": "http://a.test, http://b.test"}),
            "property \"allow_origins\" validation failed: failed to match pattern \
             \"^(\\*|\\*\\*|null|\\w+://[^,]+(,\\w+://[^,]+)*)$\" with \"http://a.test, http://b.test\""
                .into(),
        ),
        (
            json!({"allow_origins": "http://a.test,*"}),
            "property \"allow_origins\" validation failed: failed to match pattern \
             \"^(\\*|\\*\\*|null|\\w+://[^,]+(,\\w+://[^,]+)*)$\" with \"http://a.test,*\""
                .into(),
        ),
        // Stricter than APISIX: an entry with a path never matches a browser's Origin.
        (
            json!({"allow_origins": "http://spa.example.test/"}),
            "property \"allow_origins\" validation failed: \"http://spa.example.test/\" is not \
             an origin: expected scheme://host[:port], without path, user or spaces"
                .into(),
        ),
        (
            json!({"max_age": "5"}),
            "property \"max_age\" validation failed: wrong type: expected integer, got string".into(),
        ),
        (
            json!({"max_age": -2}),
            "property \"max_age\" validation failed: expected -2 to be at least -1".into(),
        ),
        (
            json!({"allow_credential": "yes"}),
            "property \"allow_credential\" validation failed: wrong type: expected boolean, got string"
                .into(),
        ),
        (
            json!({"allow_methods": "GET;POST"}),
            "property \"allow_methods\" validation failed: \"GET;POST\" is not a comma-separated \
             list of method names"
                .into(),
        ),
        (
            json!({"allow_headers": "X-A\r\nSet-Cookie: a=b"}),
            "property \"allow_headers\" validation failed: \"X-A\r\nSet-Cookie: a=b\" is not a \
             comma-separated list of header names"
                .into(),
        ),
        (
            json!({"allow_origins_by_regex": []}),
            "property \"allow_origins_by_regex\" validation failed: expect array to have at least 1 items"
                .into(),
        ),
        (
            json!({"allow_origins_by_regex": ["a", "a"]}),
            "property \"allow_origins_by_regex\" validation failed: expected unique items but \
             items 1 and 2 are equal"
                .into(),
        ),
        (
            json!({"allow_origins_by_metadata": ["EXAMPLE"]}),
            "property \"allow_origins_by_metadata\" validation failed: not supported: there is \
             no plugin metadata; list the origins in allow_origins"
                .into(),
        ),
        (
            json!({"allow_origin": "*"}),
            "additional properties forbidden, found allow_origin".into(),
        ),
        (
            json!("*"),
            "wrong type: expected object, got string".into(),
        ),
    ];
    let refused = exact.len();
    for (i, (conf, want)) in exact.into_iter().enumerate() {
        assert_eq!(
            put_refused(&gw, &format!("bad{i}"), &up, conf.clone()),
            want,
            "{conf}"
        );
    }

    // Regexes are compiled at write time: syntax errors, constructs the
    // engine lacks, a group that would escape the anchoring, and
    // oversized programs are all refused.
    for re in [
        "(unclosed",
        "(?=lookahead)",
        r"(a)\1",
        "a)|(b",
        "x{1000}{1000}",
    ] {
        let msg = put_refused(&gw, "badre", &up, json!({"allow_origins_by_regex": [re]}));
        let prefix = format!(
            "property \"allow_origins_by_regex\" validation failed: failed to validate item 1: \
             invalid regex \"{re}\": "
        );
        assert!(msg.starts_with(&prefix), "{re}: {msg}");
    }

    // Nothing refused was stored.
    for i in 0..refused {
        assert_eq!(
            gw.admin("GET", &format!("/apisix/admin/routes/bad{i}"), None)
                .status,
            404
        );
    }

    // Valid ones are accepted.
    for conf in [
        json!({}),
        b40_cors(),
        json!({"allow_origins": "**", "allow_credential": true, "allow_methods": "**",
               "allow_headers": "**", "expose_headers": "X-Request-Id, X-Total"}),
        json!({"allow_origins": "null", "max_age": -1}),
        json!({"allow_origins_by_regex": [r"https://[a-z]+\.example\.test"],
               "allow_credential": true, "allow_methods": "GET", "allow_headers": "X-A"}),
        json!({"allow_origins": "http://a.test:8080,https://[::1]:8443,http://127.0.0.1"}),
    ] {
        gw.put_route("good", route(&up, "/x", json!({ "cors": conf })));
    }
}

#[test]
fn preflight_is_answered_with_exact_headers_and_never_forwarded() {
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    let mut conf = b40_cors();
    conf["max_age"] = json!(600);
    conf["expose_headers"] = json!("X-Request-Id");
    gw.put_route("b40", route(&up, "/app/*", json!({ "cors": conf })));
    gw.put_route("any", route(&up, "/open/*", json!({"cors": {}})));

    let r = preflight(
        &gw,
        "/app/data",
        SPA,
        "POST",
        &[("Access-Control-Request-Headers", "authorization")],
    );
    r.expect_status(200);
    assert_eq!(r.body, "");
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", SPA),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-headers", "Authorization,Content-Type"),
            ("access-control-max-age", "600"),
            ("vary", "Origin"),
        ])
    );
    assert_eq!(r.header("location"), None);

    // Defaults: `*` everywhere; `*` headers echo what was asked for (a
    // wildcard would not cover Authorization), else say `*`.
    let r = preflight(
        &gw,
        "/open/x",
        "http://elsewhere.example",
        "PUT",
        &[("Access-Control-Request-Headers", "authorization,x-custom")],
    );
    r.expect_status(200);
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "*"),
            ("access-control-allow-headers", "authorization,x-custom"),
            ("access-control-max-age", "5"),
            ("vary", "Origin"),
        ])
    );
    let r = preflight(&gw, "/open/x", "http://elsewhere.example", "GET", &[]);
    assert_eq!(r.header("access-control-allow-headers"), Some("*"));
    // A requested-headers value that is not a list of names is not echoed.
    let r = preflight(
        &gw,
        "/open/x",
        "http://elsewhere.example",
        "GET",
        &[("Access-Control-Request-Headers", "x-a; y=\"b\"")],
    );
    assert_eq!(r.header("access-control-allow-headers"), Some("*"));

    assert_eq!(
        up.count(),
        0,
        "a preflight reached the upstream: {:?}",
        up.requests()
    );

    // A normal request from the allowed origin is forwarded and its answer
    // carries the CORS headers; nothing CORS-specific goes upstream.
    let r = gw.proxy("GET", "/app/data", &[("Origin", SPA)]);
    r.expect_status(200);
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", SPA),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "X-Request-Id"),
            ("vary", "Origin"),
        ])
    );
    assert_eq!(up.count(), 1);
    // `*` mode: every answer says `*`, with or without Origin, and needs no Vary.
    let r = gw.proxy("GET", "/open/x", &[]);
    assert_eq!(
        cors_headers(&r),
        pairs(&[("access-control-allow-origin", "*")])
    );
}

#[test]
fn k18_b40_preflight_is_answered_before_openid_connect() {
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "r-jwt",
        route(
            &up,
            "/app/*",
            json!({"cors": b40_cors(), "openid-connect": oidc_bearer()}),
        ),
    );
    // The same with browser sign-in (R-CODE): a preflight must not become a
    // login redirect.
    gw.put_route(
        "r-code",
        route(
            &up,
            "/web/*",
            json!({"cors": b40_cors(), "openid-connect": {
                "client_id": "gw-client",
                "client_secret": "gw-secret-123",
                "discovery": "http://127.0.0.1:1/.well-known/openid-configuration",
                "redirect_uri": "http://127.0.0.1/web/callback"
            }}),
        ),
    );

    for path in ["/app/data", "/web/data"] {
        // 1. The preflight: answered here, no redirect, no token demand.
        let r = preflight(
            &gw,
            path,
            SPA,
            "POST",
            &[(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )],
        );
        r.expect_status(200);
        assert_eq!(r.header("access-control-allow-origin"), Some(SPA), "{path}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("Authorization,Content-Type")
        );
        assert_eq!(r.header("location"), None, "{path}");
        assert_eq!(r.header("www-authenticate"), None, "{path}");
        assert_eq!(r.header("set-cookie"), None, "{path}");
        assert_eq!(r.body, "");

        // A preflight from another origin is also answered here, without
        // the allow headers, so the browser stops; still no auth.
        let r = preflight(&gw, path, "http://evil.example", "POST", &[]);
        r.expect_status(200);
        assert_eq!(cors_headers(&r), pairs(&[("vary", "Origin")]), "{path}");
        assert_eq!(r.header("location"), None);
        assert_eq!(r.header("www-authenticate"), None);
    }

    // 2. The SPA's XHR without a valid token: 401, readable by the SPA.
    for (path, cookie) in [
        ("/app/data", None),
        ("/web/data", Some("portcullis_session=expired-session-id")),
    ] {
        let mut headers = vec![("Origin", SPA), ("X-Requested-With", "XMLHttpRequest")];
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        let r = gw.proxy("GET", path, &headers);
        r.expect_status(401);
        assert_eq!(r.header("location"), None, "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some(SPA), "{path}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header_all("vary"), vec!["Origin"]);
    }
    let r = gw.proxy("GET", "/app/data", &[("Origin", SPA)]);
    r.expect_status(401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    assert_eq!(r.header("access-control-allow-origin"), Some(SPA));
    // A bad token is refused the same way, CORS headers included.
    let r = gw.proxy(
        "GET",
        "/app/data",
        &[("Origin", SPA), ("Authorization", "Bearer not.a.jwt")],
    );
    r.expect_status(401);
    assert_eq!(r.header("access-control-allow-origin"), Some(SPA));

    // Only a real preflight skips auth: a bare OPTIONS, or one missing
    // either header, is an ordinary request and needs a token.
    for headers in [
        vec![],
        vec![("Origin", SPA)],
        vec![("Access-Control-Request-Method", "POST")],
    ] {
        let r = gw.proxy("OPTIONS", "/app/data", &headers);
        r.expect_status(401);
        assert!(r.header("www-authenticate").is_some(), "{headers:?}");
        let want = headers.iter().any(|(n, _)| *n == "Origin").then_some(SPA);
        assert_eq!(r.header("access-control-allow-origin"), want, "{headers:?}");
        assert_eq!(r.header("access-control-allow-methods"), None);
    }
    // A preflight-looking GET is not a preflight either.
    let r = gw.proxy(
        "GET",
        "/app/data",
        &[("Origin", SPA), ("Access-Control-Request-Method", "GET")],
    );
    r.expect_status(401);

    assert_eq!(
        up.count(),
        0,
        "the upstream was reached: {:?}",
        up.requests()
    );
}

#[test]
fn disallowed_and_look_alike_origins_get_no_allow_origin() {
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "list",
        route(
            &up,
            "/app/*",
            json!({"cors": {"allow_origins": "http://spa.example.test,https://app.example.test:8443",
                            "expose_headers": "X-Request-Id"}}),
        ),
    );
    gw.put_route(
        "null",
        route(
            &up,
            "/sandbox/*",
            json!({"cors": {"allow_origins": "null"}}),
        ),
    );

    for origin in [
        SPA,
        "https://app.example.test:8443",
        "HTTP://SPA.EXAMPLE.TEST",
    ] {
        let r = gw.proxy("GET", "/app/x", &[("Origin", origin)]);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{origin}"
        );
        let r = preflight(&gw, "/app/x", origin, "GET", &[]);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{origin}"
        );
    }

    let look_alikes = [
        "http://spa.example.test.evil.example",
        "http://evil.example/http://spa.example.test",
        "http://spa.example.test@evil.example",
        "http://evil.example?http://spa.example.test",
        "http://spa.example.test/",
        "http://spa.example.test:80",
        "http://spa.example.test:8080",
        "https://spa.example.test",
        "http://xspa.example.test",
        "http://spa.example.tes",
        "spa.example.test",
        "https://app.example.test",
        "http://spa.example.test,http://evil.example",
        "http://spa.example.test http://evil.example",
        "null",
        "*",
        "",
    ];
    for origin in look_alikes {
        // The request itself is not blocked (browsers do that), but the
        // answer does not let the page read it.
        let r = gw.proxy("GET", "/app/x", &[("Origin", origin)]);
        r.expect_status(200);
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin:?}");
        assert_eq!(
            r.header("access-control-expose-headers"),
            None,
            "{origin:?}"
        );
        assert_eq!(r.header_all("vary"), vec!["Origin"], "{origin:?}");
        let r = preflight(&gw, "/app/x", origin, "GET", &[]);
        r.expect_status(200);
        assert_eq!(cors_headers(&r), pairs(&[("vary", "Origin")]), "{origin:?}");
    }
    // No Origin: nothing CORS at all.
    let r = gw.proxy("GET", "/app/x", &[]);
    assert_eq!(cors_headers(&r), vec![]);

    // Two Origin headers are ambiguous: not allowed.
    let raw = raw_request(
        gw.proxy_addr(),
        format!(
            "GET /app/x HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {SPA}\r\nOrigin: {SPA}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let part = &raw.responses()[0];
    assert_eq!(
        part.header("access-control-allow-origin"),
        None,
        "{}",
        raw.text
    );

    // `null` only where it is the configured origin.
    let r = gw.proxy("GET", "/sandbox/x", &[("Origin", "null")]);
    assert_eq!(r.header("access-control-allow-origin"), Some("null"));
    let r = gw.proxy("GET", "/sandbox/x", &[("Origin", SPA)]);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn regex_origins_must_match_the_whole_origin() {
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "re",
        route(
            &up,
            "/re/*",
            json!({"cors": {
                "allow_origins": "https://listed.example.test",
                "allow_origins_by_regex": [r"https://[a-z0-9-]+\.example\.test", r"http://localhost:\d+"]
            }}),
        ),
    );
    // The default `*` is ignored once regexes are set.
    gw.put_route(
        "re-default",
        route(
            &up,
            "/red/*",
            json!({"cors": {"allow_origins_by_regex": [r"http://spa\.example\.test"]}}),
        ),
    );

    for origin in [
        "https://a.example.test",
        "https://a-1.example.test",
        "http://localhost:3000",
        "https://listed.example.test",
    ] {
        let r = gw.proxy("GET", "/re/x", &[("Origin", origin)]);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{origin}"
        );
        assert_eq!(r.header_all("vary"), vec!["Origin"]);
        let r = preflight(&gw, "/re/x", origin, "GET", &[]);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(origin),
            "{origin}"
        );
    }
    for origin in [
        "https://a.example.test.evil.example",
        "https://evil.example/https://a.example.test",
        "https://evil.example#https://a.example.test",
        "https://a.b.example.test",
        "http://a.example.test",
        "http://localhost:3000/x",
        "http://localhost",
        "xhttp://localhost:1",
        "null",
    ] {
        let r = gw.proxy("GET", "/re/x", &[("Origin", origin)]);
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        let r = preflight(&gw, "/re/x", origin, "GET", &[]);
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }

    let r = gw.proxy("GET", "/red/x", &[("Origin", SPA)]);
    assert_eq!(r.header("access-control-allow-origin"), Some(SPA));
    for origin in [
        "http://other.example",
        "http://spa.example.test.evil.example",
    ] {
        let r = gw.proxy("GET", "/red/x", &[("Origin", origin)]);
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }
}

#[test]
fn credentials_mode_echoes_the_exact_origin_and_never_a_wildcard() {
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    gw.put_route(
        "forced",
        route(
            &up,
            "/forced/*",
            json!({"cors": {"allow_origins": "**", "allow_credential": true,
                            "allow_methods": "**", "allow_headers": "**"}}),
        ),
    );
    gw.put_route("b40", route(&up, "/app/*", json!({ "cors": b40_cors() })));

    for origin in [SPA, "https://other.example:8443", "http://127.0.0.1:5173"] {
        let r = gw.proxy("GET", "/forced/x", &[("Origin", origin)]);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        let r = preflight(
            &gw,
            "/forced/x",
            origin,
            "DELETE",
            &[("Access-Control-Request-Headers", "authorization")],
        );
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization")
        );
    }
    // `**` echoes nothing when nothing was asked for.
    let r = preflight(&gw, "/forced/x", SPA, "GET", &[]);
    assert_eq!(r.header("access-control-allow-headers"), None);
    // No Origin, a `null` one or a malformed one: no allow headers, never `*`.
    for headers in [
        vec![],
        vec![("Origin", "null")],
        vec![("Origin", "http://a/b")],
    ] {
        for path in ["/forced/x", "/app/x"] {
            let r = gw.proxy("GET", path, &headers);
            assert_eq!(
                r.header("access-control-allow-origin"),
                None,
                "{path} {headers:?}"
            );
            assert_eq!(r.header("access-control-allow-credentials"), None);
        }
    }
    // Listed origin with credentials: exactly it.
    let r = gw.proxy("GET", "/app/x", &[("Origin", SPA), ("Cookie", "sid=1")]);
    assert_eq!(r.header("access-control-allow-origin"), Some(SPA));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
}
