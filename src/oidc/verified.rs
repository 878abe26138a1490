//! Remembers JWTs that passed verification, so a token seen again skips
//! the signature check until it expires.
//!
//! Keyed by the SHA-256 of the token. An entry records the key-set
//! generation it was verified against; when the provider's keys change
//! (rotation, a key removed) the entry no longer counts and the token is
//! verified afresh, so a removed key stops working as soon as the key set
//! is refreshed. Time claims are re-checked on every hit.
//!
//! In front of it, a small table of recent tokens (`recent.rs`).

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::Expiry;

use super::jwt::now_secs;
use super::recent::RecentTokens;
use super::Identity;

/// Most verified tokens remembered per plugin configuration.
pub const CAPACITY: u64 = 100_000;

/// A token that passed every check.
#[derive(Clone)]
pub struct Verified {
    pub claims: Arc<Identity>,
    /// Unix seconds; the entry is useless after it.
    pub exp: u64,
    /// The key-set generation it was verified with (0 for a fixed key).
    pub generation: u64,
}

struct UntilExp;

impl Expiry<[u8; 32], Verified> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Verified,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.exp.saturating_sub(now_secs())))
    }
}

pub struct VerifiedCache {
    cache: Cache<[u8; 32], Verified>,
    recent: RecentTokens<Verified>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache {
            cache: Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(UntilExp)
                .build(),
            recent: RecentTokens::default(),
        }
    }
}

impl VerifiedCache {
    /// The claims of `token` if it was verified with key-set `generation`
    /// and has not expired (`leeway` seconds allowed, as at verification).
    pub async fn get(&self, token: &str, generation: u64, leeway: u64) -> Option<Arc<Identity>> {
        let usable = |v: &Verified| v.generation == generation && now_secs() < v.exp + leeway;
        if let Some(v) = self.recent.get(token) {
            return usable(&v).then_some(v.claims);
        }
        let hit = self.cache.get(&super::token_hash(token)).await?;
        if !usable(&hit) {
            return None;
        }
        let claims = hit.claims.clone();
        self.recent.put(token, hit);
        Some(claims)
    }

    /// Remembers a verified token.
    pub async fn insert(&self, token: &str, claims: Arc<Identity>, generation: u64) {
        let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) else {
            return;
        };
        let entry = Verified {
            claims,
            exp,
            generation,
        };
        self.recent.put(token, entry.clone());
        self.cache.insert(super::token_hash(token), entry).await;
    }
}
