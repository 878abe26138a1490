//! Browser sign-in (`openid-connect` with `bearer_only: false`), black-box:
//! the real binary between a cookie-keeping test browser, the real test
//! provider (`tests/idp`, npm `oidc-provider`, driven through its login
//! and consent forms) and an echo upstream. The RP-certification faults
//! the real provider cannot produce use the scripted code-flow provider
//! (`support::fault_op`).
//!
//! Attack kinds K13 (code-flow binding), K14 (redirect targets), K15
//! (session cookie size, sharing, pile-up, huge headers) and cases B11,
//! B28, B30, B31, B33, B34; the LOGIN / ACCEPT / REJECT terms are those of
//! `oidc-rp-tests.md` §1.
//!
//! Redirects are never followed automatically: every hop is asserted.

use std::thread;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::browser::*;
use crate::support::fault_op::{self, parse_form, FaultOp, Grant, E1, K1, K2, KX};
use crate::support::gateway::http_request;
use crate::support::{raw_request, EchoUpstream, Gateway, GatewayOpts, Idp, RawPart, Resp};

const CLIENT: &str = "gw-client";
const SECRET: &str = "gw-secret-123";
const CLIENT_B: &str = "gw-client-b";
const SECRET_B: &str = "gw-secret-b-456";
const COOKIE: &str = "portcullis_session";
const LOGIN_COOKIE: &str = "portcullis_session_login";
const IDENTITY: &[&str] = &[
    "x-access-token",
    "x-id-token",
    "x-userinfo",
    "x-refresh-token",
    "x-raw-id-token",
];

// ---------------------------------------------------------------------------
// the world: gateway, provider, upstream

struct Env {
    gw: Gateway,
    idp: Idp,
    up: EchoUpstream,
}

fn upstream_of(up: &EchoUpstream) -> Value {
    json!({"type": "roundrobin", "nodes": {up.node(): 1}})
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// Provider config: `gw-client` and `gw-client-b` registered with this
/// gateway's redirect URIs (its port is ephemeral), plus `extra`.
fn idp_config(gw: &Gateway, extra: Value) -> String {
    let o = format!("http://127.0.0.1:{}", gw.proxy_addr().port());
    let mut cfg = json!({
        "clients": [
            {
                "client_id": CLIENT,
                "client_secret": SECRET,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "redirect_uris": [
                    format!("{o}/app/callback"),
                    format!("{o}/dflt/page/.apisix/redirect"),
                ],
                "post_logout_redirect_uris": [format!("{o}/bye")],
                "token_endpoint_auth_method": "client_secret_basic",
            },
            {
                "client_id": CLIENT_B,
                "client_secret": SECRET_B,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "redirect_uris": [format!("{o}/other/callback")],
                "token_endpoint_auth_method": "client_secret_basic",
            },
        ],
    });
    merge(&mut cfg, extra);
    cfg.to_string()
}

/// The `openid-connect` configuration of `/app/*`, plus `extra`.
fn oidc_conf(gw: &Gateway, discovery: &str, extra: Value) -> Value {
    let mut c = json!({
        "client_id": CLIENT,
        "client_secret": SECRET,
        "discovery": discovery,
        "bearer_only": false,
        "scope": "openid email profile",
        "redirect_uri": "/app/callback",
        "logout_path": "/app/logout",
        "post_logout_redirect_uri": format!("http://127.0.0.1:{}/bye", gw.proxy_addr().port()),
        "use_pkce": true,
    });
    merge(&mut c, extra);
    c
}

fn route(uri: &str, up: &EchoUpstream, conf: Value) -> Value {
    json!({"uri": uri, "plugins": {"openid-connect": conf}, "upstream": upstream_of(up)})
}

/// Gateway (with `opts`), then the provider (it needs the gateway's
/// port), then the routes `/app/*` (with `oidc_extra`) and `/bye`.
fn env_with(opts: GatewayOpts, idp_extra: Value, oidc_extra: Value) -> Env {
    let up = EchoUpstream::start();
    let gw = Gateway::start_with(opts);
    let idp = Idp::start_with(&idp_config(&gw, idp_extra));
    let conf = oidc_conf(&gw, &idp.discovery_url(), oidc_extra);
    gw.put_route("app", route("/app/*", &up, conf));
    gw.put_route("bye", json!({"uri": "/bye", "upstream": upstream_of(&up)}));
    Env { gw, idp, up }
}

fn env() -> Env {
    env_with(GatewayOpts::new(), json!({}), json!({}))
}

impl Env {
    fn url(&self, path: &str) -> String {
        self.gw.proxy_url(path)
    }

    fn auth_prefix(&self) -> String {
        self.idp.url("/auth?")
    }

    fn callback_prefix(&self) -> String {
        self.url("/app/callback?")
    }

    /// An unauthenticated navigation that must be sent to sign in; returns
    /// the authorization URL.
    fn start_login(&self, b: &mut Browser, path: &str) -> String {
        let r = b.nav(&self.url(path));
        assert_eq!(
            r.status, 302,
            "GET {path} should redirect to sign in: {:?} {}",
            r.headers, r.body
        );
        let loc = r
            .header("location")
            .expect("302 has a Location")
            .to_string();
        assert!(
            loc.starts_with(&self.auth_prefix()),
            "GET {path}: Location {loc} is not the provider's /auth"
        );
        loc
    }

    /// Runs the provider's side of a login from `auth_url` until the
    /// provider sends the browser away; returns where it goes.
    fn authenticate(&self, b: &mut Browser, auth_url: &str, user: &str) -> String {
        idp_authenticate(b, &self.idp, auth_url, user)
    }

    /// LOGIN up to the callback's answer (asserted 302).
    fn login(&self, b: &mut Browser, path: &str, user: &str) -> Resp {
        let auth = self.start_login(b, path);
        let cb = self.authenticate(b, &auth, user);
        assert!(
            cb.starts_with(&self.callback_prefix()),
            "the provider sent the browser to {cb}"
        );
        let r = b.nav(&cb);
        assert_eq!(
            r.status,
            302,
            "callback refused: {:?} {}\n{}",
            r.headers,
            r.body,
            self.gw.logs()
        );
        r
    }
}

fn idp_authenticate(b: &mut Browser, idp: &Idp, auth_url: &str, user: &str) -> String {
    let mut url = auth_url.to_string();
    for _ in 0..12 {
        if !url.starts_with(idp.issuer()) {
            return url;
        }
        let r = b.nav(&url);
        match r.status {
            302 | 303 => {
                url = absolute(idp.issuer(), r.header("location").expect("Location"));
            }
            200 => {
                let prompt = hidden_value(&r.body, "prompt")
                    .unwrap_or_else(|| panic!("no prompt form at {url}: {}", r.body));
                let action = form_action(&r.body).unwrap_or_else(|| url.clone());
                let form: Vec<(&str, &str)> = if prompt == "login" {
                    vec![("prompt", "login"), ("login", user), ("password", "x")]
                } else {
                    vec![("prompt", prompt.as_str())]
                };
                let p = b.post_form(&absolute(idp.issuer(), &action), &form);
                assert!(
                    p.status == 303 || p.status == 302,
                    "POST {action} answered {}: {}",
                    p.status,
                    p.body
                );
                url = absolute(idp.issuer(), p.header("location").expect("Location"));
            }
            s => panic!(
                "provider answered {s} at {url}: {}\n{}",
                r.body,
                idp.stderr()
            ),
        }
    }
    panic!("the provider never sent the browser back (last {url})")
}

fn hits(idp: &Idp, path: &str) -> u64 {
    idp.hits(path)
}

// ---------------------------------------------------------------------------
// full login

#[test]
fn full_login_lands_on_the_original_url_with_a_small_session_cookie_and_identity_headers() {
    let env = env();
    let mut b = Browser::new();
    b.set_cookie("theme", "dark");

    // 1. Unauthenticated navigation → 302 to the provider.
    let target = "/app/page?x=1&y=%2Fz";
    let r = b.nav(&env.url(target));
    assert_eq!(r.status, 302, "{:?} {}", r.headers, r.body);
    assert_eq!(
        env.up.count(),
        0,
        "nothing reaches the upstream before sign-in"
    );
    let auth = r.header("location").unwrap().to_string();
    assert!(auth.starts_with(&env.auth_prefix()), "{auth}");
    let q = query_of(&auth);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT);
    assert_eq!(q["redirect_uri"], env.url("/app/callback"));
    assert!(q["scope"].split(' ').any(|s| s == "openid"), "{q:?}");
    let (state, nonce) = (q["state"].clone(), q["nonce"].clone());
    assert!(state.len() >= 32, "state too short: {state}");
    assert!(
        (22..=43).contains(&nonce.len()),
        "nonce of {} chars",
        nonce.len()
    );
    assert!(nonce
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    assert_eq!(q["code_challenge"].len(), 43, "{q:?}");
    assert_eq!(q["code_challenge_method"], "S256");
    let login_line = set_cookie(r.header_all("set-cookie"), LOGIN_COOKIE)
        .expect("the redirect sets the login cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(has_attr(login_line, attr), "{attr} missing: {login_line}");
    }
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // A second sign-in, elsewhere, gets its own state and nonce.
    let other = env.start_login(&mut Browser::new(), "/app/page");
    let oq = query_of(&other);
    assert_ne!(oq["state"], state);
    assert_ne!(oq["nonce"], nonce);
    assert_ne!(oq["code_challenge"], q["code_challenge"]);

    // 2. The provider's forms; it sends the browser back with code + state.
    let cb = env.authenticate(&mut b, &auth, "alice");
    assert!(cb.starts_with(&env.callback_prefix()), "{cb}");
    let cq = query_of(&cb);
    assert_eq!(cq["state"], state);
    assert!(!cq["code"].is_empty());
    let token_calls = hits(&env.idp, "/token");
    assert_eq!(token_calls, 0);

    // 3. The callback: back to the original URL with a session cookie.
    let r = b.nav(&cb);
    assert_eq!(
        r.status,
        302,
        "{:?} {}\n{}",
        r.headers,
        r.body,
        env.gw.logs()
    );
    assert_eq!(r.header("location"), Some(target));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let line = set_cookie(r.header_all("set-cookie"), COOKIE).expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(has_attr(line, attr), "{attr} missing: {line}");
    }
    let value = cookie_value(line);
    eprintln!(
        "session cookie: value {} bytes, Set-Cookie line {} bytes: {line}",
        value.len(),
        line.len()
    );
    assert!(
        value.len() < 100,
        "session cookie value of {} bytes",
        value.len()
    );
    assert!(line.len() <= 4096);
    assert_eq!(hits(&env.idp, "/token"), 1, "one code exchange");
    assert_eq!(hits(&env.idp, "/me"), 1, "one userinfo call");

    // 4. The page: served by the upstream with the identity.
    let r = b.nav(&env.url(target));
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.body);
    assert_eq!(r.header("x-echo-server"), Some("echo"));
    let seen = env.up.last().expect("the upstream got the request");
    assert_eq!(seen.raw_target, target);
    let at = seen.header("x-access-token").expect("X-Access-Token");
    let introspected = env.idp.introspect(CLIENT, SECRET, at);
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["sub"], "alice");
    let id = b64_json(seen.header("x-id-token").expect("X-ID-Token"));
    assert_eq!(id["sub"], "alice", "{id}");
    assert_eq!(id["nonce"], nonce.as_str());
    let info = b64_json(seen.header("x-userinfo").expect("X-Userinfo"));
    assert_eq!(info["sub"], "alice", "{info}");
    assert_eq!(info["email"], "alice@example.test", "{info}");
    let cookies = seen.header_all("cookie").join("; ");
    assert!(
        cookies.contains("theme=dark"),
        "other cookies pass: {cookies}"
    );
    assert!(
        !cookies.contains(COOKIE),
        "the session cookie must not reach the upstream: {cookies}"
    );
    assert!(!cookies.contains(value));
    assert_eq!(hits(&env.idp, "/token"), 1, "no token call per request");
}

