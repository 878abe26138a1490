//! Logout, black-box: RP-initiated logout and OpenID Connect Back-Channel
//! Logout (`backchannel_logout_path`) on `openid-connect` browser routes,
//! per `oidc-rp-tests.md` §7 rows 43–53. The scripted provider
//! (`support::fault_op`) plays the OP for the faults: it advertises an
//! `end_session_endpoint` that sends the browser back with the state
//! unchanged, altered or missing, puts a per-login `sid` in ID tokens, and
//! the tests sign logout tokens with the claims, algorithm and key each
//! row needs. One test uses the real provider (`tests/idp`) end to end.
//!
//! Back-channel requests carry no cookie (the provider sends them) unless
//! a test says otherwise; redirects are never followed automatically.

use std::thread;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::support::browser::*;
use crate::support::fault_op::{
    self, logout_token, sign_logout_token, unsigned_token, EndSession, FaultOp, Grant,
    BACKCHANNEL_LOGOUT_EVENT, CLIENT_ID, CLIENT_SECRET, E1, K1, KX,
};
use crate::support::gateway::http_request;
use crate::support::{EchoUpstream, Gateway, Idp, Resp};

const COOKIE: &str = "portcullis_session";
const BCL: &str = "/app/backchannel-logout";
/// `scheme://host:port` of an absolute URL.
fn url_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("an absolute URL");
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{host}")
}

