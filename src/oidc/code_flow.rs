//! The authorization-code flow as a relying party: the authorization
//! request, the code exchange, ID token validation, userinfo, refresh,
//! revocation and the end-session redirect (attack kinds K13, K14).
//!
//! ID tokens go through the same key handling as bearer tokens (JWKS by
//! `kid`, pinned algorithms, no `none`, no HMAC) and then the checks of
//! OpenID Connect Core §3.1.3.7: exact `iss`, `aud` containing the client
//! (and `azp` when there are several), `exp`, `iat`, `sub`, and the
//! `nonce` this browser was given.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::client::{post_form, ClientCredentials};
use super::jwt::{self, Claims, Rules};
use super::provider::{Discovery, Provider};
use super::AuthError;
use crate::form::form_urlencode;

/// Largest token or userinfo reply accepted.
const MAX_REPLY: usize = 256 * 1024;

/// What the token endpoint returned.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

/// The PKCE S256 challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Builds the URL that sends the browser to the provider.
#[allow(clippy::too_many_arguments)]
pub fn authorization_url(
    endpoint: &str,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    state: &str,
    nonce: &str,
    pkce_verifier: Option<&str>,
    extra: &Map<String, Value>,
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("response_type".into(), "code".into()),
        ("client_id".into(), client_id.into()),
        ("redirect_uri".into(), redirect_uri.into()),
        ("scope".into(), scope.into()),
        ("state".into(), state.into()),
        ("nonce".into(), nonce.into()),
    ];
    if let Some(v) = pkce_verifier {
        params.push(("code_challenge".into(), pkce_challenge(v)));
        params.push(("code_challenge_method".into(), "S256".into()));
    }
    for (k, v) in extra {
        // Never let extra parameters replace the ones the flow relies on.
        if params.iter().any(|(p, _)| p == k) {
            continue;
        }
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        params.push((k.clone(), v));
    }
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", form_urlencode(k), form_urlencode(v)))
        .collect();
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    format!("{endpoint}{sep}{}", query.join("&"))
}

/// A token endpoint call: the JSON answer of a success, or why not.
async fn token_request(
    client: &awc::Client,
    endpoint: &str,
    creds: &ClientCredentials,
    form: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<Map<String, Value>, AuthError> {
    let (status, body) = post_form(client, endpoint, creds, form, timeout).await?;
    let json: Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
        AuthError::ProviderUnavailable(format!("token endpoint answered {status} without JSON"))
    })?;
    if !status.is_success() {
        let err = json.get("error").and_then(Value::as_str).unwrap_or("error");
        return Err(AuthError::InvalidToken(format!(
            "token endpoint refused: {err}"
        )));
    }
    Ok(json)
}

fn tokens_from(json: &Map<String, Value>) -> Result<Tokens, AuthError> {
    let token_type = json
        .get("token_type")
        .and_then(Value::as_str)
        .unwrap_or("Bearer");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::InvalidToken(format!(
            "unsupported token_type {token_type}"
        )));
    }
    Ok(Tokens {
        access_token: json
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::InvalidToken("token endpoint sent no access_token".into()))?
            .to_owned(),
        expires_in: json.get("expires_in").and_then(Value::as_u64),
        refresh_token: json
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_owned),
        id_token: json
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Redeems an authorization code.
pub async fn exchange_code(
    client: &awc::Client,
    discovery: &Discovery,
    creds: &ClientCredentials,
    code: &str,
    redirect_uri: &str,
    pkce_verifier: Option<&str>,
    timeout: Duration,
) -> Result<Tokens, AuthError> {
    let endpoint = discovery
        .token_endpoint
        .as_deref()
        .ok_or_else(|| AuthError::ProviderUnavailable("no token endpoint".into()))?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    if let Some(v) = pkce_verifier {
        form.push(("code_verifier", v));
    }
    let json = token_request(client, endpoint, creds, form, timeout).await?;
    tokens_from(&json)
}

