//! The `openid-connect` plugin: APISIX's field names and defaults.
//!
//! Bearer mode (this file): the token in `Authorization: Bearer …` is
//! verified locally against the provider's keys (`public_key` or
//! `use_jwks`) or by introspection, then the request goes upstream with the
//! identity in `X-Access-Token` and `X-Userinfo`. Tokens that passed local
//! verification are remembered until they expire, so a token seen again
//! costs a hash lookup instead of a signature check.
//!
//! With `bearer_only: false`, a request without a bearer token goes
//! through the browser sign-in flow (`oidc_browser.rs`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use futures_util::future::LocalBoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::oidc_browser::{BrowserFlow, Common};
use super::{Ctx, Plugin};
use crate::model::check::{self, opt, Checked};
use crate::oidc::client::{ClientAuth, ClientCredentials};
use crate::oidc::introspection::Introspector;
use crate::oidc::jwt::{self, Claims, Rules};
use crate::oidc::provider::Provider;
use crate::oidc::verified::VerifiedCache;
use crate::oidc::{short_hash, AuthError, Identity};

/// Configuration of `openid-connect` (APISIX's schema; defaults noted).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct OidcConfig {
    /// Required.
    pub client_id: String,
    /// Required for introspection and for a confidential client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// URL of the provider's `/.well-known/openid-configuration`. Required.
    pub discovery: String,
    /// Only accept bearer tokens (no browser sign-in). Default false.
    pub bearer_only: bool,
    /// Realm in `WWW-Authenticate`. Default `apisix`.
    pub realm: String,
    /// Seconds to wait for the provider. Default 3.
    pub timeout: u64,
    /// Verify the provider's TLS certificate. Default true; false is refused.
    pub ssl_verify: bool,
    /// PEM public key for local JWT verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Verify JWTs with the provider's JWKS. Default false.
    pub use_jwks: bool,
    /// The one algorithm tokens must use, e.g. `RS256`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_signing_alg_values_expected: Option<String>,
    /// Introspection endpoint; default: from discovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub introspection_endpoint_auth_method: String,
    /// Seconds an introspection reply is trusted at most; 0 = until `exp`.
    pub introspection_interval: u64,
    /// Seconds the JWKS is cached. Default 86400.
    pub jwk_expires_in: u64,
    /// Seconds `iat` may lie in the future. Default 120.
    pub iat_slack: u64,
    /// Seconds of leeway on `exp`/`nbf` (at most 300). Default 0.
    pub access_token_expires_leeway: u64,
    /// Scopes the token must carry; 403 otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_validator: Option<ClaimValidator>,
    /// Send the token upstream. Default true.
    pub set_access_token_header: bool,
    /// …as `Authorization: Bearer` instead of `X-Access-Token`. Default false.
    pub access_token_in_authorization_header: bool,
    /// Send the claims upstream as base64 JSON in `X-Userinfo`. Default true.
    pub set_userinfo_header: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ClaimValidator {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<AudienceRule>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct IssuerRule {
    pub valid_issuers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct AudienceRule {
    /// Claim holding the audience. Default `aud`.
    pub claim: String,
    pub required: bool,
    /// The audience must be (or contain) `client_id`; implies `required`.
    pub match_with_client_id: bool,
}

impl Default for AudienceRule {
    fn default() -> Self {
        AudienceRule {
            claim: "aud".into(),
            required: false,
            match_with_client_id: false,
        }
    }
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            client_id: String::new(),
            client_secret: None,
            discovery: String::new(),
            bearer_only: false,
            realm: "apisix".into(),
            timeout: 3,
            ssl_verify: true,
            public_key: None,
            use_jwks: false,
            token_signing_alg_values_expected: None,
            introspection_endpoint: None,
            introspection_endpoint_auth_method: "client_secret_basic".into(),
            introspection_interval: 0,
            jwk_expires_in: 86400,
            iat_slack: 120,
            access_token_expires_leeway: 0,
            required_scopes: None,
            claim_validator: None,
            set_access_token_header: true,
            access_token_in_authorization_header: false,
            set_userinfo_header: true,
        }
    }
}