// ---------------------------------------------------------------------------
// unauthenticated requests

#[test]
fn api_calls_get_401_json_and_only_navigations_are_sent_to_sign_in() {
    let env = env();
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "fetch",
            &[
                ("Sec-Fetch-Mode", "cors"),
                ("Sec-Fetch-Dest", "empty"),
                ("Accept", "text/html"),
            ],
        ),
        ("json", &[("Accept", "application/json")]),
        (
            "xhr",
            &[
                ("X-Requested-With", "XMLHttpRequest"),
                ("Accept", "text/html"),
            ],
        ),
    ];
    for (label, headers) in cases {
        let mut b = Browser::new();
        let r = b.get(&env.url("/app/data?id=1"), headers);
        assert_eq!(r.status, 401, "{label}: {:?} {}", r.headers, r.body);
        assert!(r.header("location").is_none(), "{label}: no redirect");
        assert!(r.header_all("set-cookie").is_empty(), "{label}: no cookie");
        assert!(r.header("content-type").unwrap_or("").contains("json"));
        assert!(r.json()["error"].is_string(), "{label}: {}", r.body);
    }
    // A real navigation is redirected.
    let mut b = Browser::new();
    let r = b.get(
        &env.url("/app/data"),
        &[
            ("Sec-Fetch-Mode", "navigate"),
            ("Sec-Fetch-Dest", "document"),
            ("Accept", "text/html"),
        ],
    );
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&env.auth_prefix()));
    assert_eq!(env.up.count(), 0);
}

