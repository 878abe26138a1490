//! Remembers JWTs that passed verification, so a token seen again skips
//! the signature check until it expires.
//!
//! Keyed by the SHA-256 of the token. An entry records the key-set
//! generation it was verified against; when the provider's keys change
//! (rotation, a key removed) the entry no longer counts and the token is
//! verified afresh, so a removed key stops working as soon as the key set
//! is refreshed. Time claims are re-checked on every hit.
//!
//! In front of it, a small direct-mapped table of recent tokens, found by
//! a cheap keyed hash and compared in full: the token a client sends again
//! and again costs a short comparison instead of a SHA-256 and a lookup in
//! the large cache. A slot holds one token, so colliding tokens only
//! displace each other.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::Expiry;

use super::jwt::now_secs;
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

/// Slots of the table of recent tokens.
const RECENT: usize = 256;

type Slot = std::sync::Mutex<Option<(Box<str>, Verified)>>;

pub struct VerifiedCache {
    cache: Cache<[u8; 32], Verified>,
    recent: Box<[Slot]>,
    /// Key of the slot hash, random per process.
    seed: u64,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache {
            cache: Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(UntilExp)
                .build(),
            recent: (0..RECENT).map(|_| Slot::default()).collect(),
            seed: rand::random::<u64>() | 1,
        }
    }
}

impl VerifiedCache {
    /// The claims of `token` if it was verified with key-set `generation`
    /// and has not expired (`leeway` seconds allowed, as at verification).
    pub async fn get(&self, token: &str, generation: u64, leeway: u64) -> Option<Arc<Identity>> {
        let usable = |v: &Verified| v.generation == generation && now_secs() < v.exp + leeway;
        let slot = &self.recent[self.slot(token)];
        if let Some((t, v)) = &*slot.lock().unwrap_or_else(|e| e.into_inner()) {
            if **t == *token {
                return usable(v).then(|| v.claims.clone());
            }
        }
        let hit = self.cache.get(&super::token_hash(token)).await?;
        if !usable(&hit) {
            return None;
        }
        let claims = hit.claims.clone();
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((token.into(), hit));
        Some(claims)
    }

    /// The recent-token slot of `token`: a keyed multiply-rotate hash over
    /// its 8-byte words.
    fn slot(&self, token: &str) -> usize {
        let mut h = self.seed;
        for chunk in token.as_bytes().chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        (h >> 40) as usize % RECENT
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
        *self.recent[self.slot(token)]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((token.into(), entry.clone()));
        self.cache.insert(super::token_hash(token), entry).await;
    }
}