fn form_body(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                fault_op::percent_encode(k),
                fault_op::percent_encode(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn no_store(r: &Resp) -> bool {
    r.header("cache-control")
        .is_some_and(|v| v.to_ascii_lowercase().contains("no-store"))
}

// ---------------------------------------------------------------------------
// back-channel requests, as a provider sends them

/// `POST <path>` with `logout_token=<token>` as a form, with an optional
/// `Cookie` header (a provider sends none).
fn post_logout_token(gw: &Gateway, path: &str, token: &str, cookie: Option<&str>) -> Resp {
    let body = form_body(&[("logout_token", token)]);
    post_raw(
        gw,
        path,
        "application/x-www-form-urlencoded",
        body.as_bytes(),
        cookie,
    )
}

fn post_raw(
    gw: &Gateway,
    path: &str,
    content_type: &str,
    body: &[u8],
    cookie: Option<&str>,
) -> Resp {
    let mut h = vec![("Content-Type", content_type)];
    if let Some(c) = cookie {
        h.push(("Cookie", c));
    }
    http_request(&agent(), "POST", &gw.proxy_url(path), &h, Some(body))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn assert_logout_accepted(label: &str, r: &Resp, gw: &Gateway) {
    assert_eq!(
        r.status,
        200,
        "{label}: {:?} {}\n{}",
        r.headers,
        r.body,
        gw.logs()
    );
    assert!(r.body.is_empty(), "{label}: body {:?}", r.body);
    assert!(
        no_store(r),
        "{label}: no Cache-Control: no-store {:?}",
        r.headers
    );
}

fn assert_logout_refused(label: &str, r: &Resp) {
    assert_eq!(r.status, 400, "{label}: {:?} {}", r.headers, r.body);
    assert!(
        no_store(r),
        "{label}: no Cache-Control: no-store {:?}",
        r.headers
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "{label}: {ct}");
    let v = r.json();
    assert_eq!(v["error"], "invalid_request", "{label}: {v}");
    assert!(
        v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{label}: {v}"
    );
}

// ---------------------------------------------------------------------------
// the world with the scripted provider

struct Fop {
    gw: Gateway,
    op: FaultOp,
    up: EchoUpstream,
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

fn upstream_of(up: &EchoUpstream) -> Value {
    json!({"type": "roundrobin", "nodes": {up.node(): 1}})
}

/// The browser-mode configuration of the route under `prefix` (`/app`).
fn oidc_conf(gw: &Gateway, discovery: &str, prefix: &str, extra: Value) -> Value {
    let mut c = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": discovery,
        "bearer_only": false,
        "scope": "openid email",
        "redirect_uri": format!("{prefix}/callback"),
        "logout_path": format!("{prefix}/logout"),
        "backchannel_logout_path": format!("{prefix}/backchannel-logout"),
        "post_logout_redirect_uri": gw.proxy_url("/bye"),
        "use_pkce": true,
    });
    merge(&mut c, extra);
    c
}

fn put_oidc_route(gw: &Gateway, id: &str, prefix: &str, up: &EchoUpstream, conf: Value) {
    gw.put_route(
        id,
        json!({
            "uri": format!("{prefix}/*"),
            "plugins": {"openid-connect": conf},
            "upstream": upstream_of(up),
        }),
    );
}

/// Gateway with `/app/*` on a fresh scripted provider (a `sid` in every ID
/// token, an end-session endpoint that echoes the state) and the public
/// `/bye` page; `extra` goes into the plugin configuration.
fn fop_env(extra: Value) -> Fop {
    let op = FaultOp::start();
    op.set_sid(true);
    op.set_end_session(Some(EndSession::Echo));
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    let conf = oidc_conf(&gw, &op.discovery_url(), "/app", extra);
    put_oidc_route(&gw, "app", "/app", &up, conf);
    gw.put_route("bye", json!({"uri": "/bye", "upstream": upstream_of(&up)}));
    Fop { gw, op, up }
}

/// A code-flow login at `prefix` through the scripted provider `op`;
/// returns the grant of the ID token it issued (with its `sid`).
fn fop_login(gw: &Gateway, op: &FaultOp, prefix: &str, b: &mut Browser) -> Grant {
    let r = b.nav(&gw.proxy_url(&format!("{prefix}/p")));
    assert_eq!(r.status, 302, "{:?} {}", r.headers, r.body);
    let auth = r.header("location").unwrap().to_string();
    assert!(
        auth.starts_with(&format!("{}/authorize?", op.base_url())),
        "{auth}"
    );
    let r = b.nav(&auth);
    assert_eq!(r.status, 302, "{}", r.body);
    let cb = r.header("location").unwrap().to_string();
    let r = b.nav(&cb);
    assert_eq!(r.status, 302, "callback: {}\n{}", r.body, gw.logs());
    assert_eq!(
        r.header("location"),
        Some(format!("{prefix}/p").as_str()),
        "{:?}",
        r.headers
    );
    let (_, grant) = op.id_tokens().pop().expect("an ID token was issued");
    assert!(signed_in(gw, b, prefix), "just signed in");
    grant
}

/// Whether the browser's session still works at `prefix/p`: 200 from the
/// upstream, or 302 to the provider.
fn signed_in(gw: &Gateway, b: &mut Browser, prefix: &str) -> bool {
    let r = b.nav(&gw.proxy_url(&format!("{prefix}/p")));
    match r.status {
        200 => true,
        302 => {
            let loc = r.header("location").unwrap_or_default();
            assert!(
                loc.contains("/authorize?") || loc.contains("/auth?"),
                "302 to {loc}"
            );
            false
        }
        s => panic!("{prefix}/p answered {s}: {}\n{}", r.body, gw.logs()),
    }
}

/// The back-channel POSTs the upstream received (must be none).
fn upstream_backchannel_posts(up: &EchoUpstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path().ends_with("/backchannel-logout"))
        .count()
}

impl Fop {
    fn login(&self, b: &mut Browser) -> Grant {
        fop_login(&self.gw, &self.op, "/app", b)
    }

    fn signed_in(&self, b: &mut Browser) -> bool {
        signed_in(&self.gw, b, "/app")
    }

    /// POSTs `token` to the back-channel path; the upstream must not see it.
    fn post(&self, token: &str) -> Resp {
        let n = self.up.count();
        let r = post_logout_token(&self.gw, BCL, token, None);
        assert_eq!(self.up.count(), n, "the upstream saw a back-channel POST");
        r
    }
}

// ---------------------------------------------------------------------------
// RP-initiated logout (rows 43–45)

/// Follows redirects from `url` (at most 5 hops); every hop stays on the
/// gateway or the provider, none answers 5xx. Returns the final answer.
fn follow(b: &mut Browser, url: &str, allowed: &[String]) -> (Resp, Vec<String>) {
    let mut url = url.to_string();
    let mut seen = vec![url.clone()];
    for _ in 0..5 {
        let r = b.nav(&url);
        assert!(r.status < 500, "{url} answered {}: {}", r.status, r.body);
        if !(300..400).contains(&r.status) {
            return (r, seen);
        }
        let loc = absolute(&url_origin(&url), r.header("location").expect("Location"));
        assert!(
            allowed.iter().any(|o| url_origin(&loc) == *o),
            "redirect to a foreign origin: {loc}"
        );
        assert!(
            !seen.contains(&loc),
            "redirect loop: {loc} again after {seen:?}"
        );
        seen.push(loc.clone());
        url = loc;
    }
    panic!("more than 5 redirects: {seen:?}")
}

/// `GET /app/logout` on a signed-in browser: checks row 43's recorder
/// conditions and returns the end-session URL and its state.
fn rp_logout(env: &Fop, b: &mut Browser, grant_token: &str) -> (String, String) {
    let old = b.cookie(COOKIE).expect("signed in");
    let r = b.nav(&env.gw.proxy_url("/app/logout"));
    assert_eq!(r.status, 302, "{:?} {}", r.headers, r.body);
    assert!(no_store(&r), "{:?}", r.headers);
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with(&format!("{}/end_session?", env.op.base_url())),
        "{loc}"
    );
    let q = query_of(&loc);
    assert_eq!(q["id_token_hint"], grant_token, "the raw ID token");
    assert_eq!(q["post_logout_redirect_uri"], env.gw.proxy_url("/bye"));
    assert_eq!(q["client_id"], CLIENT_ID);
    let state = q.get("state").cloned().unwrap_or_default();
    assert!(state.len() >= 22, "a fresh random state: {state:?}");
    let sc = r.header_all("set-cookie");
    assert!(
        set_cookie(sc.iter().copied(), COOKIE).is_some_and(clears),
        "the session cookie is cleared: {sc:?}"
    );
    assert!(b.cookie(COOKIE).is_none());

    // Destroyed first: before the browser even reaches the provider, the
    // old cookie no longer works.
    let mut replay = Browser::new();
    replay.jar.push(JarCookie {
        name: COOKIE.into(),
        value: old,
        path: "/".into(),
    });
    assert!(
        !env.signed_in(&mut replay),
        "the old cookie still works before the provider is reached"
    );
    (loc, state)
}

