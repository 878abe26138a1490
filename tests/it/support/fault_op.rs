//! A scripted OpenID provider for the authorization-code flow, for the RP
//! certification faults the real provider cannot produce (nonce+1, iss+1,
//! a bad signature, `alg: none`, a userinfo `sub` that differs, a discovery
//! issuer that does not match, keys rotated between two logins…).
//!
//! It serves discovery, `/authorize` (answers at once with a redirect to
//! the `redirect_uri` carrying a fresh code and the `state`), `/token`
//! (authorization_code with PKCE S256 checked, and refresh_token),
//! `/userinfo` and `/jwks`. The ID token the token endpoint returns is made
//! by a test-supplied function ([`FaultOp::set_id_token`]); the default
//! one signs correct claims with [`K1`] under kid `k1`. Loopback only;
//! every endpoint counts its hits and every request is logged.
//!
//! For logout tests: [`FaultOp::set_sid`] puts a per-login `sid` in ID
//! tokens, [`FaultOp::set_end_session`] advertises an `end_session_endpoint`
//! that sends the browser back with the state unchanged, altered or
//! missing, and [`FaultOp::logout_claims`] with [`logout_token`] /
//! [`sign_logout_token`] / [`unsigned_token`] make back-channel logout
//! tokens.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tiny_http::{Header, Request, Response, Server, StatusCode};

pub use super::fault_idp::{b64, now, sign, sign_with, Call, TestKey, E1, K1, K2, KX};

pub const CLIENT_ID: &str = "gw-client";
pub const CLIENT_SECRET: &str = "gw-secret-123";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// What an ID token is minted for.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The issuer the provider believes it is (its base URL).
    pub issuer: String,
    pub client_id: String,
    /// The nonce of the authorization request, if one was sent.
    pub nonce: Option<String>,
    pub sub: String,
    /// The provider session id (`sid`) put in the ID token, when
    /// [`FaultOp::set_sid`] is on: one per code-flow login, kept on refresh.
    pub sid: Option<String>,
}

impl Grant {
    /// Claims a correct ID token for this grant carries.
    pub fn claims(&self) -> Value {
        let now = now();
        let mut c = json!({
            "iss": self.issuer,
            "sub": self.sub,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "email": format!("{}@example.test", self.sub),
        });
        if let Some(n) = &self.nonce {
            c["nonce"] = json!(n);
        }
        if let Some(sid) = &self.sid {
            c["sid"] = json!(sid);
        }
        c
    }
}

type Minter = Arc<dyn Fn(&Grant) -> String + Send + Sync>;

/// The default ID token: correct claims, RS256 with [`K1`], kid `k1`.
pub fn good_id_token(g: &Grant) -> String {
    sign(&K1, Some("k1"), &g.claims())
}

/// One `/authorize` request, as received.
#[derive(Debug, Clone)]
pub struct Authz {
    pub params: HashMap<String, String>,
}

impl Authz {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
}

struct State {
    issuer: Option<String>,
    jwks: Vec<Value>,
    minter: Minter,
    sub: String,
    /// `sub` that `/userinfo` answers; `None` = the token's.
    userinfo_sub: Option<String>,
    /// Bytes of padding added to every access token.
    access_token_padding: usize,
    /// `expires_in` of every token response.
    expires_in: u64,
    require_pkce: bool,
    /// `iss` added to the authorization response (RFC 9207), if any.
    response_iss: Option<String>,
    codes: HashMap<String, Authz>,
    /// access token → sub
    access: HashMap<String, String>,
    refresh: HashMap<String, String>,
    authorizations: Vec<Authz>,
    hits: HashMap<String, u64>,
    calls: Vec<Call>,
    /// Whether ID tokens carry a `sid` (one per code-flow login).
    sid_claim: bool,
    /// refresh token → the `sid` of the login it came from.
    refresh_sid: HashMap<String, Option<String>>,
    /// Every ID token issued, with what it was minted for.
    id_tokens: Vec<(String, Grant)>,
    /// How `/end_session` answers; `None` = not advertised (404).
    end_session: Option<EndSession>,
    /// Every `/end_session` request so far.
    end_sessions: Vec<Authz>,
    /// How long `/token` waits before answering a refresh.
    refresh_delay: Duration,
}

/// The event key of a back-channel logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What `/end_session` does with the `state` when it sends the browser
/// back to `post_logout_redirect_uri` (RP certification rows 43–45).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSession {
    /// Returns the state unchanged.
    Echo,
    /// Returns `state + "_INVALID"`.
    Invalid,
    /// Returns no state at all.
    Missing,
}

/// The scripted code-flow provider on `127.0.0.1:<ephemeral>`. Drop stops it.
pub struct FaultOp {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    server: Option<Arc<Server>>,
    dispatcher: Option<JoinHandle<()>>,
}

