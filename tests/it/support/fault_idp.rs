//! A small fault-injecting OpenID provider for what the real one cannot
//! do: an issuer that is almost right, a JWKS the test edits at run time, a
//! JWKS or discovery endpoint that fails or hangs on demand, and an
//! introspection endpoint whose every answer the test scripts. Loopback
//! only; every endpoint counts its hits.
//!
//! Tokens for it are signed in the test with the fixed keys under
//! `tests/keys/` (see [`TestKey`] and [`sign`]).

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tiny_http::{Header, Request, Response, Server, StatusCode};

// ---------------------------------------------------------------------------
// keys and tokens

/// One of the fixed test keys in `tests/keys/` (made once with
/// `openssl genpkey`; see `tests/keys/README.md`).
#[derive(Debug, Clone, Copy)]
pub struct TestKey {
    pub name: &'static str,
    /// The algorithm tokens signed with this key use by default.
    pub alg: Algorithm,
    pub private_pem: &'static str,
    pub public_pem: &'static str,
}

/// RSA 2048, published in the fault IdP's JWKS by default.
pub const K1: TestKey = TestKey {
    name: "k1",
    alg: Algorithm::RS256,
    private_pem: include_str!("../../keys/k1.pem"),
    public_pem: include_str!("../../keys/k1.pub.pem"),
};
/// RSA 2048, published only when a test adds it.
pub const K2: TestKey = TestKey {
    name: "k2",
    alg: Algorithm::RS256,
    private_pem: include_str!("../../keys/k2.pem"),
    public_pem: include_str!("../../keys/k2.pub.pem"),
};
/// RSA 2048, the attacker's: never published.
pub const KX: TestKey = TestKey {
    name: "kx",
    alg: Algorithm::RS256,
    private_pem: include_str!("../../keys/kx.pem"),
    public_pem: include_str!("../../keys/kx.pub.pem"),
};
/// EC P-256.
pub const E1: TestKey = TestKey {
    name: "e1",
    alg: Algorithm::ES256,
    private_pem: include_str!("../../keys/e1.pem"),
    public_pem: include_str!("../../keys/e1.pub.pem"),
};

impl TestKey {
    pub fn encoding(&self) -> EncodingKey {
        match self.alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                EncodingKey::from_ec_pem(self.private_pem.as_bytes())
            }
            _ => EncodingKey::from_rsa_pem(self.private_pem.as_bytes()),
        }
        .unwrap_or_else(|e| panic!("test key {}: {e}", self.name))
    }

    /// The public JWK with `kid` (when given), `use: sig` and `alg`.
    pub fn jwk(&self, kid: Option<&str>) -> Value {
        let jwk = Jwk::from_encoding_key(&self.encoding(), self.alg)
            .unwrap_or_else(|e| panic!("jwk of {}: {e}", self.name));
        let mut v = serde_json::to_value(jwk).expect("jwk serialises");
        let obj = v.as_object_mut().expect("jwk is an object");
        obj.retain(|_, v| !v.is_null());
        obj.insert("use".into(), json!("sig"));
        if let Some(kid) = kid {
            obj.insert("kid".into(), json!(kid));
        }
        v
    }

    /// The public JWK with `kid` and no `alg` (so any algorithm of the
    /// key's family may use it).
    pub fn jwk_any_alg(&self, kid: Option<&str>) -> Value {
        let mut v = self.jwk(kid);
        v.as_object_mut().unwrap().remove("alg");
        v
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header).b64(claims).signature`, signed with `key` under `alg`
/// whatever the header says.
pub fn sign_with(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let signing_input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg)
        .unwrap_or_else(|e| panic!("signing with {alg:?}: {e}"));
    format!("{signing_input}.{sig}")
}

/// A compact JWS with header `{"alg": <key's alg>, "typ": "JWT", "kid": kid}`.
pub fn sign(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": format!("{:?}", key.alg), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    sign_with(&header, claims, &key.encoding(), key.alg)
}

// ---------------------------------------------------------------------------
// the provider

/// How an endpoint behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Answer normally.
    Serve,
    /// Answer this status with a small JSON error body.
    Status(u16),
    /// Send nothing for this long, then answer normally.
    Hang(Duration),
}

