//! One identity provider as a relying party sees it: its discovery
//! document and its signing keys (JWKS), fetched on demand and cached.
//!
//! Key rules (attack kinds K09, K11):
//! - keys are cached for `jwk_expires_in`; a key that disappears from the
//!   JWKS stops working when the cache is next refreshed;
//! - a token with an unknown `kid` triggers a refetch, at most once per
//!   [`MIN_REFETCH`], so forged kids cannot hammer the provider;
//! - when a refresh fails the last good keys keep serving for at most
//!   [`STALE_GRACE`] past their expiry, with a warning; then requests fail
//!   closed.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;

use super::AuthError;

/// Fewest seconds between two JWKS fetches caused by unknown kids.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// How long expired keys keep serving while the JWKS endpoint fails.
pub const STALE_GRACE: Duration = Duration::from_secs(3600);
/// How long a discovery document is kept.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT: usize = 512 * 1024;

/// The parts of a discovery document the gateway uses.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
}

/// The current keys and when they were fetched.
pub struct Keys {
    pub set: JwkSet,
    pub fetched: Instant,
    /// Bumped on every successful fetch; lets cached verifications notice
    /// that the key set changed.
    pub generation: u64,
}

pub struct Provider {
    discovery_url: String,
    timeout: Duration,
    jwk_ttl: Duration,
    /// Cached discovery document; written after each successful fetch.
    discovery: RwLock<Option<(Arc<Discovery>, Instant)>>,
    /// Cached keys; written after each successful JWKS fetch.
    keys: RwLock<Option<Arc<Keys>>>,
    /// When the JWKS was last requested, successful or not; limits refetches.
    last_jwks_attempt: RwLock<Option<Instant>>,
    /// One fetch at a time; concurrent misses wait for it instead of
    /// making calls of their own.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl Provider {
    pub fn new(discovery_url: String, timeout: Duration, jwk_ttl: Duration) -> Provider {
        Provider {
            discovery_url,
            timeout,
            jwk_ttl,
            discovery: RwLock::new(None),
            keys: RwLock::new(None),
            last_jwks_attempt: RwLock::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn cached_discovery(&self) -> Option<Arc<Discovery>> {
        read(&self.discovery)
            .as_ref()
            .filter(|(_, at)| at.elapsed() < DISCOVERY_TTL)
            .map(|(d, _)| d.clone())
    }

    /// The discovery document, fetched when missing or old.
    pub async fn discovery(&self, client: &awc::Client) -> Result<Arc<Discovery>, AuthError> {
        if let Some(d) = self.cached_discovery() {
            return Ok(d);
        }
        let _one = self.fetch_lock.lock().await;
        if let Some(d) = self.cached_discovery() {
            return Ok(d);
        }
        match self.fetch_discovery(client).await {
            Ok(d) => {
                let d = Arc::new(d);
                *write(&self.discovery) = Some((d.clone(), Instant::now()));
                Ok(d)
            }
            Err(e) => {
                // A stale document beats none when the provider is down.
                if let Some((d, _)) = read(&self.discovery).as_ref() {
                    tracing::warn!(oidc.discovery = %self.discovery_url, error = %e, "discovery refresh failed; using the previous document");
                    return Ok(d.clone());
                }
                tracing::warn!(oidc.discovery = %self.discovery_url, error = %e, "identity provider unreachable: discovery failed");
                Err(e)
            }
        }
    }

    async fn fetch_discovery(&self, client: &awc::Client) -> Result<Discovery, AuthError> {
        let doc = get_json(client, &self.discovery_url, self.timeout).await?;
        let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
        let issuer = s("issuer").ok_or_else(|| {
            AuthError::ProviderUnavailable("discovery document has no issuer".into())
        })?;
        Ok(Discovery {
            issuer,
            jwks_uri: s("jwks_uri"),
            introspection_endpoint: s("introspection_endpoint"),
            authorization_endpoint: s("authorization_endpoint"),
            token_endpoint: s("token_endpoint"),
            userinfo_endpoint: s("userinfo_endpoint"),
            end_session_endpoint: s("end_session_endpoint"),
            revocation_endpoint: s("revocation_endpoint"),
        })
    }

    /// The current keys. `want_kid` names a key the caller needs: when it
    /// is missing, the set is refetched (rate-limited).
    pub async fn keys(
        &self,
        client: &awc::Client,
        want_kid: Option<&str>,
    ) -> Result<Arc<Keys>, AuthError> {
        let fresh = |k: &Keys| k.fetched.elapsed() < self.jwk_ttl;
        let has = |k: &Keys| want_kid.is_none_or(|kid| k.set.find(kid).is_some());
        let usable = |k: &Arc<Keys>| fresh(k) && has(k);

        if let Some(k) = read(&self.keys).as_ref().filter(|k| usable(k)) {
            return Ok(k.clone());
        }
        // Discovery first: it takes the fetch lock itself.
        let discovery = self.discovery(client).await;
        let _one = self.fetch_lock.lock().await;
        let current = read(&self.keys).clone();
        if let Some(k) = current.as_ref().filter(|k| usable(k)) {
            return Ok(k.clone());
        }
        // An unknown kid on fresh keys refetches only now and then.
        if let Some(k) = current.as_ref().filter(|k| fresh(k)) {
            let recent = read(&self.last_jwks_attempt).is_some_and(|t| t.elapsed() < MIN_REFETCH);
            if recent {
                return Ok(k.clone());
            }
        }
        *write(&self.last_jwks_attempt) = Some(Instant::now());
        let fetched = match discovery {
            Ok(d) => self.fetch_keys(client, &d).await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(set) => {
                let keys = Arc::new(Keys {
                    set,
                    fetched: Instant::now(),
                    generation: current.as_ref().map_or(1, |k| k.generation + 1),
                });
                *write(&self.keys) = Some(keys.clone());
                Ok(keys)
            }
            Err(e) => match current {
                Some(k) if k.fetched.elapsed() < self.jwk_ttl + STALE_GRACE => {
                    tracing::warn!(oidc.discovery = %self.discovery_url, error = %e, "jwks refresh failed; serving the last good keys");
                    Ok(k)
                }
                _ => {
                    tracing::warn!(oidc.discovery = %self.discovery_url, error = %e, "identity provider unreachable: no usable keys");
                    Err(e)
                }
            },
        }
    }

    async fn fetch_keys(
        &self,
        client: &awc::Client,
        discovery: &Discovery,
    ) -> Result<JwkSet, AuthError> {
        let uri = discovery.jwks_uri.as_deref().ok_or_else(|| {
            AuthError::ProviderUnavailable("discovery document has no jwks_uri".into())
        })?;
        let doc = get_json(client, uri, self.timeout).await?;
        // Keys this build cannot use (other key types, encryption keys) are
        // skipped rather than failing the whole set.
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| AuthError::ProviderUnavailable("jwks has no keys array".into()))?
            .iter()
            .filter(|k| {
                k.get("use")
                    .and_then(Value::as_str)
                    .is_none_or(|u| u == "sig")
            })
            .filter_map(|k| serde_json::from_value(k.clone()).ok())
            .collect();
        Ok(JwkSet { keys })
    }
}

/// GETs a JSON document within `timeout`.
pub async fn get_json(
    client: &awc::Client,
    url: &str,
    timeout: Duration,
) -> Result<Value, AuthError> {
    let unreachable = |e: String| AuthError::ProviderUnavailable(format!("{url}: {e}"));
    let mut resp = client
        .get(url)
        .insert_header(("accept", "application/json"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unreachable(format!("status {}", resp.status().as_u16())));
    }
    let body = tokio::time::timeout(timeout, resp.body().limit(MAX_DOCUMENT))
        .await
        .map_err(|_| unreachable("timed out reading the body".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| unreachable(format!("invalid JSON: {e}")))
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