#[test]
fn unauth_action_deny_answers_401_and_pass_forwards_without_any_identity_b11() {
    let env = env();
    let conf = |action: &str| {
        oidc_conf(
            &env.gw,
            &env.idp.discovery_url(),
            json!({"unauth_action": action, "set_refresh_token_header": true, "set_raw_id_token_header": true}),
        )
    };
    env.gw
        .put_route("deny", route("/deny/*", &env.up, conf("deny")));
    env.gw
        .put_route("pass", route("/pass/*", &env.up, conf("pass")));

    let r = Browser::new().nav(&env.url("/deny/page"));
    assert_eq!(r.status, 401, "{:?} {}", r.headers, r.body);
    assert!(r.header("location").is_none());
    assert_eq!(env.up.count(), 0);

    // B11: forged identity headers, one in another letter case, twice.
    let req = "GET /pass/page HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n\
         X-Userinfo: eyJzdWIiOiJhZG1pbiIsImVtYWlsIjoiYWRtaW5AZXhhbXBsZS50ZXN0In0=\r\n\
         X-Access-Token: forged\r\nX-ID-Token: forged\r\nX-Refresh-Token: forged\r\n\
         X-Raw-ID-Token: forged\r\nx-userinfo: lower-case-dup\r\nConnection: close\r\n\r\n";
    let raw = raw_request(env.gw.proxy_addr(), req.as_bytes());
    assert_eq!(raw.status, Some(200), "{}", raw.text);
    let seen = env.up.last().expect("pass forwards");
    for h in IDENTITY {
        assert!(
            seen.header(h).is_none(),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
}

// ---------------------------------------------------------------------------
// refresh

/// The refresh token of a signed-in browser, read where the upstream sees
/// it (`set_refresh_token_header`).
fn page_tokens(env: &Env, b: &mut Browser) -> (String, String) {
    let r = b.nav(&env.url("/app/p"));
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.body);
    let seen = env.up.last().unwrap();
    (
        seen.header("x-access-token").unwrap().to_string(),
        seen.header("x-refresh-token").unwrap().to_string(),
    )
}

#[test]
fn expired_access_tokens_are_refreshed_once_for_concurrent_requests_and_a_failed_refresh_ends_the_session(
) {
    let ttl = 2;
    let env = env_with(
        GatewayOpts::new(),
        json!({"accessTokenTtl": ttl}),
        json!({"set_refresh_token_header": true}),
    );
    // A refreshes; B (navigation) and C (API) have their refresh tokens revoked.
    let mut a = Browser::new();
    let mut nav_b = Browser::new();
    let mut api_c = Browser::new();
    for (b, user) in [
        (&mut a, "alice"),
        (&mut nav_b, "bob"),
        (&mut api_c, "carol"),
    ] {
        env.login(b, "/app/p", user);
    }
    let (a_token, _) = page_tokens(&env, &mut a);
    for b in [&mut nav_b, &mut api_c] {
        let (_, refresh) = page_tokens(&env, b);
        let (status, body) = env.idp.post_as(
            "/token/revocation",
            CLIENT,
            SECRET,
            &[("token", &refresh), ("token_type_hint", "refresh_token")],
        );
        assert_eq!(status, 200, "revocation: {body}");
    }
    let auth_calls = hits(&env.idp, "/auth");

    // The one sleep: let the access tokens expire.
    thread::sleep(Duration::from_secs(ttl + 1));

    // Ten concurrent requests of A: all 200, one refresh, all see the new token.
    let cookie = a.cookie_header("/app/p").unwrap();
    let url = env.url("/app/p");
    let before = hits(&env.idp, "/token");
    let upstream_before = env.up.count();
    let results: Vec<(u16, String)> = thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let (cookie, url) = (cookie.clone(), url.clone());
                s.spawn(move || {
                    let r =
                        http_request(&agent(), "GET", &url, &[("Cookie", &cookie), NAV[0]], None)
                            .expect("request");
                    (r.status, r.body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}\n{}", env.gw.logs());
    }
    assert_eq!(
        hits(&env.idp, "/token") - before,
        1,
        "exactly one refresh for ten concurrent requests"
    );
    assert_eq!(hits(&env.idp, "/auth"), auth_calls, "no new sign-in");
    let seen = env.up.requests()[upstream_before..].to_vec();
    assert_eq!(seen.len(), 10);
    let new_token = seen[0].header("x-access-token").unwrap().to_string();
    assert_ne!(new_token, a_token, "the upstream sees a new access token");
    for r in &seen {
        assert_eq!(r.header("x-access-token"), Some(new_token.as_str()));
    }
    assert_eq!(
        env.idp.introspect(CLIENT, SECRET, &new_token)["active"],
        true
    );

    // A failed refresh ends the session: navigation → sign in, API → 401.
    let r = nav_b.nav(&env.url("/app/p"));
    assert_eq!(r.status, 302, "{:?} {}", r.headers, r.body);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&env.auth_prefix()));
    let r = api_c.get(&env.url("/app/p"), &[("Accept", "application/json")]);
    assert_eq!(r.status, 401, "{:?} {}", r.headers, r.body);
    assert!(r.header("location").is_none());
    // …and for good: the session is gone, not retried.
    let before = hits(&env.idp, "/token");
    let r = api_c.get(&env.url("/app/p"), &[("Accept", "application/json")]);
    assert_eq!(r.status, 401);
    assert_eq!(hits(&env.idp, "/token"), before);
    assert_eq!(env.up.count(), upstream_before + 10);
}

// ---------------------------------------------------------------------------
// logout (B30 / K14)

/// A raw GET (exact target, nothing normalised) with an optional cookie.
fn raw_get(gw: &Gateway, target: &str, cookie: Option<&str>) -> RawPart {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\n{cookie}Connection: close\r\n\r\n",
        gw.proxy_addr()
    );
    let raw = raw_request(gw.proxy_addr(), req.as_bytes());
    raw.responses()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response to GET {target}: {:?}", raw.text))
}

#[test]
fn logout_ends_the_session_and_goes_to_the_configured_end_session_target_only_b30() {
    let env = env_with(
        GatewayOpts::new(),
        json!({}),
        json!({"set_raw_id_token_header": true}),
    );
    let bye = env.url("/bye");
    let mut b = Browser::new();
    let variants = [
        "/app/logout?post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F",
        "/app/logout?post_logout_redirect_uri=https://evil.example/&redirect=https://evil.example/",
        "/app/logout?redirect_uri=/%5Cevil.example/",
        "/app/logout?logout=/\\evil.example",
        "/app/logout?target=%2F%2Fevil.example",
    ];
    for (i, target) in variants.iter().enumerate() {
        env.login(&mut b, "/app/p", "alice");
        let r = b.nav(&env.url("/app/p"));
        assert_eq!(r.status, 200);
        let raw_id = env
            .up
            .last()
            .unwrap()
            .header("x-raw-id-token")
            .unwrap()
            .to_string();
        let old = b.cookie(COOKIE).unwrap();

        let r = raw_get(
            &env.gw,
            target,
            Some(&b.cookie_header("/app/logout").unwrap()),
        );
        assert_eq!(r.status, 302, "{target}: {:?} {}", r.headers, r.body_text());
        let loc = r.header("location").unwrap().to_string();
        assert!(
            loc.starts_with(&env.idp.url("/session/end?")),
            "{target}: {loc}"
        );
        assert!(!loc.contains("evil"), "{target}: {loc}");
        let q = query_of(&loc);
        assert_eq!(q["id_token_hint"], raw_id, "{target}");
        assert_eq!(jwt_claims(&q["id_token_hint"])["sub"], "alice");
        assert_eq!(q["post_logout_redirect_uri"], bye, "{target}");
        assert_eq!(q["client_id"], CLIENT);
        assert!(q["state"].len() >= 22);
        let sc: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        let clear = set_cookie(sc.iter().copied(), COOKIE).expect("the cookie is cleared");
        assert!(clears(clear), "{clear}");
        for line in &sc {
            b.store(line, "/app/logout");
        }
        assert!(b.cookie(COOKIE).is_none());

        // The old cookie is refused from now on.
        let again = raw_get(&env.gw, "/app/p", Some(&format!("{COOKIE}={old}")));
        assert_eq!(again.status, 302, "{target}: old cookie after logout");
        assert!(again
            .header("location")
            .unwrap()
            .starts_with(&env.auth_prefix()));

        // The provider takes the end-session request (id_token_hint and a
        // registered post_logout_redirect_uri) and sends the browser back.
        if i == 0 {
            let page = b.nav(&loc);
            assert_eq!(page.status, 200, "end_session: {}", page.body);
            let xsrf = hidden_value(&page.body, "xsrf").expect("xsrf in the logout form");
            let action = form_action(&page.body).unwrap_or_else(|| "/session/end/confirm".into());
            let done = b.post_form(
                &absolute(env.idp.issuer(), &action),
                &[("xsrf", &xsrf), ("logout", "yes")],
            );
            assert_eq!(done.status, 303, "{}", done.body);
            let back = done.header("location").unwrap();
            assert_eq!(back, format!("{bye}?state={}", q["state"]));
        }
    }
    // Logging out without a session goes to the configured target directly.
    let r = raw_get(
        &env.gw,
        "/app/logout?post_logout_redirect_uri=https://evil.example/",
        None,
    );
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(bye.as_str()));
}