impl FaultOp {
    /// Starts with the JWKS `{k1}`, subject `alice`, PKCE required and the
    /// default (correct) ID token.
    pub fn start() -> FaultOp {
        let server = Server::http("127.0.0.1:0").expect("fault OP: bind 127.0.0.1:0");
        let addr = server.server_addr().to_ip().expect("fault OP on an IP");
        let server = Arc::new(server);
        let state = Arc::new(Mutex::new(State {
            issuer: None,
            jwks: vec![K1.jwk(Some("k1"))],
            minter: Arc::new(good_id_token),
            sub: "alice".into(),
            userinfo_sub: None,
            access_token_padding: 0,
            expires_in: 300,
            require_pkce: true,
            response_iss: None,
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            authorizations: Vec::new(),
            hits: HashMap::new(),
            calls: Vec::new(),
            sid_claim: false,
            refresh_sid: HashMap::new(),
            id_tokens: Vec::new(),
            end_session: None,
            end_sessions: Vec::new(),
            refresh_delay: Duration::ZERO,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let dispatcher = {
            let (server, state, stop) = (server.clone(), state.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("fault-op-{}", addr.port()))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) {
                            let state = state.clone();
                            let _ = thread::Builder::new()
                                .name("fault-op-worker".into())
                                .spawn(move || handle(req, addr, &state));
                        }
                    }
                })
                .expect("spawn fault OP dispatcher")
        };
        FaultOp {
            addr,
            state,
            stop,
            server: Some(server),
            dispatcher: Some(dispatcher),
        }
    }

    /// `http://127.0.0.1:<port>`: the issuer unless [`FaultOp::set_issuer`].
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base_url())
    }

    /// Advertises `issuer` in the discovery document from now on.
    pub fn set_issuer(&self, issuer: &str) {
        self.lock().issuer = Some(issuer.to_string());
    }

    /// Replaces the JWKS.
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.lock().jwks = keys;
    }

    /// How ID tokens are made from now on.
    pub fn set_id_token(&self, f: impl Fn(&Grant) -> String + Send + Sync + 'static) {
        self.lock().minter = Arc::new(f);
    }

    /// The subject of the next logins.
    pub fn set_sub(&self, sub: &str) {
        self.lock().sub = sub.to_string();
    }

    /// Makes `/userinfo` answer this `sub` whatever the token's.
    pub fn set_userinfo_sub(&self, sub: Option<&str>) {
        self.lock().userinfo_sub = sub.map(str::to_owned);
    }

    /// Makes every access token at least `n` bytes long.
    pub fn set_access_token_size(&self, n: usize) {
        self.lock().access_token_padding = n;
    }

    /// The `expires_in` of token responses from now on (default 300).
    pub fn set_expires_in(&self, secs: u64) {
        self.lock().expires_in = secs;
    }

    /// Adds `iss=<issuer>` to authorization responses from now on (RFC
    /// 9207); `None` (the default) sends none.
    pub fn set_response_iss(&self, issuer: Option<&str>) {
        self.lock().response_iss = issuer.map(str::to_owned);
    }

    /// Whether `/token` checks the PKCE verifier (default true).
    pub fn set_require_pkce(&self, on: bool) {
        self.lock().require_pkce = on;
    }

    /// Requests to `path` so far.
    pub fn hits(&self, path: &str) -> u64 {
        self.lock().hits.get(path).copied().unwrap_or(0)
    }

    /// Every `/authorize` request so far, oldest first.
    pub fn authorizations(&self) -> Vec<Authz> {
        self.lock().authorizations.clone()
    }

    /// Every request received so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fault OP state poisoned")
    }

    /// The issuer tokens carry: the one of [`FaultOp::set_issuer`], else
    /// the base URL.
    pub fn issuer(&self) -> String {
        self.lock()
            .issuer
            .clone()
            .unwrap_or_else(|| self.base_url())
    }

    /// Gives every code-flow login its own `sid` in the ID token from now
    /// on (kept by refreshes of that login), like a provider session.
    pub fn set_sid(&self, on: bool) {
        self.lock().sid_claim = on;
    }

    /// Every ID token issued so far (raw, and what it was minted for),
    /// oldest first.
    pub fn id_tokens(&self) -> Vec<(String, Grant)> {
        self.lock().id_tokens.clone()
    }

    /// Advertises `end_session_endpoint` (`<base>/end_session`) in discovery
    /// and answers it as `mode` says; `None` (the default) advertises none.
    /// The endpoint refuses (400) an `id_token_hint` it did not issue;
    /// otherwise it sends the browser to `post_logout_redirect_uri` (302)
    /// with the state as `mode` says, or answers 200 when none was given.
    pub fn set_end_session(&self, mode: Option<EndSession>) {
        self.lock().end_session = mode;
    }

    /// Every `/end_session` request so far, oldest first.
    pub fn end_sessions(&self) -> Vec<Authz> {
        self.lock().end_sessions.clone()
    }

    /// Makes `/token` wait this long before answering a refresh.
    pub fn set_refresh_delay(&self, d: Duration) {
        self.lock().refresh_delay = d;
    }

    /// Claims of a correct back-channel logout token from this provider for
    /// [`CLIENT_ID`]: `iss`, `aud`, `iat`, `exp` (+120 s), a fresh `jti`, the
    /// logout event, and `sub` / `sid` when given.
    pub fn logout_claims(&self, sub: Option<&str>, sid: Option<&str>) -> Value {
        let now = now();
        let mut c = json!({
            "iss": self.issuer(),
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 120,
            "jti": random(),
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        });
        if let Some(sub) = sub {
            c["sub"] = json!(sub);
        }
        if let Some(sid) = sid {
            c["sid"] = json!(sid);
        }
        c
    }
}

