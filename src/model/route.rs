//! Routes: which requests match, and where they go.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::check::{self, opt, Checked};
use super::upstream::Upstream;
use super::{Id, Timeout};

pub const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

/// A route (APISIX's route object). `vars`, `filter_func`, `script` and
/// `plugin_config_id` are not implemented and are refused at write time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Exact path, or a prefix when it ends in `*`. One of `uri`/`uris`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uris: Option<Vec<String>>,
    /// Allowed methods; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Host to match; `*.example.com` matches any subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Client address or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addrs: Option<Vec<String>>,
    /// Orders routes that share the same path; higher wins. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Plugin name → plugin configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::admin::openapi::Plugins>)]
    pub plugins: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<Id>,
    /// Overrides the upstream's timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_websocket: Option<bool>,
    /// 1 = enabled (default), 0 = excluded from matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// Most host × path pairs one route may ask the router to hold.
pub const MAX_HOST_PATH_PAIRS: usize = 4096;

const FIELDS: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "uri",
    "uris",
    "methods",
    "host",
    "hosts",
    "remote_addr",
    "remote_addrs",
    "priority",
    "plugins",
    "upstream",
    "upstream_id",
    "service_id",
    "timeout",
    "enable_websocket",
    "status",
    "create_time",
    "update_time",
];

impl Route {
    /// Validates `v` with APISIX's messages and builds the typed form.
    pub fn from_value(v: &Value) -> Checked<Route> {
        let obj = check::object(v)?;
        check::known_fields(obj, FIELDS)?;
        opt(obj, "id", check::id)?;
        opt(obj, "name", |v| check::string(v, 1, 256))?;
        opt(obj, "desc", |v| check::string(v, 0, 256))?;
        opt(obj, "labels", check::labels)?;
        match (obj.get("uri"), obj.get("uris")) {
            (Some(_), Some(_)) => {
                return Err("allOf 1 failed: value should match only one schema, but matches both schemas 1 and 2".into())
            }
            (None, None) => {
                return Err("allOf 1 failed: value should match only one schema, but matches none".into())
            }
            _ => {}
        }
        opt(obj, "uri", |v| {
            check::string(v, 1, 4096).and_then(path_pattern)
        })?;
        opt(obj, "uris", |v| {
            check::array(v, 1, true, |x| {
                check::string(x, 1, 4096).and_then(path_pattern)
            })
        })?;
        opt(obj, "methods", |v| {
            check::array(v, 0, true, |m| check::one_of(m, METHODS))
        })?;
        if obj.contains_key("host") && obj.contains_key("hosts") {
            return Err("only one of host or hosts is allowed".into());
        }
        opt(obj, "host", check::host)?;
        opt(obj, "hosts", |v| check::array(v, 1, true, check::host))?;
        if obj.contains_key("remote_addr") && obj.contains_key("remote_addrs") {
            return Err("only one of remote_addr or remote_addrs is allowed".into());
        }
        opt(obj, "remote_addr", remote_addr)?;
        opt(obj, "remote_addrs", |v| {
            check::array(v, 1, true, remote_addr)
        })?;
        // The router keeps one entry per host and path: bound the product.
        let count = |k: &str| obj.get(k).and_then(Value::as_array).map_or(1, Vec::len);
        if count("hosts") * count("uris") > MAX_HOST_PATH_PAIRS {
            return Err(format!(
                "too many hosts × uris combinations, at most {MAX_HOST_PATH_PAIRS} are allowed"
            ));
        }
        opt(obj, "priority", check::integer)?;
        opt(obj, "plugins", check::object)?;
        opt(obj, "upstream", Upstream::from_value)?;
        opt(obj, "upstream_id", check::id)?;
        opt(obj, "service_id", check::id)?;
        opt(obj, "timeout", check::timeout)?;
        opt(obj, "enable_websocket", check::boolean)?;
        opt(obj, "status", |v| match v.as_i64() {
            Some(0 | 1) => Ok(()),
            _ => Err("matches none of the enum values".into()),
        })?;
        opt(obj, "create_time", check::integer)?;
        opt(obj, "update_time", check::integer)?;
        if !["plugins", "upstream", "upstream_id", "service_id"]
            .iter()
            .any(|k| obj.contains_key(*k))
        {
            return Err("object matches none of the required: [\"plugins\"] or [\"upstream\"] or [\"upstream_id\"] or [\"service_id\"]".into());
        }
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }

    /// The path patterns, from `uri` or `uris`.
    pub fn paths(&self) -> Vec<&str> {
        match (&self.uri, &self.uris) {
            (Some(u), _) => vec![u.as_str()],
            (None, Some(us)) => us.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// The host patterns, from `host` or `hosts`.
    pub fn host_patterns(&self) -> Vec<&str> {
        match (&self.host, &self.hosts) {
            (Some(h), _) => vec![h.as_str()],
            (None, Some(hs)) => hs.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }

    pub fn remote_patterns(&self) -> Vec<&str> {
        match (&self.remote_addr, &self.remote_addrs) {
            (Some(a), _) => vec![a.as_str()],
            (None, Some(list)) => list.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// Route paths start with `/`; only a trailing `*` is special.
fn path_pattern(s: &str) -> Checked<&str> {
    if !s.starts_with('/') {
        return Err(format!("failed to match pattern \"^/\" with \"{s}\""));
    }
    if s[..s.len() - 1].contains('*') {
        return Err(format!("\"{s}\": `*` is only allowed at the end of a path"));
    }
    Ok(s)
}

fn remote_addr(v: &Value) -> Checked<&str> {
    let s = check::string(v, 1, 64)?;
    crate::config::parse_net(s)
        .map(|_| s)
        .ok_or_else(|| format!("\"{s}\" is not an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_the_apisix_quick_start_route() {
        let r = Route::from_value(&json!({
            "methods": ["GET"], "host": "example.com", "uri": "/anything/*",
            "upstream": {"type": "roundrobin", "nodes": {"httpbin.org:80": 1}}
        }))
        .unwrap();
        assert_eq!(r.paths(), vec!["/anything/*"]);
    }

    #[test]
    fn refuses_with_apisix_messages() {
        let up = json!({"nodes":{"127.0.0.1:1":1}});
        let cases = [
            (json!({"upstream": up}), "allOf 1 failed: value should match only one schema, but matches none"),
            (json!({"uri":"/a","uris":["/b"],"upstream": up}), "value should match only one schema"),
            (json!({"uri":"/a","name":"x".repeat(257),"upstream": up}), "property \"name\" validation failed: string too long, expected at most 256, got 257"),
            (json!({"uri":"/a","service_id":"invalid_id$"}), "property \"service_id\" validation failed: object matches none of the required"),
            (json!({"uri":"/a","methods":["GOT"],"upstream": up}), "property \"methods\" validation failed: failed to validate item 1: matches none of the enum values"),
            (json!({"uri":"/a","methods":["GET","GET"],"upstream": up}), "property \"methods\" validation failed"),
            (json!({"uri":"/a","host":"a","hosts":["b"],"upstream": up}), "only one of host or hosts is allowed"),
            (json!({"uri":"/a","foo":1,"upstream": up}), "additional properties forbidden, found foo"),
            (json!({"uri":"/a"}), "object matches none of the required"),
            (json!({"uri":"/a","upstream":{"nodes":{"x:1":1},"retries":-1}}), "property \"upstream\" validation failed: property \"retries\" validation failed: expected -1 to be at least 0"),
            (json!({"uri":"/a","remote_addrs":["nope"],"upstream": up}), "property \"remote_addrs\" validation failed"),
            (json!({"uri":"/a/*/b","upstream": up}), "only allowed at the end"),
        ];
        for (v, msg) in cases {
            let err = Route::from_value(&v).unwrap_err();
            assert!(err.contains(msg), "{v}: {err}");
        }
    }
}