#[test]
fn rp_init_logout_ends_the_session_first_and_sends_the_id_token_hint_row_43() {
    let env = fop_env(json!({}));
    let allowed = [env.gw.proxy_url(""), env.op.base_url()];
    let mut states = Vec::new();
    for round in 0..2 {
        let mut b = Browser::new();
        env.login(&mut b);
        let (raw_id, grant) = env.op.id_tokens().pop().unwrap();
        assert!(grant.sid.is_some());
        let login_state = env
            .op
            .authorizations()
            .last()
            .unwrap()
            .get("state")
            .unwrap()
            .to_string();
        let (loc, state) = rp_logout(&env, &mut b, &raw_id);
        assert_ne!(
            state, login_state,
            "round {round}: the login's state reused"
        );
        assert!(!states.contains(&state), "round {round}: state reused");
        states.push(state.clone());

        // The provider accepts the hint and sends the browser back to the
        // registered page with the state.
        let r = b.nav(&loc);
        assert_eq!(r.status, 302, "end_session refused: {}", r.body);
        let back = r.header("location").unwrap().to_string();
        assert_eq!(
            back,
            format!(
                "{}?state={}",
                env.gw.proxy_url("/bye"),
                fault_op::percent_encode(&state)
            )
        );
        let (landing, _) = follow(&mut b, &back, &allowed);
        assert_eq!(landing.status, 200, "{}", landing.body);
        assert!(
            set_cookie(landing.header_all("set-cookie"), COOKIE).is_none(),
            "a session cookie after logout: {:?}",
            landing.headers
        );
        assert!(!env.signed_in(&mut b), "round {round}: still signed in");
    }
    assert_eq!(env.op.end_sessions().len(), 2);
    assert_eq!(upstream_backchannel_posts(&env.up), 0);
}

#[test]
fn rp_init_logout_with_a_wrong_or_missing_state_back_leaves_the_user_signed_out_rows_44_45() {
    let env = fop_env(json!({}));
    let allowed = [env.gw.proxy_url(""), env.op.base_url()];
    for (label, mode) in [
        ("row 44 state+_INVALID", EndSession::Invalid),
        ("row 45 no state", EndSession::Missing),
    ] {
        env.op.set_end_session(Some(mode));
        let mut b = Browser::new();
        env.login(&mut b);
        let (raw_id, _) = env.op.id_tokens().pop().unwrap();
        let (loc, state) = rp_logout(&env, &mut b, &raw_id);
        let r = b.nav(&loc);
        assert_eq!(r.status, 302, "{label}: end_session refused: {}", r.body);
        let back = r.header("location").unwrap().to_string();
        match mode {
            EndSession::Invalid => assert_eq!(
                query_of(&back)["state"],
                format!("{state}_INVALID"),
                "{label}"
            ),
            _ => assert!(!back.contains("state="), "{label}: {back}"),
        }
        // Back at the gateway: a neutral page, no error loop, no 5xx, no
        // redirect anywhere but the gateway or the provider, no session.
        let (landing, hops) = follow(&mut b, &back, &allowed);
        assert!(
            landing.status == 200,
            "{label}: landing answered {} after {hops:?}: {}",
            landing.status,
            landing.body
        );
        assert!(
            set_cookie(landing.header_all("set-cookie"), COOKIE).is_none_or(clears),
            "{label}: a session cookie was set: {:?}",
            landing.headers
        );
        assert!(!env.signed_in(&mut b), "{label}: signed in again");

        // Logging out again without a session goes to the configured page
        // only, whatever the request says.
        let r = b.nav(&env.gw.proxy_url(
            "/app/logout?post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F&state=x",
        ));
        assert_eq!(r.status, 302, "{label}");
        assert_eq!(
            r.header("location"),
            Some(env.gw.proxy_url("/bye").as_str()),
            "{label}"
        );
    }
}