// ---------------------------------------------------------------------------
// K13 / B28: the code flow is bound to the browser that started it

#[test]
fn callbacks_are_single_use_and_bound_to_the_browser_and_the_route_k13_b28() {
    let env = env();
    let other = oidc_conf(
        &env.gw,
        &env.idp.discovery_url(),
        json!({"client_id": CLIENT_B, "client_secret": SECRET_B, "redirect_uri": "/other/callback", "logout_path": "/other/logout"}),
    );
    env.gw.put_route("other", route("/other/*", &env.up, other));
    let token_calls = |env: &Env| hits(&env.idp, "/token");
    let no_session = |r: &Resp, what: &str| {
        let sc = r.header_all("set-cookie");
        assert!(
            set_cookie(sc.iter().copied(), COOKIE).is_none_or(clears),
            "{what}: a session cookie was set: {sc:?}"
        );
        assert!(r.header("location").is_none(), "{what}: {:?}", r.headers);
    };

    // B28.1: a callback with no cookies at all.
    let r = Browser::new().nav(&env.url("/app/callback?code=atk-code&state=anything"));
    assert_eq!(r.status, 400, "{}", r.body);
    no_session(&r, "no cookies");

    // A state that was never issued, from a browser that has a login cookie.
    let mut x = Browser::new();
    env.start_login(&mut x, "/app/p");
    let r = x.nav(&env.url("/app/callback?code=atk-code&state=never-issued"));
    assert_eq!(r.status, 400, "{}", r.body);
    no_session(&r, "unknown state");
    // An empty or missing state.
    for q in ["code=c&state=", "code=c"] {
        let r = x.nav(&env.url(&format!("/app/callback?{q}")));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }
    assert_eq!(token_calls(&env), 0);

    // B28.2: browser A's callback URL delivered in other browsers.
    let mut a = Browser::new();
    let auth_a = env.start_login(&mut a, "/app/from-a");
    let cb_a = env.authenticate(&mut a, &auth_a, "alice");
    assert!(cb_a.starts_with(&env.callback_prefix()));
    let r = Browser::new().nav(&cb_a);
    assert_eq!(
        r.status, 400,
        "another browser without a login cookie: {}",
        r.body
    );
    no_session(&r, "B without cookies");
    let mut c = Browser::new();
    env.start_login(&mut c, "/app/from-c");
    let r = c.nav(&cb_a);
    assert_eq!(
        r.status, 400,
        "another browser with its own login cookie: {}",
        r.body
    );
    no_session(&r, "C with its own flow");
    assert_eq!(token_calls(&env), 0, "the code is never redeemed for them");

    // …and A still completes its own sign-in afterwards.
    let r = a.nav(&cb_a);
    assert_eq!(
        r.status,
        302,
        "A's own callback: {}\n{}",
        r.body,
        env.gw.logs()
    );
    assert_eq!(r.header("location"), Some("/app/from-a"));
    assert!(set_cookie(r.header_all("set-cookie"), COOKIE).is_some());
    assert_eq!(token_calls(&env), 1);

    // B28.3: replaying the same callback is refused, no new session.
    let r = a.nav(&cb_a);
    assert_eq!(r.status, 400, "replay: {}", r.body);
    no_session(&r, "replay");
    assert_eq!(
        token_calls(&env),
        1,
        "a replayed code is not redeemed again"
    );
    assert_eq!(
        a.nav(&env.url("/app/p")).status,
        200,
        "A's session is intact"
    );

    // Code injection: D's code with E's state (both real, both unused).
    // The gateway redeems it with E's PKCE verifier: the provider refuses.
    let mut d = Browser::new();
    let auth_d = env.start_login(&mut d, "/app/p");
    let cb_d = env.authenticate(&mut d, &auth_d, "mallory");
    let mut e = Browser::new();
    let auth_e = env.start_login(&mut e, "/app/p");
    let cb_e = env.authenticate(&mut e, &auth_e, "erin");
    let mixed = format!(
        "/app/callback?code={}&state={}",
        fault_op::percent_encode(&query_of(&cb_d)["code"]),
        fault_op::percent_encode(&query_of(&cb_e)["state"])
    );
    let userinfo = hits(&env.idp, "/me");
    let r = e.nav(&env.url(&mixed));
    assert_eq!(r.status, 401, "injected code: {}", r.body);
    no_session(&r, "injected code");
    assert_eq!(hits(&env.idp, "/me"), userinfo);
    assert_eq!(e.nav(&env.url("/app/p")).status, 302, "E is not signed in");

    // The provider's error with a valid state: 401, no token call.
    let mut f = Browser::new();
    let auth_f = env.start_login(&mut f, "/app/p");
    let state_f = query_of(&auth_f)["state"].clone();
    let before = token_calls(&env);
    let r = f.nav(&env.url(&format!(
        "/app/callback?error=access_denied&error_description=no&state={state_f}"
    )));
    assert_eq!(r.status, 401, "{}", r.body);
    no_session(&r, "access_denied");
    assert_eq!(token_calls(&env), before);

    // A state issued for another route's configuration (another client).
    let mut g = Browser::new();
    let r = g.nav(&env.url("/other/page"));
    assert_eq!(r.status, 302);
    let auth_g = r.header("location").unwrap().to_string();
    let qg = query_of(&auth_g);
    assert_eq!(qg["client_id"], CLIENT_B);
    assert_eq!(qg["redirect_uri"], env.url("/other/callback"));
    let r = g.nav(&env.url(&format!("/app/callback?code=x&state={}", qg["state"])));
    assert_eq!(r.status, 400, "another route's state: {}", r.body);
    no_session(&r, "another route's state");
    assert_eq!(token_calls(&env), before);
    // It still completes where it belongs, and that session is not /app's.
    let cb_g = env.authenticate(&mut g, &auth_g, "gina");
    assert!(cb_g.starts_with(&env.url("/other/callback?")), "{cb_g}");
    let r = g.nav(&cb_g);
    assert_eq!(r.status, 302, "{}\n{}", r.body, env.gw.logs());
    assert_eq!(r.header("location"), Some("/other/page"));
    assert_eq!(g.nav(&env.url("/other/page")).status, 200);
    assert_eq!(
        g.nav(&env.url("/app/p")).status,
        302,
        "a session of client B is not honoured by client A's route"
    );
    assert_eq!(
        env.up.count(),
        2,
        "only the two good sessions reached the upstream"
    );
}

