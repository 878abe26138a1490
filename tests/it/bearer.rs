//! `openid-connect` in bearer mode, black-box: the real binary between a
//! client and an echo upstream, with the real test provider
//! (`tests/idp`, npm `oidc-provider`) wherever it can produce the case and
//! the fault-injecting provider ([`FaultIdp`]) for the rest.
//!
//! Attack kinds covered: K04 (identity headers), K05/B13 (Connection),
//! K07 (algorithms and keys), K08 (registered claims), K09 (JWKS refresh),
//! K10 (introspection), K11 (provider outage), K12 (credential
//! extraction), K19 (Upgrade), K21 (no secrets in responses or logs); the
//! bearer half of the OpenID RP tests (issuer, audience, signature,
//! algorithm, kid, key rotation); and the Admin API's checks of the plugin.
//!
//! Every test ends with [`Bench::finish`], which checks that no token sent
//! during the test, the client secret or the admin key is in the gateway's
//! log (K21).

use std::cell::RefCell;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use crate::support::fault_idp::{
    b64, now, sign, sign_with, Mode, Reply, TestKey, DISCOVERY_PATH, E1, INTROSPECTION_PATH,
    JWKS_PATH, K1, K2, KX,
};
use crate::support::{
    free_port, raw_request, raw_request_timeout, wait_until, EchoUpstream, FaultIdp, Gateway, Idp,
    RawPart, Recorded, Resp, DEFAULT_ADMIN_KEY,
};

const CLIENT_ID: &str = "gw-client";
const CLIENT_SECRET: &str = "gw-secret-123";
const CC_CLIENT: &str = "cc-client";
const CC_SECRET: &str = "cc-secret-456";
const RS256_RESOURCE: &str = "urn:portcullis:rs256";
const ES256_RESOURCE: &str = "urn:portcullis:es256";
/// `WWW-Authenticate` when there is no token.
const CHALLENGE: &str = "Bearer realm=\"apisix\"";
/// How every `WWW-Authenticate` for a bad token starts.
const INVALID: &str = "Bearer realm=\"apisix\", error=\"invalid_token\"";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// fixture

/// A gateway in front of one echo upstream, remembering every credential
/// the test sent so that [`Bench::finish`] can look for them in the log.
struct Bench {
    gw: Gateway,
    up: EchoUpstream,
    secrets: RefCell<Vec<String>>,
}

impl Bench {
    fn start() -> Bench {
        Bench {
            gw: Gateway::start(),
            up: EchoUpstream::start(),
            secrets: RefCell::new(vec![CLIENT_SECRET.into(), DEFAULT_ADMIN_KEY.into()]),
        }
    }

    /// `PUT` a route `uri` → the echo upstream with `openid-connect: conf`.
    fn route(&self, id: &str, uri: &str, conf: Value) {
        self.route_with(id, uri, conf, json!({}));
    }

    /// Like [`Bench::route`] with extra route fields.
    fn route_with(&self, id: &str, uri: &str, conf: Value, extra: Value) {
        let mut route = json!({
            "uri": uri,
            "plugins": {"openid-connect": conf},
            "upstream": {"type": "roundrobin", "nodes": {self.up.node(): 1}},
        });
        merge(&mut route, extra);
        self.gw.put_route(id, route);
    }

    /// A route without any plugin.
    fn plain_route(&self, id: &str, uri: &str) {
        self.gw.put_route(
            id,
            json!({"uri": uri, "upstream": {"type": "roundrobin", "nodes": {self.up.node(): 1}}}),
        );
    }

    /// Remembers a credential that must never be logged.
    fn note(&self, secret: &str) {
        // Short strings ("a.b.c") could occur in a log by chance.
        if secret.len() >= 12 {
            self.secrets.borrow_mut().push(secret.to_string());
        }
    }

    /// `GET path` with `Authorization: Bearer <token>`.
    fn bearer(&self, path: &str, token: &str) -> Resp {
        self.note(token);
        self.gw.proxy(
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
        )
    }

    /// `GET path` with exactly these headers.
    fn send(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("authorization") {
                self.note(value.split_once(' ').map_or(*value, |(_, t)| t));
            }
        }
        self.gw.proxy("GET", path, headers)
    }

    /// Sends `token` and asserts a 200 from the upstream; returns what the
    /// upstream saw.
    fn accepted(&self, path: &str, token: &str) -> Recorded {
        let before = self.up.count();
        let r = self.bearer(path, token);
        assert_eq!(
            r.status,
            200,
            "{path}: token refused: {:?} {}\n--- logs ---\n{}",
            r.header("www-authenticate"),
            r.body,
            tail(&self.gw.logs())
        );
        assert_eq!(
            self.up.count(),
            before + 1,
            "{path}: upstream not reached once"
        );
        self.up.last().expect("upstream saw the request")
    }

    /// Sends the headers and asserts that the gateway answered by itself,
    /// never with a 5xx, and the upstream saw nothing.
    fn refused_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let before = self.up.count();
        let r = self.send(path, headers);
        assert!(
            r.status != 200 && r.status < 500,
            "{path}: expected a refusal, got {} {}",
            r.status,
            short(&r.body)
        );
        assert_eq!(
            self.up.count(),
            before,
            "{path}: the upstream was reached although the gateway answered {}",
            r.status
        );
        r
    }

    /// Sends `token` and asserts a 401 `invalid_token` that reached nothing.
    fn invalid(&self, path: &str, token: &str, label: &str) -> Resp {
        self.note(token);
        let r = self.refused_with(path, &[("Authorization", &format!("Bearer {token}"))]);
        assert_invalid(&r, label);
        r
    }

    /// Sends `token` and asserts a 403 with exactly `{"error": error}`.
    fn forbidden(&self, path: &str, token: &str, error: &str) {
        self.note(token);
        let r = self.refused_with(path, &[("Authorization", &format!("Bearer {token}"))]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert_eq!(r.json(), json!({ "error": error }), "{path}");
        assert_eq!(r.header("www-authenticate"), None, "{path}");
    }

    /// One request over a raw socket; `close` adds `Connection: close`,
    /// otherwise reading stops after 700 ms of silence.
    fn raw(&self, target: &str, headers: &[(&str, &str)], close: bool) -> RawPart {
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (n, v) in headers {
            if n.eq_ignore_ascii_case("authorization") {
                self.note(v.split_once(' ').map_or(*v, |(_, t)| t));
            }
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if close {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        let raw = if close {
            raw_request(self.gw.proxy_addr(), req.as_bytes())
        } else {
            raw_request_timeout(
                self.gw.proxy_addr(),
                req.as_bytes(),
                Duration::from_millis(700),
            )
        };
        raw.responses()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no response to {target}: {:?}", raw.text))
    }

    /// K21: no credential sent during the test, nor the client secret, nor
    /// the admin key, is in the gateway's log.
    fn finish(self) {
        let logs = self.gw.logs();
        for s in self.secrets.borrow().iter() {
            assert!(
                !logs.contains(s.as_str()),
                "K21: the gateway log contains a secret or token ({}…)\n--- logs ---\n{}",
                &s[..8],
                tail(&logs)
            );
        }
    }
}

fn merge(into: &mut Value, extra: Value) {
    let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) else {
        panic!("merge needs two objects");
    };
    into.extend(extra);
}

/// `base` with `extra`'s fields set (a `null` stays a JSON null).
fn with(base: &Value, extra: Value) -> Value {
    let mut v = base.clone();
    merge(&mut v, extra);
    v
}

/// `base` without `field`.
fn without(base: &Value, field: &str) -> Value {
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove(field);
    v
}

/// At most 300 characters of `s`, for failure messages.
fn short(s: &str) -> String {
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// 401 with `WWW-Authenticate: Bearer realm="apisix", error="invalid_token", …`.
fn assert_invalid(r: &Resp, label: &str) {
    assert_eq!(
        r.status, 401,
        "{label}: expected 401, got {} {}",
        r.status, r.body
    );
    let www = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{label}: 401 without WWW-Authenticate"));
    assert!(
        www.starts_with(INVALID),
        "{label}: WWW-Authenticate {www:?}"
    );
    assert_eq!(r.json()["error"], "invalid_token", "{label}: {}", r.body);
}

/// The `error_description` inside a `WWW-Authenticate` value.
fn description(r: &Resp) -> String {
    let www = r.header("www-authenticate").unwrap_or("");
    www.split_once("error_description=\"")
        .map(|(_, d)| d.trim_end_matches('"').to_string())
        .unwrap_or_default()
}

/// The decoded `X-Userinfo` the upstream saw (exactly one).
fn userinfo(rec: &Recorded) -> Value {
    let all = rec.header_all("x-userinfo");
    assert_eq!(all.len(), 1, "X-Userinfo values: {all:?}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(all[0])
        .unwrap_or_else(|e| panic!("X-Userinfo is not standard base64 ({e}): {}", all[0]));
    serde_json::from_slice(&bytes).expect("X-Userinfo is base64 of JSON")
}

/// Plugin configuration: local verification through the provider's JWKS.
fn jwks_conf(discovery: &str) -> Value {
    json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": discovery,
        "bearer_only": true,
        "use_jwks": true,
    })
}

/// Plugin configuration: introspection (endpoint from discovery unless given).
fn intro_conf(discovery: &str, endpoint: Option<&str>) -> Value {
    let mut c = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "discovery": discovery,
        "bearer_only": true,
    });
    if let Some(e) = endpoint {
        c["introspection_endpoint"] = json!(e);
    }
    c
}

/// TOK_OK's claims for the fault IdP: iss, aud gw-client, sub user-1,
/// iat now, exp now+600.
fn claims(fault: &FaultIdp) -> Value {
    json!({
        "iss": fault.issuer(),
        "aud": CLIENT_ID,
        "sub": "user-1",
        "email": "user@example.test",
        "iat": now(),
        "exp": now() + 600,
    })
}