// ---------------------------------------------------------------------------
// back-channel logout (rows 46–53)

#[test]
fn rp_backchannel_logout_ends_the_sessions_of_its_sid_else_of_its_sub_row_46() {
    let env = fop_env(json!({}));
    let mut jar1 = Browser::new();
    let mut jar2 = Browser::new();
    let g1 = env.login(&mut jar1);
    let g2 = env.login(&mut jar2);
    let (sid1, sid2) = (g1.sid.clone().unwrap(), g2.sid.clone().unwrap());
    assert_ne!(sid1, sid2, "one provider session per jar");
    assert_eq!((g1.sub.as_str(), g2.sub.as_str()), ("alice", "alice"));

    // sid of jar 1 (with the sub too): only jar 1 ends. The POST carries
    // jar 2's cookie, which must not matter.
    let r = post_logout_token(
        &env.gw,
        BCL,
        &logout_token(&env.op.logout_claims(Some("alice"), Some(&sid1))),
        Some(&format!("{COOKIE}={}", jar2.cookie(COOKIE).unwrap())),
    );
    assert_logout_accepted("sid of jar 1", &r, &env.gw);
    assert!(!env.signed_in(&mut jar1), "jar 1 is still signed in");
    assert!(
        env.signed_in(&mut jar2),
        "jar 2 was signed out by jar 1's sid"
    );

    // A sid of no session: 200, nothing ends.
    let r = env.post(&logout_token(
        &env.op.logout_claims(Some("alice"), Some("no-such-sid")),
    ));
    assert_logout_accepted("unknown sid", &r, &env.gw);
    assert!(env.signed_in(&mut jar2));

    // aud as an array naming the client, sid only.
    let mut jar3 = Browser::new();
    let g3 = env.login(&mut jar3);
    let mut c = env.op.logout_claims(None, g3.sid.as_deref());
    c["aud"] = json!([CLIENT_ID, "another-client"]);
    assert_logout_accepted("aud array, sid only", &env.post(&logout_token(&c)), &env.gw);
    assert!(!env.signed_in(&mut jar3));
    assert!(env.signed_in(&mut jar2));

    // Only sub: every session of alice ends, bob's stays.
    let mut jar4 = Browser::new();
    env.login(&mut jar4);
    env.op.set_sub("bob");
    let mut bob = Browser::new();
    env.login(&mut bob);
    env.op.set_sub("alice");
    let r = env.post(&logout_token(&env.op.logout_claims(Some("alice"), None)));
    assert_logout_accepted("only sub", &r, &env.gw);
    assert!(!env.signed_in(&mut jar2), "jar 2 (alice) still signed in");
    assert!(!env.signed_in(&mut jar4), "jar 4 (alice) still signed in");
    assert!(
        env.signed_in(&mut bob),
        "bob was signed out by alice's logout"
    );

    // A logout token signed with another published key of another type
    // is fine when no algorithm is configured (the key type decides).
    env.op
        .set_keys(vec![K1.jwk(Some("k1")), E1.jwk(Some("e1"))]);
    let c = env.op.logout_claims(Some("bob"), None);
    let r = env.post(&sign_logout_token(&E1, Some("e1"), Algorithm::ES256, &c));
    assert_logout_accepted("ES256 with a published EC key", &r, &env.gw);
    assert!(!env.signed_in(&mut bob));
    assert_eq!(upstream_backchannel_posts(&env.up), 0);
}

/// A valid logout token's claims for the session of `g`, changed by `edit`.
fn claims_for(op: &FaultOp, g: &Grant, edit: impl Fn(&mut Value)) -> Value {
    let mut c = op.logout_claims(Some(&g.sub), g.sid.as_deref());
    edit(&mut c);
    c
}

fn remove(c: &mut Value, k: &str) {
    c.as_object_mut().unwrap().remove(k);
}

fn append(c: &mut Value, k: &str, suffix: &str) {
    let v = c[k].as_str().unwrap().to_string();
    c[k] = json!(format!("{v}{suffix}"));
}

