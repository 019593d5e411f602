//! Wiring: settings → store, cache, lifecycle, gateway, admin; listeners; signals;
//! graceful shutdown (stop accepting, drain, flush usage, exit).

use std::future::Future;
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
use crate::ratelimit::GcraBackend;
use crate::server::{self, ServeOptions};
use crate::store::TokenStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::tls::TlsReloader;
use crate::usage::UsageRecorder;
use crate::webhooks::Webhooks;

/// How often usage counts are flushed to the store.
pub const USAGE_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// An opened store.
pub struct OpenedStore {
    /// The token store.
    pub tokens: Arc<dyn TokenStore>,
    /// The same Redis connection as the home of global rate-limit buckets
    /// (`None` for the embedded store).
    pub gcra: Option<Arc<dyn GcraBackend>>,
}

impl From<Arc<dyn TokenStore>> for OpenedStore {
    fn from(tokens: Arc<dyn TokenStore>) -> Self {
        OpenedStore { tokens, gcra: None }
    }
}

/// Opens the configured store. Redis connects in the background: an unreachable
/// Redis does not stop patgate from starting (requests get 503 until it is back).
pub async fn open_store(settings: &StoreSettings) -> anyhow::Result<OpenedStore> {
    Ok(match settings {
        StoreSettings::Redis(r) => {
            let redis = Arc::new(RedisStore::connect(r).await?);
            OpenedStore {
                tokens: redis.clone(),
                gcra: Some(redis),
            }
        }
        StoreSettings::Embedded(e) => OpenedStore {
            tokens: Arc::new(EmbeddedStore::open(e)?),
            gcra: None,
        },
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
    /// Webhook events and their delivery.
    pub webhooks: Arc<Webhooks>,
    /// TLS for the data plane, when configured.
    pub tls: Option<Arc<TlsReloader>>,
    /// TLS for the admin listener, when configured.
    pub admin_tls: Option<Arc<TlsReloader>>,
    /// Applies the config file again (SIGHUP, `POST /v1/reload`).
    pub reloader: Arc<Reloader>,
}

impl App {
    /// Builds the app on an already opened store; `config_path` is the file reloads
    /// read (`None` for `patgate dev`). Fails only when the configured TLS files
    /// (listeners' or upstreams') are unusable.
    pub fn with_store(
        settings: Arc<Settings>,
        store: impl Into<OpenedStore>,
        config_path: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let OpenedStore {
            tokens: store,
            gcra,
        } = store.into();
        let tls = match &settings.tls {
            Some(t) => Some(Arc::new(TlsReloader::new("tls", t.clone())?)),
            None => None,
        };
        let admin_tls = match &settings.admin.tls {
            Some(t) => Some(Arc::new(TlsReloader::new("admin.tls", t.clone())?)),
            None => None,
        };
        let cache = TokenCache::new(store.clone(), &settings.cache);
        let usage = Arc::new(UsageRecorder::new());
        let webhooks = Arc::new(Webhooks::new(settings.webhooks.clone(), store.clone())?);
        let lifecycle = Lifecycle::new(store.clone(), cache.clone(), settings.tokens.clone())
            .with_webhooks(webhooks.clone());
        let gateway = Arc::new(Gateway::new(
            settings.clone(),
            cache.clone(),
            usage.clone(),
            gcra,
            webhooks.clone(),
        )?);
        let reloader = Arc::new(Reloader::new(
            config_path,
            gateway.clone(),
            settings.clone(),
            [tls.clone(), admin_tls.clone()],
        ));
        let admin = Arc::new(Admin::new(
            lifecycle.clone(),
            settings.admin.api_keys.clone(),
            reloader.clone(),
        ));
        Ok(App {
            settings,
            store,
            cache,
            lifecycle,
            gateway,
            admin,
            usage,
            webhooks,
            tls,
            admin_tls,
            reloader,
        })
    }

    /// Opens the store and builds the app (`config_path`: see [`App::with_store`]).
    pub async fn build(settings: Settings, config_path: Option<PathBuf>) -> anyhow::Result<Self> {
        let store = open_store(&settings.store).await?;
        Self::with_store(Arc::new(settings), store, config_path)
    }

    /// The listeners' connection settings from the config.
    pub fn serve_options(&self) -> ServeOptions {
        let s = &self.settings;
        ServeOptions {
            header_read_timeout: s.timeouts.header_read,
            max_header_bytes: s.limits.max_header_bytes,
            max_connections: s.limits.max_connections,
            shutdown_grace: s.timeouts.shutdown_grace,
            idle_timeout: s.timeouts.idle,
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
        crate::clock::start();
        let invalidations = self.cache.spawn_invalidation_listener();
        let flusher = self
            .usage
            .spawn_flusher(self.store.clone(), USAGE_FLUSH_INTERVAL);
        let webhook_worker = self.webhooks.spawn_worker();
        let new_ip_events = self.webhooks.spawn_new_ip_events(&self.usage);
        let gateway = self.gateway.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                gateway.runtime().limiters.sweep();
            }
        });
        // Certificates are re-read when their files change, not only on SIGHUP.
        let cert_watchers: Vec<_> = [&self.tls, &self.admin_tls]
            .into_iter()
            .flatten()
            .map(|t| t.spawn_watcher(crate::tls::WATCH_INTERVAL))
            .collect();
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
            self.admin_tls.clone(),
            stop(rx),
        ));
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        let _ = tx.send(true);
        let _ = data_task.await;
        let _ = admin_task.await;
        flusher.abort();
        webhook_worker.abort();
        sweeper.abort();
        for w in cert_watchers {
            w.abort();
        }
        invalidations.abort();
        match self.usage.flush(self.store.as_ref()).await {
            Ok(n) => tracing::info!(tokens = n, "usage flushed"),
            Err(e) => tracing::warn!(error = %e, "final usage flush failed"),
        }
        // Let the last flush's new-IP reports become events, then store them.
        tokio::time::sleep(Duration::from_millis(20)).await;
        new_ip_events.abort();
        if let Err(e) = self.webhooks.flush().await {
            tracing::warn!(error = %e, "webhook events could not be written to the outbox before exit");
        }
    }
}

