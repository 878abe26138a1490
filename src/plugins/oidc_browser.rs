//! Browser sign-in for `openid-connect` (`bearer_only: false`): the
//! authorization-code flow with PKCE, server-side sessions, refresh and
//! logout.
//!
//! A request on a protected route goes through these steps:
//! 1. the callback path (`redirect_uri`) finishes a sign-in;
//! 2. the logout path ends the session and sends the browser to the
//!    provider's end-session endpoint;
//! 3. a session cookie naming a live session lets the request through,
//!    refreshing the access token first when it has expired;
//! 4. anything else is unauthenticated: a top-level navigation is sent to
//!    the provider (`unauth_action: auth`), an API call (`fetch`, XHR) gets
//!    401 JSON so a single-page app can react, `deny` answers 401 and
//!    `pass` forwards without identity.

use std::sync::Arc;
use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use base64::Engine;
use serde_json::{Map, Value};

use super::Ctx;
use crate::model::check::{self, opt, Checked};
use crate::oidc::client::{ClientAuth, ClientCredentials};
use crate::oidc::code_flow::{self, IdTokenRules};
use crate::oidc::jwt::now_secs;
use crate::oidc::provider::Provider;
use crate::oidc::session::{
    hash_hex, random_token, Lifetimes, Lookup, PendingLogin, Session, SessionKey, SessionStore,
    TakeLogin, MAX_ORIGINAL_URL,
};
use crate::oidc::{short_hash, AuthError};

/// Largest back-channel logout request body accepted.
const MAX_LOGOUT_BODY: usize = 64 * 1024;
/// Default session cookie name.
pub const DEFAULT_COOKIE: &str = "portcullis_session";
/// Suffix of APISIX's default `redirect_uri`.
const DEFAULT_CALLBACK: &str = "/.apisix/redirect";
/// How long the access token is assumed valid when the provider does not
/// say (`expires_in` missing and no `access_token_expires_in`).
const DEFAULT_ACCESS_LIFETIME: u64 = 3600;
/// How long a refreshed session is shared with concurrent requests.
const REFRESH_SHARE: Duration = Duration::from_secs(30);
/// Session writes for `last_seen` happen at most this often per session.
const TOUCH_EVERY: u64 = 30;

/// Settings shared with bearer mode.
pub struct Common<'a> {
    pub client_id: &'a str,
    pub timeout: Duration,
    pub iat_slack: u64,
    pub leeway: u64,
    pub expected_alg: Option<&'a str>,
    pub set_access_token_header: bool,
    pub access_token_in_authorization_header: bool,
    pub set_userinfo_header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unauth {
    Auth,
    Deny,
    Pass,
}

pub struct BrowserFlow {
    scope: String,
    redirect_uri: Option<String>,
    logout_path: String,
    /// Where the provider POSTs back-channel logout tokens, if enabled.
    backchannel_logout_path: Option<String>,
    post_logout_redirect_uri: Option<String>,
    use_pkce: bool,
    unauth: Unauth,
    spa_aware: bool,
    authorization_params: Map<String, Value>,
    renew: bool,
    revoke_on_logout: bool,
    set_id_token_header: bool,
    set_refresh_token_header: bool,
    set_raw_id_token_header: bool,
    access_token_expires_in: Option<u64>,
    cookie_name: String,
    cookie_path: String,
    cookie_domain: Option<String>,
    cookie_secure: Option<bool>,
    same_site: SameSite,
    limits: Lifetimes,
    /// Which client and provider sessions belong to.
    owner: String,
    creds: ClientCredentials,
    /// Sessions and pending logins, shared by every route and worker.
    sessions: Arc<SessionStore>,
    /// Refreshed sessions by (session, old access token) hash: concurrent
    /// requests of one session share one refresh.
    refreshes: moka::future::Cache<String, Arc<Session>>,
}