/// Uses a refresh token.
pub async fn refresh(
    client: &awc::Client,
    discovery: &Discovery,
    creds: &ClientCredentials,
    refresh_token: &str,
    timeout: Duration,
) -> Result<Tokens, AuthError> {
    let endpoint = discovery
        .token_endpoint
        .as_deref()
        .ok_or_else(|| AuthError::ProviderUnavailable("no token endpoint".into()))?;
    let form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    let json = token_request(client, endpoint, creds, form, timeout).await?;
    tokens_from(&json)
}

/// What an ID token must match.
pub struct IdTokenRules<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// `Some` at sign-in; `None` for an ID token from a refresh.
    pub nonce: Option<&'a str>,
    /// On refresh: the `sub` the session was created for.
    pub sub: Option<&'a str>,
    pub iat_slack: u64,
    pub leeway: u64,
    /// The algorithm configured, if any.
    pub expected_alg: Option<&'a str>,
}

/// The provider-signed JWT part shared by ID and logout tokens: a key of
/// the provider chosen by `kid`, the algorithm pinned, exact `iss`, the
/// time claims; then the audiences, which must name the client.
async fn verify_provider_jwt(
    client: &awc::Client,
    provider: &Provider,
    token: &str,
    rules: &IdTokenRules<'_>,
    what: &str,
) -> Result<(Claims, Vec<String>), AuthError> {
    let bad = |m: &str| AuthError::InvalidToken(format!("{what}: {m}"));
    let head = jwt::header(token)?;
    if rules
        .expected_alg
        .is_some_and(|a| a != format!("{:?}", head.alg))
    {
        return Err(bad("signed with an unexpected algorithm"));
    }
    let keys = provider.keys(client, head.kid.as_deref()).await?;
    let jwk = jwt::select_key(&keys.set, &head)
        .filter(|k| jwt::alg_fits_jwk(head.alg, k))
        .ok_or_else(|| bad("no matching key"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| bad("unusable key"))?;
    let issuers = [rules.issuer.to_owned()];
    let claims = jwt::verify(
        token,
        head.alg,
        &key,
        &Rules {
            issuers: &issuers,
            leeway: rules.leeway,
            iat_slack: rules.iat_slack,
        },
    )?;
    let auds: Vec<String> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => return Err(bad("no aud")),
    };
    if !auds.iter().any(|a| a == rules.client_id) {
        return Err(bad("aud does not name this client"));
    }
    if !claims.get("iat").is_some_and(Value::is_number) {
        return Err(bad("no iat"));
    }
    Ok((claims, auds))
}

/// Verifies an ID token and returns its claims.
pub async fn verify_id_token(
    client: &awc::Client,
    provider: &Provider,
    token: &str,
    rules: &IdTokenRules<'_>,
) -> Result<Claims, AuthError> {
    let bad = |m: &str| AuthError::InvalidToken(format!("id token: {m}"));
    let (claims, auds) = verify_provider_jwt(client, provider, token, rules, "id token").await?;

    // OpenID Connect Core 3.1.3.7.
    if auds.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(rules.client_id) {
        return Err(bad("several audiences and azp is not this client"));
    }
    if let Some(azp) = claims.get("azp").and_then(Value::as_str) {
        if azp != rules.client_id {
            return Err(bad("azp is not this client"));
        }
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no sub"))?;
    if let Some(expected) = rules.sub {
        if sub != expected {
            return Err(bad("sub changed"));
        }
    }
    if let Some(nonce) = rules.nonce {
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(bad("nonce mismatch"));
        }
    }
    Ok(claims)
}

