//! Plugins: per-route behaviour that runs between matching a route and
//! forwarding the request.
//!
//! The registry maps each name to its configuration check and constructor.
//! Routes and services carry `"plugins": {"<name>": {…}}`; configurations
//! are checked at write time, so the proxy only ever builds plugins from
//! valid ones. A built plugin holds its runtime state (caches, keys); the
//! reloader reuses it across reloads while its configuration is unchanged.

pub mod cors;
pub mod oidc_browser;
pub mod openid_connect;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header::HeaderMap;
use actix_web::HttpResponse;
use futures_util::future::LocalBoxFuture;
use serde_json::Value;

use crate::model::check::{self, Checked};
use crate::proxy::{Payload, Request};

/// What a plugin sees of one request.
pub struct Ctx<'a> {
    pub req: &'a Request,
    /// The canonical path the route matched.
    pub path: &'a str,
    pub route_id: &'a str,
    /// This worker's HTTP client, for calls to identity providers.
    pub client: &'a awc::Client,
    /// Headers that will go upstream; hop-by-hop and gateway-owned headers
    /// are already gone, so what a plugin sets here reaches the upstream.
    pub upstream_headers: &'a mut HeaderMap,
    /// Headers added to whatever answer the client gets (e.g. a renewed
    /// session cookie, CORS headers).
    pub response_headers: &'a mut HeaderMap,
    /// The request body, for a plugin that answers the request itself
    /// (a back-channel logout); reading it means nothing is forwarded.
    pub payload: &'a mut Payload,
}

/// What plugins may use besides their configuration; one per process.
pub struct PluginEnv {
    /// Browser sessions of `openid-connect`.
    pub sessions: Arc<crate::oidc::session::SessionStore>,
}

/// A configured plugin, shared by every worker.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Runs before the request is forwarded, highest priority first.
    /// `Err` answers the client directly and nothing is forwarded.
    fn access<'a>(&'a self, ctx: &'a mut Ctx<'_>) -> LocalBoxFuture<'a, Result<(), HttpResponse>>;
}

/// Builds the runtime form of a checked configuration.
pub type BuildFn = fn(&Value, &PluginEnv) -> Result<Arc<dyn Plugin>, String>;

/// One registered plugin kind.
pub struct PluginKind {
    pub name: &'static str,
    /// Higher runs first (APISIX's numbers).
    pub priority: i32,
    /// Checks a configuration, answering in APISIX's words.
    pub check: fn(&Value) -> Checked,
    /// Builds the runtime form of a checked configuration.
    pub build: BuildFn,
}

/// Every plugin this build knows.
pub const REGISTRY: &[PluginKind] = &[
    PluginKind {
        name: "cors",
        priority: 4000,
        check: cors::check,
        build: cors::build,
    },
    PluginKind {
        name: "openid-connect",
        priority: 2599,
        check: openid_connect::check,
        build: openid_connect::build,
    },
];

pub fn find(name: &str) -> Option<&'static PluginKind> {
    REGISTRY.iter().find(|p| p.name == name)
}

/// Checks a `plugins` object: every name known, every configuration valid.
pub fn check_plugins(v: &Value) -> Checked {
    for (name, conf) in check::object(v)? {
        let kind = find(name).ok_or_else(|| format!("unknown plugin [{name}]"))?;
        (kind.check)(conf)
            .map_err(|e| format!("failed to check the configuration of plugin {name} err: {e}"))?;
    }
    Ok(())
}

/// Built plugins by name and configuration, kept across reloads so that
/// caches survive when a configuration did not change. Written only by the
/// reloader thread.
pub struct PluginCache {
    env: Arc<PluginEnv>,
    built: HashMap<(String, String), Arc<dyn Plugin>>,
    used: std::collections::HashSet<(String, String)>,
}

impl PluginCache {
    pub fn new(env: Arc<PluginEnv>) -> PluginCache {
        PluginCache {
            env,
            built: HashMap::new(),
            used: Default::default(),
        }
    }

    /// The plugins of a route, its service's merged under it, in run
    /// order. When one cannot be built the whole chain fails, so the route
    /// refuses traffic instead of running unprotected.
    pub fn chain(
        &mut self,
        service: Option<&serde_json::Map<String, Value>>,
        route: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Vec<Arc<dyn Plugin>>, String> {
        let mut merged: Vec<(&String, &Value)> = Vec::new();
        for (name, conf) in service.into_iter().flatten() {
            if !route.is_some_and(|r| r.contains_key(name)) {
                merged.push((name, conf));
            }
        }
        merged.extend(route.into_iter().flatten());

        let mut chain: Vec<(i32, Arc<dyn Plugin>)> = Vec::new();
        for (name, conf) in merged {
            let kind = find(name).ok_or_else(|| format!("unknown plugin [{name}]"))?;
            let key = (name.clone(), conf.to_string());
            self.used.insert(key.clone());
            let plugin = match self.built.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p =
                        (kind.build)(conf, &self.env).map_err(|e| format!("plugin {name}: {e}"))?;
                    self.built.insert(key, p.clone());
                    p
                }
            };
            chain.push((kind.priority, plugin));
        }
        chain.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
        Ok(chain.into_iter().map(|(_, p)| p).collect())
    }

    /// Drops plugins no route used in the last build.
    pub fn finish_build(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.built.retain(|k, _| used.contains(k));
    }
}