#[test]
fn rp_backchannel_invalid_logout_tokens_answer_400_and_end_nothing_rows_47_to_53() {
    let env = fop_env(json!({}));
    let mut b = Browser::new();
    let g = env.login(&mut b);
    let (id_token, _) = env.op.id_tokens().pop().unwrap();
    let op = &env.op;
    let good = |edit: &dyn Fn(&mut Value)| logout_token(&claims_for(op, &g, edit));
    let cases: Vec<(&str, String)> = vec![
        // row 47
        ("alg none", unsigned_token(&claims_for(op, &g, |_| {}))),
        (
            "alg none with a signature part",
            format!("{}c2ln", unsigned_token(&claims_for(op, &g, |_| {}))),
        ),
        // row 48
        ("no events", good(&|c| remove(c, "events"))),
        // row 49
        (
            "with nonce",
            good(&|c| c["nonce"] = json!("n-0123456789abcdef")),
        ),
        // row 50: ES256 where the key (kid k1) is RSA
        (
            "wrong alg (ES256, RSA kid)",
            sign_logout_token(
                &E1,
                Some("k1"),
                Algorithm::ES256,
                &claims_for(op, &g, |_| {}),
            ),
        ),
        // row 51
        ("aud+INVALID", good(&|c| append(c, "aud", "INVALID"))),
        // row 52
        (
            "wrong event",
            good(&|c| c["events"] = json!({"http://schemas.openid.net/event/other": {}})),
        ),
        // row 53
        ("iss+INVALID", good(&|c| append(c, "iss", "INVALID"))),
        // and around them
        ("iss with /", good(&|c| append(c, "iss", "/"))),
        ("no iss", good(&|c| remove(c, "iss"))),
        ("no aud", good(&|c| remove(c, "aud"))),
        (
            "aud array without the client",
            good(&|c| c["aud"] = json!(["another-client"])),
        ),
        ("no iat", good(&|c| remove(c, "iat"))),
        ("iat not a number", good(&|c| c["iat"] = json!("now"))),
        ("no jti", good(&|c| remove(c, "jti"))),
        (
            "neither sid nor sub",
            good(&|c| {
                remove(c, "sid");
                remove(c, "sub");
            }),
        ),
        (
            "expired",
            good(&|c| c["exp"] = json!(fault_op::now() - 360)),
        ),
        (
            "events an array",
            good(&|c| c["events"] = json!([BACKCHANNEL_LOGOUT_EVENT])),
        ),
        (
            "events a string",
            good(&|c| c["events"] = json!(BACKCHANNEL_LOGOUT_EVENT)),
        ),
        (
            "unpublished key under kid k1",
            sign_logout_token(
                &KX,
                Some("k1"),
                Algorithm::RS256,
                &claims_for(op, &g, |_| {}),
            ),
        ),
        (
            "HS256 with the client secret",
            fault_op::sign_with(
                &json!({"alg": "HS256", "typ": "logout+jwt", "kid": "k1"}),
                &claims_for(op, &g, |_| {}),
                &jsonwebtoken::EncodingKey::from_secret(CLIENT_SECRET.as_bytes())
                    .expect("hmac key"),
                Algorithm::HS256,
            ),
        ),
        ("bad signature", {
            let t = good(&|_| {});
            let (head, sig) = t.rsplit_once('.').unwrap();
            let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(sig)
                .unwrap();
            raw.iter_mut().for_each(|b| *b ^= 0x5A);
            format!("{head}.{}", fault_op::b64(raw))
        }),
        // The ID token of the session itself (nonce, no events).
        ("the session's ID token", id_token),
        ("not a JWT", "not-a-jwt".into()),
        ("empty", String::new()),
    ];
    for (label, token) in &cases {
        let r = env.post(token);
        assert_logout_refused(label, &r);
        assert!(env.signed_in(&mut b), "{label}: the session ended");
    }

    // Bodies without a usable logout_token.
    let valid = logout_token(&claims_for(op, &g, |_| {}));
    let bodies: Vec<(&str, &str, String)> = vec![
        (
            "no body",
            "application/x-www-form-urlencoded",
            String::new(),
        ),
        (
            "another field",
            "application/x-www-form-urlencoded",
            format!("token={valid}"),
        ),
        (
            "JSON",
            "application/json",
            json!({"logout_token": valid}).to_string(),
        ),
    ];
    for (label, ct, body) in &bodies {
        let n = env.up.count();
        let r = post_raw(&env.gw, BCL, ct, body.as_bytes(), None);
        assert_eq!(env.up.count(), n, "{label}: forwarded");
        assert_logout_refused(label, &r);
        assert!(env.signed_in(&mut b), "{label}: the session ended");
    }
    assert_eq!(upstream_backchannel_posts(&env.up), 0);

    // The same session still ends with a good token.
    assert_logout_accepted("good", &env.post(&valid), &env.gw);
    assert!(!env.signed_in(&mut b));
}