/// `claims` signed with `key` under kid `kid`.
fn tok(key: &TestKey, kid: &str, claims: &Value) -> String {
    sign(key, Some(kid), claims)
}

/// JWT access tokens from the real provider, for `resource`.
fn real_jwt(idp: &Idp, resource: &str, scope: &str) -> String {
    idp.client_credentials(CLIENT_ID, CLIENT_SECRET, Some(resource), Some(scope))
}

/// An opaque token from the real provider, issued to cc-client.
fn real_opaque(idp: &Idp) -> String {
    idp.client_credentials(CC_CLIENT, CC_SECRET, None, Some("api:read"))
}

// ---------------------------------------------------------------------------
// JWTs from the real provider

#[test]
fn real_provider_rs256_and_es256_jwts_are_accepted_with_identity_headers() {
    let idp = Idp::start();
    let b = Bench::start();
    let disc = idp.discovery_url();
    b.route("api", "/api/*", jwks_conf(&disc));
    b.route(
        "in-authz",
        "/authz/*",
        with(
            &jwks_conf(&disc),
            json!({"access_token_in_authorization_header": true}),
        ),
    );
    b.route(
        "no-info",
        "/noinfo/*",
        with(&jwks_conf(&disc), json!({"set_userinfo_header": false})),
    );
    b.route(
        "no-token",
        "/notoken/*",
        with(&jwks_conf(&disc), json!({"set_access_token_header": false})),
    );

    for resource in [RS256_RESOURCE, ES256_RESOURCE] {
        let token = real_jwt(&idp, resource, "api:read");
        let head: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        let alg = if resource == RS256_RESOURCE {
            "RS256"
        } else {
            "ES256"
        };
        assert_eq!(head["alg"], alg, "the provider signs {resource} with {alg}");

        let seen = b.accepted("/api/me", &token);
        assert_eq!(seen.header_all("x-access-token"), vec![token.as_str()]);
        let info = userinfo(&seen);
        assert_eq!(info["sub"], CLIENT_ID, "{info}");
        assert_eq!(info["client_id"], CLIENT_ID, "{info}");
        assert_eq!(info["aud"], CLIENT_ID, "{info}");
        assert_eq!(info["iss"], idp.issuer(), "{info}");
        assert_eq!(info["scope"], "api:read", "{info}");
        // APISIX forwards the client's Authorization unchanged.
        assert_eq!(
            seen.header_all("authorization"),
            vec![format!("Bearer {token}").as_str()]
        );

        // B26: the scheme is case-insensitive; extra spaces are tolerated.
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let r = b.send(
                "/api/me",
                &[("Authorization", &format!("{scheme} {token}"))],
            );
            assert_eq!(r.status, 200, "{scheme}: {}", r.body);
        }
        let r = b.send("/api/me", &[("Authorization", &format!("Bearer  {token}"))]);
        assert_eq!(r.status, 200, "two spaces: {}", r.body);

        // The token as Authorization instead of X-Access-Token.
        let seen = b.accepted("/authz/me", &token);
        assert!(
            seen.header("x-access-token").is_none(),
            "{:?}",
            seen.headers
        );
        assert_eq!(
            seen.header_all("authorization"),
            vec![format!("Bearer {token}").as_str()]
        );
        assert_eq!(userinfo(&seen)["sub"], CLIENT_ID);

        // No X-Userinfo when switched off; the token still goes.
        let seen = b.accepted("/noinfo/me", &token);
        assert!(seen.header("x-userinfo").is_none(), "{:?}", seen.headers);
        assert_eq!(seen.header_all("x-access-token"), vec![token.as_str()]);

        // No X-Access-Token when switched off.
        let seen = b.accepted("/notoken/me", &token);
        assert!(
            seen.header("x-access-token").is_none(),
            "{:?}",
            seen.headers
        );
        assert_eq!(userinfo(&seen)["sub"], CLIENT_ID);
    }

    // Four routes with four configurations: each fetched discovery and the
    // JWKS once (both kids are in the one JWKS), however many requests.
    let stats = idp.stats();
    assert_eq!(stats[DISCOVERY_PATH], 4, "{stats}");
    assert_eq!(stats[JWKS_PATH], 4, "{stats}");
    b.finish();
}

#[test]
fn required_scopes_audience_and_algorithm_pinning_with_the_real_provider() {
    let idp = Idp::start();
    let b = Bench::start();
    let disc = idp.discovery_url();
    b.route(
        "read",
        "/read/*",
        with(&jwks_conf(&disc), json!({"required_scopes": ["api:read"]})),
    );
    b.route(
        "write",
        "/write/*",
        with(&jwks_conf(&disc), json!({"required_scopes": ["api:write"]})),
    );
    b.route(
        "both",
        "/both/*",
        with(
            &jwks_conf(&disc),
            json!({"required_scopes": ["api:read", "api:write", "admin"]}),
        ),
    );
    let audience = json!({"claim_validator": {"audience": {"match_with_client_id": true}}});
    b.route("aud", "/aud/*", with(&jwks_conf(&disc), audience.clone()));
    let mut other = with(&jwks_conf(&disc), audience);
    other["client_id"] = json!("other-client");
    b.route("aud-other", "/aud-other/*", other);
    b.route(
        "rs-only",
        "/rs-only/*",
        with(
            &jwks_conf(&disc),
            json!({"token_signing_alg_values_expected": "RS256"}),
        ),
    );

    let read = real_jwt(&idp, RS256_RESOURCE, "api:read");
    b.accepted("/read/x", &read);
    b.forbidden("/write/x", &read, "required scopes api:write not present");
    b.forbidden(
        "/both/x",
        &read,
        "required scopes api:write, admin not present",
    );
    let read_write = real_jwt(&idp, RS256_RESOURCE, "api:read api:write");
    b.accepted("/write/x", &read_write);

    // The provider's aud is gw-client.
    b.accepted("/aud/x", &read);
    b.forbidden("/aud-other/x", &read, "mismatched audience");

    // Pinned to RS256: the provider's own ES256 token is refused.
    b.accepted("/rs-only/x", &read);
    let es = real_jwt(&idp, ES256_RESOURCE, "api:read");
    let r = b.invalid("/rs-only/x", &es, "ES256 on an RS256 route");
    assert!(description(&r).contains("unexpected algorithm"), "{r:?}");
    b.finish();
}

// ---------------------------------------------------------------------------
// K12: credential extraction

