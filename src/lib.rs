//! Portcullis: an API gateway that protects backend APIs and web apps with
//! OpenID Connect, configured through an APISIX-shaped Admin API.
//!
//! Control plane: `admin` → `model` (validate) → `store` (sled) →
//! `reload` (watch) → `snapshot` + `router` (compiled, swapped atomically).
//! Data plane: `proxy` → `proxy::path` (canonicalise) → `router` (match) →
//! `plugins` → `proxy::balancer` (pick a node) → forward → stream back.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod form;
pub mod model;
pub mod oidc;
pub mod plugins;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod snapshot;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
use arc_swap::ArcSwap;

use crate::admin::auth::{AdminKey, KeySource};
use crate::admin::AdminState;
use crate::config::Config;
use crate::oidc::session::SessionStore;
use crate::plugins::PluginEnv;
use crate::proxy::ProxyState;
use crate::snapshot::Snapshot;
use crate::store::Store;

/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Idle keep-alive on client connections to the proxy.
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(60);
/// How often expired browser sessions are removed from the store.
const SESSION_SWEEP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Opens the store, starts both listeners and serves until a signal.
pub async fn serve(config: Config) -> Result<(), StartError> {
    // State: the store, the admin key, and the first snapshot.
    let store = Arc::new(Store::open(&config.data_dir)?);
    let (key, source) = AdminKey::setup(config.admin_key.as_deref(), &store).await?;
    match source {
        KeySource::Configured => tracing::info!("admin key taken from the configuration"),
        KeySource::Stored => tracing::info!("admin key: using the hash stored on an earlier start"),
        KeySource::Generated => {
            tracing::info!("admin key generated on first start; only its hash is stored")
        }
    }
    let sessions = Arc::new(SessionStore::new(
        store.open_tree("sessions")?,
        store.flusher(),
    ));
    spawn_session_sweeper(sessions.clone());
    let env = Arc::new(PluginEnv { sessions });
    let live = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let applied = reload::start(store.clone(), live.clone(), env)?;
    tracing::info!(
        store.revision = store.revision(),
        routes = live.load().router.len(),
        "configuration loaded"
    );

    // The proxy listener: our own HTTP/1.1 server (proxy::server).
    let proxy_state = Arc::new(ProxyState {
        live,
        trusted: config.trusted_addresses.clone(),
    });
    let listen_err = |source| StartError::Listen {
        what: "proxy",
        addr: config.proxy_listen,
        source,
    };
    let listener = bind_proxy(config.proxy_listen).map_err(listen_err)?;
    let proxy_addr = listener.local_addr().map_err(listen_err)?;
    let proxy = proxy::server::Server::start(
        listener,
        proxy_state,
        proxy::server::Settings {
            workers: config.workers,
            keep_alive: CLIENT_KEEP_ALIVE,
            grace: SHUTDOWN_GRACE,
            max_connections: connection_budget(config.workers),
        },
    )
    .map_err(listen_err)?;

    // The admin listener.
    let admin_state = web::Data::new(AdminState {
        store: store.clone(),
        key,
        allow: config.allow_admin.clone(),
        applied,
    });
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_state.clone())
            .wrap(middleware::from_fn(admin::allow_list))
            .configure(admin::configure)
    })
    .workers(1)
    .disable_signals()
    .bind(config.admin_listen)
    .map_err(|source| StartError::Listen {
        what: "admin",
        addr: config.admin_listen,
        source,
    })?;
    let admin_addr = admin.addrs()[0];

    let admin = admin.run();
    let admin_handle = admin.handle();
    tracing::info!(proxy.addr = %proxy_addr, admin.addr = %admin_addr, "portcullis ready");

    // Serve until SIGINT/SIGTERM, then drain both listeners.
    let signals = async {
        wait_for_signal().await;
        tracing::info!("shutting down");
        tokio::join!(proxy.stop(), admin_handle.stop(true));
    };
    let (a, ()) = tokio::join!(admin, signals);
    a.map_err(StartError::Serve)?;
    store_flush(&store).await;
    Ok(())
}

/// Client connections each proxy worker may hold: at most 10 000 per
/// worker, and within the process's descriptor limit with room for an
/// upstream connection per client connection and 512 descriptors left for
/// the Admin API, the store and the identity providers.
fn connection_budget(workers: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    let budget = soft.saturating_sub(512) / 2 / workers.max(1);
    if budget < 1000 {
        tracing::warn!(
            open_files = soft,
            connections_per_worker = budget.max(16),
            "low descriptor limit; raise it (ulimit -n, LimitNOFILE=) to serve more connections"
        );
    }
    budget.clamp(16, 10_000)
}

/// The proxy's listening socket, with a backlog for bursts of new
/// connections.
fn bind_proxy(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// Removes expired browser sessions and abandoned sign-ins now and then.
fn spawn_session_sweeper(sessions: Arc<SessionStore>) {
    let _ = std::thread::Builder::new()
        .name("portcullis-sessions".into())
        .spawn(move || loop {
            std::thread::sleep(SESSION_SWEEP);
            let removed = sessions.sweep();
            if removed > 0 {
                tracing::info!(sessions.removed = removed, "expired sessions swept");
            }
        });
}

async fn store_flush(store: &Store) {
    // Writes are flushed as they happen; this only makes the exit tidy.
    let _ = store.update(|_| Ok::<_, store::StoreError>(())).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
