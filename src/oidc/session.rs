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

/// How long a session id replaced by the rolling timeout keeps working:
/// requests the browser sent before it saw the new cookie (a page's
/// parallel API calls) must not find themselves signed out.
pub const ROTATED_GRACE: u64 = 10;

/// Where a session record lives in the store (the hash of its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey(String);

impl SessionKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the old id of a rotated session holds during [`ROTATED_GRACE`].
#[derive(Debug, Serialize, Deserialize)]
struct Moved {
    moved_to: String,
    until: u64,
}

/// What a session lookup found.
pub enum Lookup {
    Missing,
    Expired,
    /// The session and where it lives now (not the id's own record when
    /// the id was rotated out a moment ago).
    Live(Box<Session>, SessionKey),
}

/// What a callback's `state` found.
pub enum TakeLogin {
    /// Never issued, expired or already used.
    Unknown,
    /// Issued to another browser or for another configuration; left alone.
    NotThisBrowser,
    Taken(Box<PendingLogin>),
}

pub struct SessionStore {
    /// The `sessions` tree of the gateway's sled database.
    tree: sled::Tree,
    /// The database's one flusher (see `store::Flusher`).
    flusher: std::sync::Arc<crate::store::Flusher>,
    /// Sign-ins in progress, by state hash. Kept in memory and bounded:
    /// anyone can start a sign-in, so they must not fill the disk, and a
    /// sign-in lost to a restart is simply started again.
    logins: std::sync::Mutex<std::collections::HashMap<String, PendingLogin>>,
}

/// Most sign-ins in progress at once; beyond it new ones are refused
/// until older ones finish or expire.
pub const MAX_PENDING_LOGINS: usize = 20_000;
/// Longest original URL remembered for after the sign-in; a longer one
/// brings the browser back to the path alone.
pub const MAX_ORIGINAL_URL: usize = 2048;

/// A fresh random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hash_hex(s: &str) -> String {
    hex::encode(super::token_hash(s))
}

impl SessionStore {
    pub fn new(tree: sled::Tree, flusher: std::sync::Arc<crate::store::Flusher>) -> SessionStore {
        SessionStore {
            tree,
            flusher,
            logins: Default::default(),
        }
    }

