//! Local verification of JWT access tokens (attack kinds K07, K08).
//!
//! - Only compact JWS with three parts; a JWE (five parts) or a header with
//!   `enc` is refused, never treated as a JWS.
//! - The algorithm must be one the configuration expects and the key's type
//!   allows; `none` and every HMAC algorithm are refused outright, so a
//!   public key can never serve as an HMAC secret.
//! - `exp` and `iss` are required; `exp`, `nbf` and `iat` must be
//!   numbers; leeway is bounded by the configuration; `iss` must be a
//!   single string equal to a trusted issuer.
//! - Audience and scopes are checked by the plugin (they answer 403).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::AuthError;

/// Longest leeway a configuration may ask for.
pub const MAX_LEEWAY: u64 = 300;

/// A verified token's claims.
pub type Claims = serde_json::Map<String, Value>;

/// The header fields that decide how a token is checked.
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

fn invalid(msg: impl Into<String>) -> AuthError {
    AuthError::InvalidToken(msg.into())
}

/// Parses the protected header, refusing anything that is not a plain JWS
/// signed with an asymmetric algorithm.
pub fn header(token: &str) -> Result<Header, AuthError> {
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err(invalid("encrypted tokens (JWE) are not accepted")),
        _ => return Err(invalid("invalid jwt: not a compact JWS")),
    }
    if parts[2].is_empty() {
        return Err(invalid("invalid jwt: missing signature"));
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| invalid("invalid jwt: bad header encoding"))?;
    let head: Value =
        serde_json::from_slice(&raw).map_err(|_| invalid("invalid jwt: bad header"))?;
    let head = head
        .as_object()
        .ok_or_else(|| invalid("invalid jwt: bad header"))?;
    if head.contains_key("enc") {
        return Err(invalid("encrypted tokens (JWE) are not accepted"));
    }
    if head.contains_key("crit") {
        return Err(invalid("invalid jwt: unsupported critical header"));
    }
    let alg_name = head
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("invalid jwt: no alg"))?;
    let alg: Algorithm = alg_name.parse().map_err(|_| {
        // Echo the name only when it looks like one: the header is the
        // sender's, and it goes into a response header and the log.
        let plain = alg_name.len() <= 16 && alg_name.bytes().all(|b| b.is_ascii_alphanumeric());
        if plain {
            invalid(format!(
                "token is signed by unexpected algorithm \"{alg_name}\""
            ))
        } else {
            invalid("token is signed by unexpected algorithm")
        }
    })?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(invalid(format!(
            "token is signed by unexpected algorithm \"{alg_name}\""
        )));
    }
    let kid = head.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok(Header { alg, kid })
}

/// The key a token names: by `kid`, or — when it names none — the only key
/// whose type fits its algorithm (several fitting keys are ambiguous).
pub fn select_key<'k>(set: &'k jsonwebtoken::jwk::JwkSet, head: &Header) -> Option<&'k Jwk> {
    match &head.kid {
        Some(kid) => set.find(kid),
        None => {
            let mut fitting = set.keys.iter().filter(|k| alg_fits_jwk(head.alg, k));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Some(k),
                _ => None,
            }
        }
    }
}

/// Whether `alg` fits the key's type (and the key's own `alg`, if any).
pub fn alg_fits_jwk(alg: Algorithm, jwk: &Jwk) -> bool {
    if let Some(key_alg) = &jwk.common.key_algorithm {
        if key_alg.to_string() != format!("{alg:?}") {
            return false;
        }
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (alg, &ec.curve),
            (Algorithm::ES256, EllipticCurve::P256) | (Algorithm::ES384, EllipticCurve::P384)
        ),
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        _ => false,
    }
}

/// What the claims must satisfy.
pub struct Rules<'a> {
    pub issuers: &'a [String],
    pub leeway: u64,
    /// How far `iat` may lie in the future.
    pub iat_slack: u64,
}