/// Checks the browser-flow fields of an `openid-connect` configuration.
pub fn check(obj: &Map<String, Value>) -> Checked {
    let string = |v: &Value| check::string(v, 1, 4096).map(drop);
    let boolean = |v: &Value| check::boolean(v).map(drop);
    opt(obj, "scope", string)?;
    opt(obj, "redirect_uri", |v| {
        let s = check::string(v, 1, 4096)?;
        if s.starts_with("http://") || s.starts_with("https://") || s.starts_with('/') {
            Ok(())
        } else {
            Err(format!("\"{s}\" is not an absolute URL or path"))
        }
    })?;
    let path = |v: &Value| {
        let s = check::string(v, 1, 4096)?;
        if s.starts_with('/') {
            Ok(())
        } else {
            Err(format!("\"{s}\" must start with /"))
        }
    };
    opt(obj, "logout_path", path)?;
    opt(obj, "backchannel_logout_path", path)?;
    opt(obj, "post_logout_redirect_uri", string)?;
    for b in [
        "use_pkce",
        "use_nonce",
        "renew_access_token_on_expiry",
        "revoke_tokens_on_logout",
        "set_id_token_header",
        "set_refresh_token_header",
        "set_raw_id_token_header",
        "spa_aware",
    ] {
        opt(obj, b, boolean)?;
    }
    opt(obj, "unauth_action", |v| {
        check::one_of(v, &["auth", "deny", "pass"]).map(drop)
    })?;
    opt(obj, "token_endpoint_auth_method", |v| {
        check::one_of(v, &["client_secret_basic", "client_secret_post", "none"]).map(drop)
    })?;
    opt(obj, "authorization_params", |v| check::object(v).map(drop))?;
    opt(obj, "access_token_expires_in", |v| {
        check::integer_min(v, 1).map(drop)
    })?;
    opt(obj, "session", |v| {
        let o = check::object(v)?;
        check::known_fields(
            o,
            &[
                "secret",
                "cookie_name",
                "cookie_path",
                "cookie_domain",
                "cookie_secure",
                "cookie_same_site",
                "idling_timeout",
                "rolling_timeout",
                "absolute_timeout",
                "storage",
            ],
        )?;
        opt(o, "secret", |v| check::string(v, 16, 4096).map(drop))?;
        opt(o, "cookie_name", |v| {
            let s = check::string(v, 1, 64)?;
            if s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                Ok(())
            } else {
                Err("only letters, digits, - and _ are allowed".into())
            }
        })?;
        opt(o, "cookie_path", |v| check::string(v, 1, 1024).map(drop))?;
        opt(o, "cookie_domain", |v| check::host(v).map(drop))?;
        opt(o, "cookie_secure", boolean)?;
        opt(o, "cookie_same_site", |v| {
            check::one_of(v, &["Strict", "Lax", "None", "Default"]).map(drop)
        })?;
        for t in ["idling_timeout", "rolling_timeout", "absolute_timeout"] {
            opt(o, t, |v| check::integer_min(v, 0).map(drop))?;
        }
        opt(o, "storage", |v| {
            check::one_of(v, &["cookie", "server"]).map(drop)
        })?;
        Ok(())
    })?;
    Ok(())
}