/// The event a back-channel logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Verifies a back-channel logout token (OpenID Connect Back-Channel
/// Logout 1.0 §2.6) and returns its claims: signed with a provider key and
/// a pinned algorithm, exact `iss`, `aud` naming the client, `iat`, `exp`,
/// `jti`, the logout event, `sid` or `sub`, and no `nonce`.
pub async fn verify_logout_token(
    client: &awc::Client,
    provider: &Provider,
    token: &str,
    rules: &IdTokenRules<'_>,
) -> Result<Claims, AuthError> {
    let bad = |m: &str| AuthError::InvalidToken(format!("logout token: {m}"));
    let (claims, _) = verify_provider_jwt(client, provider, token, rules, "logout token").await?;
    if !claims.get("jti").is_some_and(Value::is_string) {
        return Err(bad("no jti"));
    }
    if !claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| {
            e.get(BACKCHANNEL_LOGOUT_EVENT)
                .is_some_and(Value::is_object)
        })
    {
        return Err(bad("no back-channel logout event"));
    }
    let has = |c: &str| {
        claims
            .get(c)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    if !has("sid") && !has("sub") {
        return Err(bad("neither sid nor sub"));
    }
    if claims.contains_key("nonce") {
        return Err(bad("a logout token must not carry a nonce"));
    }
    Ok(claims)
}

/// Fetches userinfo with the access token in the header; its `sub` must
/// be the ID token's.
pub async fn userinfo(
    client: &awc::Client,
    endpoint: &str,
    access_token: &str,
    sub: &str,
    timeout: Duration,
) -> Result<Value, AuthError> {
    let mut resp = client
        .get(endpoint)
        .insert_header(("authorization", format!("Bearer {access_token}")))
        .insert_header(("accept", "application/json"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| AuthError::ProviderUnavailable(format!("userinfo: {e}")))?;
    if !resp.status().is_success() {
        return Err(AuthError::InvalidToken(format!(
            "userinfo answered {}",
            resp.status().as_u16()
        )));
    }
    let body = resp
        .body()
        .limit(MAX_REPLY)
        .await
        .map_err(|e| AuthError::ProviderUnavailable(format!("userinfo: {e}")))?;
    let info: Value = serde_json::from_slice(&body)
        .map_err(|_| AuthError::InvalidToken("userinfo is not JSON".into()))?;
    if info.get("sub").and_then(Value::as_str) != Some(sub) {
        return Err(AuthError::InvalidToken(
            "userinfo sub differs from the id token".into(),
        ));
    }
    Ok(info)
}

/// Revokes a token at the provider (RFC 7009); failures are only logged.
pub async fn revoke(
    client: &awc::Client,
    endpoint: &str,
    creds: &ClientCredentials,
    token: &str,
    hint: &str,
    timeout: Duration,
) {
    let form = vec![("token", token), ("token_type_hint", hint)];
    match post_form(client, endpoint, creds, form, timeout).await {
        Ok((status, _)) if status.is_success() => {}
        Ok((status, _)) => {
            tracing::warn!(oidc.revocation = %endpoint, http.status = status.as_u16(), "token revocation refused")
        }
        Err(e) => {
            tracing::warn!(oidc.revocation = %endpoint, error = %e, "token revocation failed")
        }
    }
}

/// The provider's end-session URL for a signed-in user.
pub fn end_session_url(
    endpoint: &str,
    id_token: &str,
    client_id: &str,
    post_logout_redirect_uri: Option<&str>,
    state: &str,
) -> String {
    let mut q = vec![
        format!("id_token_hint={}", form_urlencode(id_token)),
        format!("client_id={}", form_urlencode(client_id)),
        format!("state={}", form_urlencode(state)),
    ];
    if let Some(p) = post_logout_redirect_uri {
        q.push(format!("post_logout_redirect_uri={}", form_urlencode(p)));
    }
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    format!("{endpoint}{sep}{}", q.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_example() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn extra_params_cannot_override_flow_params() {
        let mut extra = Map::new();
        extra.insert("state".into(), Value::String("evil".into()));
        extra.insert("prompt".into(), Value::String("login".into()));
        let url = authorization_url(
            "https://idp/auth",
            "c",
            "https://app/cb",
            "openid",
            "S",
            "N",
            Some("v"),
            &extra,
        );
        assert!(url.contains("state=S&"));
        assert!(!url.contains("evil"));
        assert!(url.contains("prompt=login"));
        assert!(url.contains("code_challenge_method=S256"));
    }
}