/// Verifies signature and registered claims; returns the claims.
pub fn verify(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    rules: &Rules<'_>,
) -> Result<Claims, AuthError> {
    let mut v = Validation::new(alg);
    v.leeway = rules.leeway.min(MAX_LEEWAY);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iss"]);
    v.set_issuer(rules.issuers);
    if rules.issuers.is_empty() {
        return Err(AuthError::IssuerUnknown);
    }
    let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        invalid(match e.kind() {
            K::InvalidSignature => {
                "jwt signature verification failed: signature mismatch".to_owned()
            }
            K::ExpiredSignature => {
                "jwt signature verification failed: 'exp' claim expired".to_owned()
            }
            K::ImmatureSignature => {
                "jwt signature verification failed: 'nbf' claim not yet valid".to_owned()
            }
            K::InvalidIssuer => {
                "jwt signature verification failed: 'iss' claim is not trusted".to_owned()
            }
            K::MissingRequiredClaim(c) => {
                format!("jwt signature verification failed: missing '{c}' claim")
            }
            K::InvalidAlgorithm => "token is signed by unexpected algorithm".to_owned(),
            K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken => {
                "invalid jwt: malformed token".to_owned()
            }
            _ => "invalid jwt: rejected".to_owned(),
        })
    })?;
    let claims = data.claims;

    // `iss` is one string, equal to a trusted issuer; the library would
    // also take an array that merely contains one.
    match claims.get("iss") {
        Some(Value::String(iss)) if rules.issuers.iter().any(|t| t == iss) => {}
        _ => {
            return Err(invalid(
                "jwt signature verification failed: 'iss' claim is not trusted",
            ))
        }
    }

    // Registered time claims must be numbers, whatever the library accepts.
    for c in ["exp", "nbf", "iat"] {
        if let Some(v) = claims.get(c) {
            if !v.is_number() {
                return Err(invalid(format!("invalid jwt: '{c}' claim is not a number")));
            }
        }
    }
    if let Some(iat) = claims.get("iat").and_then(Value::as_f64) {
        if iat > now_secs() as f64 + rules.iat_slack as f64 {
            return Err(invalid("invalid jwt: 'iat' claim lies in the future"));
        }
    }
    Ok(claims)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The algorithms a PEM public key can verify.
pub fn pem_key(pem: &str) -> Result<(DecodingKey, &'static [Algorithm]), String> {
    const RSA: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
    if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((k, RSA));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        return Ok((k, &[Algorithm::ES256, Algorithm::ES384]));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
        return Ok((k, &[Algorithm::EdDSA]));
    }
    Err("public_key is not a PEM RSA, EC or Ed25519 public key".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn refuses_unsigned_symmetric_and_encrypted() {
        let claims = b64("{}");
        for head in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"HS256"}"#,
            r#"{"kid":"k1"}"#,
            r#"{"alg":"RS256","enc":"A128CBC-HS256"}"#,
            r#"{"alg":"dir","enc":"A256GCM"}"#,
        ] {
            let t = format!("{}.{claims}.c2ln", b64(head));
            assert!(header(&t).is_err(), "{head}");
        }
        assert!(header(&format!("{}.{claims}.", b64(r#"{"alg":"RS256"}"#))).is_err());
        assert!(header("a.b.c.d.e").is_err());
        let ok = header(&format!(
            "{}.{claims}.c2ln",
            b64(r#"{"alg":"ES256","kid":"x"}"#)
        ))
        .unwrap();
        assert_eq!(ok.alg, Algorithm::ES256);
        assert_eq!(ok.kid.as_deref(), Some("x"));
    }

    #[test]
    fn odd_algorithm_names_are_not_echoed() {
        let t = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"x\r\nSet-Cookie: a=b"}"#),
            b64("{}")
        );
        let e = header(&t).err().unwrap().to_string();
        assert_eq!(e, "token is signed by unexpected algorithm");
        let t = format!("{}.{}.c2ln", b64(r#"{"alg":"XS999"}"#), b64("{}"));
        let e = header(&t).err().unwrap().to_string();
        assert_eq!(e, "token is signed by unexpected algorithm \"XS999\"");
    }

    /// `iss` must be present and one trusted string (HS256 only to sign
    /// here; the plugin never lets HMAC tokens reach `verify`).
    #[test]
    fn issuer_is_required_and_a_single_exact_string() {
        let secret = b"unit-test-secret";
        let key = DecodingKey::from_secret(secret).unwrap();
        let enc = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
        let exp = now_secs() + 600;
        let issuers = vec!["http://idp".to_owned()];
        let rules = Rules {
            issuers: &issuers,
            leeway: 0,
            iat_slack: 120,
        };
        let check = |claims: serde_json::Value| {
            let t =
                jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &enc)
                    .unwrap();
            verify(&t, Algorithm::HS256, &key, &rules)
        };
        assert!(check(serde_json::json!({"iss": "http://idp", "exp": exp})).is_ok());
        for bad in [
            serde_json::json!({"exp": exp}),
            serde_json::json!({"iss": null, "exp": exp}),
            serde_json::json!({"iss": ["http://idp"], "exp": exp}),
            serde_json::json!({"iss": ["http://idp", "http://evil"], "exp": exp}),
            serde_json::json!({"iss": "http://idp/", "exp": exp}),
            serde_json::json!({"iss": "http://IDP", "exp": exp}),
        ] {
            assert!(check(bad.clone()).is_err(), "{bad}");
        }
    }
}