#[test]
fn the_code_cannot_be_redeemed_without_the_pkce_verifier_the_gateway_holds() {
    let env = env();
    let mut b = Browser::new();
    let auth = env.start_login(&mut b, "/app/p");
    let q = query_of(&auth);
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(!q["code_challenge"].is_empty());
    let cb = env.authenticate(&mut b, &auth, "alice");
    let code = query_of(&cb)["code"].clone();

    // Someone holding the code but not the verifier: refused.
    let redirect = env.url("/app/callback");
    let (status, body) = env.idp.post_as(
        "/token",
        CLIENT,
        SECRET,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    // A wrong verifier: refused too.
    let (status, body) = env.idp.post_as(
        "/token",
        CLIENT,
        SECRET,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect),
            (
                "code_verifier",
                "wrong-verifier-wrong-verifier-wrong-verifier-0",
            ),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
}

// ---------------------------------------------------------------------------
// K14 / B31: where the browser is sent after sign-in

#[test]
fn after_sign_in_the_browser_only_ever_goes_to_a_same_origin_path_b31() {
    let env = env();
    let conf = oidc_conf(&env.gw, &env.idp.discovery_url(), json!({}));
    let mut all = route("/*", &env.up, conf);
    all["priority"] = json!(-1);
    env.gw.put_route("all", all);

    // Refused by path canonicalisation before any plugin runs.
    for target in [
        "/\\evil.example",
        "/%5Cevil.example",
        "/%2F%2Fevil.example",
        "/%2f%2fevil.example/x",
        "/app/..%2F..%2Fevil.example",
    ] {
        let r = raw_get(&env.gw, target, None);
        assert_eq!(r.status, 400, "{target}: {:?}", r.body_text());
        assert!(r.header("location").is_none());
    }

    // Accepted in canonical form: the redirect after sign-in is that path
    // (encoded control characters stay encoded: a browser does not strip
    // `%09` the way it strips a raw tab, so the target stays a path here).
    let mut b = Browser::new();
    for (target, want) in [
        ("//evil.example/x", "/evil.example/x"),
        ("///evil.example", "/evil.example"),
        ("/app/..//evil.example/y", "/evil.example/y"),
        ("/./evil.example", "/evil.example"),
        ("/%09/evil.example", "/%09/evil.example"),
        (
            "/%0d%0aLocation:%20http://evil.example",
            "/%0D%0ALocation:%20http:/evil.example",
        ),
        (
            "/app/x?next=//evil.example&u=http://evil.example",
            "/app/x?next=//evil.example&u=http://evil.example",
        ),
    ] {
        let first = raw_get(&env.gw, target, None);
        assert_eq!(first.status, 302, "{target}: {}", first.body_text());
        let auth = first.header("location").unwrap().to_string();
        assert!(auth.starts_with(&env.auth_prefix()), "{target}: {auth}");
        for (n, v) in &first.headers {
            if n.eq_ignore_ascii_case("set-cookie") {
                b.store(v, "/");
            }
        }
        let cb = env.authenticate(&mut b, &auth, "alice");
        let r = b.nav(&cb);
        assert_eq!(r.status, 302, "{target}: {}", r.body);
        let loc = r.header("location").unwrap();
        assert_eq!(loc, want, "{target}");
        assert!(loc.starts_with('/') && !loc.starts_with("//") && !loc.starts_with("/\\"));
        assert!(!loc.contains(['\t', '\r', '\n']));
    }
}

#[test]
fn the_redirect_uri_sent_to_the_provider_ignores_forwarding_headers_k14() {
    let env = env();
    let mut b = Browser::new();
    let r = b.get(
        &env.url("/app/p"),
        &[
            NAV[0],
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "host=evil.example;proto=https"),
        ],
    );
    assert_eq!(r.status, 302);
    let q = query_of(r.header("location").unwrap());
    assert_eq!(
        q["redirect_uri"],
        env.url("/app/callback"),
        "the redirect_uri comes from the request's own Host and connection"
    );
}

#[test]
fn without_a_configured_redirect_uri_the_apisix_default_callback_completes_the_sign_in() {
    let env = env();
    let conf = oidc_conf(&env.gw, &env.idp.discovery_url(), json!({}));
    let mut conf = conf;
    conf.as_object_mut().unwrap().remove("redirect_uri");
    env.gw.put_route("dflt", route("/dflt/*", &env.up, conf));
    let mut b = Browser::new();
    let r = b.nav(&env.url("/dflt/page"));
    assert_eq!(r.status, 302);
    let auth = r.header("location").unwrap().to_string();
    assert_eq!(
        query_of(&auth)["redirect_uri"],
        env.url("/dflt/page/.apisix/redirect")
    );
    let cb = env.authenticate(&mut b, &auth, "alice");
    assert!(
        cb.starts_with(&env.url("/dflt/page/.apisix/redirect?")),
        "{cb}"
    );
    let r = b.nav(&cb);
    assert_eq!(r.status, 302, "{:?} {}", r.headers, r.body);
    assert_eq!(r.header("location"), Some("/dflt/page"));
    assert_eq!(b.nav(&env.url("/dflt/page")).status, 200);
}

// ---------------------------------------------------------------------------
// K15: cookie size, pile-up, huge headers; B33: sharing and restarts

#[test]
fn unfinished_sign_ins_share_one_login_cookie_and_each_can_still_finish_k15() {
    let env = env();
    let mut b = Browser::new();
    let mut auths = Vec::new();
    let mut login_values = Vec::new();
    for i in 0..20 {
        let r = b.nav(&env.url(&format!("/app/p?tab={i}")));
        assert_eq!(r.status, 302);
        let sc = r.header_all("set-cookie");
        assert_eq!(sc.len(), 1, "one cookie per redirect: {sc:?}");
        login_values.push(cookie_value(set_cookie(sc, LOGIN_COOKIE).unwrap()).to_string());
        auths.push(r.header("location").unwrap().to_string());
    }
    login_values.dedup();
    assert_eq!(
        login_values.len(),
        1,
        "the login cookie is reused, not renewed"
    );
    let states: std::collections::HashSet<_> =
        auths.iter().map(|a| query_of(a)["state"].clone()).collect();
    assert_eq!(states.len(), 20, "every sign-in has its own state");
    assert_eq!(b.gateway_cookies().len(), 1, "{:?}", b.jar);

    // Two tabs finish their sign-ins, the later-started one first.
    let cb_last = env.authenticate(&mut b, &auths[19], "alice");
    let cb_first = env.authenticate(&mut b, &auths[0], "alice");
    let r = b.nav(&cb_last);
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.header("location"), Some("/app/p?tab=19"));
    let r = b.nav(&cb_first);
    assert_eq!(r.status, 302, "the other tab's sign-in: {}", r.body);
    assert_eq!(r.header("location"), Some("/app/p?tab=0"));
    assert!(
        b.gateway_cookies().len() <= 2,
        "session + login cookie at most: {:?}",
        b.jar
    );
    assert_eq!(b.nav(&env.url("/app/p")).status, 200);
}