/// Fields this file checks and uses.
const BEARER_FIELDS: &[&str] = &[
    "client_id",
    "client_secret",
    "discovery",
    "bearer_only",
    "realm",
    "timeout",
    "ssl_verify",
    "public_key",
    "use_jwks",
    "token_signing_alg_values_expected",
    "introspection_endpoint",
    "introspection_endpoint_auth_method",
    "introspection_interval",
    "jwk_expires_in",
    "iat_slack",
    "access_token_expires_leeway",
    "required_scopes",
    "claim_validator",
    "set_access_token_header",
    "access_token_in_authorization_header",
    "set_userinfo_header",
];

/// Browser sign-in fields: accepted and stored, used by the code flow.
const BROWSER_FIELDS: &[&str] = &[
    "scope",
    "redirect_uri",
    "logout_path",
    "post_logout_redirect_uri",
    "use_pkce",
    "use_nonce",
    "unauth_action",
    "session",
    "authorization_params",
    "token_endpoint_auth_method",
    "renew_access_token_on_expiry",
    "revoke_tokens_on_logout",
    "set_id_token_header",
    "set_refresh_token_header",
    "set_raw_id_token_header",
    "access_token_expires_in",
    "spa_aware",
    "backchannel_logout_path",
];

const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Checks a configuration with APISIX's messages.
pub fn check(v: &Value) -> Checked {
    let obj = check::object(v)?;
    if let Some(k) = obj
        .keys()
        .find(|k| !BEARER_FIELDS.contains(&k.as_str()) && !BROWSER_FIELDS.contains(&k.as_str()))
    {
        return Err(format!("additional properties forbidden, found {k}"));
    }
    for required in ["client_id", "discovery"] {
        if !obj.contains_key(required) {
            return Err(format!("property \"{required}\" is required"));
        }
    }
    let string = |v: &Value| check::string(v, 1, 4096).map(drop);
    let boolean = |v: &Value| check::boolean(v).map(drop);
    opt(obj, "client_id", string)?;
    opt(obj, "client_secret", string)?;
    opt(obj, "discovery", |v| {
        check::string(v, 1, 4096).and_then(url)
    })?;
    opt(obj, "introspection_endpoint", |v| {
        check::string(v, 1, 4096).and_then(url)
    })?;
    opt(obj, "realm", |v| {
        let s = check::string(v, 1, 256)?;
        if s.contains('"') || s.contains('\\') || s.chars().any(char::is_control) {
            return Err("must not contain quotes, backslashes or control characters".into());
        }
        Ok(())
    })?;
    for b in [
        "bearer_only",
        "use_jwks",
        "set_access_token_header",
        "access_token_in_authorization_header",
        "set_userinfo_header",
    ] {
        opt(obj, b, boolean)?;
    }
    opt(obj, "ssl_verify", |v| match check::boolean(v)? {
        true => Ok(()),
        false => {
            Err("false is not supported: the provider's certificate is always verified".into())
        }
    })?;
    opt(obj, "timeout", |v| check::integer_min(v, 1).map(drop))?;
    for n in ["introspection_interval", "jwk_expires_in", "iat_slack"] {
        opt(obj, n, |v| check::integer_min(v, 0).map(drop))?;
    }
    opt(obj, "access_token_expires_leeway", |v| {
        let n = check::integer_min(v, 0)?;
        if n > jwt::MAX_LEEWAY as i64 {
            return Err(format!("expected {n} to be at most {}", jwt::MAX_LEEWAY));
        }
        Ok(())
    })?;
    opt(obj, "public_key", |v| {
        let pem = check::string(v, 1, 16384)?;
        jwt::pem_key(pem).map(drop)
    })?;
    opt(obj, "token_signing_alg_values_expected", |v| {
        check::one_of(v, ALGORITHMS).map(drop)
    })?;
    opt(obj, "introspection_endpoint_auth_method", |v| {
        check::one_of(v, &["client_secret_basic", "client_secret_post"]).map(drop)
    })?;
    opt(obj, "required_scopes", |v| {
        check::array(v, 0, false, |s| check::string(s, 1, 256)).map(drop)
    })?;
    opt(obj, "claim_validator", claim_validator)?;
    super::oidc_browser::check(obj)?;

    // client_secret: needed unless tokens are verified locally.
    let bearer_only = obj
        .get("bearer_only")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let local = obj.contains_key("public_key")
        || obj
            .get("use_jwks")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let pkce = obj.get("use_pkce").and_then(Value::as_bool).unwrap_or(true);
    // Introspection always authenticates the client; so does the code flow
    // without PKCE.
    let needs_secret = !local || (!bearer_only && !pkce);
    if !obj.contains_key("client_secret") && needs_secret {
        return Err("property \"client_secret\" is required".into());
    }
    Ok(())
}

