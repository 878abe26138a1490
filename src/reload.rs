//! Hot reload: watches the store's change stream, rebuilds the snapshot
//! and swaps it in atomically.
//!
//! Runs on a thread of its own so a large rebuild never delays a proxied
//! request. Changes that arrive together are applied in one rebuild.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};

use crate::plugins::{PluginCache, PluginEnv};
use crate::snapshot::{self, BalancerCache, Config, RouteCache, Snapshot};
use crate::store::{Event, Store, StoreError};

/// Starts the reloader; returns the revision the proxy serves, which it
/// publishes after every swap.
pub fn start(
    store: Arc<Store>,
    live: Arc<ArcSwap<Snapshot>>,
    env: Arc<PluginEnv>,
) -> Result<watch::Receiver<u64>, StoreError> {
    let mut events = store.subscribe();
    let mut state = Reloader {
        store,
        live,
        config: Config::default(),
        cache: BalancerCache::default(),
        routes: RouteCache::default(),
        plugins: PluginCache::new(env),
        revision: 0,
    };
    state.full_load()?;
    let (applied_tx, applied_rx) = watch::channel(state.revision);

    std::thread::Builder::new()
        .name("portcullis-reload".into())
        .spawn(move || loop {
            let first = match events.blocking_recv() {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "reloader fell behind; reloading everything");
                    if let Err(e) = state.full_load() {
                        tracing::error!(error = %e, "full reload failed; serving the last good snapshot");
                    }
                    let _ = applied_tx.send(state.revision);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let started = Instant::now();
            state.apply(first);
            // Take whatever else is already waiting, then rebuild once.
            loop {
                match events.try_recv() {
                    Ok(ev) => state.apply(ev),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        let _ = state.full_load();
                        break;
                    }
                    Err(_) => break,
                }
            }
            state.rebuild();
            tracing::info!(
                store.revision = state.revision,
                routes = state.live.load().router.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "configuration applied"
            );
            let _ = applied_tx.send(state.revision);
        })
        .map_err(|e| StoreError::Corrupt {
            key: "reloader".into(),
            reason: e.to_string(),
        })?;
    Ok(applied_rx)
}

struct Reloader {
    store: Arc<Store>,
    live: Arc<ArcSwap<Snapshot>>,
    config: Config,
    cache: BalancerCache,
    /// Parsed routes, dropped one by one as routes change.
    routes: RouteCache,
    /// Built plugins, reused while their configuration is unchanged.
    plugins: PluginCache,
    /// Highest revision folded into `config`.
    revision: u64,
}

impl Reloader {
    fn full_load(&mut self) -> Result<(), StoreError> {
        let revision = self.store.revision();
        let mut config = Config::default();
        for (key, entry) in self.store.list("/apisix/")? {
            insert(&mut config, &key, Some(entry.value));
        }
        self.config = config;
        self.routes.clear();
        self.revision = self.revision.max(revision);
        self.rebuild();
        Ok(())
    }

    fn apply(&mut self, ev: Event) {
        if ev.revision <= self.revision {
            // Already part of the loaded state.
            return;
        }
        if let Some(id) = ev.key.strip_prefix("/apisix/routes/") {
            self.routes.invalidate(id);
        }
        insert(&mut self.config, &ev.key, ev.entry.map(|e| e.value));
        self.revision = self.revision.max(ev.revision);
    }

    fn rebuild(&mut self) {
        let snap = snapshot::build(
            &self.config,
            self.revision,
            &mut self.cache,
            &mut self.routes,
            &mut self.plugins,
        );
        self.live.store(Arc::new(snap));
    }
}

fn insert(config: &mut Config, key: &str, value: Option<serde_json::Value>) {
    let Some(rest) = key.strip_prefix("/apisix/") else {
        return;
    };
    let Some((kind, id)) = rest.split_once('/') else {
        return;
    };
    let map = match kind {
        "routes" => &mut config.routes,
        "services" => &mut config.services,
        "upstreams" => &mut config.upstreams,
        _ => return,
    };
    match value {
        Some(v) => {
            map.insert(id.to_owned(), v);
        }
        None => {
            map.remove(id);
        }
    }
}