#[test]
fn a_100_kb_cookie_header_is_refused_k15() {
    let env = env();
    let big = "a".repeat(100 * 1024);
    let req = format!(
        "GET /app/p HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n\
         Cookie: x={big}; {COOKIE}=abc\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_request(env.gw.proxy_addr(), req.as_bytes());
    assert!(
        matches!(raw.status, Some(431) | Some(400)),
        "100 KB Cookie header: {:?}",
        raw.text.chars().take(300).collect::<String>()
    );
}

#[test]
fn huge_request_headers_are_refused_without_harm_k15() {
    let env = env();
    let big = "a".repeat(200 * 1024);
    let req = format!(
        "GET /app/p HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n\
         Cookie: x={big}; {COOKIE}=abc\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_request(env.gw.proxy_addr(), req.as_bytes());
    assert!(
        matches!(raw.status, Some(431) | Some(400)),
        "200 KB Cookie header: {:?}",
        raw.text.chars().take(300).collect::<String>()
    );
    // Many Cookie headers.
    let mut req = String::from("GET /app/p HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n");
    for i in 0..120 {
        req.push_str(&format!("Cookie: c{i}={}\r\n", "b".repeat(100)));
    }
    req.push_str("Connection: close\r\n\r\n");
    let raw = raw_request(env.gw.proxy_addr(), req.as_bytes());
    assert!(
        matches!(raw.status, Some(431) | Some(400)),
        "120 Cookie headers: {:?}",
        raw.text.chars().take(300).collect::<String>()
    );
    // Still serving, sign-in included.
    let mut b = Browser::new();
    env.login(&mut b, "/app/p", "alice");
    assert_eq!(b.nav(&env.url("/app/p")).status, 200);
    assert_eq!(env.up.count(), 1);
}

#[test]
fn sessions_are_shared_by_all_workers_and_survive_a_restart_b33() {
    let mut env = env_with(
        GatewayOpts::new().args(["--workers", "4"]),
        json!({}),
        json!({}),
    );
    let mut b = Browser::new();
    env.login(&mut b, "/app/p", "alice");
    let cookie = b.cookie_header("/app/p").unwrap();

    let parallel = |gw: &Gateway, n: usize| -> Vec<u16> {
        let url = gw.proxy_url("/app/p");
        thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (url, cookie) = (url.clone(), cookie.clone());
                    s.spawn(move || {
                        let agent = agent();
                        (0..n / 8)
                            .map(|_| {
                                http_request(
                                    &agent,
                                    "GET",
                                    &url,
                                    &[("Cookie", &cookie), NAV[0]],
                                    None,
                                )
                                .expect("request")
                                .status
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    };
    let statuses = parallel(&env.gw, 200);
    assert_eq!(statuses.len(), 200);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    env.gw.restart();
    let statuses = parallel(&env.gw, 16);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "after restart: {statuses:?}"
    );
    let seen = env.up.last().unwrap();
    assert_eq!(b64_json(seen.header("x-id-token").unwrap())["sub"], "alice");
    assert_eq!(env.up.count(), 216);
}

// ---------------------------------------------------------------------------
// RP certification faults (scripted provider)

struct FopEnv {
    gw: Gateway,
    op: FaultOp,
    up: EchoUpstream,
}

fn fop_env(oidc_extra: Value) -> FopEnv {
    let op = FaultOp::start();
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    let conf = oidc_conf(&gw, &op.discovery_url(), oidc_extra);
    gw.put_route("app", route("/app/*", &up, conf));
    FopEnv { gw, op, up }
}

impl FopEnv {
    /// LOGIN with the scripted provider; returns the callback's answer.
    fn login(&self, b: &mut Browser) -> Resp {
        let r = b.nav(&self.gw.proxy_url("/app/p"));
        assert_eq!(r.status, 302, "{:?} {}", r.headers, r.body);
        let auth = r.header("location").unwrap().to_string();
        assert!(
            auth.starts_with(&format!("{}/authorize?", self.op.base_url())),
            "{auth}"
        );
        let r = b.get(&auth, NAV);
        assert_eq!(r.status, 302);
        let cb = r.header("location").unwrap().to_string();
        assert!(cb.starts_with(&self.gw.proxy_url("/app/callback?")), "{cb}");
        b.nav(&cb)
    }

    fn assert_accepted(&self, label: &str, b: &mut Browser, cb: &Resp) {
        assert_eq!(cb.status, 302, "{label}: {}\n{}", cb.body, self.gw.logs());
        assert_eq!(cb.header("location"), Some("/app/p"), "{label}");
        let n = self.up.count();
        let r = b.nav(&self.gw.proxy_url("/app/p"));
        assert_eq!(r.status, 200, "{label}: {}", r.body);
        assert_eq!(self.up.count(), n + 1);
        let seen = self.up.last().unwrap();
        assert_eq!(b64_json(seen.header("x-userinfo").unwrap())["sub"], "alice");
    }

    fn assert_rejected(&self, label: &str, b: &mut Browser, cb: &Resp) {
        assert!(
            cb.status == 401 || cb.status == 400,
            "{label}: callback answered {} {:?} {}",
            cb.status,
            cb.headers,
            cb.body
        );
        assert!(cb.header("location").is_none(), "{label}: {:?}", cb.headers);
        let sc = cb.header_all("set-cookie");
        assert!(
            set_cookie(sc.iter().copied(), COOKIE).is_none_or(clears),
            "{label}: a session cookie was set: {sc:?}"
        );
        let n = self.up.count();
        let r = b.nav(&self.gw.proxy_url("/app/p"));
        assert_eq!(r.status, 302, "{label}: no session was created");
        assert!(r.header("location").unwrap().contains("/authorize?"));
        assert_eq!(self.up.count(), n, "{label}: the upstream was reached");
    }
}

fn claims_with(edit: impl Fn(&mut Value) + Send + Sync + 'static) -> impl Fn(&Grant) -> String {
    move |g: &Grant| {
        let mut c = g.claims();
        edit(&mut c);
        fault_op::sign(&K1, Some("k1"), &c)
    }
}

fn append_1(c: &mut Value, k: &str) {
    let v = c[k].as_str().unwrap().to_string();
    c[k] = json!(format!("{v}1"));
}

#[test]
fn rp_id_token_and_userinfo_faults_are_rejected_without_a_session() {
    let env = fop_env(json!({}));

    // The happy path first (ACCEPT), with the recorder checks of row 1.
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_accepted("good", &mut b, &cb);
    let authz = env.op.authorizations();
    let a = &authz[0];
    assert_eq!(a.get("response_type"), Some("code"));
    assert_eq!(a.get("code_challenge_method"), Some("S256"));
    assert!(a.get("nonce").is_some_and(|n| n.len() <= 43));
    let token_call = env
        .op
        .calls()
        .into_iter()
        .find(|c| c.path == "/token")
        .unwrap();
    let form = parse_form(&token_call.body);
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], env.gw.proxy_url("/app/callback"));
    assert!(form.contains_key("code_verifier"));
    assert!(!form.contains_key("client_secret"), "secret in the body");
    assert!(token_call
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    let ui = env
        .op
        .calls()
        .into_iter()
        .find(|c| c.path == "/userinfo")
        .unwrap();
    assert!(ui.header("authorization").unwrap().starts_with("Bearer "));

    // aud as a one-element array is fine.
    env.op
        .set_id_token(claims_with(|c| c["aud"] = json!([fault_op::CLIENT_ID])));
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_accepted("aud array", &mut b, &cb);

    type Scenario = (&'static str, Box<dyn Fn(&FaultOp)>);
    let scenarios: Vec<Scenario> = vec![
        (
            "nonce+1",
            Box::new(|op| op.set_id_token(claims_with(|c| append_1(c, "nonce")))),
        ),
        (
            "no nonce",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c.as_object_mut().unwrap().remove("nonce");
                }))
            }),
        ),
        (
            "iss+1",
            Box::new(|op| op.set_id_token(claims_with(|c| append_1(c, "iss")))),
        ),
        (
            "iss with /",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    let v = c["iss"].as_str().unwrap().to_string();
                    c["iss"] = json!(format!("{v}/"));
                }))
            }),
        ),
        (
            "no iss",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c.as_object_mut().unwrap().remove("iss");
                }))
            }),
        ),
        (
            "aud+1",
            Box::new(|op| op.set_id_token(claims_with(|c| append_1(c, "aud")))),
        ),
        (
            "no aud",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c.as_object_mut().unwrap().remove("aud");
                }))
            }),
        ),
        (
            "secondary aud",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c["aud"] = json!([fault_op::CLIENT_ID, format!("{}1", fault_op::CLIENT_ID)]);
                }))
            }),
        ),
        (
            "no sub",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }))
            }),
        ),
        (
            "no iat",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c.as_object_mut().unwrap().remove("iat");
                }))
            }),
        ),
        (
            "expired",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c["exp"] = json!(fault_op::now() - 360);
                }))
            }),
        ),
        (
            "no exp",
            Box::new(|op| {
                op.set_id_token(claims_with(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }))
            }),
        ),
        (
            "bad signature",
            Box::new(|op| {
                op.set_id_token(|g: &Grant| {
                    let t = fault_op::sign(&K1, Some("k1"), &g.claims());
                    let (head, sig) = t.rsplit_once('.').unwrap();
                    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(sig)
                        .unwrap();
                    raw.iter_mut().for_each(|b| *b ^= 0x5A);
                    format!("{head}.{}", fault_op::b64(raw))
                })
            }),
        ),
        (
            "unpublished key",
            Box::new(|op| {
                op.set_id_token(|g: &Grant| fault_op::sign(&KX, Some("k1"), &g.claims()))
            }),
        ),
        (
            "alg none",
            Box::new(|op| {
                op.set_id_token(|g: &Grant| {
                    let head = fault_op::b64(json!({"alg": "none", "typ": "JWT"}).to_string());
                    format!("{head}.{}.", fault_op::b64(g.claims().to_string()))
                })
            }),
        ),
        (
            "HS256 with the client secret",
            Box::new(|op| {
                op.set_id_token(|g: &Grant| {
                    let key =
                        jsonwebtoken::EncodingKey::from_secret(fault_op::CLIENT_SECRET.as_bytes())
                            .expect("hmac key");
                    let head = json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
                    fault_op::sign_with(&head, &g.claims(), &key, jsonwebtoken::Algorithm::HS256)
                })
            }),
        ),
        (
            "ES256 with an RSA kid",
            Box::new(|op| {
                op.set_id_token(|g: &Grant| {
                    let head = json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
                    fault_op::sign_with(
                        &head,
                        &g.claims(),
                        &E1.encoding(),
                        jsonwebtoken::Algorithm::ES256,
                    )
                })
            }),
        ),
    ];
    for (label, setup) in &scenarios {
        setup(&env.op);
        let userinfo = env.op.hits("/userinfo");
        let mut b = Browser::new();
        let cb = env.login(&mut b);
        env.assert_rejected(label, &mut b, &cb);
        assert_eq!(
            env.op.hits("/userinfo"),
            userinfo,
            "{label}: userinfo called after a bad ID token"
        );
    }

    // Userinfo answering for another subject.
    env.op.set_id_token(fault_op::good_id_token);
    env.op.set_userinfo_sub(Some("aliceinvalid"));
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_rejected("userinfo sub", &mut b, &cb);
    assert!(env.up.requests().iter().all(|r| r
        .header("x-userinfo")
        .is_none_or(|u| b64_json(u)["sub"] == "alice")));

    // Nonce binding on its own: the provider stops checking PKCE, and a
    // code issued to browser P is delivered with browser Q's state.
    env.op.set_userinfo_sub(None);
    env.op.set_require_pkce(false);
    let mut p = Browser::new();
    let r = p.nav(&env.gw.proxy_url("/app/p"));
    let cb_p = p
        .get(r.header("location").unwrap(), NAV)
        .header("location")
        .unwrap()
        .to_string();
    let mut q = Browser::new();
    let r = q.nav(&env.gw.proxy_url("/app/p"));
    let cb_q = q
        .get(r.header("location").unwrap(), NAV)
        .header("location")
        .unwrap()
        .to_string();
    let swapped = format!(
        "/app/callback?code={}&state={}",
        fault_op::percent_encode(&query_of(&cb_p)["code"]),
        fault_op::percent_encode(&query_of(&cb_q)["state"])
    );
    let cb = q.nav(&env.gw.proxy_url(&swapped));
    env.assert_rejected("swapped code (nonce of another browser)", &mut q, &cb);
}

