//! OpenID Connect machinery shared by the `openid-connect` plugin: the
//! provider's discovery document and keys, local JWT verification, and
//! token introspection.

pub mod client;
pub mod code_flow;
pub mod introspection;
pub mod jwt;
pub mod provider;
pub mod recent;
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

/// A token's verified claims (or introspection answer), shared by every
/// request that carries the token while it is cached. One identity
/// belongs to exactly one token.
pub struct Identity {
    claims: serde_json::Map<String, serde_json::Value>,
    /// `X-Userinfo`, encoded once on first use instead of per request.
    userinfo: std::sync::OnceLock<Option<actix_web::http::header::HeaderValue>>,
    /// The token itself as a header value (`X-Access-Token`), made once.
    token: std::sync::OnceLock<Option<actix_web::http::header::HeaderValue>>,
}

impl Identity {
    pub fn new(claims: serde_json::Map<String, serde_json::Value>) -> std::sync::Arc<Identity> {
        std::sync::Arc::new(Identity {
            claims,
            userinfo: std::sync::OnceLock::new(),
            token: std::sync::OnceLock::new(),
        })
    }

    /// `token` (the one this identity belongs to) as a header value.
    pub fn token_header(&self, token: &str) -> Option<&actix_web::http::header::HeaderValue> {
        self.token
            .get_or_init(|| actix_web::http::header::HeaderValue::from_str(token).ok())
            .as_ref()
    }

    /// Base64 of the claims as JSON, for `X-Userinfo`.
    pub fn userinfo_header(&self) -> Option<&actix_web::http::header::HeaderValue> {
        self.userinfo
            .get_or_init(|| {
                use base64::Engine;
                let json = serde_json::to_vec(&self.claims).ok()?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(json);
                actix_web::http::header::HeaderValue::from_str(&b64).ok()
            })
            .as_ref()
    }
}

impl std::ops::Deref for Identity {
    type Target = serde_json::Map<String, serde_json::Value>;

    fn deref(&self) -> &Self::Target {
        &self.claims
    }
}

/// A short, stable, non-reversible name for a token, for logs and cache
/// keys; never log the token itself.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn short_hash(token: &str) -> String {
    hex::encode(&token_hash(token)[..6])
}