impl BrowserFlow {
    pub fn new(
        v: &Value,
        client_id: &str,
        client_secret: Option<&str>,
        discovery: &str,
        sessions: Arc<SessionStore>,
    ) -> BrowserFlow {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let b = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
        let session = v.get("session").cloned().unwrap_or(Value::Null);
        let ss = |k: &str| session.get(k).and_then(Value::as_str).map(str::to_owned);
        let sn = |k: &str, d: u64| session.get(k).and_then(Value::as_u64).unwrap_or(d);
        BrowserFlow {
            scope: s("scope").unwrap_or_else(|| "openid".into()),
            redirect_uri: s("redirect_uri"),
            logout_path: s("logout_path").unwrap_or_else(|| "/logout".into()),
            backchannel_logout_path: s("backchannel_logout_path"),
            post_logout_redirect_uri: s("post_logout_redirect_uri"),
            use_pkce: b("use_pkce", true),
            unauth: match s("unauth_action").as_deref() {
                Some("deny") => Unauth::Deny,
                Some("pass") => Unauth::Pass,
                _ => Unauth::Auth,
            },
            spa_aware: b("spa_aware", true),
            authorization_params: v
                .get("authorization_params")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            renew: b("renew_access_token_on_expiry", true),
            revoke_on_logout: b("revoke_tokens_on_logout", false),
            set_id_token_header: b("set_id_token_header", true),
            set_refresh_token_header: b("set_refresh_token_header", false),
            set_raw_id_token_header: b("set_raw_id_token_header", false),
            access_token_expires_in: v.get("access_token_expires_in").and_then(Value::as_u64),
            cookie_name: ss("cookie_name").unwrap_or_else(|| DEFAULT_COOKIE.into()),
            cookie_path: ss("cookie_path").unwrap_or_else(|| "/".into()),
            cookie_domain: ss("cookie_domain"),
            cookie_secure: session.get("cookie_secure").and_then(Value::as_bool),
            same_site: match ss("cookie_same_site").as_deref() {
                Some("Strict") => SameSite::Strict,
                Some("None") => SameSite::None,
                _ => SameSite::Lax,
            },
            limits: Lifetimes {
                idling: sn("idling_timeout", 900),
                rolling: sn("rolling_timeout", 3600),
                absolute: sn("absolute_timeout", 86400),
            },
            owner: format!("{client_id} {discovery}"),
            creds: ClientCredentials {
                client_id: client_id.to_owned(),
                client_secret: client_secret
                    .filter(|_| s("token_endpoint_auth_method").as_deref() != Some("none"))
                    .map(str::to_owned),
                auth: if s("token_endpoint_auth_method").as_deref() == Some("client_secret_post") {
                    ClientAuth::Post
                } else {
                    ClientAuth::Basic
                },
            },
            sessions,
            refreshes: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(REFRESH_SHARE)
                .build(),
        }
    }