/// A logout token: `claims` signed with [`K1`] (RS256) under kid `k1`,
/// `typ: logout+jwt`, as a provider sends it.
pub fn logout_token(claims: &Value) -> String {
    sign_logout_token(&K1, Some("k1"), K1.alg, claims)
}

/// A logout token signed with `key` under `alg` (whatever the key's own),
/// header `{"alg": alg, "typ": "logout+jwt", "kid": kid}`.
pub fn sign_logout_token(
    key: &TestKey,
    kid: Option<&str>,
    alg: jsonwebtoken::Algorithm,
    claims: &Value,
) -> String {
    let mut header = json!({"alg": format!("{alg:?}"), "typ": "logout+jwt"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    sign_with(&header, claims, &key.encoding(), alg)
}

/// `claims` as an unsecured JWT (`alg: none`, empty signature).
pub fn unsigned_token(claims: &Value) -> String {
    let head = b64(json!({"alg": "none", "typ": "logout+jwt"}).to_string());
    format!("{head}.{}.", b64(claims.to_string()))
}

impl Drop for FaultOp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = &self.server {
            s.unblock();
        }
        if let Some(d) = self.dispatcher.take() {
            let _ = d.join();
        }
        self.server.take();
    }
}

/// `application/x-www-form-urlencoded` decoding (also for query strings).
pub fn parse_form(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = || std::str::from_utf8(b.get(i + 1..i + 3)?).ok();
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match hex().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn random() -> String {
    b64(rand::random::<[u8; 24]>())
}

fn handle(mut req: Request, addr: SocketAddr, state: &Mutex<State>) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut body = String::new();
    let _ = req.as_reader().read_to_string(&mut body);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|h| (h.field.to_string(), h.value.to_string()))
        .collect();
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let base = format!("http://{addr}");
    if path == "/token"
        && parse_form(&body).get("grant_type").map(String::as_str) == Some("refresh_token")
    {
        let delay = state.lock().expect("fault OP state poisoned").refresh_delay;
        thread::sleep(delay);
    }
    let mut s = state.lock().expect("fault OP state poisoned");
    *s.hits.entry(path.clone()).or_insert(0) += 1;
    s.calls.push(Call {
        method: req.method().as_str().to_string(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let json_reply = |status: u16, v: Value| (status, v.to_string(), None::<String>);
    let (status, answer, location) = match path.as_str() {
        DISCOVERY_PATH => {
            let mut doc = json!({
                "issuer": s.issuer.clone().unwrap_or_else(|| base.clone()),
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "userinfo_endpoint": format!("{base}/userinfo"),
                "jwks_uri": format!("{base}/jwks"),
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"],
            });
            if s.end_session.is_some() {
                doc["end_session_endpoint"] = json!(format!("{base}/end_session"));
                doc["backchannel_logout_supported"] = json!(true);
                doc["backchannel_logout_session_supported"] = json!(true);
            }
            json_reply(200, doc)
        }
        "/end_session" if s.end_session.is_some() => end_session(&mut s, &query),
        "/jwks" => json_reply(200, json!({"keys": s.jwks})),
        "/authorize" => {
            let params = parse_form(&query);
            let authz = Authz {
                params: params.clone(),
            };
            s.authorizations.push(authz.clone());
            match (params.get("redirect_uri"), params.get("client_id")) {
                (Some(r), Some(c)) if c == CLIENT_ID => {
                    let code = random();
                    s.codes.insert(code.clone(), authz);
                    let sep = if r.contains('?') { '&' } else { '?' };
                    let mut state_param = params
                        .get("state")
                        .map(|st| format!("&state={}", percent_encode(st)))
                        .unwrap_or_default();
                    if let Some(iss) = &s.response_iss {
                        state_param.push_str(&format!("&iss={}", percent_encode(iss)));
                    }
                    (
                        302,
                        String::new(),
                        Some(format!("{r}{sep}code={code}{state_param}")),
                    )
                }
                _ => json_reply(400, json!({"error": "invalid_request"})),
            }
        }
        "/token" => {
            let form = parse_form(&body);
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
            if header("authorization").as_deref() != Some(format!("Basic {basic}").as_str()) {
                json_reply(401, json!({"error": "invalid_client"}))
            } else {
                token(&mut s, &form, &base)
            }
        }
        "/userinfo" => {
            let token = header("authorization")
                .and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned))
                .unwrap_or_default();
            match s.access.get(&token).cloned() {
                Some(sub) => {
                    let sub = s.userinfo_sub.clone().unwrap_or(sub);
                    json_reply(
                        200,
                        json!({"sub": sub, "email": format!("{sub}@example.test")}),
                    )
                }
                None => json_reply(401, json!({"error": "invalid_token"})),
            }
        }
        _ => json_reply(404, json!({"error": "not found"})),
    };
    drop(s);
    let mut resp = Response::from_string(answer)
        .with_status_code(StatusCode(status))
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("valid header"),
        );
    if let Some(l) = location {
        resp = resp.with_header(Header::from_bytes(&b"Location"[..], l.as_bytes()).expect("loc"));
    }
    let _ = req.respond(resp);
}