fn url(s: &str) -> Checked {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("\"{s}\" is not an http or https URL"))
    }
}

fn claim_validator(v: &Value) -> Checked {
    let obj = check::object(v)?;
    check::known_fields(obj, &["issuer", "audience"])?;
    opt(obj, "issuer", |v| {
        let o = check::object(v)?;
        check::known_fields(o, &["valid_issuers"])?;
        opt(o, "valid_issuers", |v| {
            check::array(v, 1, true, |s| check::string(s, 1, 2048)).map(drop)
        })
        .map(drop)
    })?;
    opt(obj, "audience", |v| {
        let o = check::object(v)?;
        check::known_fields(o, &["claim", "required", "match_with_client_id"])?;
        opt(o, "claim", |v| check::string(v, 1, 256).map(drop))?;
        opt(o, "required", |v| check::boolean(v).map(drop))?;
        opt(o, "match_with_client_id", |v| check::boolean(v).map(drop))?;
        Ok(())
    })?;
    Ok(())
}

/// How tokens are checked.
enum Verifier {
    /// A configured PEM key and the algorithms it can verify.
    Pem(DecodingKey, &'static [Algorithm]),
    Jwks,
    Introspection(Introspector),
}

pub struct OpenIdConnect {
    conf: OidcConfig,
    provider: Provider,
    /// The sign-in flow, when `bearer_only` is false.
    browser: Option<BrowserFlow>,
    /// Locally verified tokens, until they expire.
    verified: VerifiedCache,
    verifier: Verifier,
    /// `Bearer realm="…"`, prebuilt.
    challenge: HeaderValue,
}

pub fn build(v: &Value, env: &super::PluginEnv) -> Result<Arc<dyn Plugin>, String> {
    let conf: OidcConfig = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(conf.timeout.max(1));
    let verifier = if let Some(pem) = &conf.public_key {
        let (key, algs) = jwt::pem_key(pem)?;
        Verifier::Pem(key, algs)
    } else if conf.use_jwks {
        Verifier::Jwks
    } else {
        Verifier::Introspection(Introspector::new(
            conf.introspection_endpoint.clone(),
            ClientCredentials {
                client_id: conf.client_id.clone(),
                client_secret: conf.client_secret.clone(),
                auth: if conf.introspection_endpoint_auth_method == "client_secret_post" {
                    ClientAuth::Post
                } else {
                    ClientAuth::Basic
                },
            },
            conf.introspection_interval,
            timeout,
        ))
    };
    let challenge = HeaderValue::from_str(&format!("Bearer realm=\"{}\"", conf.realm))
        .map_err(|_| "realm is not a valid header value".to_owned())?;
    let browser = (!conf.bearer_only).then(|| {
        BrowserFlow::new(
            v,
            &conf.client_id,
            conf.client_secret.as_deref(),
            &conf.discovery,
            env.sessions.clone(),
        )
    });
    Ok(Arc::new(OpenIdConnect {
        browser,
        verified: VerifiedCache::default(),
        provider: Provider::new(
            conf.discovery.clone(),
            timeout,
            Duration::from_secs(conf.jwk_expires_in),
        ),
        verifier,
        challenge,
        conf,
    }))
}

/// Why a request is refused, before it becomes a response.
enum Refusal {
    /// 400: the Authorization header cannot be read.
    Malformed(&'static str),
    /// 401 with only the realm: no token.
    Missing,
    /// 401 with `error="invalid_token"`.
    Invalid(AuthError),
    /// 403 with a JSON `{"error": …}` body.
    Forbidden(String),
}

impl Plugin for OpenIdConnect {
    fn name(&self) -> &'static str {
        "openid-connect"
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> LocalBoxFuture<'a, Result<(), HttpResponse>> {
        Box::pin(async move {
            if let Some(browser) = &self.browser {
                if !has_bearer(ctx.req) {
                    return browser.handle(ctx, &self.provider, &self.common()).await;
                }
            }
            match self.authenticate(ctx).await {
                Ok(()) => Ok(()),
                Err(refusal) => Err(self.refuse(ctx, refusal)),
            }
        })
    }
}

impl OpenIdConnect {
    fn common(&self) -> Common<'_> {
        Common {
            client_id: &self.conf.client_id,
            timeout: self.provider.timeout(),
            iat_slack: self.conf.iat_slack,
            leeway: self.conf.access_token_expires_leeway,
            expected_alg: self.conf.token_signing_alg_values_expected.as_deref(),
            set_access_token_header: self.conf.set_access_token_header,
            access_token_in_authorization_header: self.conf.access_token_in_authorization_header,
            set_userinfo_header: self.conf.set_userinfo_header,
        }
    }