    /// Runs the browser flow for one request without a bearer token.
    pub async fn handle(
        &self,
        ctx: &mut Ctx<'_>,
        provider: &Provider,
        common: &Common<'_>,
    ) -> Result<(), HttpResponse> {
        // The proxy has already removed the session and login cookies
        // from what goes upstream (on every route, see `Snapshot::
        // gateway_cookies`): the session id is the browser's secret.
        if self.backchannel_logout_path.as_deref() == Some(ctx.path)
            && ctx.req.method() == actix_web::http::Method::POST
        {
            return Err(self.backchannel_logout(ctx, provider, common).await);
        }
        let redirect_uri = self.redirect_uri(ctx);
        if ctx.path == uri_path(&redirect_uri) {
            return Err(self.callback(ctx, provider, common, &redirect_uri).await);
        }
        if ctx.path == self.logout_path {
            return Err(self.logout(ctx, provider, common).await);
        }
        if let Some(id) = ctx.req.cookie(&self.cookie_name).map(str::to_owned) {
            if let Some(session) = self.live_session(ctx, &id, provider, common).await {
                self.set_identity(ctx.upstream_headers, &session, common);
                return Ok(());
            }
        }
        match self.unauth {
            Unauth::Pass => Ok(()),
            Unauth::Deny => Err(json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "sign-in required",
            )),
            Unauth::Auth if self.spa_aware && !is_navigation(ctx.req) => Err(json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "sign-in required: navigate to this URL to sign in",
            )),
            Unauth::Auth => Err(self.start_login(ctx, provider, &redirect_uri).await),
        }
    }

    /// `redirect_uri` as configured, else APISIX's default derived from the
    /// request: `<scheme>://<host><path without trailing />/.apisix/redirect`,
    /// or the request's own path when it already is such a callback.
    fn redirect_uri(&self, ctx: &Ctx<'_>) -> String {
        match &self.redirect_uri {
            Some(u) if u.starts_with('/') => format!("{}{u}", origin(ctx)),
            Some(u) => u.clone(),
            None if ctx.path.ends_with(DEFAULT_CALLBACK) => {
                format!("{}{}", origin(ctx), ctx.path)
            }
            None => format!(
                "{}{}{DEFAULT_CALLBACK}",
                origin(ctx),
                ctx.path.trim_end_matches('/')
            ),
        }
    }

    fn cookie<'c>(
        &self,
        ctx: &Ctx<'_>,
        name: String,
        value: String,
        max_age: Option<i64>,
    ) -> Cookie<'c> {
        let secure = self
            .cookie_secure
            .unwrap_or_else(|| self.redirect_uri(ctx).starts_with("https://"));
        let mut c = Cookie::build(name, value)
            .path(self.cookie_path.clone())
            .http_only(true)
            .secure(secure || self.same_site == SameSite::None)
            .same_site(self.same_site)
            .finish();
        if let Some(d) = &self.cookie_domain {
            c.set_domain(d.clone());
        }
        if let Some(age) = max_age {
            c.set_max_age(actix_web::cookie::time::Duration::seconds(age));
        }
        c
    }

    fn login_cookie_name(&self) -> String {
        format!("{}_login", self.cookie_name)
    }

    /// Step 4, `auth`: remember the request, send the browser to sign in.
    async fn start_login(
        &self,
        ctx: &Ctx<'_>,
        provider: &Provider,
        redirect_uri: &str,
    ) -> HttpResponse {
        let discovery = match trusted_discovery(provider, ctx.client).await {
            Ok(d) => d,
            Err(e) => return unavailable(&e),
        };
        let Some(endpoint) = discovery.authorization_endpoint.as_deref() else {
            return unavailable(&AuthError::ProviderUnavailable(
                "no authorization endpoint".into(),
            ));
        };
        let browser = ctx
            .req
            .cookie(&self.login_cookie_name())
            .map(str::to_owned)
            .filter(|v| v.len() >= 32)
            .unwrap_or_else(random_token);
        let state = random_token();
        let nonce = random_token();
        let verifier = self.use_pkce.then(random_token);
        // Only a path of this origin: never a URL taken from the request.
        let mut original_url = match ctx.req.query() {
            Some(q) => format!("{}?{q}", ctx.path),
            None => ctx.path.to_owned(),
        };
        if original_url.len() > MAX_ORIGINAL_URL {
            original_url = if ctx.path.len() <= MAX_ORIGINAL_URL {
                ctx.path.to_owned()
            } else {
                "/".to_owned()
            };
        }
        let login = PendingLogin {
            owner: self.owner.clone(),
            nonce: nonce.clone(),
            pkce_verifier: verifier.clone(),
            original_url,
            redirect_uri: redirect_uri.to_owned(),
            browser: hash_hex(&browser),
            created_at: now_secs(),
        };
        if let Err(e) = self.sessions.start_login(&state, &login).await {
            tracing::error!(error = %e, "cannot store the sign-in state");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "cannot start sign-in",
            );
        }
        let url = code_flow::authorization_url(
            endpoint,
            &self.creds.client_id,
            redirect_uri,
            &self.scope,
            &state,
            &nonce,
            verifier.as_deref(),
            &self.authorization_params,
        );
        tracing::info!(route.id = %ctx.route_id, authz.result = "sign-in", "redirecting to the identity provider");
        HttpResponse::Found()
            .insert_header((header::LOCATION, url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .cookie(self.cookie(
                ctx,
                self.login_cookie_name(),
                browser,
                Some(crate::oidc::session::LOGIN_TTL as i64),
            ))
            .finish()
    }

    /// Step 1: the provider sent the browser back.
    async fn callback(
        &self,
        ctx: &Ctx<'_>,
        provider: &Provider,
        common: &Common<'_>,
        redirect_uri: &str,
    ) -> HttpResponse {
        let q = ctx.req.query_string();
        let param = |k: &str| crate::form::query_param(q, k);
        let fail = |status: StatusCode, reason: &str| {
            tracing::info!(route.id = %ctx.route_id, authz.result = "denied", reason = %reason, "sign-in callback refused");
            page(status, &format!("Sign-in failed: {reason}."))
        };

        // The state must be one this browser was given, and unused.
        let Some(state) = param("state").filter(|s| !s.is_empty()) else {
            return fail(StatusCode::BAD_REQUEST, "the callback has no state");
        };
        // A state of another browser or route is refused and left alone:
        // whoever learnt it cannot spoil the real sign-in (attack kind K13).
        let browser = ctx.req.cookie(&self.login_cookie_name()).map(hash_hex);
        let login = match self
            .sessions
            .take_login(&state, &self.owner, browser.as_deref())
        {
            TakeLogin::Taken(login) => *login,
            TakeLogin::Unknown => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "unknown, expired or already used state",
                )
            }
            TakeLogin::NotThisBrowser => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "the sign-in was started by another browser",
                )
            }
        };
        if login.redirect_uri != redirect_uri {
            return fail(StatusCode::BAD_REQUEST, "redirect_uri mismatch");
        }
        let discovery = match trusted_discovery(provider, ctx.client).await {
            Ok(d) => d,
            Err(e) => return unavailable(&e),
        };
        if let Some(iss) = param("iss") {
            if iss != discovery.issuer {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "the authorization response names another issuer",
                );
            }
        }
        if let Some(err) = param("error") {
            let err: String = err
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return fail(
                StatusCode::UNAUTHORIZED,
                &format!("the identity provider answered {err}"),
            );
        }
        let Some(code) = param("code").filter(|c| !c.is_empty()) else {
            return fail(StatusCode::BAD_REQUEST, "the callback has no code");
        };

        // Redeem the code, check the ID token, fetch userinfo.
        let tokens = match code_flow::exchange_code(
            ctx.client,
            &discovery,
            &self.creds,
            &code,
            &login.redirect_uri,
            login.pkce_verifier.as_deref(),
            common.timeout,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => return fail(StatusCode::UNAUTHORIZED, &e.to_string()),
        };
        let Some(id_token) = tokens.id_token.clone() else {
            return fail(
                StatusCode::UNAUTHORIZED,
                "the token endpoint sent no id token",
            );
        };
        let rules = IdTokenRules {
            issuer: &discovery.issuer,
            client_id: &self.creds.client_id,
            nonce: Some(&login.nonce),
            sub: None,
            iat_slack: common.iat_slack,
            leeway: common.leeway,
            expected_alg: common.expected_alg,
        };
        let claims = match code_flow::verify_id_token(ctx.client, provider, &id_token, &rules).await
        {
            Ok(c) => c,
            Err(e) => return fail(StatusCode::UNAUTHORIZED, &e.to_string()),
        };
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let userinfo = match &discovery.userinfo_endpoint {
            Some(ep) => match code_flow::userinfo(
                ctx.client,
                ep,
                &tokens.access_token,
                &sub,
                common.timeout,
            )
            .await
            {
                Ok(info) => Some(info),
                Err(e) => return fail(StatusCode::UNAUTHORIZED, &e.to_string()),
            },
            None => None,
        };

        // Create the session and send the browser where it was going.
        let now = now_secs();
        let session = Session {
            owner: self.owner.clone(),
            access_expires_at: Some(
                now + tokens
                    .expires_in
                    .or(self.access_token_expires_in)
                    .unwrap_or(DEFAULT_ACCESS_LIFETIME),
            ),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            id_token,
            id_claims: claims,
            userinfo,
            created_at: now,
            last_seen: now,
            rolled_at: now,
            limits: self.limits,
        };
        let id = match self.sessions.create(&session).await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot store the session");
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "cannot store the session",
                );
            }
        };
        tracing::info!(route.id = %ctx.route_id, session.hash = %short_hash(&id), authz.result = "signed-in", "browser signed in");
        HttpResponse::Found()
            .insert_header((header::LOCATION, login.original_url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .cookie(self.cookie(ctx, self.cookie_name.clone(), id, self.cookie_max_age()))
            // The login cookie stays until it expires: other tabs of this
            // browser may have sign-ins under way that need it.
            .finish()
    }

    fn cookie_max_age(&self) -> Option<i64> {
        (self.limits.absolute > 0).then_some(self.limits.absolute as i64)
    }

    /// Step 3: a live session, refreshed or rotated as needed.
    async fn live_session(
        &self,
        ctx: &mut Ctx<'_>,
        id: &str,
        provider: &Provider,
        common: &Common<'_>,
    ) -> Option<Arc<Session>> {
        let (mut session, key) = match self.sessions.lookup(id) {
            Lookup::Live(s, key) if s.owner == self.owner => (*s, key),
            _ => return None,
        };
        let now = now_secs();

        // An expired access token is refreshed once for all concurrent requests.
        if session
            .access_expires_at
            .is_some_and(|at| at <= now + common.leeway)
        {
            if !self.renew || session.refresh_token.is_none() {
                self.sessions.destroy(&key).await;
                return None;
            }
            let share = format!("{}:{}", key.as_str(), hash_hex(&session.access_token));
            let refreshed = self
                .refreshes
                .try_get_with(
                    share,
                    self.refresh(ctx.client, provider, common, &key, session.clone()),
                )
                .await;
            match refreshed {
                Ok(s) => session = (*s).clone(),
                Err(e) => {
                    tracing::info!(route.id = %ctx.route_id, session.hash = %short_hash(id), error = %e, "refresh failed; session ended");
                    self.sessions.destroy(&key).await;
                    return None;
                }
            }
        }

        // Rolling timeout: a new id now and then; idle time bookkeeping.
        if self.limits.rolling > 0 && now > session.rolled_at + self.limits.rolling {
            session.rolled_at = now;
            session.last_seen = now;
            if let Ok(new_id) = self.sessions.rotate(&key, &session) {
                let c = self.cookie(ctx, self.cookie_name.clone(), new_id, self.cookie_max_age());
                if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
                    ctx.response_headers.append(header::SET_COOKIE, v);
                }
            }
        } else if now >= session.last_seen + TOUCH_EVERY {
            session.last_seen = now;
            let _ = self.sessions.update(&key, &session);
        }
        Some(Arc::new(session))
    }

    async fn refresh(
        &self,
        client: &awc::Client,
        provider: &Provider,
        common: &Common<'_>,
        key: &SessionKey,
        mut session: Session,
    ) -> Result<Arc<Session>, AuthError> {
        let discovery = trusted_discovery(provider, client).await?;
        let refresh_token = session.refresh_token.clone().unwrap_or_default();
        let tokens = code_flow::refresh(
            client,
            &discovery,
            &self.creds,
            &refresh_token,
            common.timeout,
        )
        .await?;
        if let Some(id_token) = &tokens.id_token {
            let sub = session
                .id_claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let rules = IdTokenRules {
                issuer: &discovery.issuer,
                client_id: &self.creds.client_id,
                nonce: None,
                sub: Some(&sub),
                iat_slack: common.iat_slack,
                leeway: common.leeway,
                expected_alg: common.expected_alg,
            };
            session.id_claims =
                code_flow::verify_id_token(client, provider, id_token, &rules).await?;
            session.id_token = id_token.clone();
        }
        let now = now_secs();
        session.access_token = tokens.access_token;
        session.access_expires_at = Some(
            now + tokens
                .expires_in
                .or(self.access_token_expires_in)
                .unwrap_or(DEFAULT_ACCESS_LIFETIME),
        );
        if tokens.refresh_token.is_some() {
            session.refresh_token = tokens.refresh_token;
        }
        session.last_seen = now;
        let still_there = self
            .sessions
            .update(key, &session)
            .map_err(AuthError::ProviderUnavailable)?;
        if !still_there {
            return Err(AuthError::InvalidToken(
                "the session ended during the refresh".into(),
            ));
        }
        Ok(Arc::new(session))
    }

    fn set_identity(&self, h: &mut HeaderMap, s: &Session, common: &Common<'_>) {
        let b64 = |v: &dyn erased::Json| base64::engine::general_purpose::STANDARD.encode(v.json());
        if common.set_access_token_header {
            if common.access_token_in_authorization_header {
                set(
                    h,
                    header::AUTHORIZATION,
                    &format!("Bearer {}", s.access_token),
                );
            } else {
                set(
                    h,
                    HeaderName::from_static("x-access-token"),
                    &s.access_token,
                );
            }
        }
        if self.set_id_token_header {
            set(h, HeaderName::from_static("x-id-token"), &b64(&s.id_claims));
        }
        if common.set_userinfo_header {
            if let Some(info) = &s.userinfo {
                set(h, HeaderName::from_static("x-userinfo"), &b64(info));
            }
        }
        if self.set_refresh_token_header {
            if let Some(r) = &s.refresh_token {
                set(h, HeaderName::from_static("x-refresh-token"), r);
            }
        }
        if self.set_raw_id_token_header {
            set(h, HeaderName::from_static("x-raw-id-token"), &s.id_token);
        }
    }

    /// The provider ends sessions directly (Back-Channel Logout 1.0): every
    /// session of this client with the token's `sid`, or, without one,
    /// every session of its `sub`.
    async fn backchannel_logout(
        &self,
        ctx: &mut Ctx<'_>,
        provider: &Provider,
        common: &Common<'_>,
    ) -> HttpResponse {
        let refuse = |reason: &str| {
            tracing::info!(route.id = %ctx.route_id, authz.result = "denied", reason = %reason, "back-channel logout refused");
            HttpResponse::BadRequest()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(serde_json::json!({"error": "invalid_request", "error_description": reason}))
        };

        // The form body: small, and only `logout_token` matters.
        let mut body = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(ctx.payload).await {
            let Ok(chunk) = chunk else {
                return refuse("unreadable body");
            };
            if body.len() + chunk.len() > MAX_LOGOUT_BODY {
                return refuse("body too large");
            }
            body.extend_from_slice(&chunk);
        }
        let form = String::from_utf8_lossy(&body);
        let Some(token) = crate::form::query_param(&form, "logout_token") else {
            return refuse("no logout_token");
        };

        let discovery = match trusted_discovery(provider, ctx.client).await {
            Ok(d) => d,
            Err(e) => return unavailable(&e),
        };
        let rules = IdTokenRules {
            issuer: &discovery.issuer,
            client_id: &self.creds.client_id,
            nonce: None,
            sub: None,
            iat_slack: common.iat_slack,
            leeway: common.leeway,
            expected_alg: common.expected_alg,
        };
        let claims =
            match code_flow::verify_logout_token(ctx.client, provider, &token, &rules).await {
                Ok(c) => c,
                Err(e) => return refuse(&e.to_string()),
            };
        let claim = |c: &str| claims.get(c).and_then(Value::as_str).map(str::to_owned);
        let (sid, sub) = (claim("sid"), claim("sub"));
        let ended = self
            .sessions
            .end_where(&self.owner, |s| {
                let own = |c: &str| s.id_claims.get(c).and_then(Value::as_str);
                match (&sid, &sub) {
                    (Some(sid), _) => own("sid") == Some(sid.as_str()),
                    (None, Some(sub)) => own("sub") == Some(sub.as_str()),
                    (None, None) => false,
                }
            })
            .await;
        tracing::info!(route.id = %ctx.route_id, sessions.ended = ended, authz.result = "signed-out", "back-channel logout");
        HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish()
    }

    /// Step 2: end the session here, then at the provider.
    async fn logout(
        &self,
        ctx: &Ctx<'_>,
        provider: &Provider,
        common: &Common<'_>,
    ) -> HttpResponse {
        let session = match ctx.req.cookie(&self.cookie_name).map(str::to_owned) {
            Some(id) => {
                let found = match self.sessions.lookup(&id) {
                    Lookup::Live(s, key) => {
                        self.sessions.destroy(&key).await;
                        (s.owner == self.owner).then_some(*s)
                    }
                    _ => None,
                };
                self.sessions.destroy_id(&id).await;
                found
            }
            None => None,
        };
        let discovery = trusted_discovery(provider, ctx.client).await.ok();
        if let (Some(s), Some(d)) = (&session, &discovery) {
            if self.revoke_on_logout {
                if let Some(ep) = &d.revocation_endpoint {
                    code_flow::revoke(
                        ctx.client,
                        ep,
                        &self.creds,
                        &s.access_token,
                        "access_token",
                        common.timeout,
                    )
                    .await;
                    if let Some(r) = &s.refresh_token {
                        code_flow::revoke(
                            ctx.client,
                            ep,
                            &self.creds,
                            r,
                            "refresh_token",
                            common.timeout,
                        )
                        .await;
                    }
                }
            }
        }
        tracing::info!(route.id = %ctx.route_id, authz.result = "signed-out", "browser signed out");
        let clear = self.cookie(ctx, self.cookie_name.clone(), String::new(), Some(0));
        let target = match (
            &session,
            discovery
                .as_ref()
                .and_then(|d| d.end_session_endpoint.as_deref()),
        ) {
            (Some(s), Some(ep)) => Some(code_flow::end_session_url(
                ep,
                &s.id_token,
                &self.creds.client_id,
                self.post_logout_redirect_uri.as_deref(),
                &random_token(),
            )),
            _ => self.post_logout_redirect_uri.clone(),
        };
        match target {
            Some(url) => HttpResponse::Found()
                .insert_header((header::LOCATION, url))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .cookie(clear)
                .finish(),
            None => {
                let mut resp = page(StatusCode::OK, "You are signed out.");
                let _ = resp.add_cookie(&clear);
                resp
            }
        }
    }
}