fn token(
    s: &mut State,
    form: &HashMap<String, String>,
    base: &str,
) -> (u16, String, Option<String>) {
    let err = |e: &str| (400, json!({"error": e}).to_string(), None);
    let issuer = s.issuer.clone().unwrap_or_else(|| base.to_string());
    let (sub, nonce, sid) = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(authz) = form.get("code").and_then(|c| s.codes.remove(c)) else {
                return err("invalid_grant");
            };
            if form.get("redirect_uri") != authz.params.get("redirect_uri") {
                return err("invalid_grant");
            }
            if s.require_pkce {
                let Some(challenge) = authz.get("code_challenge") else {
                    return err("invalid_request");
                };
                let ok = form.get("code_verifier").is_some_and(|v| {
                    b64(Sha256::digest(v.as_bytes())) == challenge
                        && authz.get("code_challenge_method") == Some("S256")
                });
                if !ok {
                    return err("invalid_grant");
                }
            }
            let sid = s.sid_claim.then(random);
            (s.sub.clone(), authz.get("nonce").map(str::to_owned), sid)
        }
        Some("refresh_token") => {
            let Some(sub) = form.get("refresh_token").and_then(|r| s.refresh.remove(r)) else {
                return err("invalid_grant");
            };
            let sid = form
                .get("refresh_token")
                .and_then(|r| s.refresh_sid.remove(r))
                .flatten();
            (sub, None, sid)
        }
        _ => return err("unsupported_grant_type"),
    };
    let grant = Grant {
        issuer,
        client_id: CLIENT_ID.into(),
        nonce,
        sub: sub.clone(),
        sid: sid.clone(),
    };
    let id_token = (s.minter)(&grant);
    s.id_tokens.push((id_token.clone(), grant));
    let mut access = format!("at-{}", random());
    while access.len() < s.access_token_padding {
        access.push_str(&random());
    }
    let refresh = format!("rt-{}", random());
    s.access.insert(access.clone(), sub.clone());
    s.refresh.insert(refresh.clone(), sub);
    s.refresh_sid.insert(refresh.clone(), sid);
    (
        200,
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": s.expires_in,
            "refresh_token": refresh,
            "id_token": id_token,
        })
        .to_string(),
        None,
    )
}

/// `/end_session`: RP-initiated logout as [`FaultOp::set_end_session`] says.
fn end_session(s: &mut State, query: &str) -> (u16, String, Option<String>) {
    let params = parse_form(query);
    s.end_sessions.push(Authz {
        params: params.clone(),
    });
    let known_hint = params
        .get("id_token_hint")
        .is_some_and(|h| s.id_tokens.iter().any(|(t, _)| t == h));
    if !known_hint {
        return (
            400,
            json!({"error": "invalid_request", "error_description": "unknown id_token_hint"})
                .to_string(),
            None,
        );
    }
    let Some(target) = params.get("post_logout_redirect_uri") else {
        return (200, json!({"logged_out": true}).to_string(), None);
    };
    let state = match (s.end_session, params.get("state")) {
        (Some(EndSession::Echo), Some(st)) => Some(st.clone()),
        (Some(EndSession::Invalid), Some(st)) => Some(format!("{st}_INVALID")),
        _ => None,
    };
    let location = match state {
        Some(st) => {
            let sep = if target.contains('?') { '&' } else { '?' };
            format!("{target}{sep}state={}", percent_encode(&st))
        }
        None => target.clone(),
    };
    (302, String::new(), Some(location))
}
