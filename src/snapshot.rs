//! One consistent view of the configuration, compiled for the proxy.
//!
//! Built by the reloader from the stored routes, services and upstreams;
//! read by every proxied request through an `ArcSwap`, so a request keeps
//! the snapshot it started with and never sees half of a change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::config::parse_net;
use crate::model::{Route, Service, Timeout, Upstream};
use crate::plugins::{Plugin, PluginCache};
use crate::proxy::balancer::Balancer;
use crate::router::{RouteMatch, Router};

/// Where a matched route sends its traffic, or why it cannot.
#[derive(Debug)]
pub enum Target {
    Upstream(Arc<Balancer>),
    /// Neither the route nor its service names an upstream.
    NoUpstream,
    /// `upstream_id` names an upstream that no longer exists.
    MissingUpstream(String),
    /// `service_id` names a service that no longer exists.
    MissingService(String),
}

/// A route as the proxy runs it.
pub struct CompiledRoute {
    pub target: Target,
    /// The plugins to run, highest priority first; `Err` when one could not
    /// be built, so the route refuses traffic rather than run unprotected.
    pub plugins: Result<Vec<Arc<dyn Plugin>>, String>,
    /// The route's own timeouts, overriding the upstream's.
    pub timeout: Option<Timeout>,
    pub enable_websocket: bool,
}

pub struct Snapshot {
    /// The store revision this snapshot reflects.
    pub revision: u64,
    pub router: Router<CompiledRoute>,
    /// Cookie names the gateway's browser sessions use; removed from every
    /// request that goes upstream, on every route.
    pub gateway_cookies: Vec<String>,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            revision: 0,
            router: Router::build(Vec::new()),
            gateway_cookies: Vec::new(),
        }
    }
}

/// The stored configuration as the reloader tracks it: id → raw object.
#[derive(Default)]
pub struct Config {
    pub routes: BTreeMap<String, Value>,
    pub services: BTreeMap<String, Value>,
    pub upstreams: BTreeMap<String, Value>,
}

/// Balancers kept across rebuilds while their upstream object is
/// unchanged, so round-robin position (and, later, health state) survive
/// unrelated changes. Keyed by where the upstream is defined.
#[derive(Default)]
pub struct BalancerCache {
    entries: HashMap<String, (Value, Arc<Balancer>)>,
}

impl BalancerCache {
    /// The balancer for `value`, parsed only when it changed.
    fn get(&mut self, owner: &str, value: &Value) -> Result<Arc<Balancer>, String> {
        if let Some((old, b)) = self.entries.get(owner) {
            if old == value {
                return Ok(b.clone());
            }
        }
        let up = Upstream::from_value(value)?;
        let b = Arc::new(Balancer::new(&up));
        self.entries
            .insert(owner.to_owned(), (value.clone(), b.clone()));
        Ok(b)
    }

    /// Drops balancers whose owner was not used by the last build.
    fn retain(&mut self, used: &std::collections::HashSet<String>) {
        self.entries.retain(|k, _| used.contains(k));
    }
}

/// Parsed routes kept across rebuilds, so a change to one route among
/// thousands parses one route. The reloader drops the entry of every route
/// it sees change.
#[derive(Default)]
pub struct RouteCache {
    /// Route id → its parsed form, or `None` when it does not parse.
    parsed: HashMap<String, Option<Arc<Route>>>,
}

impl RouteCache {
    pub fn invalidate(&mut self, id: &str) {
        self.parsed.remove(id);
    }

    pub fn clear(&mut self) {
        self.parsed.clear();
    }

    fn get(&mut self, id: &str, value: &Value) -> Option<Arc<Route>> {
        self.parsed
            .entry(id.to_owned())
            .or_insert_with(|| match Route::from_value(value) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    tracing::warn!(route.id = %id, error = %e, "skipping invalid route");
                    None
                }
            })
            .clone()
    }
}