#[test]
fn k12_credential_extraction_is_strict_and_unambiguous() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route("api", "/api/*", jwks_conf(&fault.discovery_url()));
    b.route(
        "realm",
        "/realm/*",
        with(
            &jwks_conf(&fault.discovery_url()),
            json!({"realm": "my api"}),
        ),
    );
    let ok = tok(&K1, "k1", &claims(&fault));
    b.accepted("/api/x", &ok);

    // No token: 401 with exactly the realm, custom or not.
    let r = b.refused_with("/api/x", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header_all("www-authenticate"), vec![CHALLENGE]);
    let r = b.refused_with("/realm/x", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header_all("www-authenticate"),
        vec!["Bearer realm=\"my api\""]
    );
    let r = b.refused_with("/realm/x", &[("Authorization", "Bearer x.y.z")]);
    assert_eq!(r.status, 401);
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer realm=\"my api\", error=\"invalid_token\""),
        "{www}"
    );

    // Another scheme is no token at all.
    let r = b.refused_with("/api/x", &[("Authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header_all("www-authenticate"), vec![CHALLENGE]);

    // One word is malformed: 400 without a challenge (APISIX TEST 13). A
    // token glued to the scheme is one word too.
    for value in ["Bearer", "foo", &format!("Bearer{ok}")] {
        let r = b.refused_with("/api/x", &[("Authorization", value)]);
        assert_eq!(r.status, 400, "Authorization: {value}: {}", r.body);
        assert_eq!(r.header("www-authenticate"), None);
    }

    // Two Authorization headers: ambiguous, 400 (raw: a client library
    // would merge or replace them).
    let forged = tok(&KX, "k1", &with(&claims(&fault), json!({"sub": "admin"})));
    for (first, second) in [(&ok, &forged), (&forged, &ok), (&ok, &ok)] {
        let before = b.up.count();
        let part = b.raw(
            "/api/x",
            &[
                ("Authorization", &format!("Bearer {first}")),
                ("Authorization", &format!("Bearer {second}")),
            ],
            true,
        );
        assert_eq!(part.status, 400, "{}", part.body_text());
        assert_eq!(b.up.count(), before);
    }
    // Two credentials in one header value.
    b.invalid(
        "/api/x",
        &format!("{ok}, Bearer {forged}"),
        "two tokens in one header",
    );

    // Header and query together: 400; the query alone is not a credential.
    let r = b.refused_with(
        &format!("/api/x?access_token={ok}"),
        &[("Authorization", &format!("Bearer {ok}"))],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = b.refused_with(&format!("/api/x?a=1&access_token={ok}"), &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header_all("www-authenticate"), vec![CHALLENGE]);

    // A client X-Access-Token is not a credential either.
    let r = b.refused_with("/api/x", &[("X-Access-Token", &ok)]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header_all("www-authenticate"), vec![CHALLENGE]);

    // B26: any letter case of the scheme.
    for scheme in ["bearer", "BEARER"] {
        let before = b.up.count();
        let r = b.send("/api/x", &[("Authorization", &format!("{scheme} {ok}"))]);
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
        assert_eq!(b.up.count(), before + 1);
    }
    // No response body or challenge ever carries the token.
    b.finish();
}

// ---------------------------------------------------------------------------
// K07: signatures, algorithms and keys

#[test]
fn k07_signature_algorithm_and_key_are_pinned() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    let disc = fault.discovery_url();
    b.route("api", "/api/*", jwks_conf(&disc));
    b.route(
        "pem",
        "/pem/*",
        json!({
            "client_id": CLIENT_ID,
            "discovery": disc,
            "bearer_only": true,
            "public_key": K1.public_pem,
        }),
    );
    let c = claims(&fault);
    let admin = with(&c, json!({"sub": "admin"}));
    let ok = tok(&K1, "k1", &c);
    b.accepted("/api/x", &ok);
    b.accepted("/pem/x", &ok);

    let payload = b64(admin.to_string());
    let mut cases: Vec<(String, String)> = Vec::new();
    // B15: unsigned, any spelling; and a signed alg with no signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
        cases.push((format!("alg {alg}"), format!("{h}.{payload}.")));
        let h = b64(json!({"alg": alg, "kid": "k1"}).to_string());
        cases.push((format!("alg {alg} + kid"), format!("{h}.{payload}.")));
    }
    let h = b64(json!({"alg": "RS256", "kid": "k1"}).to_string());
    cases.push(("RS256, empty signature".into(), format!("{h}.{payload}.")));
    cases.push(("RS256, no signature part".into(), format!("{h}.{payload}")));

    // Key confusion: HS256 keyed with the RSA public key's PEM bytes.
    for secret in [K1.public_pem.as_bytes(), K1.public_pem.trim().as_bytes()] {
        let key = EncodingKey::from_secret(secret).unwrap();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let h = json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": "k1"});
            cases.push((
                format!("{alg:?} keyed with the public PEM"),
                sign_with(&h, &admin, &key, alg),
            ));
        }
    }

    // B17: a JWS dressed as a JWE, no alg, a real 5-part JWE.
    let sig = b64([7u8; 256]);
    for head in [
        json!({"alg": "RS256", "kid": "k1", "enc": "A128CBC-HS256"}),
        json!({"alg": "dir", "enc": "A256GCM", "kid": "k1"}),
        json!({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "k1"}),
        json!({"kid": "k1", "typ": "JWT"}),
        json!({"alg": null, "kid": "k1"}),
        json!({"alg": ["RS256"], "kid": "k1"}),
        json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
    ] {
        cases.push((
            format!("header {head}"),
            format!("{}.{payload}.{sig}", b64(head.to_string())),
        ));
    }
    // Keys named by the token itself are never fetched or used.
    let kx_jwk = KX.jwk(Some("k1"));
    for head in [
        json!({"alg": "RS256", "kid": "k1", "jwk": kx_jwk}),
        json!({"alg": "RS256", "jwk": kx_jwk}),
        json!({"alg": "RS256", "kid": "k1", "jku": "http://127.0.0.1:1/jwks"}),
        json!({"alg": "RS256", "kid": "kx", "x5u": "http://127.0.0.1:1/cert"}),
    ] {
        cases.push((
            format!("kx-signed, header {head}"),
            sign_with(&head, &admin, &KX.encoding(), Algorithm::RS256),
        ));
    }
    // The enc header on a token otherwise signed correctly by k1.
    cases.push((
        "k1-signed with enc".into(),
        sign_with(
            &json!({"alg": "RS256", "kid": "k1", "enc": "A128CBC-HS256"}),
            &admin,
            &K1.encoding(),
            Algorithm::RS256,
        ),
    ));
    let jwe_head = b64(json!({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "k1"}).to_string());
    cases.push((
        "5-part JWE".into(),
        format!(
            "{jwe_head}.{}.{}.{}.{}",
            b64([1u8; 256]),
            b64([2u8; 12]),
            payload,
            b64([3u8; 16])
        ),
    ));

    // B18: wrong key, tampered payload, damaged signature.
    cases.push(("kx claiming kid k1".into(), tok(&KX, "k1", &admin)));
    cases.push((
        "RS512 by kx claiming k1".into(),
        sign_with(
            &json!({"alg": "RS512", "kid": "k1"}),
            &admin,
            &KX.encoding(),
            Algorithm::RS512,
        ),
    ));
    let mut parts: Vec<String> = ok.split('.').map(str::to_string).collect();
    parts[1] = b64(with(&c, json!({"sub": "user-2"})).to_string());
    cases.push(("payload changed, signature kept".into(), parts.join(".")));
    let mut sig_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(ok.rsplit('.').next().unwrap())
        .unwrap();
    let last = sig_bytes.len() - 1;
    sig_bytes[last] ^= 0x01;
    let (signing_input, _) = ok.rsplit_once('.').unwrap();
    cases.push((
        "last signature byte flipped".into(),
        format!("{signing_input}.{}", b64(&sig_bytes)),
    ));
    cases.push((
        "signature truncated".into(),
        format!("{signing_input}.{}", b64(&sig_bytes[..128])),
    ));
    // An EC token naming the RSA key.
    cases.push(("ES256 by e1 claiming k1".into(), tok(&E1, "k1", &admin)));
    // PS256 by the attacker.
    cases.push((
        "PS256 by kx claiming k1".into(),
        sign_with(
            &json!({"alg": "PS256", "kid": "k1"}),
            &admin,
            &KX.encoding(),
            Algorithm::PS256,
        ),
    ));

    // The genuine token first, so the verified-token caches (and the table
    // of recent tokens in front of them) hold it while its forgeries come.
    b.accepted("/api/x", &ok);
    b.accepted("/pem/x", &ok);
    for (label, token) in &cases {
        for path in ["/api/x", "/pem/x"] {
            b.invalid(path, token, &format!("{label} on {path}"));
        }
    }
    // The controls still pass afterwards.
    b.accepted("/api/x", &ok);
    b.accepted("/pem/x", &ok);
    b.finish();
}

#[test]
fn algorithm_comes_from_the_configuration_and_kid_less_tokens_need_one_fitting_key() {
    // RP test 85: the configuration, not the token, names the algorithm.
    let fault = FaultIdp::start();
    fault.set_keys(vec![K1.jwk_any_alg(Some("k1"))]);
    let b = Bench::start();
    b.route(
        "ps",
        "/ps/*",
        with(
            &jwks_conf(&fault.discovery_url()),
            json!({"token_signing_alg_values_expected": "PS256"}),
        ),
    );
    let c = claims(&fault);
    let ps = sign_with(
        &json!({"alg": "PS256", "kid": "k1", "typ": "JWT"}),
        &c,
        &K1.encoding(),
        Algorithm::PS256,
    );
    b.accepted("/ps/x", &ps);
    let r = b.invalid("/ps/x", &tok(&K1, "k1", &c), "RS256 by a published key");
    assert!(description(&r).contains("unexpected algorithm"), "{r:?}");

    // A JWK that names its algorithm only verifies that algorithm.
    let pinned = FaultIdp::start();
    b.route("pinned", "/pinned/*", jwks_conf(&pinned.discovery_url()));
    let c = claims(&pinned);
    b.accepted("/pinned/x", &tok(&K1, "k1", &c));
    let ps = sign_with(
        &json!({"alg": "PS256", "kid": "k1"}),
        &c,
        &K1.encoding(),
        Algorithm::PS256,
    );
    b.invalid("/pinned/x", &ps, "PS256 with a key marked RS256");

    // RP test 7: no kid anywhere, one key fits RS256 → that key.
    let single = FaultIdp::start();
    single.set_keys(vec![K1.jwk(None), E1.jwk(None)]);
    b.route("single", "/single/*", jwks_conf(&single.discovery_url()));
    let c = claims(&single);
    b.accepted("/single/x", &sign(&K1, None, &c));
    b.accepted("/single/x", &sign(&E1, None, &c));
    b.invalid("/single/x", &sign(&KX, None, &c), "kid-less, wrong key");

    // RP test 8: several RSA keys and no kid → ambiguous, refused.
    let multi = FaultIdp::start();
    multi.set_keys(vec![K1.jwk(None), K2.jwk(None)]);
    b.route("multi", "/multi/*", jwks_conf(&multi.discovery_url()));
    let c = claims(&multi);
    b.invalid("/multi/x", &sign(&K1, None, &c), "ambiguous key");
    b.invalid("/multi/x", &sign(&K2, None, &c), "ambiguous key");
    assert!(
        multi.hits(JWKS_PATH) <= 2,
        "kid-less tokens hammered the JWKS: {}",
        multi.hits(JWKS_PATH)
    );
    b.finish();
}

// ---------------------------------------------------------------------------
// K08: registered claims