    async fn authenticate(&self, ctx: &mut Ctx<'_>) -> Result<(), Refusal> {
        // Extract exactly one credential.
        let token = bearer_token(ctx.req)?.ok_or(Refusal::Missing)?;

        // Verify it and learn its claims.
        let leeway = self.conf.access_token_expires_leeway;
        let claims: Arc<Identity> = match &self.verifier {
            Verifier::Introspection(intro) => {
                let endpoint = match &intro.endpoint {
                    Some(e) => e.clone(),
                    None => self
                        .provider
                        .discovery(ctx.client)
                        .await
                        .map_err(Refusal::Invalid)?
                        .introspection_endpoint
                        .clone()
                        .ok_or_else(|| {
                            Refusal::Invalid(AuthError::ProviderUnavailable(
                                "no endpoint URI for introspection".into(),
                            ))
                        })?,
                };
                let active = intro
                    .introspect(ctx.client, &endpoint, token)
                    .await
                    .map_err(Refusal::Invalid)?;
                active.reply
            }
            Verifier::Pem(key, algs) => match self.verified.get(token, 0, leeway).await {
                Some(claims) => claims,
                None => {
                    let head = jwt::header(token).map_err(Refusal::Invalid)?;
                    self.check_alg(head.alg, algs)?;
                    let issuers = self.issuers(ctx.client).await?;
                    let claims = Identity::new(self.verify(token, head.alg, key, &issuers)?);
                    self.verified.insert(token, claims.clone(), 0).await;
                    claims
                }
            },
            Verifier::Jwks => {
                // A token verified with the current key set needs no
                // second signature check.
                let generation = self
                    .provider
                    .keys(ctx.client, None)
                    .await
                    .map_or(u64::MAX, |k| k.generation);
                if let Some(claims) = self.verified.get(token, generation, leeway).await {
                    claims
                } else {
                    let head = jwt::header(token).map_err(Refusal::Invalid)?;
                    self.check_alg(head.alg, &[head.alg])?;
                    let keys = self
                        .provider
                        .keys(ctx.client, head.kid.as_deref())
                        .await
                        .map_err(Refusal::Invalid)?;
                    let jwk = jwt::select_key(&keys.set, &head).ok_or_else(|| {
                        invalid("jwt signature verification failed: no matching key")
                    })?;
                    if !jwt::alg_fits_jwk(head.alg, jwk) {
                        return Err(invalid("token is signed by unexpected algorithm"));
                    }
                    let key = DecodingKey::from_jwk(jwk)
                        .map_err(|_| invalid("jwt signature verification failed: unusable key"))?;
                    let issuers = self.issuers(ctx.client).await?;
                    let claims = Identity::new(self.verify(token, head.alg, &key, &issuers)?);
                    self.verified
                        .insert(token, claims.clone(), keys.generation)
                        .await;
                    claims
                }
            }
        };

        // Scopes, then audience (both 403).
        self.check_scopes(&claims)?;
        self.check_audience(&claims)?;

        // Identity for the upstream.
        let h = &mut *ctx.upstream_headers;
        if self.conf.set_access_token_header {
            if self.conf.access_token_in_authorization_header {
                set(h, header::AUTHORIZATION, &format!("Bearer {token}"));
            } else if let Some(v) = claims.token_header(token) {
                h.insert(HeaderName::from_static("x-access-token"), v.clone());
            }
        }
        if self.conf.set_userinfo_header {
            if let Some(v) = claims.userinfo_header() {
                h.insert(HeaderName::from_static("x-userinfo"), v.clone());
            }
        }
        // Allowed requests are logged at debug: one line per request at
        // info would cost more than the check itself. Refusals stay at info.
        tracing::debug!(
            route.id = %ctx.route_id,
            token.hash = %short_hash(token),
            authz.result = "allowed",
            "bearer token accepted"
        );
        Ok(())
    }

