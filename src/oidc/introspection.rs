//! Token introspection (RFC 7662) with a bounded cache (attack kind K10).
//!
//! Only a reply whose `active` is the JSON value `true` grants access.
//! Active replies are cached, keyed by the SHA-256 of the token, until
//! `min(exp, introspection_interval)`; a reply without `exp` is not
//! cached, one whose `exp` has passed or is not a number is refused.
//! Inactive replies and failures are never cached, so they can
//! never turn into access later. Concurrent requests carrying the same
//! uncached token wait for one call to the provider.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::Expiry;
use serde_json::Value;

use super::client::{post_form, ClientCredentials};
use super::recent::RecentTokens;
use super::AuthError;

/// Most cached introspection replies kept per plugin configuration.
pub const CACHE_CAPACITY: u64 = 100_000;

/// A cached positive reply and how long it may be trusted.
#[derive(Clone)]
pub struct Active {
    pub reply: Arc<super::Identity>,
    /// When the reply stops being trusted.
    until: std::time::Instant,
}

impl Active {
    /// Whether the reply may still be trusted.
    fn is_current(&self) -> bool {
        std::time::Instant::now() < self.until
    }
}

struct ByTtl;

impl Expiry<[u8; 32], Active> for ByTtl {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Active,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.until.saturating_duration_since(std::time::Instant::now()))
    }
}

pub struct Introspector {
    pub endpoint: Option<String>,
    creds: ClientCredentials,
    /// Cap on how long a reply is trusted; 0 = until the token's `exp`.
    interval: u64,
    timeout: Duration,
    /// Active replies by token hash; filled only by `introspect`.
    cache: Cache<[u8; 32], Active>,
    /// Recently used tokens in front of `cache`, with the same expiry.
    recent: RecentTokens<Active>,
}

impl Introspector {
    pub fn new(
        endpoint: Option<String>,
        creds: ClientCredentials,
        interval: u64,
        timeout: Duration,
    ) -> Introspector {
        Introspector {
            endpoint,
            creds,
            interval,
            timeout,
            cache: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(ByTtl)
                .build(),
            recent: RecentTokens::default(),
        }
    }

    /// The provider's reply for an active token, from the cache or one call.
    pub async fn introspect(
        &self,
        client: &awc::Client,
        endpoint: &str,
        token: &str,
    ) -> Result<Active, AuthError> {
        if let Some(active) = self.recent.get(token).filter(|a| a.is_current()) {
            return Ok(active);
        }
        let key = super::token_hash(token);
        let active = self
            .cache
            .try_get_with(key, self.call(client, endpoint, token))
            .await
            .map_err(|e| (*e).clone())?;
        self.recent.put(token, active.clone());
        Ok(active)
    }

    async fn call(
        &self,
        client: &awc::Client,
        endpoint: &str,
        token: &str,
    ) -> Result<Active, AuthError> {
        let unreachable = |e: String| {
            tracing::warn!(oidc.introspection = %endpoint, error = %e, "identity provider unreachable: introspection failed");
            AuthError::ProviderUnavailable(e)
        };
        let form = vec![("token", token), ("token_type_hint", "access_token")];
        let (status, body) = post_form(client, endpoint, &self.creds, form, self.timeout)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(unreachable(format!(
                "introspection answered status {}",
                status.as_u16()
            )));
        }
        let reply: serde_json::Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|_| unreachable("introspection reply is not a JSON object".into()))?;
        if reply.get("active") != Some(&Value::Bool(true)) {
            return Err(AuthError::InvalidToken("invalid token".into()));
        }

        // Trust it until it expires, capped by the configured interval.
        // `exp` is a NumericDate: fractional or negative values count too,
        // and one that is not a number at all is refused, not ignored.
        let now = super::jwt::now_secs();
        let exp = match reply.get("exp") {
            None => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| {
                AuthError::InvalidToken("invalid token: 'exp' is not a number".into())
            })?),
        };
        if exp.is_some_and(|e| e <= now as f64) {
            return Err(AuthError::InvalidToken("invalid token: expired".into()));
        }
        let until_exp = exp.map(|e| (e - now as f64) as u64);
        let secs = match (until_exp, self.interval) {
            (None, _) => 0,
            (Some(e), 0) => e,
            (Some(e), cap) => e.min(cap),
        };
        Ok(Active {
            reply: super::Identity::new(reply),
            until: std::time::Instant::now() + Duration::from_secs(secs),
        })
    }
}