#[test]
fn rp_keys_without_kid_and_keys_rotated_between_logins_are_handled() {
    let env = fop_env(json!({}));
    // Row 20: rotate after a first login; the next login right away works,
    // with exactly one more JWKS fetch.
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_accepted("k1", &mut b, &cb);
    let jwks = env.op.hits("/jwks");
    env.op.set_keys(vec![K2.jwk(Some("k2"))]);
    env.op
        .set_id_token(|g: &Grant| fault_op::sign(&K2, Some("k2"), &g.claims()));
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_accepted("rotated to k2", &mut b, &cb);
    assert_eq!(env.op.hits("/jwks"), jwks + 1);
    // A token still signed with the retired key is refused.
    env.op.set_id_token(good_id_token_k1);
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_rejected("retired key", &mut b, &cb);

    // Row 7: no kid anywhere, one key fits RS256 → ACCEPT.
    let env = fop_env(json!({}));
    env.op.set_keys(vec![E1.jwk(None), K1.jwk(None)]);
    env.op
        .set_id_token(|g: &Grant| fault_op::sign(&K1, None, &g.claims()));
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_accepted("kid absent, single RSA key", &mut b, &cb);

    // Row 8: no kid, two RSA keys → ambiguous, rejected.
    let env = fop_env(json!({}));
    env.op.set_keys(vec![K2.jwk(None), K1.jwk(None)]);
    env.op
        .set_id_token(|g: &Grant| fault_op::sign(&K1, None, &g.claims()));
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_rejected("kid absent, two RSA keys", &mut b, &cb);
}

fn good_id_token_k1(g: &Grant) -> String {
    fault_op::sign(&K1, Some("k1"), &g.claims())
}