    fn check_alg(&self, alg: Algorithm, allowed: &[Algorithm]) -> Result<(), Refusal> {
        let expected_ok = self
            .conf
            .token_signing_alg_values_expected
            .as_deref()
            .is_none_or(|e| e == format!("{alg:?}"));
        if expected_ok && allowed.contains(&alg) {
            Ok(())
        } else {
            Err(invalid(format!(
                "token is signed by unexpected algorithm \"{alg:?}\""
            )))
        }
    }

    /// Trusted issuers: configured, else the discovery document's.
    async fn issuers(&self, client: &awc::Client) -> Result<Vec<String>, Refusal> {
        if let Some(list) = self
            .conf
            .claim_validator
            .as_ref()
            .and_then(|c| c.issuer.as_ref())
            .map(|i| i.valid_issuers.clone())
            .filter(|l| !l.is_empty())
        {
            return Ok(list);
        }
        match self.provider.discovery(client).await {
            // Discovery §4.3: an issuer that is not the discovery URL's own
            // is never trusted (warned about when the document is fetched).
            Ok(d) if d.issuer_matches_url => Ok(vec![d.issuer.clone()]),
            Ok(_) | Err(_) => Err(Refusal::Invalid(AuthError::IssuerUnknown)),
        }
    }

    fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
        issuers: &[String],
    ) -> Result<Claims, Refusal> {
        jwt::verify(
            token,
            alg,
            key,
            &Rules {
                issuers,
                leeway: self.conf.access_token_expires_leeway,
                iat_slack: self.conf.iat_slack,
            },
        )
        .map_err(Refusal::Invalid)
    }

    fn check_scopes(&self, claims: &Claims) -> Result<(), Refusal> {
        let Some(required) = self.conf.required_scopes.as_ref().filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let granted: Vec<&str> = match claims.get("scope") {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let missing: Vec<&str> = required
            .iter()
            .map(String::as_str)
            .filter(|s| !granted.contains(s))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "required scopes {} not present",
                missing.join(", ")
            )))
        }
    }

    fn check_audience(&self, claims: &Claims) -> Result<(), Refusal> {
        let Some(rule) = self
            .conf
            .claim_validator
            .as_ref()
            .and_then(|c| c.audience.as_ref())
        else {
            return Ok(());
        };
        let value = claims.get(&rule.claim);
        if value.is_none() && (rule.required || rule.match_with_client_id) {
            return Err(Refusal::Forbidden(
                "required audience claim not present".into(),
            ));
        }
        if rule.match_with_client_id {
            let id = self.conf.client_id.as_str();
            let matches = match value {
                Some(Value::String(s)) => s == id,
                Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(id)),
                _ => false,
            };
            if !matches {
                return Err(Refusal::Forbidden("mismatched audience".into()));
            }
        }
        Ok(())
    }

    fn refuse(&self, ctx: &Ctx<'_>, refusal: Refusal) -> HttpResponse {
        let (status, www, body) = match &refusal {
            Refusal::Malformed(m) => (
                StatusCode::BAD_REQUEST,
                None,
                serde_json::json!({"error": "invalid_request", "error_description": m}),
            ),
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                Some(self.challenge.clone()),
                serde_json::json!({"error": "unauthorized", "error_description": "no bearer token"}),
            ),
            Refusal::Invalid(e) => {
                let description = e.to_string().replace(['"', '\\'], "'");
                let value = format!(
                    "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{description}\"",
                    self.conf.realm
                );
                // A description a header cannot carry still gets a challenge.
                let www = HeaderValue::from_str(&value).or_else(|_| {
                    HeaderValue::from_str(&format!(
                        "Bearer realm=\"{}\", error=\"invalid_token\"",
                        self.conf.realm
                    ))
                });
                (
                    StatusCode::UNAUTHORIZED,
                    www.ok(),
                    serde_json::json!({"error": "invalid_token", "error_description": description}),
                )
            }
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, None, serde_json::json!({"error": m})),
        };
        tracing::info!(
            route.id = %ctx.route_id,
            authz.result = "denied",
            http.status = status.as_u16(),
            reason = %match &refusal {
                Refusal::Malformed(m) => (*m).to_owned(),
                Refusal::Missing => "no token".to_owned(),
                Refusal::Invalid(e) => e.to_string(),
                Refusal::Forbidden(m) => m.clone(),
            },
            "bearer token refused"
        );
        let mut resp = HttpResponse::build(status);
        if let Some(www) = www {
            resp.insert_header((header::WWW_AUTHENTICATE, www));
        }
        resp.json(body)
    }
}

