//! A test browser: a cookie jar (per host, as browsers keep them: ports
//! are not isolated) and no automatic redirects, so sign-in tests can
//! assert every hop; plus small helpers for URLs, cookies and pages.

// Not every test uses every helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::fault_op::{self, parse_form};
use super::gateway::http_request;
use super::Resp;

/// What a browser sends on a top-level navigation.
pub const NAV: &[(&str, &str)] = &[(
    "Accept",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
)];

// ---------------------------------------------------------------------------
// a test browser: a cookie jar (per host, like a browser: ports are not
// isolated) and no automatic redirects

#[derive(Debug, Clone)]
pub struct JarCookie {
    pub name: String,
    pub value: String,
    pub path: String,
}

pub struct Browser {
    pub agent: ureq::Agent,
    pub jar: Vec<JarCookie>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            agent: agent(),
            jar: Vec::new(),
        }
    }

    pub fn cookie_header(&self, path: &str) -> Option<String> {
        let v: Vec<String> = self
            .jar
            .iter()
            .filter(|c| path_matches(path, &c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!v.is_empty()).then(|| v.join("; "))
    }

    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let path = url_path(url);
        let cookie = self.cookie_header(&path);
        let mut h = headers.to_vec();
        if let Some(c) = &cookie {
            h.push(("Cookie", c));
        }
        let resp = http_request(&self.agent, method, url, &h, body)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        for line in resp.header_all("set-cookie") {
            self.store(line, &path);
        }
        resp
    }

    pub fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", url, headers, None)
    }

    /// A top-level navigation.
    pub fn nav(&mut self, url: &str) -> Resp {
        self.get(url, NAV)
    }

    pub fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Resp {
        let body = form
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    fault_op::percent_encode(k),
                    fault_op::percent_encode(v)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let mut h = NAV.to_vec();
        h.push(("Content-Type", "application/x-www-form-urlencoded"));
        self.request("POST", url, &h, Some(body.as_bytes()))
    }

    /// Applies one `Set-Cookie` line.
    pub fn store(&mut self, line: &str, req_path: &str) {
        let mut parts = line.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let mut path = match req_path.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => req_path[..i].to_string(),
        };
        let mut delete = false;
        for attr in parts {
            let (k, v) = attr.trim().split_once('=').unwrap_or((attr.trim(), ""));
            match k.to_ascii_lowercase().as_str() {
                "path" => path = v.to_string(),
                "max-age" => delete |= v.parse::<i64>().is_ok_and(|n| n <= 0),
                "expires" => delete |= v.contains("1970"),
                _ => {}
            }
        }
        self.jar.retain(|c| !(c.name == name && c.path == path));
        if !delete {
            self.jar.push(JarCookie {
                name: name.to_string(),
                value: value.to_string(),
                path,
            });
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.clone())
    }

    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.jar.retain(|c| c.name != name);
        self.jar.push(JarCookie {
            name: name.into(),
            value: value.into(),
            path: "/".into(),
        });
    }

    pub fn gateway_cookies(&self) -> Vec<&JarCookie> {
        self.jar
            .iter()
            .filter(|c| c.name.starts_with("portcullis"))
            .collect()
    }
}

/// No redirects, no connection reuse: every request is a fresh connection,
/// so consecutive requests may land on any worker.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
}

pub fn path_matches(req: &str, cookie: &str) -> bool {
    req == cookie
        || (req.starts_with(cookie)
            && (cookie.ends_with('/') || req[cookie.len()..].starts_with('/')))
}

/// The path of an absolute URL (no query).
pub fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/").to_string()
}

pub fn query_of(url: &str) -> HashMap<String, String> {
    url.split_once('?')
        .map(|(_, q)| parse_form(q))
        .unwrap_or_default()
}

/// `loc` made absolute against `origin` (`http://host:port`).
pub fn absolute(origin: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.to_string()
    } else {
        format!("{origin}{loc}")
    }
}

/// The `Set-Cookie` line that sets `name`, if any.
pub fn set_cookie<'a>(headers: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    headers
        .into_iter()
        .find(|l| l.split('=').next().map(str::trim) == Some(name))
}

pub fn cookie_value(line: &str) -> &str {
    line.split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map_or("", |(_, v)| v)
}

pub fn has_attr(line: &str, attr: &str) -> bool {
    line.split(';')
        .skip(1)
        .any(|a| a.trim().eq_ignore_ascii_case(attr))
}

pub fn clears(line: &str) -> bool {
    line.split(';')
        .skip(1)
        .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"))
}

pub fn b64_json(v: &str) -> Value {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v)
        .unwrap_or_else(|e| panic!("not standard base64 ({e}): {v}"));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("not JSON ({e}): {v}"))
}

pub fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    serde_json::from_slice(&raw).expect("JWT payload is JSON")
}

/// The value of `<input type="hidden" name="{name}" value="…">`.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let v = rest.find("value=\"")? + "value=\"".len();
    let end = rest[v..].find('"')?;
    Some(rest[v..v + end].to_string())
}

pub fn form_action(html: &str) -> Option<String> {
    let at = html.find("action=\"")? + "action=\"".len();
    let end = html[at..].find('"')?;
    Some(html[at..at + end].to_string())
}