/// Small helper so both claim maps and userinfo values encode the same way.
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// `scheme://host` of the request: the scheme of this connection and the
/// request target's authority, else the `Host` header, as APISIX's
/// `$scheme://$host`. Forwarding headers (`Forwarded`, `X-Forwarded-Host`,
/// `X-Forwarded-Proto`) are the client's to choose and never decide where
/// the provider sends codes (attack kind K14); behind a TLS-terminating
/// proxy, configure an absolute `redirect_uri`.
fn origin(ctx: &Ctx<'_>) -> String {
    // The proxy listener speaks plain HTTP.
    let scheme = "http";
    // An absolute-form target's authority wins over `Host`, as in routing.
    let host = ctx
        .req
        .authority()
        .map(str::to_owned)
        .or_else(|| {
            ctx.req
                .header("host")
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{scheme}://{host}")
}

/// The provider's discovery document, when its issuer is the one its URL
/// names (OpenID Connect Discovery §4.3). Otherwise the sign-in flow stops
/// before sending anyone to the provider: ID tokens are checked against
/// that issuer, so a document that names another one cannot be trusted.
async fn trusted_discovery(
    provider: &Provider,
    client: &awc::Client,
) -> Result<Arc<crate::oidc::provider::Discovery>, AuthError> {
    let d = provider.discovery(client).await?;
    if d.issuer_matches_url {
        Ok(d)
    } else {
        Err(AuthError::ProviderUnavailable(format!(
            "the discovery document names the issuer {:?}, not its own URL's",
            d.issuer
        )))
    }
}

/// The path part of an absolute URL or a path.
fn uri_path(uri: &str) -> &str {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .map(|r| r.find('/').map_or("/", |i| &r[i..]))
        .unwrap_or(uri);
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// Whether the request is a top-level navigation rather than an API call.
pub fn is_navigation(req: &crate::proxy::Request) -> bool {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    if let Some(mode) = h("sec-fetch-mode") {
        return mode == "navigate";
    }
    if h("x-requested-with").is_some_and(|v| v == "xmlhttprequest") {
        return false;
    }
    h("accept").is_some_and(|a| a.contains("text/html"))
}

fn json_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"error": error, "error_description": description}))
}

fn unavailable(e: &AuthError) -> HttpResponse {
    tracing::warn!(error = %e, "identity provider unreachable: browser sign-in unavailable");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the identity provider could not be reached",
    )
}

/// A minimal HTML page for the browser.
fn page(status: StatusCode, text: &str) -> HttpResponse {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(format!(
            "<!doctype html><title>Portcullis</title><p>{escaped}</p>\n"
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_redirect_uris() {
        assert_eq!(
            uri_path("http://127.0.0.1:9080/app/callback?x=1"),
            "/app/callback"
        );
        assert_eq!(uri_path("https://h"), "/");
        assert_eq!(uri_path("/cb"), "/cb");
    }
}
