//! The gateway as a client of the provider: how it authenticates at the
//! token, introspection and revocation endpoints (RFC 6749 §2.3.1).

use std::time::Duration;

use base64::Engine;

use super::AuthError;
use crate::form::form_urlencode;

/// Largest answer read from the provider.
const MAX_REPLY: usize = 256 * 1024;

/// Where the client credentials go: a Basic header or the form body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
}

/// How the gateway identifies itself at the token endpoint.
pub struct ClientCredentials {
    pub client_id: String,
    /// `None` = a public client (PKCE only).
    pub client_secret: Option<String>,
    pub auth: ClientAuth,
}

/// POSTs a form with client authentication; returns status and body.
pub async fn post_form(
    client: &awc::Client,
    endpoint: &str,
    creds: &ClientCredentials,
    mut form: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<(awc::http::StatusCode, bytes::Bytes), AuthError> {
    let mut req = client
        .post(endpoint)
        .insert_header(("accept", "application/json"))
        .timeout(timeout);
    match (&creds.client_secret, creds.auth) {
        (Some(secret), ClientAuth::Basic) => {
            let pair = format!(
                "{}:{}",
                form_urlencode(&creds.client_id),
                form_urlencode(secret)
            );
            let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
            req = req.insert_header(("authorization", format!("Basic {b64}")));
        }
        (Some(secret), ClientAuth::Post) => {
            form.push(("client_id", &creds.client_id));
            form.push(("client_secret", secret));
        }
        (None, _) => form.push(("client_id", &creds.client_id)),
    }
    let unreachable = |e: String| AuthError::ProviderUnavailable(format!("{endpoint}: {e}"));
    let mut resp = req
        .send_form(&form)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let body = tokio::time::timeout(timeout, resp.body().limit(MAX_REPLY))
        .await
        .map_err(|_| unreachable("timed out reading the answer".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok((resp.status(), body))
}