#[test]
fn k08_exp_nbf_iat_and_iss_are_typed_and_exact() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    let disc = fault.discovery_url();
    b.route(
        "api",
        "/api/*",
        with(&jwks_conf(&disc), json!({"access_token_expires_leeway": 0})),
    );
    b.route(
        "leeway",
        "/leeway/*",
        with(
            &jwks_conf(&disc),
            json!({"access_token_expires_leeway": 60}),
        ),
    );
    let c = claims(&fault);
    let t = |claims: Value| tok(&K1, "k1", &claims);
    b.accepted("/api/x", &t(c.clone()));

    let iss = fault.issuer();
    let refused = [
        ("B19 exp now-3600", with(&c, json!({"exp": now() - 3600}))),
        (
            "B19 exp now-5, leeway 0",
            with(&c, json!({"exp": now() - 5})),
        ),
        (
            "B19 exp as a string",
            with(&c, json!({"exp": "9999999999"})),
        ),
        (
            "exp as a numeric string",
            with(&c, json!({"exp": (now() + 600).to_string()})),
        ),
        ("exp null", with(&c, json!({"exp": null}))),
        ("exp missing", without(&c, "exp")),
        ("exp negative", with(&c, json!({"exp": -1}))),
        (
            "exp an object",
            with(&c, json!({"exp": {"n": 9999999999u64}})),
        ),
        ("nbf in the future", with(&c, json!({"nbf": now() + 3600}))),
        ("nbf as a string", with(&c, json!({"nbf": "0"}))),
        (
            "iat far in the future",
            with(&c, json!({"iat": now() + 3600})),
        ),
        ("iat as a string", with(&c, json!({"iat": "0"}))),
        (
            "iss with a trailing slash",
            with(&c, json!({"iss": format!("{iss}/")})),
        ),
        (
            "iss plus one character",
            with(&c, json!({"iss": format!("{iss}1")})),
        ),
        (
            "iss in upper case",
            with(&c, json!({"iss": iss.to_uppercase()})),
        ),
        ("iss missing", without(&c, "iss")),
        ("iss null", with(&c, json!({"iss": null}))),
        ("iss as an array", with(&c, json!({"iss": [iss]}))),
        (
            "iss array with a stranger",
            with(&c, json!({"iss": [iss, "http://evil"]})),
        ),
    ];
    for (label, claims) in &refused {
        b.invalid("/api/x", &t(claims.clone()), label);
    }
    let r = b.invalid("/api/x", &t(with(&c, json!({"exp": now() - 3600}))), "exp");
    assert!(description(&r).contains("'exp'"), "{r:?}");
    let r = b.invalid(
        "/api/x",
        &t(with(&c, json!({"iss": format!("{iss}/")}))),
        "iss",
    );
    assert!(description(&r).contains("'iss'"), "{r:?}");

    // NumericDate may be fractional; nbf and iat in the past are fine; iat
    // within iat_slack (120 s) is fine.
    for claims in [
        with(&c, json!({"exp": now() as f64 + 600.5})),
        with(&c, json!({"nbf": now() - 10, "iat": now() - 10})),
        with(&c, json!({"iat": now() + 60})),
        without(&c, "iat"),
    ] {
        b.accepted("/api/x", &t(claims));
    }

    // Leeway is honoured and bounded by the configuration.
    b.accepted("/leeway/x", &t(with(&c, json!({"exp": now() - 30}))));
    b.accepted("/leeway/x", &t(with(&c, json!({"nbf": now() + 30}))));
    b.invalid(
        "/leeway/x",
        &t(with(&c, json!({"exp": now() - 120}))),
        "past leeway",
    );
    b.invalid(
        "/leeway/x",
        &t(with(&c, json!({"nbf": now() + 120}))),
        "past leeway",
    );

    // Configured issuers replace the discovery document's.
    b.route(
        "valid-iss",
        "/valid-iss/*",
        with(
            &jwks_conf(&disc),
            json!({"claim_validator": {"issuer": {"valid_issuers": ["https://a.example", "https://b.example"]}}}),
        ),
    );
    b.accepted(
        "/valid-iss/x",
        &t(with(&c, json!({"iss": "https://b.example"}))),
    );
    b.invalid(
        "/valid-iss/x",
        &t(c.clone()),
        "discovery issuer not configured",
    );
    b.invalid(
        "/valid-iss/x",
        &t(with(&c, json!({"iss": "https://a.example/"}))),
        "near miss of a configured issuer",
    );
    b.finish();
}

#[test]
fn discovery_issuer_must_match_the_discovery_url() {
    // RP test 19: the document names another issuer than its own URL.
    let b = Bench::start();
    let invalid = FaultIdp::start();
    invalid.set_issuer(&format!("{}INVALID", invalid.base_url()));
    b.route("invalid", "/invalid/*", jwks_conf(&invalid.discovery_url()));
    for iss in [invalid.base_url(), invalid.issuer()] {
        let token = tok(&K1, "k1", &with(&claims(&invalid), json!({"iss": iss})));
        let r = b.invalid("/invalid/x", &token, &format!("iss {iss}"));
        assert_eq!(description(&r), "issuer validation unavailable", "{r:?}");
    }
    b.gw.wait_for_log("discovery issuer does not match", WAIT);

    // One extra character after the port is another issuer, too.
    let near = FaultIdp::start();
    near.set_issuer(&format!("{}1", near.base_url()));
    b.route("near", "/near/*", jwks_conf(&near.discovery_url()));
    for iss in [near.base_url(), near.issuer()] {
        let token = tok(&K1, "k1", &with(&claims(&near), json!({"iss": iss})));
        b.invalid("/near/x", &token, &format!("iss {iss}"));
    }

    // A trailing slash on the advertised issuer is legitimate (Discovery
    // §4.1), but then tokens must carry exactly that issuer.
    let slash = FaultIdp::start();
    slash.set_issuer(&format!("{}/", slash.base_url()));
    b.route("slash", "/slash/*", jwks_conf(&slash.discovery_url()));
    let c = claims(&slash);
    b.accepted("/slash/x", &tok(&K1, "k1", &c));
    b.invalid(
        "/slash/x",
        &tok(&K1, "k1", &with(&c, json!({"iss": slash.base_url()}))),
        "issuer without the advertised slash",
    );
    b.finish();
}

#[test]
fn b20_audience_string_or_array_exact_match_with_client_id() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    let disc = fault.discovery_url();
    b.route(
        "aud",
        "/aud/*",
        with(
            &jwks_conf(&disc),
            json!({"claim_validator": {"audience": {"claim": "aud", "required": true, "match_with_client_id": true}}}),
        ),
    );
    b.route(
        "required",
        "/required/*",
        with(
            &jwks_conf(&disc),
            json!({"claim_validator": {"audience": {"required": true}}}),
        ),
    );
    b.route(
        "azp",
        "/azp/*",
        with(
            &jwks_conf(&disc),
            json!({"claim_validator": {"audience": {"claim": "azp", "match_with_client_id": true}}}),
        ),
    );
    b.route("open", "/open/*", jwks_conf(&disc));
    let c = claims(&fault);
    let t = |claims: Value| tok(&K1, "k1", &claims);

    for aud in [
        json!("gw-client"),
        json!(["other-api", "gw-client"]),
        json!(["gw-client"]),
        json!(["gw-client", "gw-client1"]),
    ] {
        b.accepted("/aud/x", &t(with(&c, json!({ "aud": aud }))));
    }
    for aud in [
        json!(["other-api"]),
        json!([]),
        json!("gw-client-evil"),
        json!("gw-clien"),
        json!(["gw-client "]),
        json!("GW-CLIENT"),
        json!(null),
        json!(1),
        json!([["gw-client"]]),
        json!({"aud": "gw-client"}),
    ] {
        b.forbidden(
            "/aud/x",
            &t(with(&c, json!({ "aud": aud }))),
            "mismatched audience",
        );
    }
    b.forbidden(
        "/aud/x",
        &t(without(&c, "aud")),
        "required audience claim not present",
    );
    b.forbidden(
        "/required/x",
        &t(without(&c, "aud")),
        "required audience claim not present",
    );
    b.accepted("/required/x", &t(with(&c, json!({"aud": "anyone"}))));

    // Another claim can carry the audience.
    b.accepted(
        "/azp/x",
        &t(with(&c, json!({"azp": "gw-client", "aud": "x"}))),
    );
    b.forbidden(
        "/azp/x",
        &t(c.clone()),
        "required audience claim not present",
    );

    // No audience rule: no audience check (APISIX).
    b.accepted("/open/x", &t(with(&c, json!({"aud": "someone-else"}))));
    b.accepted("/open/x", &t(without(&c, "aud")));
    b.finish();
}

// ---------------------------------------------------------------------------
// K09: JWKS refresh

#[test]
fn b22_new_kid_is_fetched_at_once_and_unknown_kids_are_rate_limited() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route("api", "/api/*", jwks_conf(&fault.discovery_url()));
    let c = claims(&fault);
    b.accepted("/api/x", &tok(&K1, "k1", &c));
    assert_eq!(fault.hits(JWKS_PATH), 1);

    // Rotation right after the first fetch: k2 appears, and is used at once.
    fault.set_keys(vec![K1.jwk(Some("k1")), K2.jwk(Some("k2"))]);
    let k2 = tok(&K2, "k2", &c);
    let seen = b.accepted("/api/x", &k2);
    assert_eq!(userinfo(&seen)["sub"], "user-1");
    assert_eq!(
        fault.hits(JWKS_PATH),
        2,
        "exactly one refetch for the new kid"
    );
    b.accepted("/api/x", &tok(&K1, "k1", &c));
    assert_eq!(fault.hits(JWKS_PATH), 2);

    // 50 forged kids within a second: all refused, at most one more fetch.
    let forged = tok(&KX, "k9", &with(&c, json!({"sub": "admin"})));
    let started = Instant::now();
    for _ in 0..50 {
        b.invalid("/api/x", &forged, "unknown kid k9");
    }
    eprintln!("50 unknown-kid requests took {:?}", started.elapsed());
    assert!(
        fault.hits(JWKS_PATH) <= 3,
        "unknown kids made {} JWKS fetches",
        fault.hits(JWKS_PATH) - 2
    );
    b.finish();
}

#[test]
fn k09_unknown_kid_refetches_once_and_full_rotation_is_picked_up() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route("api", "/api/*", jwks_conf(&fault.discovery_url()));
    let c = claims(&fault);
    let k1 = tok(&K1, "k1", &c);
    b.accepted("/api/x", &k1);
    assert_eq!(fault.hits(JWKS_PATH), 1);

    // An unknown kid: one refetch, then 401; more of them: no more fetches.
    let unknown = tok(&KX, "nope", &c);
    let r = b.invalid("/api/x", &unknown, "unknown kid");
    assert!(description(&r).contains("no matching key"), "{r:?}");
    assert_eq!(fault.hits(JWKS_PATH), 2);
    for _ in 0..20 {
        b.invalid("/api/x", &unknown, "unknown kid again");
    }
    assert_eq!(fault.hits(JWKS_PATH), 2, "refetches are rate-limited");
    b.accepted("/api/x", &k1);

    // RP test 20 on a second provider: every key replaced (new kids) right
    // after the first fetch; 20 concurrent tokens with the new kid → one
    // fetch, all accepted.
    let rot = FaultIdp::start();
    b.route("rot", "/rot/*", jwks_conf(&rot.discovery_url()));
    b.up.clear();
    let c = claims(&rot);
    let warm = tok(&K1, "k1", &c);
    assert_eq!(b.bearer("/rot/x", &warm).status, 200);
    rot.set_keys(vec![K2.jwk(Some("k2-new")), E1.jwk(Some("e1-new"))]);
    let rs = tok(&K2, "k2-new", &c);
    let es = tok(&E1, "e1-new", &c);
    b.note(&rs);
    b.note(&es);
    let gw = &b.gw;
    let barrier = Barrier::new(20);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let token = if i % 2 == 0 { &rs } else { &es };
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    gw.proxy(
                        "GET",
                        "/rot/x",
                        &[("Authorization", &format!("Bearer {token}"))],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(b.up.count(), 21);
    assert_eq!(rot.hits(JWKS_PATH), 2, "one fetch for the whole burst");
    // The retired key is gone after that fetch.
    b.invalid("/rot/x", &tok(&K1, "k1", &c), "retired key");
    b.finish();
}

