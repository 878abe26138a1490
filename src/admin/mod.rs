//! The admin listener: the APISIX-shaped Admin API under `/apisix/admin`,
//! its OpenAPI document at `/openapi.json`, and Swagger UI at `/docs`.
//!
//! Every request is first checked against `allow_admin` using the socket
//! peer address only (forwarded headers are never consulted). Resource
//! requests then need the admin key in `X-API-KEY` or `?api_key=`.

pub mod auth;
pub mod openapi;
pub mod resources;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use ipnet::IpNet;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::model::Kind;
use crate::store::Store;
use auth::AdminKey;

/// How long a write waits for the proxy to apply it before answering
/// anyway; the reloader normally takes well under a millisecond.
const APPLY_WAIT: Duration = Duration::from_secs(2);
const API_VERSION: &str = "v3";

/// What every admin handler shares.
pub struct AdminState {
    pub store: Arc<Store>,
    pub key: AdminKey,
    /// Networks whose peers may use the admin listener at all.
    pub allow: Vec<IpNet>,
    /// The store revision the proxy is serving, published by the reloader.
    pub applied: watch::Receiver<u64>,
}

impl AdminState {
    /// Waits until the proxy serves `revision`, so the next proxied request
    /// after an acknowledged write sees it.
    pub async fn wait_applied(&self, revision: Option<u64>) {
        let Some(revision) = revision else { return };
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|r| *r >= revision)).await;
        if !matches!(reached, Ok(Ok(_))) {
            tracing::warn!(
                store.revision = revision,
                "write not yet applied to the proxy"
            );
        }
    }
}

/// Everything the Admin API can answer besides success.
#[derive(Debug)]
pub enum AdminError {
    BadRequest(String),
    /// 400 with a plain-text body, as APISIX answers bad `page_size`.
    PlainBadRequest(&'static str),
    NotFound,
    UnsupportedResource(String),
    MethodNotAllowed(String),
    TooLarge(usize),
    Store(String),
}

impl AdminError {
    pub fn bad(msg: impl Into<String>) -> AdminError {
        AdminError::BadRequest(msg.into())
    }

    fn response(&self) -> HttpResponse {
        let (status, body) = match self {
            AdminError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error_msg": m})),
            AdminError::PlainBadRequest(m) => {
                return with_version(
                    HttpResponse::BadRequest()
                        .content_type("application/json")
                        .body(*m),
                )
            }
            AdminError::NotFound => (StatusCode::NOT_FOUND, json!({"message": "Key not found"})),
            AdminError::UnsupportedResource(r) => (
                StatusCode::NOT_FOUND,
                json!({"error_msg": format!("Unsupported resource type: {r}")}),
            ),
            AdminError::MethodNotAllowed(m) => {
                (StatusCode::METHOD_NOT_ALLOWED, json!({"error_msg": m}))
            }
            AdminError::TooLarge(n) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error_msg": format!(
                    "invalid request body: request size {n} is greater than the maximum size {} allowed",
                    resources::MAX_BODY
                )}),
            ),
            AdminError::Store(m) => (StatusCode::SERVICE_UNAVAILABLE, json!({"error_msg": m})),
        };
        json_response(status, &body)
    }
}

fn with_version(mut resp: HttpResponse) -> HttpResponse {
    resp.headers_mut().insert(
        header::HeaderName::from_static("x-api-version"),
        HeaderValue::from_static(API_VERSION),
    );
    resp
}

/// A JSON body with a trailing newline, as APISIX writes them.
pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut text = body.to_string();
    text.push('\n');
    with_version(
        HttpResponse::build(status)
            .content_type("application/json")
            .body(text),
    )
}

/// Registers the admin routes on an App.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi::serve_spec))
        .route("/docs", web::get().to(docs_redirect))
        .service(
            utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
                .url("/openapi.json", openapi::document()),
        )
        .default_service(web::to(admin_api));
}

async fn docs_redirect() -> HttpResponse {
    HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}

/// The allow-list, checked on the socket peer for every admin request.
pub async fn allow_list(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let allowed = req
        .app_data::<web::Data<AdminState>>()
        .zip(req.peer_addr())
        .is_some_and(|(state, peer)| state.allow.iter().any(|net| net.contains(&peer.ip())));
    if !allowed {
        tracing::warn!(
            client.ip = %req.peer_addr().map(|p| p.ip().to_string()).unwrap_or_default(),
            "admin request refused by allow_admin"
        );
        let resp = json_response(
            StatusCode::FORBIDDEN,
            &json!({"error_msg": "access to the admin API from this address is not allowed"}),
        );
        return Ok(req.into_response(resp));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Everything under `/apisix/admin`, and 404 for anything else.
async fn admin_api(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AdminState>,
) -> HttpResponse {
    let path = req.path();
    let Some(rest) = path.strip_prefix("/apisix/admin") else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error_msg": "404 Not Found"}),
        );
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error_msg": "404 Not Found"}),
        );
    }

    // Authenticate before anything else is looked at.
    if let Err(description) = authenticate(&req, &state).await {
        return HttpResponse::Unauthorized()
            .content_type("application/json")
            .body(format!(
                "{}\n",
                json!({"error_msg": "failed to check token", "description": description})
            ));
    }
    if rest.trim_matches('/').is_empty() {
        return match *req.method() {
            Method::HEAD | Method::GET => json_response(StatusCode::OK, &json!({})),
            _ => AdminError::UnsupportedResource(String::new()).response(),
        };
    }

    // Path: /<resource>[/<id>[/<sub path>]].
    let rest = &rest[1..];
    let (resource, after) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(kind) = Kind::from_plural(resource) else {
        return AdminError::UnsupportedResource(resource.to_owned()).response();
    };
    let (id, sub) = match after.split_once('/') {
        Some((id, sub)) => (id, Some(sub)),
        None => (after, None),
    };
    let id = (!id.is_empty()).then_some(id);
    if sub.is_some_and(|s| !s.is_empty()) && req.method() != Method::PATCH {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error_msg": "404 Not Found"}),
        );
    }

    let body = match read_body(&req, payload).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let request = resources::Request {
        method: req.method(),
        kind,
        id,
        sub,
        query: req.query_string(),
        body: &body,
    };
    match resources::handle(&state, request).await {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

async fn authenticate(req: &HttpRequest, state: &AdminState) -> Result<(), &'static str> {
    // APISIX's order: the `api_key` query argument, then the header. An
    // empty value counts as absent.
    let presented = crate::form::query_param(req.query_string(), "api_key")
        .filter(|k| !k.is_empty())
        .or_else(|| {
            req.headers()
                .get("x-api-key")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .filter(|k| !k.is_empty())
        });
    let Some(presented) = presented else {
        return Err("missing apikey");
    };
    if state.key.verify(&presented).await {
        Ok(())
    } else {
        tracing::warn!(
            client.ip = %req.peer_addr().map(|p| p.ip().to_string()).unwrap_or_default(),
            "admin request with a wrong key"
        );
        Err("wrong apikey")
    }
}

/// Reads the whole body, refusing more than [`resources::MAX_BODY`].
async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, AdminError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > resources::MAX_BODY) {
        return Err(AdminError::TooLarge(n));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| AdminError::bad(format!("invalid request body: {e}")))?;
        if body.len() + chunk.len() > resources::MAX_BODY {
            return Err(AdminError::TooLarge(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
