//! Server-side sessions of the browser sign-in flow, stored in sled so
//! every worker sees them and they survive restarts.
//!
//! The browser holds only an opaque random id in a cookie; the store keys
//! records by the SHA-256 of that id, so a copy of the data directory does
//! not yield usable cookies. Two kinds of records live here: sessions
//! (`s/…`) and logins in progress (`l/…`, keyed by the hash of `state`,
//! single-use, bound to the browser's login cookie).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jwt::now_secs;

/// How long a started sign-in may take before its state is forgotten.
pub const LOGIN_TTL: u64 = 600;

/// A signed-in browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Which plugin configuration created it (client and provider); a
    /// session is only honoured by routes with the same owner.
    pub owner: String,
    pub access_token: String,
    /// Unix seconds when the access token expires, if known.
    pub access_expires_at: Option<u64>,
    pub refresh_token: Option<String>,
    /// The raw ID token, for `id_token_hint` and `X-Raw-ID-Token`.
    pub id_token: String,
    pub id_claims: Map<String, Value>,
    pub userinfo: Option<Value>,
    pub created_at: u64,
    pub last_seen: u64,
    /// When the session id was last replaced (rolling timeout).
    pub rolled_at: u64,
    /// The lifetimes it was created with, so expiry needs no configuration.
    pub limits: Lifetimes,
}

/// A sign-in between the redirect to the provider and the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub owner: String,
    pub nonce: String,
    pub pkce_verifier: Option<String>,
    /// Where to send the browser afterwards: always a same-origin path.
    pub original_url: String,
    pub redirect_uri: String,
    /// SHA-256 of the login cookie of the browser that started it.
    pub browser: String,
    pub created_at: u64,
}

/// Session lifetimes, in seconds (0 = no limit).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Lifetimes {
    pub idling: u64,
    pub rolling: u64,
    pub absolute: u64,
}

/// What a session lookup found.
pub enum Lookup {
    Missing,
    Expired,
    Live(Box<Session>),
}

pub struct SessionStore {
    /// The `sessions` tree of the gateway's sled database.
    tree: sled::Tree,
}

/// A fresh random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hash_hex(s: &str) -> String {
    hex::encode(super::token_hash(s))
}

impl SessionStore {
    pub fn new(tree: sled::Tree) -> SessionStore {
        SessionStore { tree }
    }

    fn key(kind: &str, secret: &str) -> String {
        format!("{kind}/{}", hash_hex(secret))
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Option<T> {
        let raw = self.tree.get(key).ok()??;
        serde_json::from_slice(&raw).ok()
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), String> {
        let raw = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        self.tree.insert(key, raw).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stores a new login under `state`.
    pub async fn start_login(&self, state: &str, login: &PendingLogin) -> Result<(), String> {
        self.put(&Self::key("l", state), login)?;
        self.tree.flush_async().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Takes the login for `state` out of the store: it can be used once.
    pub fn take_login(&self, state: &str) -> Option<PendingLogin> {
        let raw = self.tree.remove(Self::key("l", state)).ok()??;
        let login: PendingLogin = serde_json::from_slice(&raw).ok()?;
        (now_secs() <= login.created_at + LOGIN_TTL).then_some(login)
    }

    /// Stores a new session and returns its id (the cookie value).
    pub async fn create(&self, session: &Session) -> Result<String, String> {
        let id = random_token();
        self.put(&Self::key("s", &id), session)?;
        self.tree.flush_async().await.map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Replaces the record of session `id`.
    pub fn update(&self, id: &str, session: &Session) -> Result<(), String> {
        self.put(&Self::key("s", id), session)
    }

    /// Finds a live session, removing it when its time is up.
    pub fn lookup(&self, id: &str) -> Lookup {
        let key = Self::key("s", id);
        let Some(session) = self.get::<Session>(&key) else {
            return Lookup::Missing;
        };
        if is_expired(&session, now_secs()) {
            let _ = self.tree.remove(&key);
            return Lookup::Expired;
        }
        Lookup::Live(Box::new(session))
    }

    /// Gives session `id` a new id (rolling timeout); returns the new id.
    pub fn rotate(&self, id: &str, session: &Session) -> Result<String, String> {
        let new_id = random_token();
        self.put(&Self::key("s", &new_id), session)?;
        let _ = self.tree.remove(Self::key("s", id));
        Ok(new_id)
    }

    pub async fn destroy(&self, id: &str) {
        let _ = self.tree.remove(Self::key("s", id));
        let _ = self.tree.flush_async().await;
    }

    /// Removes expired sessions and stale logins; returns how many.
    pub fn sweep(&self) -> usize {
        let now = now_secs();
        let mut removed = 0;
        for item in self.tree.iter().flatten() {
            let (k, v) = item;
            let dead = if k.starts_with(b"s/") {
                serde_json::from_slice::<Session>(&v).map_or(true, |s| is_expired(&s, now))
            } else if k.starts_with(b"l/") {
                serde_json::from_slice::<PendingLogin>(&v)
                    .map_or(true, |l| now > l.created_at + LOGIN_TTL)
            } else {
                false
            };
            if dead && self.tree.remove(&k).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn is_expired(s: &Session, now: u64) -> bool {
    (s.limits.idling > 0 && now > s.last_seen + s.limits.idling)
        || (s.limits.absolute > 0 && now > s.created_at + s.limits.absolute)
}