#[test]
fn k09_a_key_removed_from_the_jwks_stops_working_after_jwk_expires_in() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route(
        "api",
        "/api/*",
        with(
            &jwks_conf(&fault.discovery_url()),
            json!({"jwk_expires_in": 1}),
        ),
    );
    let c = claims(&fault);
    let k1 = tok(&K1, "k1", &c);
    b.accepted("/api/x", &k1);
    let removed_at = Instant::now();
    fault.set_keys(vec![K2.jwk(Some("k2"))]);

    // Within a moment of the TTL the removal takes effect.
    let mut last = 0;
    let gone = wait_until(Duration::from_secs(5), || {
        last = b.bearer("/api/x", &k1).status;
        last == 401
    });
    assert!(
        gone,
        "k1 still accepted {:?} after removal ({last})",
        removed_at.elapsed()
    );
    assert!(fault.hits(JWKS_PATH) >= 2);
    b.invalid("/api/x", &k1, "removed key");
    b.accepted("/api/x", &tok(&K2, "k2", &c));
    b.finish();
}

// ---------------------------------------------------------------------------
// K11: provider outages

#[test]
fn k11_jwks_outage_after_a_good_fetch_serves_the_last_good_keys() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route(
        "api",
        "/api/*",
        with(
            &jwks_conf(&fault.discovery_url()),
            json!({"jwk_expires_in": 1, "timeout": 1}),
        ),
    );
    let c = claims(&fault);
    let k1 = tok(&K1, "k1", &c);
    b.accepted("/api/x", &k1);
    assert_eq!(fault.hits(JWKS_PATH), 1);

    fault.set_jwks_mode(Mode::Status(500));
    // Once the TTL has passed a refresh is tried, fails, and the last keys
    // keep serving.
    let refreshed = wait_until(Duration::from_secs(5), || {
        b.accepted("/api/x", &k1);
        fault.hits(JWKS_PATH) >= 2
    });
    assert!(refreshed, "no refresh attempt after the TTL");
    b.gw.wait_for_log("jwks refresh failed; serving the last good keys", WAIT);
    // During the outage the provider is not asked on every request.
    let hits = fault.hits(JWKS_PATH);
    for _ in 0..10 {
        b.accepted("/api/x", &k1);
    }
    assert!(
        fault.hits(JWKS_PATH) <= hits + 1,
        "every request retried the failing JWKS: {} → {}",
        hits,
        fault.hits(JWKS_PATH)
    );
    // Forged tokens stay refused on the stale keys.
    b.invalid("/api/x", &tok(&KX, "k1", &c), "kx on stale keys");

    // Recovery: the next refresh after the hold-back takes new keys.
    fault.set_jwks_mode(Mode::Serve);
    fault.set_keys(vec![K2.jwk(Some("k2"))]);
    let k2 = tok(&K2, "k2", &c);
    let ok = wait_until(Duration::from_secs(10), || {
        b.bearer("/api/x", &k2).status == 200
    });
    assert!(ok, "new keys never taken after the outage");
    b.finish();
}

#[test]
fn k11_jwks_that_hangs_fails_closed_within_the_timeout() {
    let fault = FaultIdp::start();
    fault.set_jwks_mode(Mode::Hang(Duration::from_secs(10)));
    let b = Bench::start();
    b.route(
        "api",
        "/api/*",
        with(&jwks_conf(&fault.discovery_url()), json!({"timeout": 1})),
    );
    let token = tok(&K1, "k1", &claims(&fault));
    b.note(&token);

    // Five requests at once: each fails closed, none waits for the others'
    // timeouts in turn.
    let gw = &b.gw;
    let barrier = Barrier::new(5);
    let results: Vec<(Resp, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|_| {
                let (barrier, token) = (&barrier, &token);
                s.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let r = gw.proxy(
                        "GET",
                        "/api/x",
                        &[("Authorization", &format!("Bearer {token}"))],
                    );
                    (r, started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, took) in &results {
        assert_invalid(r, "hanging JWKS");
        assert!(
            description(r).contains("could not be reached"),
            "{:?}",
            r.header("www-authenticate")
        );
        assert!(*took < Duration::from_secs(3), "answered after {took:?}");
    }
    assert_eq!(b.up.count(), 0);
    assert_eq!(fault.hits(JWKS_PATH), 1, "one attempt for the whole burst");
    b.gw.wait_for_log("identity provider unreachable", WAIT);
    b.finish();
}

#[test]
fn k11_discovery_on_a_closed_port_is_a_fast_401() {
    let b = Bench::start();
    let closed = format!(
        "http://127.0.0.1:{}/.well-known/openid-configuration",
        free_port()
    );
    b.route(
        "jwks",
        "/jwks/*",
        with(&jwks_conf(&closed), json!({"timeout": 2})),
    );
    b.route(
        "intro",
        "/intro/*",
        with(&intro_conf(&closed, None), json!({"timeout": 2})),
    );
    let introspect_closed = format!("http://127.0.0.1:{}/introspect", free_port());
    b.route(
        "intro-ep",
        "/intro-ep/*",
        with(
            &intro_conf(&closed, Some(&introspect_closed)),
            json!({"timeout": 2}),
        ),
    );
    let fault = FaultIdp::start();
    let token = tok(&K1, "k1", &claims(&fault));
    for path in ["/jwks/x", "/intro/x", "/intro-ep/x"] {
        for _ in 0..2 {
            let started = Instant::now();
            let r = b.invalid(path, &token, path);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{path}: took {:?}",
                started.elapsed()
            );
            assert!(
                description(&r).contains("could not be reached"),
                "{path}: {:?}",
                r.header("www-authenticate")
            );
        }
    }
    b.gw.wait_for_log("identity provider unreachable", WAIT);
    b.finish();
}

// ---------------------------------------------------------------------------
// K10: introspection

/// The provider's clients with gw-client registered for client_secret_post.
const POST_CLIENTS: &str = r#"{"clients": [
  {"client_id": "gw-client", "client_secret": "gw-secret-123",
   "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": [],
   "token_endpoint_auth_method": "client_secret_post"},
  {"client_id": "cc-client", "client_secret": "cc-secret-456",
   "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": [],
   "token_endpoint_auth_method": "client_secret_basic"}]}"#;

#[test]
fn introspection_with_the_real_provider_accepts_refuses_and_sees_revocation() {
    let idp = Idp::start();
    let b = Bench::start();
    let disc = idp.discovery_url();
    b.route(
        "intro",
        "/intro/*",
        with(
            &intro_conf(&disc, None),
            json!({"introspection_interval": 1}),
        ),
    );
    b.route(
        "scoped",
        "/scoped/*",
        with(
            &intro_conf(&disc, None),
            json!({"required_scopes": ["api:write"]}),
        ),
    );
    let mut wrong = intro_conf(&disc, None);
    wrong["client_secret"] = json!("not-the-secret-0123");
    b.route("wrong", "/wrong/*", wrong);
    b.note("not-the-secret-0123");

    let token = real_opaque(&idp);
    assert_eq!(token.split('.').count(), 1, "an opaque token: {token}");
    let seen = b.accepted("/intro/x", &token);
    assert_eq!(seen.header_all("x-access-token"), vec![token.as_str()]);
    let info = userinfo(&seen);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], CC_CLIENT, "{info}");
    assert_eq!(info["scope"], "api:read", "{info}");
    assert_eq!(info["iss"], idp.issuer(), "{info}");

    b.forbidden("/scoped/x", &token, "required scopes api:write not present");

    // The provider refuses the gateway's credentials: fail closed.
    let r = b.invalid("/wrong/x", &token, "wrong client secret");
    assert!(description(&r).contains("could not be reached"), "{r:?}");

    // Unknown token: the provider says inactive.
    let r = b.invalid(
        "/intro/x",
        "opaque-token-never-issued-0123",
        "unknown token",
    );
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Bearer realm=\"apisix\", error=\"invalid_token\", error_description=\"invalid token\""
    );

    // Revoked at the provider: refused once the cached answer (1 s) is gone.
    idp.revoke(&token);
    assert_eq!(
        idp.introspect(CLIENT_ID, CLIENT_SECRET, &token)["active"],
        false
    );
    let revoked_at = Instant::now();
    let refused = wait_until(Duration::from_secs(5), || {
        b.bearer("/intro/x", &token).status == 401
    });
    assert!(
        refused,
        "revoked token still accepted after {:?}",
        revoked_at.elapsed()
    );
    b.invalid("/intro/x", &token, "revoked");
    b.finish();
}