/// A scripted introspection answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// `200` with `v` as the JSON body.
    pub fn json(v: Value) -> Reply {
        Reply {
            status: 200,
            body: v.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// Any status and body, sent as `application/json`.
    pub fn raw(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// The same answer after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One request the provider received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    /// Issuer in the discovery document; `None` = the base URL.
    issuer: Option<String>,
    jwks: Vec<Value>,
    discovery_mode: Mode,
    jwks_mode: Mode,
    introspection: Reply,
    hits: HashMap<String, u64>,
    calls: Vec<Call>,
}

/// The fault-injecting provider on `127.0.0.1:<ephemeral>`. Drop stops it.
pub struct FaultIdp {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    server: Option<Arc<Server>>,
    dispatcher: Option<JoinHandle<()>>,
}

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/jwks";
pub const INTROSPECTION_PATH: &str = "/introspect";

impl FaultIdp {
    /// Starts with the JWKS `{k1}` (kid `k1`) and an introspection endpoint
    /// that answers `{"active":false}`.
    pub fn start() -> FaultIdp {
        let server = Server::http("127.0.0.1:0").expect("fault IdP: bind 127.0.0.1:0");
        let addr = server.server_addr().to_ip().expect("fault IdP on an IP");
        let server = Arc::new(server);
        let state = Arc::new(Mutex::new(State {
            issuer: None,
            jwks: vec![K1.jwk(Some("k1"))],
            discovery_mode: Mode::Serve,
            jwks_mode: Mode::Serve,
            introspection: Reply::json(json!({"active": false})),
            hits: HashMap::new(),
            calls: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let dispatcher = {
            let (server, state, stop) = (server.clone(), state.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("fault-idp-{}", addr.port()))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) {
                            let (state, stop) = (state.clone(), stop.clone());
                            let _ = thread::Builder::new()
                                .name("fault-idp-worker".into())
                                .spawn(move || handle(req, addr, &state, &stop));
                        }
                    }
                })
                .expect("spawn fault IdP dispatcher")
        };
        FaultIdp {
            addr,
            state,
            stop,
            server: Some(server),
            dispatcher: Some(dispatcher),
        }
    }

    /// `http://127.0.0.1:<port>`: what the discovery URL is built on.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The issuer the discovery document advertises.
    pub fn issuer(&self) -> String {
        self.lock()
            .issuer
            .clone()
            .unwrap_or_else(|| self.base_url())
    }

    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.base_url())
    }

    pub fn introspection_url(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.base_url())
    }

    /// Advertises `issuer` in the discovery document from now on.
    pub fn set_issuer(&self, issuer: &str) {
        self.lock().issuer = Some(issuer.to_string());
    }

    /// Replaces the JWKS (a list of JWK objects).
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.lock().jwks = keys;
    }

    pub fn set_jwks_mode(&self, mode: Mode) {
        self.lock().jwks_mode = mode;
    }

    pub fn set_discovery_mode(&self, mode: Mode) {
        self.lock().discovery_mode = mode;
    }

    /// The answer every introspection request gets from now on.
    pub fn set_introspection(&self, reply: Reply) {
        self.lock().introspection = reply;
    }

    /// Requests to `path` so far.
    pub fn hits(&self, path: &str) -> u64 {
        self.lock().hits.get(path).copied().unwrap_or(0)
    }

    pub fn reset_hits(&self) {
        self.lock().hits.clear();
    }

    /// Every request received so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fault IdP state poisoned")
    }
}

impl Drop for FaultIdp {
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

/// Sleeps up to `d`, returning early (false) once the provider stops.
fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    true
}

fn handle(mut req: Request, addr: SocketAddr, state: &Mutex<State>, stop: &AtomicBool) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let mut body = String::new();
    let _ = req.as_reader().read_to_string(&mut body);
    let call = Call {
        method: req.method().as_str().to_string(),
        path: path.clone(),
        headers: req
            .headers()
            .iter()
            .map(|h| (h.field.to_string(), h.value.to_string()))
            .collect(),
        body,
    };
    let base = format!("http://{addr}");
    // Decide under the lock, answer outside it.
    let (mode, status, answer, delay) = {
        let mut s = state.lock().expect("fault IdP state poisoned");
        *s.hits.entry(path.clone()).or_insert(0) += 1;
        s.calls.push(call);
        match path.as_str() {
            DISCOVERY_PATH => {
                let issuer = s.issuer.clone().unwrap_or_else(|| base.clone());
                let doc = json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{base}{JWKS_PATH}"),
                    "introspection_endpoint": format!("{base}{INTROSPECTION_PATH}"),
                    "authorization_endpoint": format!("{base}/authorize"),
                    "token_endpoint": format!("{base}/token"),
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
                });
                (
                    s.discovery_mode.clone(),
                    200,
                    doc.to_string(),
                    Duration::ZERO,
                )
            }
            JWKS_PATH => (
                s.jwks_mode.clone(),
                200,
                json!({"keys": s.jwks}).to_string(),
                Duration::ZERO,
            ),
            INTROSPECTION_PATH => {
                let r = s.introspection.clone();
                (Mode::Serve, r.status, r.body, r.delay)
            }
            _ => (Mode::Status(404), 404, String::new(), Duration::ZERO),
        }
    };
    let (status, answer) = match mode {
        Mode::Serve => (status, answer),
        Mode::Status(code) => (code, json!({"error": "scripted failure"}).to_string()),
        Mode::Hang(d) => {
            if !pause(d, stop) {
                return;
            }
            (status, answer)
        }
    };
    if !delay.is_zero() && !pause(delay, stop) {
        return;
    }
    let resp = Response::from_string(answer)
        .with_status_code(StatusCode(status))
        .with_header(
            Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("valid header"),
        );
    // The gateway may have given up already.
    let _ = req.respond(resp);
}
