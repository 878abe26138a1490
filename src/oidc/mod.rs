//! OpenID Connect machinery shared by the `openid-connect` plugin: the
//! provider's discovery document and keys, local JWT verification, and
//! token introspection.

pub mod code_flow;
pub mod introspection;
pub mod jwt;
pub mod provider;
pub mod session;
pub mod verified;

use sha2::{Digest, Sha256};

/// Why a token or the provider let a request down; each maps to one
/// answer at the plugin's edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, badly signed, expired, inactive…
    #[error("{0}")]
    InvalidToken(String),
    /// The identity provider could not be reached or answered badly.
    #[error("the identity provider could not be reached: {0}")]
    ProviderUnavailable(String),
    /// No issuer to check against (discovery failed and none configured).
    #[error("issuer validation unavailable")]
    IssuerUnknown,
}

/// A short, stable, non-reversible name for a token, for logs and cache
/// keys; never log the token itself.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn short_hash(token: &str) -> String {
    hex::encode(&token_hash(token)[..6])
}