#[test]
fn introspection_client_authentication_basic_and_post() {
    // The provider holds gw-client to client_secret_post.
    let idp = Idp::start_with(POST_CLIENTS);
    let b = Bench::start();
    let disc = idp.discovery_url();
    b.route(
        "post",
        "/post/*",
        with(
            &intro_conf(&disc, None),
            json!({"introspection_endpoint_auth_method": "client_secret_post"}),
        ),
    );
    b.route(
        "basic",
        "/basic/*",
        with(
            &intro_conf(&disc, None),
            json!({"introspection_endpoint_auth_method": "client_secret_basic"}),
        ),
    );
    // oidc-provider takes either form from a client registered for one of
    // them, so the wire format is checked with the recorder below.
    let token = real_opaque(&idp);
    let info = userinfo(&b.accepted("/post/x", &token));
    assert_eq!(info["client_id"], CC_CLIENT);
    let token = real_opaque(&idp);
    assert_eq!(
        userinfo(&b.accepted("/basic/x", &token))["client_id"],
        CC_CLIENT
    );

    // The default provider (client_secret_basic).
    let idp = Idp::start();
    let disc = idp.discovery_url();
    b.route(
        "basic2",
        "/basic2/*",
        with(
            &intro_conf(&disc, None),
            json!({"introspection_endpoint_auth_method": "client_secret_basic"}),
        ),
    );
    let token = real_opaque(&idp);
    assert_eq!(
        userinfo(&b.accepted("/basic2/x", &token))["client_id"],
        CC_CLIENT
    );

    // What exactly goes over the wire (fault IdP as a recorder), with a
    // secret that needs form encoding (RFC 6749 §2.3.1).
    let fault = FaultIdp::start();
    fault.set_introspection(Reply::json(
        json!({"active": true, "sub": "user-1", "exp": now() + 600}),
    ));
    let odd_secret = "s3cr:et+x%y z";
    for (id, method) in [
        ("rec-basic", "client_secret_basic"),
        ("rec-post", "client_secret_post"),
    ] {
        let mut conf = intro_conf(&fault.discovery_url(), Some(&fault.introspection_url()));
        conf["client_secret"] = json!(odd_secret);
        conf["introspection_endpoint_auth_method"] = json!(method);
        b.route(id, &format!("/{id}/*"), conf);
    }
    b.note(odd_secret);
    let t = "opaque-recorded-token-0001";
    b.accepted("/rec-basic/x", t);
    let call = fault.calls().pop().unwrap();
    assert_eq!(call.path, INTROSPECTION_PATH);
    assert_eq!(call.method, "POST");
    let basic = call.header("authorization").expect("Basic credentials");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.strip_prefix("Basic ").expect("Basic scheme"))
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "gw-client:s3cr%3Aet%2Bx%25y+z"
    );
    assert!(call.body.contains(&format!("token={t}")), "{}", call.body);
    assert!(!call.body.contains("client_secret"), "{}", call.body);

    // A token with characters the form encoding must escape.
    let t = "opaque+recorded/token=0002&x=%41";
    b.accepted("/rec-post/x", t);
    let call = fault.calls().pop().unwrap();
    assert_eq!(call.header("authorization"), None, "{:?}", call.headers);
    let form: Vec<(String, String)> = call
        .body
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), form_decode(v))
        })
        .collect();
    assert!(form.contains(&("token".into(), t.into())), "{form:?}");
    assert!(
        form.contains(&("client_id".into(), CLIENT_ID.into())),
        "{form:?}"
    );
    assert!(
        form.contains(&("client_secret".into(), odd_secret.into())),
        "{form:?}"
    );
    b.finish();
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn introspection_counts_one_call_per_token_sequential_and_concurrent() {
    let idp = Idp::start();
    let b = Bench::start();
    b.route("intro", "/intro/*", intro_conf(&idp.discovery_url(), None));
    // The same plugin configuration (so the same plugin and cache) on a
    // second route, for the burst.
    b.route("burst", "/burst/*", intro_conf(&idp.discovery_url(), None));
    let token = real_opaque(&idp);
    b.note(&token);
    idp.reset_stats();

    // 1 000 sequential requests, one token: one introspection call.
    let header = format!("Bearer {token}");
    let started = Instant::now();
    for i in 0..1000 {
        let r = b.gw.proxy("GET", "/intro/x", &[("Authorization", &header)]);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    eprintln!("1000 introspected requests took {:?}", started.elapsed());
    assert_eq!(b.up.count(), 1000);
    assert_eq!(idp.hits("/token/introspection"), 1, "{}", idp.stats());

    // 50 concurrent first requests with a new token: one call.
    let fresh = real_opaque(&idp);
    b.note(&fresh);
    let gw = &b.gw;
    let barrier = Barrier::new(50);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let (barrier, fresh) = (&barrier, &fresh);
                s.spawn(move || {
                    barrier.wait();
                    gw.proxy(
                        "GET",
                        "/burst/x",
                        &[("Authorization", &format!("Bearer {fresh}"))],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(b.up.count(), 1050);
    assert_eq!(idp.hits("/token/introspection"), 2, "{}", idp.stats());
    b.finish();
}

#[test]
fn b23_only_active_true_grants_access_and_refusals_are_never_cached() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route(
        "intro",
        "/intro/*",
        with(
            &intro_conf(&fault.discovery_url(), Some(&fault.introspection_url())),
            json!({"timeout": 1}),
        ),
    );
    let token = "opaque-revoked-0000000001";
    let exp = now() + 600;
    let inactive = [
        (
            "active false",
            Reply::json(json!({"active": false, "sub": "user-1"})),
        ),
        ("no active", Reply::json(json!({}))),
        (
            "active \"true\"",
            Reply::json(json!({"active": "true", "sub": "admin"})),
        ),
        ("active 1", Reply::json(json!({"active": 1}))),
        ("active null", Reply::json(json!({"active": null}))),
        ("active [true]", Reply::json(json!({"active": [true]}))),
        (
            "active true, exp passed",
            Reply::json(json!({"active": true, "sub": "user-1", "exp": now() - 10})),
        ),
        (
            "active true, fractional exp passed",
            Reply::json(json!({"active": true, "sub": "user-1", "exp": now() as f64 - 10.5})),
        ),
        (
            "active true, negative exp",
            Reply::json(json!({"active": true, "sub": "user-1", "exp": -1})),
        ),
        (
            "active true, exp a string",
            Reply::json(json!({"active": true, "sub": "user-1", "exp": "9999999999"})),
        ),
    ];
    let failing = [
        ("non-JSON body", Reply::raw(200, "active=true")),
        ("JSON array", Reply::raw(200, "[{\"active\":true}]")),
        ("status 500", Reply::raw(500, "{\"active\":true}")),
        (
            "status 401",
            Reply::raw(401, "{\"error\":\"invalid_client\"}"),
        ),
        ("status 302", Reply::raw(302, "{\"active\":true}")),
    ];
    for (label, reply) in inactive.iter().chain(failing.iter()) {
        fault.set_introspection(reply.clone());
        for round in 0..2 {
            let hits = fault.hits(INTROSPECTION_PATH);
            let r = b.invalid("/intro/x", token, label);
            assert_eq!(
                fault.hits(INTROSPECTION_PATH),
                hits + 1,
                "{label} (round {round}): a refusal was served from a cache"
            );
            assert!(
                !r.body.contains("user-1") && !r.body.contains("admin"),
                "{}",
                r.body
            );
        }
    }
    for (label, reply) in &inactive {
        fault.set_introspection(reply.clone());
        let r = b.invalid("/intro/x", token, label);
        assert!(
            description(&r).starts_with("invalid token"),
            "{label}: {r:?}"
        );
    }
    for (label, reply) in &failing {
        fault.set_introspection(reply.clone());
        let r = b.invalid("/intro/x", token, label);
        assert!(
            description(&r).contains("could not be reached"),
            "{label}: {r:?}"
        );
    }

    // The same token, now active: the earlier refusals were not cached.
    fault.set_introspection(Reply::json(
        json!({"active": true, "sub": "user-1", "exp": exp, "aud": "gw-client"}),
    ));
    let hits = fault.hits(INTROSPECTION_PATH);
    let info = userinfo(&b.accepted("/intro/x", token));
    assert_eq!(info["sub"], "user-1");
    assert_eq!(info["active"], true);
    assert_eq!(fault.hits(INTROSPECTION_PATH), hits + 1);
    // Active answers are cached (until exp).
    b.accepted("/intro/x", token);
    assert_eq!(fault.hits(INTROSPECTION_PATH), hits + 1);

    // Scopes and audience are checked on introspection answers too (403).
    b.route(
        "intro-rules",
        "/intro-rules/*",
        with(
            &intro_conf(&fault.discovery_url(), Some(&fault.introspection_url())),
            json!({
                "required_scopes": ["api:read"],
                "claim_validator": {"audience": {"match_with_client_id": true}},
            }),
        ),
    );
    let answers = [
        (
            json!({"scope": "api:read api:write", "aud": "gw-client"}),
            None,
        ),
        (
            json!({"scope": ["api:read"], "aud": ["x", "gw-client"]}),
            None,
        ),
        (
            json!({"scope": "api:write", "aud": "gw-client"}),
            Some("required scopes api:read not present"),
        ),
        (
            json!({"aud": "gw-client"}),
            Some("required scopes api:read not present"),
        ),
        (
            json!({"scope": "api:read", "aud": "other"}),
            Some("mismatched audience"),
        ),
        (
            json!({"scope": "api:read"}),
            Some("required audience claim not present"),
        ),
    ];
    for (i, (extra, refusal)) in answers.into_iter().enumerate() {
        let mut reply = json!({"active": true, "sub": "user-1", "exp": exp});
        merge(&mut reply, extra);
        fault.set_introspection(Reply::json(reply));
        let t = format!("opaque-rules-{i:012}");
        match refusal {
            None => drop(b.accepted("/intro-rules/x", &t)),
            Some(error) => b.forbidden("/intro-rules/x", &t, error),
        }
    }

    // An active answer without exp is used once and not cached.
    fault.set_introspection(Reply::json(json!({"active": true, "sub": "user-2"})));
    let other = "opaque-no-exp-0000000002";
    let hits = fault.hits(INTROSPECTION_PATH);
    b.accepted("/intro/x", other);
    b.accepted("/intro/x", other);
    assert_eq!(fault.hits(INTROSPECTION_PATH), hits + 2);
    b.finish();
}

#[test]
fn b25_hanging_introspection_fails_closed_within_the_timeout() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route(
        "intro",
        "/intro/*",
        with(
            &intro_conf(&fault.discovery_url(), Some(&fault.introspection_url())),
            json!({"timeout": 1}),
        ),
    );
    fault.set_introspection(
        Reply::json(json!({"active": true, "sub": "user-1", "exp": now() + 600}))
            .after(Duration::from_secs(10)),
    );
    let token = "opaque-slow-0000000000001";
    let started = Instant::now();
    let r = b.invalid("/intro/x", token, "hanging introspection");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert!(
        description(&r).contains("could not be reached"),
        "{:?}",
        r.header("www-authenticate")
    );
    assert!(!r.body.contains(token));
    b.gw.wait_for_log("identity provider unreachable", WAIT);

    // The gateway is fine afterwards, and the failure was not cached.
    fault.set_introspection(Reply::json(
        json!({"active": true, "sub": "user-1", "exp": now() + 600}),
    ));
    assert_eq!(userinfo(&b.accepted("/intro/x", token))["sub"], "user-1");
    b.finish();
}

// ---------------------------------------------------------------------------
// K04, K05, K19: headers and upgrades

const FORGED_IDENTITY: &[(&str, &str)] = &[
    (
        "X-Userinfo",
        "eyJzdWIiOiJhZG1pbiIsImVtYWlsIjoiYWRtaW5AZXhhbXBsZS50ZXN0In0=",
    ),
    ("x-userinfo", "lower-case-dup"),
    ("X-Access-Token", "forged-access"),
    ("X-ID-Token", "forged-id"),
    ("X-Refresh-Token", "forged-refresh"),
    ("X-Raw-ID-Token", "forged-raw-id"),
    ("X-USERINFO", "upper-case-dup"),
];

fn assert_no_forged_identity(seen: &Recorded) {
    for (_, forged) in FORGED_IDENTITY {
        assert!(
            seen.headers.iter().all(|(_, v)| v != forged),
            "the client's {forged:?} reached the upstream: {:?}",
            seen.headers
        );
    }
    for name in ["x-id-token", "x-refresh-token", "x-raw-id-token"] {
        assert!(seen.header(name).is_none(), "{name}: {:?}", seen.headers);
    }
}

#[test]
fn k04_client_identity_headers_never_reach_the_upstream() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.plain_route("open", "/open/*");
    b.route("api", "/api/*", jwks_conf(&fault.discovery_url()));
    b.route(
        "quiet",
        "/quiet/*",
        with(
            &jwks_conf(&fault.discovery_url()),
            json!({"set_userinfo_header": false, "set_access_token_header": false}),
        ),
    );
    let ok = tok(&K1, "k1", &claims(&fault));

    // No plugin at all: none of them passes.
    let part = b.raw("/open/x", FORGED_IDENTITY, true);
    assert_eq!(part.status, 200, "{}", part.body_text());
    let seen = b.up.last().unwrap();
    assert_no_forged_identity(&seen);
    for name in ["x-userinfo", "x-access-token"] {
        assert!(seen.header(name).is_none(), "{name}: {:?}", seen.headers);
    }

    // With a valid token: only the gateway's values.
    let auth = format!("Bearer {ok}");
    let mut headers = FORGED_IDENTITY.to_vec();
    headers.push(("Authorization", &auth));
    let part = b.raw("/api/x", &headers, true);
    assert_eq!(part.status, 200, "{}", part.body_text());
    let seen = b.up.last().unwrap();
    assert_no_forged_identity(&seen);
    assert_eq!(seen.header_all("x-access-token"), vec![ok.as_str()]);
    assert_eq!(userinfo(&seen)["sub"], "user-1");

    // With the gateway's own headers switched off: still none of the client's.
    let part = b.raw("/quiet/x", &headers, true);
    assert_eq!(part.status, 200, "{}", part.body_text());
    let seen = b.up.last().unwrap();
    assert_no_forged_identity(&seen);
    for name in ["x-userinfo", "x-access-token"] {
        assert!(seen.header(name).is_none(), "{name}: {:?}", seen.headers);
    }

    // Refused requests reach nothing, forged headers or not.
    let before = b.up.count();
    let part = b.raw("/api/x", FORGED_IDENTITY, true);
    assert_eq!(part.status, 401);
    assert_eq!(b.up.count(), before);
    b.finish();
}

#[test]
fn b13_connection_cannot_strip_the_gateway_identity_headers() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route("api", "/api/*", jwks_conf(&fault.discovery_url()));
    let ok = tok(&K1, "k1", &claims(&fault));
    b.accepted("/api/warm", &ok);

    let auth = format!("Bearer {ok}");
    let part = b.raw(
        "/api/me",
        &[
            ("Authorization", &auth),
            (
                "Connection",
                "keep-alive, X-Userinfo, X-Access-Token, Authorization",
            ),
            ("X-Userinfo", "Zm9yZ2Vk"),
            ("X-Foo", "1"),
        ],
        false,
    );
    assert_eq!(part.status, 200, "{}", part.body_text());
    let seen = b.up.last().unwrap();
    assert_eq!(seen.raw_target, "/api/me");
    assert_eq!(seen.header_all("x-access-token"), vec![ok.as_str()]);
    assert_eq!(userinfo(&seen)["sub"], "user-1");
    for v in seen.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-userinfo"),
            "Connection reached the upstream: {v}"
        );
    }

    // Control: a header the client nominates is dropped.
    let part = b.raw(
        "/api/me",
        &[
            ("Authorization", &auth),
            ("Connection", "X-Foo"),
            ("X-Foo", "1"),
        ],
        false,
    );
    assert_eq!(part.status, 200);
    assert!(b.up.last().unwrap().header("x-foo").is_none());
    b.finish();
}