fn invalid(msg: impl Into<String>) -> Refusal {
    Refusal::Invalid(AuthError::InvalidToken(msg.into()))
}

fn set(h: &mut header::HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Whether a token holds whitespace or a comma (a list of credentials).
/// Checked in blocks without an early exit, which the compiler turns into
/// vector code: this runs on every request and tokens are long.
fn has_separator(token: &[u8]) -> bool {
    token.chunks(32).any(|block| {
        block.iter().fold(false, |found, &b| {
            found | matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b',')
        })
    })
}

/// Whether the request carries `Authorization: Bearer …` (any case); such
/// requests take the bearer path even on browser routes.
fn has_bearer(req: &crate::proxy::Request) -> bool {
    req.header_all("authorization")
        .any(|v| v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"bearer"))
}

/// The one bearer token of a request (attack kind K12): scheme compared
/// case-insensitively, a one-word header is malformed, another scheme
/// counts as no token, several `Authorization` headers or a token in both
/// header and query are refused, and query tokens are not accepted.
fn bearer_token(req: &crate::proxy::Request) -> Result<Option<&str>, Refusal> {
    let mut values = req.header_all("authorization");
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::Malformed("more than one Authorization header"));
    }
    // Header values are checked by the parser to be visible characters,
    // spaces, tabs or obs-text; only ASCII is accepted here.
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.is_ascii())
        .ok_or(Refusal::Malformed("Invalid Authorization header format."))?
        .trim();
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(Refusal::Malformed("Invalid Authorization header format."));
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(Refusal::Malformed("Invalid Authorization header format."));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    if crate::form::query_param(req.query_string(), "access_token").is_some() {
        return Err(Refusal::Malformed(
            "a token in both the header and the query is not accepted",
        ));
    }
    if has_separator(token.as_bytes()) {
        return Err(invalid("invalid token format"));
    }
    Ok(Some(token))
}
