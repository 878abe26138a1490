//! The real test OpenID provider (`tests/idp/provider.mjs`, npm
//! `oidc-provider`) as a child process.
//!
//! `node` is spawned directly (no shell, no npm), so the child's pid is
//! node's own and Drop kills exactly that process. The provider prints one
//! line, `READY <issuer>`, on stdout; both streams are drained for its whole
//! life so it never blocks on a full pipe.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// How long node gets to print its READY line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running test provider. Dropping it kills the node process.
pub struct Idp {
    child: Child,
    issuer: String,
    agent: ureq::Agent,
    /// Stderr so far, for failure messages.
    stderr: Arc<Mutex<String>>,
    /// Which client each issued token belongs to (for `revoke`).
    owners: Mutex<HashMap<String, (String, String)>>,
    /// Holds the `IDP_CONFIG` file while the provider runs.
    _config: Option<tempfile::NamedTempFile>,
}

impl Idp {
    /// Starts the provider with its default configuration.
    pub fn start() -> Idp {
        Idp::spawn(None)
    }

    /// Starts the provider with `config_json` (see `tests/idp/README.md`)
    /// as its `IDP_CONFIG` file.
    pub fn start_with(config_json: &str) -> Idp {
        Idp::spawn(Some(config_json))
    }

    fn spawn(config_json: Option<&str>) -> Idp {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        if !root.join("tests/idp/node_modules/oidc-provider").is_dir() {
            panic!(
                "tests/idp/node_modules is missing: run `npm ci --prefix tests/idp` \
                 (in {}) before the IdP tests",
                root.display()
            );
        }
        let config = config_json.map(|json| {
            let mut f = tempfile::Builder::new()
                .prefix("portcullis-idp-")
                .suffix(".json")
                .tempfile()
                .expect("create IDP_CONFIG file");
            std::io::Write::write_all(&mut f, json.as_bytes()).expect("write IDP_CONFIG file");
            f
        });

        let mut cmd = Command::new("node");
        cmd.current_dir(&root)
            .args(["tests/idp/provider.mjs", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &config {
            Some(f) => cmd.env("IDP_CONFIG", f.path()),
            None => cmd.env_remove("IDP_CONFIG"),
        };
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `node tests/idp/provider.mjs`: {e}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::Builder::new()
                .name("idp-stderr".into())
                .spawn(move || {
                    let mut reader = BufReader::new(err);
                    let mut line = String::new();
                    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                        sink.lock().unwrap().push_str(&line);
                        line.clear();
                    }
                })
                .expect("spawn idp stderr reader");
        }
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("idp stdout is piped");
        thread::Builder::new()
            .name("idp-stdout".into())
            .spawn(move || {
                let mut reader = BufReader::new(out);
                let mut first = String::new();
                if matches!(reader.read_line(&mut first), Ok(n) if n > 0) {
                    let _ = tx.send(first);
                }
                // Keep draining whatever else comes.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            })
            .expect("spawn idp stdout reader");

        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().ok();
                thread::sleep(Duration::from_millis(50));
                panic!(
                    "test IdP did not print READY ({e}); exit: {status:?}\n--- stderr ---\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let issuer = match line.trim().strip_prefix("READY ") {
            Some(i) if i.starts_with("http://127.0.0.1:") => i.to_string(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("unexpected first line from the test IdP: {line:?}");
            }
        };
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(Duration::from_secs(10))
            .build();
        Idp {
            child,
            issuer,
            agent,
            stderr,
            owners: Mutex::new(HashMap::new()),
            _config: config,
        }
    }

    /// The issuer, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// `<issuer><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// node's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the provider wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// A client-credentials access token for `client`: a JWT when
    /// `resource` names a JWT resource, otherwise opaque.
    pub fn client_credentials(
        &self,
        client: &str,
        secret: &str,
        resource: Option<&str>,
        scope: Option<&str>,
    ) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let (status, body) = self.post_form("/token", client, secret, &form);
        assert_eq!(status, 200, "token request for {client} failed: {body}");
        let v: Value = serde_json::from_str(&body).expect("token reply is JSON");
        let token = v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_string();
        self.owners
            .lock()
            .unwrap()
            .insert(token.clone(), (client.to_string(), secret.to_string()));
        token
    }

    /// Revokes a token obtained through [`Idp::client_credentials`], as the
    /// client it was issued to.
    pub fn revoke(&self, token: &str) {
        let (client, secret) = self
            .owners
            .lock()
            .unwrap()
            .get(token)
            .cloned()
            .expect("revoke: token was not issued through this Idp");
        let (status, body) = self.post_form(
            "/token/revocation",
            &client,
            &secret,
            &[("token", token), ("token_type_hint", "access_token")],
        );
        assert_eq!(status, 200, "revocation failed: {body}");
    }

    /// Introspects `token` as `client` (for checking the provider itself).
    pub fn introspect(&self, client: &str, secret: &str, token: &str) -> Value {
        let (status, body) =
            self.post_form("/token/introspection", client, secret, &[("token", token)]);
        assert_eq!(status, 200, "introspection failed: {body}");
        serde_json::from_str(&body).expect("introspection reply is JSON")
    }

    /// POSTs `form` to `path` as `client` (HTTP Basic) and returns the
    /// status and body whatever the status: for token requests the test
    /// makes itself (e.g. redeeming a code without its PKCE verifier) and
    /// for revoking tokens this `Idp` did not issue (e.g. a refresh token
    /// the gateway holds).
    pub fn post_as(
        &self,
        path: &str,
        client: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> (u16, String) {
        self.post_form(path, client, secret, form)
    }

    /// Request counts per path since start or the last reset.
    pub fn stats(&self) -> Value {
        let resp = self
            .agent
            .get(&self.url("/__stats"))
            .call()
            .unwrap_or_else(|e| panic!("GET /__stats: {e}"));
        resp.into_json().expect("/__stats is JSON")
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        let resp = self
            .agent
            .post(&self.url("/__stats/reset"))
            .call()
            .unwrap_or_else(|e| panic!("POST /__stats/reset: {e}"));
        assert_eq!(resp.status(), 204);
    }

    /// Requests to `path` since start or the last reset.
    pub fn hits(&self, path: &str) -> u64 {
        self.stats().get(path).and_then(Value::as_u64).unwrap_or(0)
    }

    /// POSTs a form with HTTP Basic client authentication; returns the
    /// status and body whatever the status.
    fn post_form(
        &self,
        path: &str,
        client: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> (u16, String) {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client}:{secret}"));
        let result = self
            .agent
            .post(&self.url(path))
            .set("Authorization", &format!("Basic {basic}"))
            .send_form(form);
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("POST {path}: {e}\n--- idp stderr ---\n{}", self.stderr()),
        };
        let status = resp.status();
        (status, resp.into_string().unwrap_or_default())
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("pid", &self.child.id())
            .field("issuer", &self.issuer)
            .finish()
    }
}