#[test]
fn k19_upgrade_headers_do_not_change_the_auth_outcome() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    b.route_with(
        "ws",
        "/ws/*",
        jwks_conf(&fault.discovery_url()),
        json!({"enable_websocket": true}),
    );
    let c = claims(&fault);
    let ok = tok(&K1, "k1", &c);
    b.accepted("/ws/warm", &ok);
    let forged = tok(&KX, "k1", &with(&c, json!({"sub": "admin"})));
    let expired = tok(&K1, "k1", &with(&c, json!({"exp": now() - 60})));

    let upgrade: &[(&str, &str)] = &[
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let bad_auth = [
        None,
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {expired}")),
        Some("Bearer x.y.z".to_string()),
        Some("Basic dXNlcjpwYXNz".to_string()),
        Some("Bearer".to_string()),
    ];
    let before = b.up.count();
    for auth in &bad_auth {
        let mut plain: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = auth {
            plain.push(("Authorization", a));
        }
        let mut upgraded = plain.clone();
        upgraded.extend_from_slice(upgrade);
        let p = b.raw("/ws/chat", &plain, false);
        let u = b.raw("/ws/chat", &upgraded, false);
        assert!(p.status == 401 || p.status == 400, "{auth:?}: {}", p.status);
        assert_eq!(u.status, p.status, "{auth:?}");
        assert_eq!(
            u.header("www-authenticate"),
            p.header("www-authenticate"),
            "{auth:?}"
        );
        assert_eq!(u.body_text(), p.body_text(), "{auth:?}");
        assert!(u.header("upgrade").is_none(), "{auth:?}");
    }
    // B42 case 3: a token smuggled in as a subprotocol is no credential.
    let mut subprotocol = upgrade.to_vec();
    let proto = format!("bearer, {ok}");
    subprotocol.push(("Sec-WebSocket-Protocol", &proto));
    let u = b.raw("/ws/chat", &subprotocol, false);
    assert_eq!(u.status, 401);
    assert_eq!(u.header("www-authenticate"), Some(CHALLENGE));
    assert_eq!(
        b.up.count(),
        before,
        "a refused upgrade reached the upstream"
    );
    b.finish();
}

// ---------------------------------------------------------------------------
// B45 / K21: nothing secret in answers or logs

#[test]
fn b45_refusals_carry_no_secret_key_material_or_token() {
    let fault = FaultIdp::start();
    let b = Bench::start();
    let disc = fault.discovery_url();
    b.route("jwks", "/jwks/*", jwks_conf(&disc));
    b.route(
        "pem",
        "/pem/*",
        json!({
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "discovery": disc,
            "bearer_only": true,
            "public_key": K1.public_pem,
        }),
    );
    b.route(
        "intro",
        "/intro/*",
        intro_conf(&disc, Some(&fault.introspection_url())),
    );
    // Introspection answers echo what a careless provider might.
    fault.set_introspection(Reply::raw(
        400,
        &format!("{{\"error\":\"bad client {CLIENT_SECRET}\"}}"),
    ));

    // The HS256 variant cannot even be configured; the refusal does not
    // repeat the secret.
    let hs = json!({
        "uri": "/hs/*",
        "plugins": {"openid-connect": {
            "client_id": CLIENT_ID, "discovery": disc, "bearer_only": true,
            "public_key": "hs-secret-value-42", "token_signing_alg_values_expected": "HS256"}},
        "upstream": {"type": "roundrobin", "nodes": {b.up.node(): 1}},
    });
    let r = b.gw.admin("PUT", "/apisix/admin/routes/hs", Some(hs));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.body.contains("hs-secret-value-42"), "{}", r.body);
    b.note("hs-secret-value-42");

    let c = claims(&fault);
    let header = b64(json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}).to_string());
    // Large, but under the 8 KiB header-value limit (larger ones get 431).
    let huge = format!("{header}.{}.{}", "A".repeat(7_000), b64([9u8; 256]));
    let tokens = [
        "a.b.c".to_string(),
        format!("{header}.!!not*base64!!.{}", b64([1u8; 256])),
        format!("{header}.{}.{}", b64("not json"), b64([1u8; 256])),
        sign_with(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &c,
            &EncodingKey::from_secret(b"wrong-secret").unwrap(),
            Algorithm::HS256,
        ),
        tok(&KX, "wrong-kid", &c),
        huge,
        "Z".repeat(7_500),
    ];
    let jwk = K1.jwk(Some("k1"));
    let modulus = jwk["n"].as_str().unwrap();
    let pem_line = K1.public_pem.lines().nth(1).unwrap();
    // A good signature under an unknown kid (with a PEM key the kid does
    // not matter, so only on the JWKS route).
    let wrong_kid = tok(&K1, "wrong-kid", &c);
    let cases = ["/jwks/x", "/pem/x", "/intro/x"]
        .into_iter()
        .flat_map(|p| tokens.iter().map(move |t| (p, t)))
        .chain([("/jwks/x", &wrong_kid)]);
    for (path, token) in cases {
        {
            let label = format!("{path} {}…", &token[..token.len().min(24)]);
            let r = b.invalid(path, token, &label);
            let www = r.header("www-authenticate").unwrap_or("");
            assert!(r.body.len() < 400, "{label}: long body {}", r.body);
            assert!(www.len() < 400, "{label}: long challenge {www}");
            for leak in [
                CLIENT_SECRET,
                "hs-secret-value-42",
                "BEGIN",
                &modulus[..40],
                &pem_line[..40],
                DEFAULT_ADMIN_KEY,
            ] {
                assert!(
                    !r.body.contains(leak),
                    "{label}: body leaks {leak:?}: {}",
                    r.body
                );
                assert!(
                    !www.contains(leak),
                    "{label}: challenge leaks {leak:?}: {www}"
                );
            }
            if token.len() > 5 {
                assert!(
                    !r.body.contains(token.as_str()),
                    "{label}: body echoes the token"
                );
                assert!(
                    !www.contains(token.as_str()),
                    "{label}: challenge echoes the token"
                );
            }
        }
    }
    // A token past the header limit is refused before any plugin runs.
    let oversized = "Z".repeat(20_000);
    b.note(&oversized);
    let r = b.refused_with(
        "/jwks/x",
        &[("Authorization", &format!("Bearer {oversized}"))],
    );
    assert_eq!(r.status, 431, "{}", r.body);
    assert!(!r.body.contains(&oversized[..64]));
    b.finish();
}