/// `patgate serve`: binds the configured listeners, handles SIGTERM/SIGINT (drain)
/// and SIGHUP (reload `config_path`), runs until stopped.
pub async fn serve(settings: Settings, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let data = server::bind(settings.listen).await?;
    let admin = server::bind(settings.admin.listen).await?;
    let app = App::build(settings, config_path).await?;
    log_listening(&data, &admin);
    if app.reloader.path().is_some() {
        tokio::spawn(reload_on_sighup(app.reloader.clone()));
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

async fn reload_on_sighup(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        // The outcome is logged and counted by `reload` itself.
        let _ = reloader.reload();
    }
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The process was not started from a config file (`patgate dev`).
    #[error("No config file to reload")]
    NoConfigFile,
    /// The new file is invalid (or its TLS files are unusable); the running
    /// configuration is kept. One `config error: <path>: <reason>` line per problem.
    #[error("config rejected")]
    Rejected(Vec<String>),
}

/// Re-reads the config file the process was started with and applies it to the
/// running gateway: the one reload path, used by SIGHUP and `POST /v1/reload`.
///
/// Applied: routes, upstreams (their TLS files re-read), rate limits and quotas,
/// client-IP settings (trusted proxies, key-sharing signals), identity headers,
/// timeouts of new upstream requests, logging flags, webhooks, and both listeners'
/// certificates. Nothing is applied unless all of it could be built. Kept until a
/// restart (with a warning): listener addresses, turning TLS on or off, store,
/// token format and admin keys. In-flight requests finish on the generation they
/// started with.
pub struct Reloader {
    path: Option<PathBuf>,
    gateway: Arc<Gateway>,
    /// The settings the process started with: what a restart-only change is
    /// compared against.
    initial: Arc<Settings>,
    /// The data plane's and the admin listener's certificates, when configured.
    tls: [Option<Arc<TlsReloader>>; 2],
    /// Serialises reloads (a SIGHUP and an API call at once apply one after the other).
    lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

impl Reloader {
    /// A reloader for `gateway`, reading `path` (`None`: nothing to reload).
    pub fn new(
        path: Option<PathBuf>,
        gateway: Arc<Gateway>,
        initial: Arc<Settings>,
        tls: [Option<Arc<TlsReloader>>; 2],
    ) -> Self {
        Reloader {
            path,
            gateway,
            initial,
            tls,
            lock: std::sync::Mutex::new(()),
        }
    }

    /// The config file reloads read, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The settings in force now (the last applied reload, else the initial ones).
    pub fn settings(&self) -> Arc<Settings> {
        self.gateway.runtime().settings.clone()
    }

    /// Reads, validates and applies the config file; returns the warnings (changes
    /// that need a restart). Logs the outcome and counts it in
    /// `patgate_config_reloads_total{result}`. Blocking file I/O (small files).
    pub fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let Some(path) = &self.path else {
            return Err(ReloadError::NoConfigFile);
        };
        // A panic while holding the lock cannot leave `()` inconsistent.
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.apply(path);
        let label = if result.is_ok() { "ok" } else { "rejected" };
        metrics()
            .config_reloads
            .get_or_create(&ResultLabels { result: label })
            .inc();
        match &result {
            Ok(warnings) => {
                for w in warnings {
                    tracing::warn!(config = %path.display(), "{w}");
                }
                tracing::info!(config = %path.display(), "configuration reloaded");
            }
            Err(ReloadError::Rejected(problems)) => {
                for p in problems {
                    tracing::error!(problem = %p, "reload rejected; keeping the running configuration");
                }
            }
            Err(ReloadError::NoConfigFile) => {}
        }
        result
    }

    fn apply(&self, path: &std::path::Path) -> Result<Vec<String>, ReloadError> {
        let initial = &self.initial;
        let mut new = crate::config::load(path).map_err(|errors| {
            ReloadError::Rejected(errors.0.iter().map(|e| e.to_string()).collect())
        })?;
        let mut warnings = Vec::new();
        if new.listen != initial.listen || new.admin.listen != initial.admin.listen {
            warnings.push("listener addresses changed: restart patgate to apply them".to_string());
        }
        if new.tokens != initial.tokens
            || new.store != initial.store
            || new.admin.api_keys != initial.admin.api_keys
        {
            warnings.push(
                "tokens, store and admin key changes need a restart; keeping the running ones"
                    .to_string(),
            );
            new.tokens = initial.tokens.clone();
        }
        if new.tls.is_some() != initial.tls.is_some()
            || new.admin.tls.is_some() != initial.admin.tls.is_some()
        {
            warnings.push("turning TLS on or off needs a restart".to_string());
        }
        // Everything that can fail is built before anything is applied.
        let new = Arc::new(new);
        let runtime = self.gateway.runtime_for(new.clone()).map_err(|errors| {
            ReloadError::Rejected(errors.0.iter().map(|e| e.to_string()).collect())
        })?;
        let [data_tls, admin_tls] = &self.tls;
        let mut certs = Vec::new();
        for (tls, files) in [
            (data_tls, new.tls.as_ref()),
            (admin_tls, new.admin.tls.as_ref()),
        ] {
            let Some(tls) = tls else { continue };
            match tls.prepare(files) {
                Ok(cert) => certs.push((tls, cert)),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "TLS reload failed; keeping the running certificate");
                    return Err(ReloadError::Rejected(vec![format!("config error: {e:#}")]));
                }
            }
        }
        for (tls, cert) in certs {
            tls.install(cert, false);
        }
        self.gateway.install(runtime);
        self.gateway.webhooks().install(new.webhooks.clone());
        Ok(warnings)
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