/// Compiles `config` into a snapshot. An object that fails to parse is
/// skipped with a warning; it never stops the others from applying.
pub fn build(
    config: &Config,
    revision: u64,
    cache: &mut BalancerCache,
    routes: &mut RouteCache,
    plugin_cache: &mut PluginCache,
) -> Snapshot {
    let mut used = std::collections::HashSet::new();
    let mut upstream_for = |owner: String, value: &Value| -> Option<Arc<Balancer>> {
        let b = cache
            .get(&owner, value)
            .map_err(|e| tracing::warn!(upstream.owner = %owner, error = %e, "skipping invalid upstream"))
            .ok()?;
        used.insert(owner);
        Some(b)
    };

    let services: HashMap<&str, Service> = config
        .services
        .iter()
        .filter_map(|(id, v)| match Service::from_value(v) {
            Ok(s) => Some((id.as_str(), s)),
            Err(e) => {
                tracing::warn!(service.id = %id, error = %e, "skipping invalid service");
                None
            }
        })
        .collect();

    let mut entries = Vec::with_capacity(config.routes.len());
    for (id, value) in &config.routes {
        let Some(route) = routes.get(id, value) else {
            continue;
        };
        if route.status == Some(0) {
            continue;
        }
        let service = route.service_id.as_ref().map(|sid| {
            let sid = sid.to_string();
            (services.get(sid.as_str()), sid)
        });

        // Route fields win over the service's.
        let by_id =
            |uid: String, upstream_for: &mut dyn FnMut(String, &Value) -> Option<Arc<Balancer>>| {
                match config.upstreams.get(&uid) {
                    Some(v) => upstream_for(format!("upstream/{uid}"), v)
                        .map_or(Target::MissingUpstream(uid), Target::Upstream),
                    None => Target::MissingUpstream(uid),
                }
            };
        let target = if let Some(inline) = value.get("upstream") {
            upstream_for(format!("route/{id}"), inline).map_or(Target::NoUpstream, Target::Upstream)
        } else if let Some(uid) = &route.upstream_id {
            by_id(uid.to_string(), &mut upstream_for)
        } else {
            match &service {
                Some((None, sid)) => Target::MissingService(sid.clone()),
                Some((Some(svc), sid)) => {
                    if let Some(inline) = config.services.get(sid).and_then(|v| v.get("upstream")) {
                        upstream_for(format!("service/{sid}"), inline)
                            .map_or(Target::NoUpstream, Target::Upstream)
                    } else if let Some(uid) = &svc.upstream_id {
                        by_id(uid.to_string(), &mut upstream_for)
                    } else {
                        Target::NoUpstream
                    }
                }
                None => Target::NoUpstream,
            }
        };
        let service = service.and_then(|(s, _)| s);

        let mut hosts: Vec<String> = route
            .host_patterns()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if hosts.is_empty() {
            if let Some(svc_hosts) = service.and_then(|s| s.hosts.as_ref()) {
                hosts = svc_hosts.clone();
            }
        }
        let paths = route.paths().into_iter().map(str::to_owned).collect();
        let remote = route
            .remote_patterns()
            .into_iter()
            .filter_map(parse_net)
            .collect();
        let service_plugins = route
            .service_id
            .as_ref()
            .and_then(|sid| config.services.get(&sid.to_string()))
            .and_then(|v| v.get("plugins"))
            .and_then(Value::as_object);
        let plugins = plugin_cache.chain(service_plugins, route.plugins.as_ref());
        if let Err(e) = &plugins {
            tracing::warn!(route.id = %id, error = %e, "route refuses traffic: a plugin could not be built");
        }
        let compiled = CompiledRoute {
            target,
            plugins,
            timeout: route.timeout,
            enable_websocket: route
                .enable_websocket
                .or(service.and_then(|s| s.enable_websocket))
                .unwrap_or(false),
        };
        entries.push((
            hosts,
            paths,
            RouteMatch::new(
                id.clone(),
                route.priority.unwrap_or(0),
                route.methods.as_deref().unwrap_or(&[]),
                remote,
                compiled,
            ),
        ));
    }
    cache.retain(&used);
    plugin_cache.finish_build();
    Snapshot {
        revision,
        router: Router::build(entries),
        gateway_cookies: session_cookie_names(config),
    }
}

/// The session and login cookie names of every browser sign-in
/// configuration, on routes and services.
fn session_cookie_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .routes
        .values()
        .chain(config.services.values())
        .filter_map(|v| v.get("plugins")?.get("openid-connect"))
        .filter(|c| c.get("bearer_only").and_then(Value::as_bool) != Some(true))
        .flat_map(|c| {
            let name = c
                .get("session")
                .and_then(|s| s.get("cookie_name"))
                .and_then(Value::as_str)
                .unwrap_or(crate::plugins::oidc_browser::DEFAULT_COOKIE)
                .to_owned();
            [format!("{name}_login"), name]
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