    fn logins(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, PendingLogin>> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
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
    /// Remembers a new sign-in under `state`; refused when too many are
    /// in progress.
    pub async fn start_login(&self, state: &str, login: &PendingLogin) -> Result<(), String> {
        let now = now_secs();
        let mut logins = self.logins();
        if logins.len() >= MAX_PENDING_LOGINS {
            logins.retain(|_, l| now <= l.created_at + LOGIN_TTL);
            if logins.len() >= MAX_PENDING_LOGINS {
                return Err("too many sign-ins in progress".into());
            }
        }
        logins.insert(hash_hex(state), login.clone());
        Ok(())
    }

    /// Takes the login for `state` out of the store when it belongs to
    /// `owner` and to the browser whose login-cookie hash is `browser`: it
    /// can be used once, even by concurrent callbacks. A callback from
    /// another browser or for another configuration leaves it in place, so
    /// someone who learnt the state cannot spoil the real sign-in.
    pub fn take_login(&self, state: &str, owner: &str, browser: Option<&str>) -> TakeLogin {
        let key = hash_hex(state);
        let mut logins = self.logins();
        let Some(login) = logins.get(&key) else {
            return TakeLogin::Unknown;
        };
        if now_secs() > login.created_at + LOGIN_TTL {
            logins.remove(&key);
            return TakeLogin::Unknown;
        }
        if login.owner != owner || browser != Some(login.browser.as_str()) {
            return TakeLogin::NotThisBrowser;
        }
        match logins.remove(&key) {
            Some(l) => TakeLogin::Taken(Box::new(l)),
            None => TakeLogin::Unknown,
        }
    }

    /// Stores a new session and returns its id (the cookie value).
    pub async fn create(&self, session: &Session) -> Result<String, String> {
        let id = random_token();
        self.put(&Self::key("s", &id), session)?;
        self.flusher.flush().await.map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Replaces the session record at `key` if it still exists; a session
    /// ended meanwhile (logout, back-channel logout) stays ended. Returns
    /// whether it was written.
    pub fn update(&self, key: &SessionKey, session: &Session) -> Result<bool, String> {
        let raw = serde_json::to_vec(session).map_err(|e| e.to_string())?;
        let written = self
            .tree
            .update_and_fetch(key.0.as_bytes(), |old| old.map(|_| raw.clone()))
            .map_err(|e| e.to_string())?;
        Ok(written.is_some())
    }

    /// Finds a live session, removing it when its time is up. The old id
    /// of a rotated session still finds it for [`ROTATED_GRACE`] seconds.
    pub fn lookup(&self, id: &str) -> Lookup {
        let key = Self::key("s", id);
        let Some(raw) = self.tree.get(&key).ok().flatten() else {
            return Lookup::Missing;
        };
        let now = now_secs();
        let (session, at) = match serde_json::from_slice::<Session>(&raw) {
            Ok(s) => (s, key),
            Err(_) => match serde_json::from_slice::<Moved>(&raw) {
                Ok(m) if now <= m.until => match self.get::<Session>(&m.moved_to) {
                    Some(s) => (s, m.moved_to),
                    None => return Lookup::Missing,
                },
                _ => {
                    let _ = self.tree.remove(&key);
                    return Lookup::Missing;
                }
            },
        };
        if is_expired(&session, now) {
            let _ = self.tree.remove(&at);
            return Lookup::Expired;
        }
        Lookup::Live(Box::new(session), SessionKey(at))
    }

    /// Gives the session at `key` a new id (rolling timeout) and returns
    /// it; the old id keeps pointing at it for [`ROTATED_GRACE`] seconds.
    pub fn rotate(&self, key: &SessionKey, session: &Session) -> Result<String, String> {
        let new_id = random_token();
        let new_key = Self::key("s", &new_id);
        self.put(&new_key, session)?;
        let moved = serde_json::to_vec(&Moved {
            moved_to: new_key.clone(),
            until: now_secs() + ROTATED_GRACE,
        })
        .map_err(|e| e.to_string())?;
        // Only while the old record still exists: a session ended
        // meanwhile must not come back under its new id.
        let replaced = self
            .tree
            .update_and_fetch(key.0.as_bytes(), |old| old.map(|_| moved.clone()))
            .map_err(|e| e.to_string())?;
        if replaced.is_none() {
            let _ = self.tree.remove(new_key.as_bytes());
            return Err("the session ended".into());
        }
        Ok(new_id)
    }

    /// Removes the session at `key`.
    pub async fn destroy(&self, key: &SessionKey) {
        let _ = self.tree.remove(key.0.as_bytes());
        let _ = self.flusher.flush().await;
    }

    /// Removes whatever id `id` names: a session or a rotated-out alias.
    pub async fn destroy_id(&self, id: &str) {
        let _ = self.tree.remove(Self::key("s", id));
        let _ = self.flusher.flush().await;
    }

    /// Ends every session of `owner` that `matches` (back-channel logout);
    /// returns how many. Scans the sessions: fine for the thousands a
    /// gateway holds, and logouts are rare next to requests.
    pub async fn end_where(&self, owner: &str, matches: impl Fn(&Session) -> bool) -> usize {
        let mut ended = 0;
        for (k, v) in self.tree.scan_prefix(b"s/").flatten() {
            if let Ok(s) = serde_json::from_slice::<Session>(&v) {
                if s.owner == owner && matches(&s) && self.tree.remove(&k).is_ok() {
                    ended += 1;
                }
            }
        }
        if ended > 0 {
            let _ = self.flusher.flush().await;
        }
        ended
    }

    /// Removes expired sessions and stale logins; returns how many.
    pub fn sweep(&self) -> usize {
        let now = now_secs();
        let mut removed = 0;
        {
            let mut logins = self.logins();
            let before = logins.len();
            logins.retain(|_, l| now <= l.created_at + LOGIN_TTL);
            removed += before - logins.len();
        }
        for item in self.tree.iter().flatten() {
            let (k, v) = item;
            let dead = if k.starts_with(b"s/") {
                match serde_json::from_slice::<Session>(&v) {
                    Ok(s) => is_expired(&s, now),
                    Err(_) => serde_json::from_slice::<Moved>(&v).map_or(true, |m| now > m.until),
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn store() -> SessionStore {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let flusher = crate::store::Flusher::start(db.clone()).unwrap();
        SessionStore::new(
            db.open_tree("sessions").unwrap(),
            std::sync::Arc::new(flusher),
        )
    }

    fn session() -> Session {
        let now = now_secs();
        Session {
            owner: "o".into(),
            access_token: "at".into(),
            access_expires_at: Some(now + 60),
            refresh_token: None,
            id_token: "it".into(),
            id_claims: Map::new(),
            userinfo: None,
            created_at: now,
            last_seen: now,
            rolled_at: now,
            limits: Lifetimes {
                idling: 900,
                rolling: 3600,
                absolute: 86400,
            },
        }
    }

    #[test]
    fn a_rotated_id_works_for_a_grace_period_then_not() {
        let store = store();
        let old = block_on(store.create(&session())).unwrap();
        let Lookup::Live(s, key) = store.lookup(&old) else {
            panic!("new session not found")
        };
        let new = store.rotate(&key, &s).unwrap();
        let Lookup::Live(_, via_old) = store.lookup(&old) else {
            panic!("the old id stops working at once")
        };
        let Lookup::Live(_, via_new) = store.lookup(&new) else {
            panic!("the new id does not work")
        };
        assert_eq!(via_old, via_new, "both name the same record");
        assert_ne!(via_old, key);

        // Once the grace has passed the old id is gone.
        let moved = Moved {
            moved_to: via_new.0.clone(),
            until: now_secs() - 1,
        };
        store.put(&key.0, &moved).unwrap();
        assert!(matches!(store.lookup(&old), Lookup::Missing));
        assert!(matches!(store.lookup(&new), Lookup::Live(..)));
        assert_eq!(store.sweep(), 0, "the alias went at lookup");
    }

    #[test]
    fn logins_are_single_use_and_bound_to_browser_and_owner() {
        let store = store();
        let login = PendingLogin {
            owner: "o".into(),
            nonce: "n".into(),
            pkce_verifier: None,
            original_url: "/".into(),
            redirect_uri: "http://h/cb".into(),
            browser: hash_hex("b"),
            created_at: now_secs(),
        };
        block_on(store.start_login("st", &login)).unwrap();
        let b = hash_hex("b");
        let other = hash_hex("other");
        assert!(matches!(
            store.take_login("st", "o", Some(&other)),
            TakeLogin::NotThisBrowser
        ));
        assert!(matches!(
            store.take_login("st", "o", None),
            TakeLogin::NotThisBrowser
        ));
        assert!(matches!(
            store.take_login("st", "p", Some(&b)),
            TakeLogin::NotThisBrowser
        ));
        assert!(matches!(
            store.take_login("st", "o", Some(&b)),
            TakeLogin::Taken(_)
        ));
        assert!(matches!(
            store.take_login("st", "o", Some(&b)),
            TakeLogin::Unknown
        ));
    }
}