#[test]
fn rp_backchannel_logout_token_alg_is_pinned_by_token_signing_alg_values_expected_row_50() {
    // RS256 pinned; an ES256 token by a published EC key is refused.
    let env = fop_env(json!({"token_signing_alg_values_expected": "RS256"}));
    env.op
        .set_keys(vec![K1.jwk(Some("k1")), E1.jwk(Some("e1"))]);
    let mut b = Browser::new();
    let g = env.login(&mut b);
    let c = claims_for(&env.op, &g, |_| {});
    let r = env.post(&sign_logout_token(&E1, Some("e1"), Algorithm::ES256, &c));
    assert_logout_refused("ES256 when RS256 is expected", &r);
    assert!(env.signed_in(&mut b));
    let r = env.post(&sign_logout_token(&K1, Some("k1"), Algorithm::RS384, &c));
    assert_logout_refused("RS384 when RS256 is expected", &r);
    assert!(env.signed_in(&mut b));
    assert_logout_accepted("RS256", &env.post(&logout_token(&c)), &env.gw);
    assert!(!env.signed_in(&mut b));

    // ES256 pinned (ID tokens ES256 too); an RS256 token by the published
    // RSA key is refused.
    let env = fop_env(json!({"token_signing_alg_values_expected": "ES256"}));
    env.op
        .set_keys(vec![K1.jwk(Some("k1")), E1.jwk(Some("e1"))]);
    env.op
        .set_id_token(|g: &Grant| fault_op::sign(&E1, Some("e1"), &g.claims()));
    let mut b = Browser::new();
    let g = env.login(&mut b);
    let c = claims_for(&env.op, &g, |_| {});
    let r = env.post(&logout_token(&c));
    assert_logout_refused("RS256 when ES256 is expected", &r);
    assert!(env.signed_in(&mut b));
    let r = env.post(&sign_logout_token(&E1, Some("e1"), Algorithm::ES256, &c));
    assert_logout_accepted("ES256", &r, &env.gw);
    assert!(!env.signed_in(&mut b));
}

#[test]
fn rp_backchannel_logout_from_another_issuer_ends_nothing_of_this_one_row_53() {
    // Two providers, the same client_id at both: /app/* trusts A, /b/*
    // trusts B. Both publish K1 under kid k1.
    let a = FaultOp::start();
    let b_op = FaultOp::start();
    for op in [&a, &b_op] {
        op.set_sid(true);
    }
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    put_oidc_route(
        &gw,
        "app",
        "/app",
        &up,
        oidc_conf(&gw, &a.discovery_url(), "/app", json!({})),
    );
    put_oidc_route(
        &gw,
        "b",
        "/b",
        &up,
        oidc_conf(&gw, &b_op.discovery_url(), "/b", json!({})),
    );
    let mut at_a = Browser::new();
    let ga = fop_login(&gw, &a, "/app", &mut at_a);
    let mut at_b = Browser::new();
    fop_login(&gw, &b_op, "/b", &mut at_b);

    // B's token naming A's session, posted where A's tokens go: 400.
    let from_b = logout_token(&b_op.logout_claims(Some("alice"), ga.sid.as_deref()));
    let r = post_logout_token(&gw, "/app/backchannel-logout", &from_b, None);
    assert_logout_refused("issuer B at A's path", &r);
    assert!(signed_in(&gw, &mut at_a, "/app"));

    // Posted where B's go, it is B's to accept, but A's session stays.
    let r = post_logout_token(&gw, "/b/backchannel-logout", &from_b, None);
    assert!(
        r.status == 200 || r.status == 400,
        "{} {}",
        r.status,
        r.body
    );
    assert!(
        signed_in(&gw, &mut at_a, "/app"),
        "a token from issuer B ended a session of issuer A"
    );
    assert!(signed_in(&gw, &mut at_b, "/b"));

    // Only sub, from B: B's sessions of alice end, A's stay.
    let r = post_logout_token(
        &gw,
        "/b/backchannel-logout",
        &logout_token(&b_op.logout_claims(Some("alice"), None)),
        None,
    );
    assert_logout_accepted("sub at B", &r, &gw);
    assert!(!signed_in(&gw, &mut at_b, "/b"));
    assert!(
        signed_in(&gw, &mut at_a, "/app"),
        "issuer B's sub logout ended issuer A's session"
    );
    // And A's own token still works at A.
    let r = post_logout_token(
        &gw,
        "/app/backchannel-logout",
        &logout_token(&a.logout_claims(None, ga.sid.as_deref())),
        None,
    );
    assert_logout_accepted("sid at A", &r, &gw);
    assert!(!signed_in(&gw, &mut at_a, "/app"));
    assert_eq!(upstream_backchannel_posts(&up), 0);
}

