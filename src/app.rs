//! Wiring: settings → store, cache, lifecycle, gateway, admin; listeners; signals;
//! graceful shutdown (stop accepting, drain, flush usage, exit).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::cache::TokenCache;
use crate::config::{Settings, StoreSettings};
use crate::lifecycle::Lifecycle;
use crate::metrics::{ResultLabels, metrics};
use crate::proxy::Gateway;
use crate::server::{self, ServeOptions};
use crate::store::TokenStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::tls::TlsReloader;
use crate::usage::UsageRecorder;

/// How often usage counts are flushed to the store.
pub const USAGE_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Opens the configured store. Redis connects in the background: an unreachable
/// Redis does not stop patgate from starting (requests get 503 until it is back).
pub async fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn TokenStore>> {
    Ok(match settings {
        StoreSettings::Redis(r) => Arc::new(RedisStore::connect(r).await?),
        StoreSettings::Embedded(e) => Arc::new(EmbeddedStore::open(e)?),
    })
}

/// Everything a running patgate is made of.
pub struct App {
    /// Settings it was built from.
    pub settings: Arc<Settings>,
    /// The store.
    pub store: Arc<dyn TokenStore>,
    /// Token cache.
    pub cache: TokenCache,
    /// Lifecycle operations.
    pub lifecycle: Lifecycle,
    /// Data plane.
    pub gateway: Arc<Gateway>,
    /// Admin API.
    pub admin: Arc<Admin>,
    /// Usage counts awaiting a flush.
    pub usage: Arc<UsageRecorder>,
    /// TLS for the data plane, when configured.
    pub tls: Option<Arc<TlsReloader>>,
}

impl App {
    /// Builds the app on an already opened store; fails only when the configured TLS
    /// files are unusable.
    pub fn with_store(settings: Arc<Settings>, store: Arc<dyn TokenStore>) -> anyhow::Result<Self> {
        let tls = match &settings.tls {
            Some(t) => Some(Arc::new(TlsReloader::new(t.clone())?)),
            None => None,
        };
        let cache = TokenCache::new(store.clone(), &settings.cache);
        let usage = Arc::new(UsageRecorder::new());
        let lifecycle = Lifecycle::new(store.clone(), cache.clone(), settings.tokens.clone());
        let gateway = Arc::new(Gateway::new(settings.clone(), cache.clone(), usage.clone()));
        let admin = Arc::new(Admin::new(
            lifecycle.clone(),
            settings.admin.api_keys.clone(),
        ));
        Ok(App {
            settings,
            store,
            cache,
            lifecycle,
            gateway,
            admin,
            usage,
            tls,
        })
    }

    /// Opens the store and builds the app.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = open_store(&settings.store).await?;
        Self::with_store(Arc::new(settings), store)
    }

    fn serve_options(&self) -> ServeOptions {
        let s = &self.settings;
        ServeOptions {
            header_read_timeout: s.timeouts.header_read,
            max_header_bytes: s.limits.max_header_bytes,
            max_connections: s.limits.max_connections,
            shutdown_grace: s.timeouts.shutdown_grace,
        }
    }

    /// Serves both listeners until `shutdown` resolves; then drains both, flushes
    /// usage and returns.
    pub async fn run(
        self,
        data: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let invalidations = self.cache.spawn_invalidation_listener();
        let flusher = self
            .usage
            .spawn_flusher(self.store.clone(), USAGE_FLUSH_INTERVAL);
        let gateway = self.gateway.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                gateway.runtime().limiters.sweep();
            }
        });
        let (tx, rx) = watch::channel(false);
        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let opts = self.serve_options();
        let data_task = tokio::spawn(server::serve(
            data,
            self.gateway.clone(),
            opts.clone(),
            self.tls.clone(),
            stop(rx.clone()),
        ));
        let admin_task = tokio::spawn(server::serve(
            admin,
            self.admin.clone(),
            opts,
            None,
            stop(rx),
        ));
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        let _ = tx.send(true);
        let _ = data_task.await;
        let _ = admin_task.await;
        flusher.abort();
        sweeper.abort();
        invalidations.abort();
        match self.usage.flush(self.store.as_ref()).await {
            Ok(n) => tracing::info!(tokens = n, "usage flushed"),
            Err(e) => tracing::warn!(error = %e, "final usage flush failed"),
        }
    }
}

/// `patgate serve`: binds the configured listeners, handles SIGTERM/SIGINT (drain)
/// and SIGHUP (reload `config_path`), runs until stopped.
pub async fn serve(settings: Settings, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    if settings.rate_limit.mode == crate::config::RateLimitMode::Redis {
        tracing::warn!(
            "rate_limit.mode: redis (global limits) is not implemented yet; limits are enforced per replica"
        );
    }
    let data = server::bind(settings.listen).await?;
    let admin = server::bind(settings.admin.listen).await?;
    let app = App::build(settings).await?;
    log_listening(&data, &admin);
    let gateway = app.gateway.clone();
    let initial = app.settings.clone();
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(path, gateway, initial, app.tls.clone()));
    }
    app.run(data, admin, shutdown_signal()).await;
    Ok(())
}

/// Logs the bound addresses (tests and operators read these lines).
pub fn log_listening(data: &TcpListener, admin: &TcpListener) {
    let d = data.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let a = admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(data.addr = %d, admin.addr = %a, "listening");
}

async fn reload_on_sighup(
    path: PathBuf,
    gateway: Arc<Gateway>,
    initial: Arc<Settings>,
    tls: Option<Arc<TlsReloader>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    let listen: SocketAddr = initial.listen;
    let admin_listen: SocketAddr = initial.admin.listen;
    while hup.recv().await.is_some() {
        match crate::config::load(&path) {
            Ok(mut new) => {
                if new.listen != listen || new.admin.listen != admin_listen {
                    tracing::warn!("listener addresses changed: restart patgate to apply them");
                }
                if new.tokens != initial.tokens
                    || new.store != initial.store
                    || new.admin.api_keys != initial.admin.api_keys
                {
                    tracing::warn!(
                        "tokens, store and admin key changes need a restart; keeping the running ones"
                    );
                    new.tokens = initial.tokens.clone();
                }
                if let Some(tls) = &tls {
                    match tls.reload(new.tls.as_ref()) {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "TLS reload failed; keeping the running certificate")
                        }
                    }
                }
                gateway.reload(Arc::new(new));
                metrics()
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                tracing::info!(config = %path.display(), "configuration reloaded");
            }
            Err(errors) => {
                metrics()
                    .config_reloads
                    .get_or_create(&ResultLabels { result: "rejected" })
                    .inc();
                for e in &errors.0 {
                    tracing::error!(problem = %e, "reload rejected; keeping the running configuration");
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
