//! Upstreams: where matched requests go.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::check::{self, nested, opt, Checked};
use super::{Id, Timeout};

/// A set of backend nodes and how to reach them (APISIX's upstream object).
/// Health checks, `chash`/`ewma`/`least_conn` balancing and service
/// discovery are not implemented and are refused at write time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `{"host:port": weight}` or `[{"host","port","weight"}]`.
    pub nodes: Nodes,
    /// Load-balancing algorithm; only `roundrobin` (weighted) is supported.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Further nodes to try when connecting fails; default: nodes − 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds the retries may take in all; 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// `http` (default) or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `pass` (client's Host, default), `node` (the node's) or `rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_host: Option<String>,
    /// Host header sent when `pass_host` is `rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_pool: Option<KeepalivePool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Nodes {
    Map(BTreeMap<String, u32>),
    List(Vec<Node>),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepalivePool {
    pub size: Option<u32>,
    pub idle_timeout: Option<f64>,
    pub requests: Option<u32>,
}

/// One resolved node: where to connect and how much traffic it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// `host:port` with IPv6 in brackets, as it goes into a URL.
    pub authority: String,
    /// The host part, for `pass_host: node`.
    pub host: String,
    pub weight: u32,
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "nodes",
    "type",
    "retries",
    "retry_timeout",
    "timeout",
    "scheme",
    "pass_host",
    "upstream_host",
    "keepalive_pool",
    "create_time",
    "update_time",
];

impl Upstream {
    /// Validates `v` with APISIX's messages and builds the typed form.
    pub fn from_value(v: &Value) -> Checked<Upstream> {
        let obj = check::object(v)?;
        check::known_fields(obj, FIELDS)?;
        opt(obj, "id", check::id)?;
        opt(obj, "name", |v| check::string(v, 1, 256))?;
        opt(obj, "desc", |v| check::string(v, 0, 256))?;
        opt(obj, "labels", check::labels)?;
        match obj.get("nodes") {
            None => return Err("property \"nodes\" is required".into()),
            Some(n) => {
                nested("nodes", parse_nodes(n))?;
            }
        }
        opt(obj, "type", |v| {
            check::one_of(v, &["roundrobin", "chash", "ewma", "least_conn"]).and_then(|t| {
                if t == "roundrobin" {
                    Ok(())
                } else {
                    Err(format!(
                        "load balancer type {t} is not supported by Portcullis, use roundrobin"
                    ))
                }
            })
        })?;
        opt(obj, "retries", |v| check::integer_min(v, 0))?;
        opt(obj, "retry_timeout", |v| {
            let n = v.as_f64().ok_or_else(|| {
                format!("wrong type: expected number, got {}", check::type_name(v))
            })?;
            if n < 0.0 {
                return Err(format!("expected {v} to be at least 0"));
            }
            Ok(())
        })?;
        opt(obj, "timeout", check::timeout)?;
        opt(obj, "scheme", |v| {
            check::one_of(
                v,
                &[
                    "http", "https", "grpc", "grpcs", "tcp", "tls", "udp", "kafka",
                ],
            )
            .and_then(|s| match s {
                "http" | "https" => Ok(()),
                other => Err(format!("scheme {other} is not supported by Portcullis")),
            })
        })?;
        let pass_host = opt(obj, "pass_host", |v| {
            check::one_of(v, &["pass", "node", "rewrite"])
        })?;
        let upstream_host = opt(obj, "upstream_host", check::host)?;
        if pass_host == Some("rewrite") && upstream_host.is_none_or(str::is_empty) {
            return Err("`upstream_host` can't be empty when `pass_host` is `rewrite`".into());
        }
        opt(obj, "keepalive_pool", |v| {
            let o = check::object(v)?;
            check::known_fields(o, &["size", "idle_timeout", "requests"])?;
            opt(o, "size", |v| check::integer_min(v, 1))?;
            opt(o, "requests", |v| check::integer_min(v, 1))?;
            opt(o, "idle_timeout", |v| {
                v.as_f64()
                    .filter(|n| *n >= 0.0)
                    .map(|_| ())
                    .ok_or_else(|| format!("expected {v} to be at least 0"))
            })?;
            Ok(())
        })?;
        opt(obj, "create_time", check::integer)?;
        opt(obj, "update_time", check::integer)?;
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }

    /// The nodes with their weights, in a stable order.
    pub fn node_addrs(&self) -> Vec<NodeAddr> {
        match &self.nodes {
            Nodes::Map(m) => m
                .iter()
                .filter_map(|(k, w)| split_authority(k).ok().map(|(h, p)| (h, p, *w)))
                .map(|(host, port, weight)| node_addr(&host, port, weight))
                .collect(),
            Nodes::List(list) => list
                .iter()
                .map(|n| {
                    node_addr(
                        n.host.trim_start_matches('[').trim_end_matches(']'),
                        n.port,
                        n.weight,
                    )
                })
                .collect(),
        }
    }
}

fn node_addr(host: &str, port: Option<u16>, weight: u32) -> NodeAddr {
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let authority = match port {
        Some(p) => format!("{bracketed}:{p}"),
        None => bracketed,
    };
    NodeAddr {
        authority,
        host: host.to_owned(),
        weight,
    }
}

fn parse_nodes(v: &Value) -> Checked {
    match v {
        Value::Object(map) => {
            for (key, weight) in map {
                if weight.as_u64().is_none() {
                    return Err("object matches none of the required".into());
                }
                split_authority(key)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let r: Checked = (|| {
                    let o = check::object(item)?;
                    check::known_fields(o, &["host", "port", "weight", "priority", "metadata"])?;
                    match o.get("host") {
                        None => return Err("property \"host\" is required".into()),
                        Some(h) => nested("host", check::host(h).map(|_| ()))?,
                    }
                    match o.get("weight") {
                        None => return Err("property \"weight\" is required".into()),
                        Some(w) => nested("weight", check::integer_min(w, 0).map(|_| ()))?,
                    }
                    opt(o, "port", |p| {
                        let n = check::integer_min(p, 1)?;
                        if n > 65535 {
                            return Err(format!("expected {n} to be at most 65535"));
                        }
                        Ok(())
                    })?;
                    opt(o, "priority", check::integer)?;
                    Ok(())
                })();
                r.map_err(|e| format!("failed to validate item {}: {e}", i + 1))?;
            }
            Ok(())
        }
        _ => Err("object matches none of the required".into()),
    }
}

/// Splits `host:port` / `[v6]:port` / `host`.
fn split_authority(key: &str) -> Checked<(String, Option<u16>)> {
    let bad_port = |p: &str| format!("invalid port {p}");
    if let Some(rest) = key.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("invalid node address {key}"))?;
        return match after.strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(|p| (host.to_owned(), Some(p)))
                .ok_or_else(|| bad_port(p)),
            None if after.is_empty() => Ok((host.to_owned(), None)),
            None => Err(format!("invalid node address {key}")),
        };
    }
    if key.matches(':').count() > 1 {
        return Err("IPv6 address must be enclosed with '[' and ']'".into());
    }
    let (host, port) = match key.split_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad_port(p))?,
            ),
        ),
        None => (key, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!("invalid node address {key}"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn map_and_list_nodes() {
        let u = Upstream::from_value(&json!({"nodes":{"127.0.0.1:80":1,"[::1]:81":2}})).unwrap();
        let addrs = u.node_addrs();
        assert_eq!(addrs.len(), 2);
        assert!(addrs
            .iter()
            .any(|a| a.authority == "[::1]:81" && a.weight == 2));
        let u = Upstream::from_value(&json!({"nodes":[{"host":"a.test","port":8080,"weight":3}]}))
            .unwrap();
        assert_eq!(u.node_addrs()[0].authority, "a.test:8080");
    }

    #[test]
    fn bad_upstreams_have_apisix_messages() {
        let cases = [
            (json!({}), "property \"nodes\" is required"),
            (json!({"nodes":{"a:1":"x"}}), "property \"nodes\" validation failed: object matches none of the required"),
            (json!({"nodes":{"a:99999":1}}), "property \"nodes\" validation failed: invalid port 99999"),
            (json!({"nodes":{"::1:80":1}}), "IPv6 address must be enclosed with '[' and ']'"),
            (json!({"nodes":{},"retries":-1}), "property \"retries\" validation failed: expected -1 to be at least 0"),
            (json!({"nodes":{},"timeout":{"connect":0,"send":1,"read":1}}), "property \"timeout\" validation failed: property \"connect\" validation failed: expected 0 to be greater than 0"),
            (json!({"nodes":{},"pass_host":"rewrite"}), "`upstream_host` can't be empty when `pass_host` is `rewrite`"),
            (json!({"nodes":{},"foo":1}), "additional properties forbidden, found foo"),
        ];
        for (v, msg) in cases {
            let err = Upstream::from_value(&v).unwrap_err();
            assert!(err.contains(msg), "{v}: {err}");
        }
    }
}