#[test]
fn rp_discovery_issuer_mismatch_never_sends_the_browser_to_authorize() {
    let env = fop_env(json!({}));
    env.op.set_issuer(&format!("{}INVALID", env.op.base_url()));
    let mut b = Browser::new();
    let r = b.nav(&env.gw.proxy_url("/app/p"));
    assert!(r.status >= 500, "{} {:?} {}", r.status, r.headers, r.body);
    assert!(r.header("location").is_none(), "{:?}", r.headers);
    assert_eq!(env.up.count(), 0);
    assert_eq!(env.op.hits("/authorize"), 0);
    // Even a callback with a token that names the advertised issuer fails.
    let r = b.nav(&env.gw.proxy_url("/app/callback?code=x&state=y"));
    assert!(r.status >= 400 && r.header("location").is_none());
    assert_eq!(env.op.hits("/token"), 0);
}

#[test]
fn big_tokens_keep_the_session_cookie_small_b34() {
    let env = fop_env(json!({"set_refresh_token_header": true, "set_raw_id_token_header": false}));
    env.op.set_access_token_size(6 * 1024);
    env.op.set_id_token(claims_with(|c| {
        c["groups"] = json!((0..300)
            .map(|i| format!("group-number-{i:05}"))
            .collect::<Vec<_>>());
    }));
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    assert_eq!(cb.status, 302, "{}\n{}", cb.body, env.gw.logs());
    for line in cb.header_all("set-cookie") {
        assert!(line.len() <= 4096, "{} bytes: {line}", line.len());
    }
    let line = set_cookie(cb.header_all("set-cookie"), COOKIE).unwrap();
    eprintln!(
        "session cookie with a 6 KB access token and a ~10 KB ID token: Set-Cookie line {} bytes",
        line.len()
    );
    assert!(cookie_value(line).len() < 100);
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(has_attr(line, attr), "{attr}: {line}");
    }
    let r = b.nav(&env.gw.proxy_url("/app/p"));
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.body);
    let seen = env.up.last().unwrap();
    assert!(seen.header("x-access-token").unwrap().len() >= 6 * 1024);
    let id = b64_json(seen.header("x-id-token").unwrap());
    assert_eq!(id["groups"].as_array().unwrap().len(), 300);
}

#[test]
fn rp_refreshed_id_tokens_are_checked_and_a_bad_one_ends_the_session() {
    let env = fop_env(json!({}));
    env.op.set_expires_in(1);
    // Sign-in tokens are correct; refreshed ones (no nonce) carry a fault
    // chosen by subject: alice iss+1 (row 41), bob sub+1 (row 42), carol
    // none (a refreshed ID token without nonce is fine).
    env.op.set_id_token(|g: &Grant| {
        let mut c = g.claims();
        if g.nonce.is_none() {
            match g.sub.as_str() {
                "alice" => append_1(&mut c, "iss"),
                "bob" => append_1(&mut c, "sub"),
                _ => {}
            }
        }
        fault_op::sign(&K1, Some("k1"), &c)
    });
    let mut browsers = Vec::new();
    for sub in ["alice", "bob", "carol"] {
        env.op.set_sub(sub);
        let mut b = Browser::new();
        let cb = env.login(&mut b);
        assert_eq!(cb.status, 302, "{sub}: {}", cb.body);
        let r = b.nav(&env.gw.proxy_url("/app/p"));
        assert_eq!(r.status, 200);
        let token = env
            .up
            .last()
            .unwrap()
            .header("x-access-token")
            .unwrap()
            .to_string();
        browsers.push((sub, b, token));
    }
    let userinfo = env.op.hits("/userinfo");
    let upstream = env.up.count();

    thread::sleep(Duration::from_secs(2));

    let [(_, alice, _), (_, bob, _), (_, carol, carol_token)] = &mut browsers[..] else {
        unreachable!()
    };
    let r = carol.nav(&env.gw.proxy_url("/app/p"));
    assert_eq!(r.status, 200, "{}\n{}", r.body, env.gw.logs());
    let seen = env.up.last().unwrap();
    assert_ne!(seen.header("x-access-token").unwrap(), carol_token.as_str());
    assert_eq!(b64_json(seen.header("x-id-token").unwrap())["sub"], "carol");
    let refresh = env
        .op
        .calls()
        .into_iter()
        .find(|c| c.path == "/token" && c.body.contains("grant_type=refresh_token"))
        .expect("a refresh call");
    assert!(refresh
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));

    let r = alice.nav(&env.gw.proxy_url("/app/p"));
    assert_eq!(r.status, 302, "refreshed iss+1: {}", r.body);
    assert!(r.header("location").unwrap().contains("/authorize?"));
    let r = bob.get(
        &env.gw.proxy_url("/app/p"),
        &[("Accept", "application/json")],
    );
    assert_eq!(r.status, 401, "refreshed sub+1: {}", r.body);
    assert_eq!(
        env.up.count(),
        upstream + 1,
        "only carol reached the upstream"
    );
    assert_eq!(
        env.op.hits("/userinfo"),
        userinfo,
        "no userinfo after refresh"
    );
}

#[test]
fn a_rolling_session_id_change_does_not_sign_out_requests_already_under_way() {
    let env = env_with(
        GatewayOpts::new(),
        json!({}),
        json!({"session": {"rolling_timeout": 1}}),
    );
    let mut b = Browser::new();
    env.login(&mut b, "/app/p", "alice");
    let old = b.cookie(COOKIE).unwrap();
    thread::sleep(Duration::from_secs(2));

    // A page's parallel requests, all sent with the cookie the browser had.
    let url = env.url("/app/p");
    let cookie = format!("{COOKIE}={old}");
    let results: Vec<Resp> = thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let (url, cookie) = (url.clone(), cookie.clone());
                s.spawn(move || {
                    let h = [("Cookie", cookie.as_str()), ("Accept", "application/json")];
                    http_request(&agent(), "GET", &url, &h, None).expect("request")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut new_ids = Vec::new();
    for r in &results {
        assert_eq!(r.status, 200, "{:?} {}", r.headers, r.body);
        if let Some(line) = set_cookie(r.header_all("set-cookie"), COOKIE) {
            assert!(!clears(line));
            new_ids.push(cookie_value(line).to_string());
        }
    }
    assert!(!new_ids.is_empty(), "the session id was rolled");
    assert!(new_ids.iter().all(|id| *id != old));
    // The new id works; so does the old one, for a short grace only.
    for id in new_ids.iter().chain([&old]) {
        let r = raw_get(&env.gw, "/app/p", Some(&format!("{COOKIE}={id}")));
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
}

#[test]
fn rp_an_authorization_response_from_another_issuer_is_refused_before_the_token_call() {
    let env = fop_env(json!({}));
    // The right issuer in the response: fine.
    env.op.set_response_iss(Some(&env.op.base_url()));
    let mut b = Browser::new();
    let cb = env.login(&mut b);
    env.assert_accepted("iss = issuer", &mut b, &cb);
    // issuer+1 (row 82, mix-up): refused, the code is never redeemed.
    let tokens = env.op.hits("/token");
    for bad in [
        format!("{}1", env.op.base_url()),
        format!("{}/", env.op.base_url()),
    ] {
        env.op.set_response_iss(Some(&bad));
        let mut b = Browser::new();
        let cb = env.login(&mut b);
        env.assert_rejected(&format!("iss {bad}"), &mut b, &cb);
        assert_eq!(
            env.op.hits("/token"),
            tokens,
            "iss {bad}: token endpoint called"
        );
    }
}
