//! One identity provider as a relying party sees it: its discovery
//! document and its signing keys (JWKS), fetched on demand and cached.
//!
//! Key rules (attack kinds K09, K11):
//! - keys are cached for `jwk_expires_in`; a key that disappears from the
//!   JWKS stops working when the cache is next refreshed;
//! - a token with an unknown `kid` triggers a refetch, at most once per
//!   [`MIN_REFETCH`], so forged kids cannot hammer the provider; the
//!   regular (first or TTL) fetch does not count against that budget, so a
//!   key rotated in right after it is still picked up at once;
//! - when a refresh fails the last good keys keep serving for at most
//!   [`STALE_GRACE`] past their expiry, with a warning; then requests fail
//!   closed;
//! - after a failed fetch (discovery or JWKS) the provider is not asked
//!   again for [`MIN_REFETCH`]: requests meanwhile get the stale copy or the
//!   same error at once, so an outage costs one `timeout`, not one per
//!   queued request (attack kind K11).
//!
//! The discovery document's `issuer` must match the discovery URL (OpenID
//! Connect Discovery 1.0 §4.3); when it does not, the document is still
//! used for its endpoints, but its issuer is never trusted.

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
/// The path every discovery URL ends with (Discovery §4).
const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT: usize = 512 * 1024;

/// The parts of a discovery document the gateway uses.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub issuer: String,
    /// `issuer` is the discovery URL without its well-known suffix
    /// (Discovery §4.3; a trailing `/` on the issuer is allowed). When
    /// false, tokens are never checked against this issuer.
    pub issuer_matches_url: bool,
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
    /// When an unknown `kid` last caused a JWKS fetch; limits such refetches.
    last_forced_refetch: RwLock<Option<Instant>>,
    /// The last failed JWKS fetch and why; holds back retries for a while.
    jwks_failure: RwLock<Option<(Instant, AuthError)>>,
    /// The last failed discovery fetch and why; holds back retries too.
    discovery_failure: RwLock<Option<(Instant, AuthError)>>,
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
            last_forced_refetch: RwLock::new(None),
            jwks_failure: RwLock::new(None),
            discovery_failure: RwLock::new(None),
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
        // A fetch failed a moment ago: answer as it did, without asking again.
        if let Some(e) = recent_failure(&self.discovery_failure) {
            return match read(&self.discovery).as_ref() {
                Some((d, _)) => Ok(d.clone()),
                None => Err(e),
            };
        }
        match self.fetch_discovery(client).await {
            Ok(d) => {
                let d = Arc::new(d);
                *write(&self.discovery) = Some((d.clone(), Instant::now()));
                *write(&self.discovery_failure) = None;
                Ok(d)
            }
            Err(e) => {
                *write(&self.discovery_failure) = Some((Instant::now(), e.clone()));
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
        let issuer_matches_url = issuer_matches_url(&issuer, &self.discovery_url);
        if !issuer_matches_url {
            tracing::warn!(
                oidc.discovery = %self.discovery_url,
                oidc.issuer = %issuer,
                "discovery issuer does not match the discovery URL; its issuer is not trusted"
            );
        }
        Ok(Discovery {
            issuer,
            issuer_matches_url,
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
        let within_grace = |k: &Keys| k.fetched.elapsed() < self.jwk_ttl + STALE_GRACE;
        // A fetch failed a moment ago: answer as it did, without asking again.
        if let Some(e) = recent_failure(&self.jwks_failure) {
            return match current {
                Some(k) if within_grace(&k) => Ok(k),
                _ => Err(e),
            };
        }
        // An unknown kid on fresh keys refetches only now and then.
        if let Some(k) = current.as_ref().filter(|k| fresh(k)) {
            let recent = read(&self.last_forced_refetch).is_some_and(|t| t.elapsed() < MIN_REFETCH);
            if recent {
                return Ok(k.clone());
            }
            *write(&self.last_forced_refetch) = Some(Instant::now());
        }
        let fetched = match discovery {
            Ok(d) => self.fetch_keys(client, &d).await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(set) => {
                // A new generation only when the keys changed: a refetch for
                // an unknown kid must not void every verified token.
                let generation = match &current {
                    Some(k) if k.set == set => k.generation,
                    Some(k) => k.generation + 1,
                    None => 1,
                };
                let keys = Arc::new(Keys {
                    set,
                    fetched: Instant::now(),
                    generation,
                });
                *write(&self.keys) = Some(keys.clone());
                *write(&self.jwks_failure) = None;
                Ok(keys)
            }
            Err(e) => {
                *write(&self.jwks_failure) = Some((Instant::now(), e.clone()));
                match current {
                    Some(k) if within_grace(&k) => {
                        tracing::warn!(oidc.discovery = %self.discovery_url, error = %e, "jwks refresh failed; serving the last good keys");
                        Ok(k)
                    }
                    _ => {
                        tracing::warn!(oidc.discovery = %self.discovery_url, error = %e, "identity provider unreachable: no usable keys");
                        Err(e)
                    }
                }
            }
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

/// Discovery §4.3: the issuer is the discovery URL minus its well-known
/// suffix (one trailing `/` on the issuer aside). Any other discovery URL
/// cannot be checked and is taken as it is.
fn issuer_matches_url(issuer: &str, discovery_url: &str) -> bool {
    let url = discovery_url
        .split(['?', '#'])
        .next()
        .unwrap_or(discovery_url);
    match url.strip_suffix(WELL_KNOWN) {
        Some(prefix) => issuer.strip_suffix('/').unwrap_or(issuer) == prefix,
        None => true,
    }
}

/// The error of a failure less than [`MIN_REFETCH`] old.
fn recent_failure(slot: &RwLock<Option<(Instant, AuthError)>>) -> Option<AuthError> {
    read(slot)
        .as_ref()
        .filter(|(at, _)| at.elapsed() < MIN_REFETCH)
        .map(|(_, e)| e.clone())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::issuer_matches_url;

    #[test]
    fn discovery_issuer_must_match_its_url() {
        let url = "http://127.0.0.1:9300/.well-known/openid-configuration";
        assert!(issuer_matches_url("http://127.0.0.1:9300", url));
        assert!(issuer_matches_url("http://127.0.0.1:9300/", url));
        assert!(!issuer_matches_url("http://127.0.0.1:93001", url));
        assert!(!issuer_matches_url("http://127.0.0.1:9300INVALID", url));
        assert!(!issuer_matches_url("http://127.0.0.1:9300//", url));
        assert!(!issuer_matches_url("https://127.0.0.1:9300", url));
        let realm = "http://kc/realms/a/.well-known/openid-configuration";
        assert!(issuer_matches_url("http://kc/realms/a", realm));
        assert!(!issuer_matches_url("http://kc/realms/b", realm));
        // Not a standard discovery URL: nothing to compare with.
        assert!(issuer_matches_url("http://x", "http://idp/config.json"));
    }
}