#[test]
fn k21_trace_logging_keeps_tokens_and_secrets_out_of_the_log() {
    // The same flows as elsewhere, with the most verbose log level there is.
    let idp = Idp::start();
    let fault = FaultIdp::start();
    let b = Bench {
        gw: Gateway::start_with(crate::support::GatewayOpts::new().env("PORTCULLIS_LOG", "trace")),
        up: EchoUpstream::start(),
        secrets: RefCell::new(vec![CLIENT_SECRET.into(), DEFAULT_ADMIN_KEY.into()]),
    };
    b.route("jwt", "/jwt/*", jwks_conf(&idp.discovery_url()));
    b.route("intro", "/intro/*", intro_conf(&idp.discovery_url(), None));
    b.route("fault", "/fault/*", jwks_conf(&fault.discovery_url()));
    let jwt = real_jwt(&idp, RS256_RESOURCE, "api:read");
    let opaque = real_opaque(&idp);
    b.accepted("/jwt/x", &jwt);
    b.accepted("/intro/x", &opaque);
    b.invalid("/intro/x", "opaque-unknown-token-000001", "unknown");
    b.invalid("/jwt/x", &format!("{jwt}x"), "tampered");
    b.invalid("/fault/x", &tok(&KX, "k1", &claims(&fault)), "forged");
    let r = b.refused_with(
        &format!("/jwt/x?access_token={jwt}"),
        &[("Authorization", &format!("Bearer {jwt}"))],
    );
    assert_eq!(r.status, 400);
    let logs = b.gw.logs();
    assert!(logs.contains("bearer token accepted"), "{}", tail(&logs));
    assert!(logs.contains("bearer token refused"), "{}", tail(&logs));
    b.finish();
}

// ---------------------------------------------------------------------------
// Admin API checks and the plugin's cache across configuration changes

fn plugin_error(gw: &Gateway, conf: Value) -> String {
    let route = json!({
        "uri": "/x",
        "plugins": {"openid-connect": conf},
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}},
    });
    let r = gw.admin("PUT", "/apisix/admin/routes/checked", Some(route));
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.json()["error_msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_msg: {}", r.body))
        .to_string();
    msg.strip_prefix("failed to check the configuration of plugin openid-connect err: ")
        .unwrap_or_else(|| panic!("unexpected error_msg: {msg}"))
        .to_string()
}

#[test]
fn admin_api_checks_the_plugin_configuration() {
    let gw = Gateway::start();
    let disc = "http://127.0.0.1:9/.well-known/openid-configuration";
    let base = json!({
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "discovery": disc, "bearer_only": true,
    });

    // The exact APISIX answer for a missing client_id.
    let route = json!({
        "uri": "/x",
        "plugins": {"openid-connect": without(&base, "client_id")},
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}},
    });
    let r = gw.admin("PUT", "/apisix/admin/routes/checked", Some(route));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error_msg": "failed to check the configuration of plugin openid-connect err: property \"client_id\" is required"})
    );

    let cases: Vec<(Value, &str)> = vec![
        (without(&base, "discovery"), "property \"discovery\" is required"),
        (
            with(&base, json!({"client_id": true})),
            "property \"client_id\" validation failed: wrong type: expected string, got boolean",
        ),
        (
            with(&base, json!({"discovery": "ftp://idp/x"})),
            "property \"discovery\" validation failed: \"ftp://idp/x\" is not an http or https URL",
        ),
        (
            without(&base, "client_secret"),
            "property \"client_secret\" is required",
        ),
        (
            with(&base, json!({"unknown_field": 1})),
            "additional properties forbidden, found unknown_field",
        ),
        (
            with(&base, json!({"timeout": 0})),
            "property \"timeout\" validation failed: expected 0 to be at least 1",
        ),
        (
            with(&base, json!({"access_token_expires_leeway": 301})),
            "property \"access_token_expires_leeway\" validation failed: expected 301 to be at most 300",
        ),
        (
            with(&base, json!({"token_signing_alg_values_expected": "HS256"})),
            "property \"token_signing_alg_values_expected\" validation failed: matches none of the enum values",
        ),
        (
            with(&base, json!({"token_signing_alg_values_expected": "none"})),
            "property \"token_signing_alg_values_expected\" validation failed: matches none of the enum values",
        ),
        (
            with(&base, json!({"introspection_endpoint_auth_method": "none"})),
            "property \"introspection_endpoint_auth_method\" validation failed: matches none of the enum values",
        ),
        (
            with(&base, json!({"required_scopes": "api:read"})),
            "property \"required_scopes\" validation failed: wrong type: expected array, got string",
        ),
        (
            with(&base, json!({"claim_validator": {"audience": {"match": true}}})),
            "property \"claim_validator\" validation failed: property \"audience\" validation failed: additional properties forbidden, found match",
        ),
    ];
    for (conf, want) in cases {
        assert_eq!(plugin_error(&gw, conf.clone()), want, "{conf}");
    }
    // Wrong types in general: the APISIX wording.
    let msg = plugin_error(&gw, with(&base, json!({"client_id": 123})));
    assert!(
        msg.starts_with(
            "property \"client_id\" validation failed: wrong type: expected string, got "
        ),
        "{msg}"
    );
    // Refused with a reason, whatever the wording.
    for (conf, field) in [
        (with(&base, json!({"ssl_verify": false})), "ssl_verify"),
        (
            with(&base, json!({"public_key": "not a pem"})),
            "public_key",
        ),
        (with(&base, json!({"realm": "a\"b"})), "realm"),
        (with(&base, json!({"bearer_only": "yes"})), "bearer_only"),
    ] {
        let msg = plugin_error(&gw, conf);
        assert!(msg.contains(field), "{field}: {msg}");
    }
    // Nothing of that was stored.
    gw.admin("GET", "/apisix/admin/routes/checked", None)
        .expect_status(404);

    // Local verification needs no client secret; introspection does.
    for conf in [
        with(&without(&base, "client_secret"), json!({"use_jwks": true})),
        with(
            &without(&base, "client_secret"),
            json!({"public_key": K1.public_pem}),
        ),
        with(
            &base,
            json!({"ssl_verify": true, "introspection_interval": 30}),
        ),
    ] {
        let route = json!({
            "uri": "/ok",
            "plugins": {"openid-connect": conf},
            "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}},
        });
        let r = gw.admin("PUT", "/apisix/admin/routes/ok", Some(route));
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
    }
    assert!(!gw.logs().contains(CLIENT_SECRET), "K21: secret in the log");
}

#[test]
fn a_plugin_change_drops_its_cache_and_other_changes_keep_it() {
    let idp = Idp::start();
    let b = Bench::start();
    let conf = intro_conf(&idp.discovery_url(), None);
    b.route("intro", "/intro/*", conf.clone());
    let token = real_opaque(&idp);
    b.accepted("/intro/x", &token);
    b.accepted("/intro/x", &token);
    let calls = || idp.hits("/token/introspection");
    assert_eq!(calls(), 1);

    // Another route changes: the cache stays.
    b.plain_route("other", "/other/*");
    b.accepted("/intro/x", &token);
    assert_eq!(calls(), 1, "an unrelated route change dropped the cache");
    // The same route changes outside the plugin: the cache stays.
    b.route_with(
        "intro",
        "/intro/*",
        conf.clone(),
        json!({"desc": "changed"}),
    );
    let seen = b.accepted("/intro/x", &token);
    assert_eq!(seen.header_all("x-access-token"), vec![token.as_str()]);
    assert_eq!(calls(), 1, "a change outside the plugin dropped the cache");

    // The plugin's configuration changes: new plugin, new cache, new call.
    b.route(
        "intro",
        "/intro/*",
        with(&conf, json!({"realm": "changed"})),
    );
    b.accepted("/intro/x", &token);
    assert_eq!(calls(), 2, "a plugin change kept the old cache");
    b.accepted("/intro/x", &token);
    assert_eq!(calls(), 2);

    // A revoked token on a fresh configuration is refused at once.
    idp.revoke(&token);
    b.route("intro", "/intro/*", with(&conf, json!({"realm": "again"})));
    let r = b.bearer("/intro/x", &token);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(calls(), 3);
    b.finish();
}