/// The brief's rule: `exp`, *if present*, must not have passed, so a token
/// without one is accepted. (Back-Channel Logout 1.0 final lists `exp` as
/// REQUIRED; if that is the rule wanted, change this test and the spec.)
#[test]
fn rp_backchannel_logout_token_without_exp_is_refused() {
    // Back-Channel Logout 1.0 (final) makes `exp` REQUIRED.
    let env = fop_env(json!({}));
    let mut b = Browser::new();
    let g = env.login(&mut b);
    let r = env.post(&logout_token(&claims_for(&env.op, &g, |c| {
        remove(c, "exp")
    })));
    assert_logout_refused("no exp", &r);
    assert!(env.signed_in(&mut b));
}

#[test]
fn only_a_post_to_the_backchannel_path_is_a_logout_and_none_reaches_the_upstream() {
    let env = fop_env(json!({}));
    let mut b = Browser::new();
    let g = env.login(&mut b);
    let token = logout_token(&claims_for(&env.op, &g, |_| {}));
    let q = format!("{BCL}?logout_token={}", fault_op::percent_encode(&token));

    // GET with the token in the query, without a cookie: sign-in or 401,
    // never a logout.
    let mut stranger = Browser::new();
    let r = stranger.nav(&env.gw.proxy_url(&q));
    assert_eq!(r.status, 302, "{:?} {}", r.headers, r.body);
    assert!(r.header("location").unwrap().contains("/authorize?"));
    let r = http_request(
        &agent(),
        "GET",
        &env.gw.proxy_url(&q),
        &[("Accept", "application/json")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(env.signed_in(&mut b), "a GET ended the session");

    // GET with the session cookie: an ordinary request of that session.
    let r = b.nav(&env.gw.proxy_url(&q));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        env.signed_in(&mut b),
        "a GET with the cookie ended the session"
    );

    // A POST with the token elsewhere on the route is ordinary traffic.
    let cookie = format!("{COOKIE}={}", b.cookie(COOKIE).unwrap());
    let r = post_logout_token(&env.gw, "/app/other", &token, Some(&cookie));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.up.last().unwrap().path(), "/app/other");
    assert!(
        env.signed_in(&mut b),
        "a POST to another path ended the session"
    );

    // The POST to the path is answered by the gateway itself.
    let n = env.up.count();
    assert_logout_accepted("POST", &env.post(&token), &env.gw);
    assert_eq!(env.up.count(), n);
    assert!(!env.signed_in(&mut b));
    assert!(env
        .up
        .requests()
        .iter()
        .all(|r| !(r.method == "POST" && r.path() == BCL)));
}

#[test]
fn a_backchannel_logout_during_a_refresh_is_not_undone_by_the_refresh() {
    let env = fop_env(json!({}));
    env.op.set_expires_in(1);
    let mut b = Browser::new();
    let g = env.login(&mut b);
    let cookie = format!("{COOKIE}={}", b.cookie(COOKIE).unwrap());
    thread::sleep(Duration::from_millis(2100));

    // A request that needs a refresh; the provider takes 2 s to answer it.
    env.op.set_refresh_delay(Duration::from_secs(2));
    let url = env.gw.proxy_url("/app/p");
    let c = cookie.clone();
    let in_flight = thread::spawn(move || {
        http_request(&agent(), "GET", &url, &[("Cookie", &c), NAV[0]], None).unwrap()
    });
    thread::sleep(Duration::from_millis(700));
    let r = env.post(&logout_token(&claims_for(&env.op, &g, |_| {})));
    assert_logout_accepted("during the refresh", &r, &env.gw);
    let _ = in_flight.join().unwrap();
    env.op.set_refresh_delay(Duration::ZERO);

    // Whatever the request under way got, the session is over.
    for _ in 0..2 {
        let r = http_request(
            &agent(),
            "GET",
            &env.gw.proxy_url("/app/p"),
            &[("Cookie", &cookie), NAV[0]],
            None,
        )
        .unwrap();
        assert_eq!(
            r.status, 302,
            "the refresh brought the logged-out session back: {}",
            r.body
        );
    }
}

// ---------------------------------------------------------------------------
// the real provider, end to end

