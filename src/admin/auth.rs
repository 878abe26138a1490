//! The admin key: where it comes from and how a presented key is checked.
//!
//! A key from the environment or the config file is used as given. With
//! none, the argon2 hash stored by an earlier start is used; with none of
//! either, a random key is generated, printed once to stderr, and only its
//! hash is stored.

use std::sync::RwLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError};

const HASH_META_KEY: &str = "admin_key_argon2";

pub struct AdminKey {
    /// SHA-256 of the accepted key, once known: set at start for a
    /// configured or generated key, or after the first successful argon2
    /// check of a stored hash. Lets every later check cost one hash and a
    /// constant-time compare instead of an argon2 run.
    digest: RwLock<Option<[u8; 32]>>,
    /// The stored argon2 hash, when the key is not known in plain text.
    hash: Option<String>,
    /// Serialises argon2 checks so wrong keys cannot pin every core.
    slow_path: tokio::sync::Mutex<()>,
}

/// How the key was set up at start, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    Stored,
    Generated,
}

impl AdminKey {
    /// Sets the key up from `configured` or the store.
    pub async fn setup(
        configured: Option<&str>,
        store: &Store,
    ) -> Result<(AdminKey, KeySource), StoreError> {
        if let Some(key) = configured {
            return Ok((AdminKey::from_plain(key), KeySource::Configured));
        }
        if let Some(raw) = store.meta(HASH_META_KEY)? {
            let hash = String::from_utf8_lossy(&raw).into_owned();
            return Ok((
                AdminKey {
                    digest: RwLock::new(None),
                    hash: Some(hash),
                    slow_path: tokio::sync::Mutex::new(()),
                },
                KeySource::Stored,
            ));
        }

        // First start without a key: make one, show it once, keep its hash.
        let key = generate_key();
        let hash = Argon2::default()
            .hash_password(key.as_bytes())
            .map_err(|e| StoreError::Corrupt {
                key: HASH_META_KEY.into(),
                reason: e.to_string(),
            })?
            .to_string();
        store.set_meta(HASH_META_KEY, hash.as_bytes()).await?;
        eprintln!(
            "portcullis: generated admin key (shown only now; only its hash is stored): {key}"
        );
        Ok((AdminKey::from_plain(&key), KeySource::Generated))
    }

    pub fn from_plain(key: &str) -> AdminKey {
        AdminKey {
            digest: RwLock::new(Some(sha256(key))),
            hash: None,
            slow_path: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether `presented` is the admin key, in constant time with respect
    /// to the key's content.
    pub async fn verify(&self, presented: &str) -> bool {
        let known = *self.digest.read().unwrap_or_else(|p| p.into_inner());
        if let Some(digest) = known {
            return bool::from(sha256(presented).ct_eq(&digest));
        }
        let Some(hash) = self.hash.clone() else {
            return false;
        };
        let _one_at_a_time = self.slow_path.lock().await;
        let candidate = presented.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .verify_password(candidate.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            *self.digest.write().unwrap_or_else(|p| p.into_inner()) = Some(sha256(presented));
        }
        ok
    }
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 32 random bytes, hex-encoded.
fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}