fn idp_authenticate(b: &mut Browser, idp: &Idp, auth_url: &str, user: &str) -> String {
    let mut url = auth_url.to_string();
    for _ in 0..12 {
        if !url.starts_with(idp.issuer()) {
            return url;
        }
        let r = b.nav(&url);
        match r.status {
            302 | 303 => url = absolute(idp.issuer(), r.header("location").expect("Location")),
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
                assert!(p.status == 303 || p.status == 302, "{}", p.body);
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

/// Confirms logout on the provider's end-session page at `url`; returns
/// where the provider sends the browser.
fn idp_confirm_logout(b: &mut Browser, idp: &Idp, url: &str) -> String {
    let page = b.nav(url);
    assert_eq!(page.status, 200, "end_session: {}", page.body);
    let xsrf = hidden_value(&page.body, "xsrf").expect("xsrf in the logout form");
    let action = form_action(&page.body).unwrap_or_else(|| "/session/end/confirm".into());
    let done = b.post_form(
        &absolute(idp.issuer(), &action),
        &[("xsrf", &xsrf), ("logout", "yes")],
    );
    assert_eq!(done.status, 303, "{}\n{}", done.body, idp.stderr());
    done.header("location").unwrap().to_string()
}

fn idp_backchannel(idp: &Idp) -> Vec<Value> {
    let r = http_request(&agent(), "GET", &idp.url("/__backchannel"), &[], None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().as_array().cloned().unwrap_or_default()
}

#[test]
fn signing_out_at_the_real_provider_ends_the_gateway_session_by_back_channel() {
    let up = EchoUpstream::start();
    let gw = Gateway::start();
    let cfg = json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": [gw.proxy_url("/app/callback")],
            "post_logout_redirect_uris": [gw.proxy_url("/bye")],
            "token_endpoint_auth_method": "client_secret_basic",
            "backchannel_logout_uri": gw.proxy_url(BCL),
            "backchannel_logout_session_required": true,
        }],
    });
    let idp = Idp::start_with(&cfg.to_string());
    let conf = oidc_conf(&gw, &idp.discovery_url(), "/app", json!({}));
    put_oidc_route(&gw, "app", "/app", &up, conf);
    gw.put_route("bye", json!({"uri": "/bye", "upstream": upstream_of(&up)}));

    // Two browsers sign in as alice: two provider sessions, two sids.
    let mut sids = Vec::new();
    let mut jars = Vec::new();
    for _ in 0..2 {
        let mut b = Browser::new();
        let r = b.nav(&gw.proxy_url("/app/p"));
        assert_eq!(r.status, 302);
        let auth = r.header("location").unwrap().to_string();
        assert!(auth.starts_with(&idp.url("/auth?")), "{auth}");
        let cb = idp_authenticate(&mut b, &idp, &auth, "alice");
        assert!(cb.starts_with(&gw.proxy_url("/app/callback?")), "{cb}");
        let r = b.nav(&cb);
        assert_eq!(r.status, 302, "callback: {}\n{}", r.body, gw.logs());
        let r = b.nav(&gw.proxy_url("/app/p"));
        assert_eq!(r.status, 200, "{}", r.body);
        let claims = b64_json(up.last().unwrap().header("x-id-token").unwrap());
        assert_eq!(claims["sub"], "alice");
        sids.push(
            claims["sid"]
                .as_str()
                .expect("the provider puts sid in ID tokens")
                .to_string(),
        );
        jars.push(b);
    }
    assert_ne!(sids[0], sids[1]);

    // Browser 1 signs out at the provider itself, not through the gateway.
    let mut b1 = jars.remove(0);
    let mut b2 = jars.remove(0);
    idp_confirm_logout(&mut b1, &idp, &idp.url("/session/end"));
    let deliveries = idp_backchannel(&idp);
    assert_eq!(deliveries.len(), 1, "{deliveries:?}\n{}", idp.stderr());
    assert_eq!(deliveries[0]["client_id"], CLIENT_ID);
    assert_eq!(deliveries[0]["sid"], sids[0].as_str());
    assert_eq!(
        deliveries[0]["ok"],
        true,
        "the gateway refused the provider's logout token: {deliveries:?}\n{}",
        gw.logs()
    );
    assert!(
        !signed_in(&gw, &mut b1, "/app"),
        "still signed in at the gateway after signing out at the provider"
    );
    assert!(signed_in(&gw, &mut b2, "/app"), "browser 2 was signed out");

    // Browser 2 signs out through the gateway: its session ends there
    // first, and the provider's logout token for it still gets 200.
    let r = b2.nav(&gw.proxy_url("/app/logout"));
    assert_eq!(r.status, 302);
    let end = r.header("location").unwrap().to_string();
    assert!(end.starts_with(&idp.url("/session/end?")), "{end}");
    let back = idp_confirm_logout(&mut b2, &idp, &end);
    assert!(back.starts_with(&gw.proxy_url("/bye?state=")), "{back}");
    let deliveries = idp_backchannel(&idp);
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert_eq!(deliveries[1]["sid"], sids[1].as_str());
    assert_eq!(deliveries[1]["ok"], true, "{deliveries:?}\n{}", gw.logs());
    assert!(!signed_in(&gw, &mut b2, "/app"));
    assert_eq!(upstream_backchannel_posts(&up), 0);
}
