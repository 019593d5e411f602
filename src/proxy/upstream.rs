//! Upstream pools: one pooled keep-alive hyper client per upstream (TCP_NODELAY,
//! its own connect timeout, `http://` and `https://` — TLS verified against the
//! system's roots, HTTP/2 when the upstream offers it by ALPN), round-robin over its
//! addresses, and the mapping of client failures to 502 / 504.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::Upstream;
use crate::error::GatewayError;

/// TLS settings for upstream connections: the system's CA roots (loaded once), TLS
/// 1.2+, ALPN `h2` and `http/1.1`.
fn client_tls() -> &'static rustls::ClientConfig {
    static CONFIG: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "reading system CA certificates");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("no system CA certificates: https upstreams will fail verification");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // ring implements every default protocol version.
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth()
    })
}

/// A pooled client for one upstream.
pub struct UpstreamPool {
    /// Its configuration.
    pub upstream: Upstream,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    next: AtomicUsize,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.upstream.name)
            .finish()
    }
}

impl UpstreamPool {
    /// A pool for `upstream`; idle connections are kept `idle` long.
    pub fn new(upstream: Upstream, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(false);
        let builder =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(client_tls().clone());
        let connector = builder
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        UpstreamPool {
            upstream,
            client,
            next: AtomicUsize::new(0),
        }
    }

    /// The next base URL, round-robin.
    fn pick(&self) -> Option<&Uri> {
        let urls = &self.upstream.urls;
        if urls.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % urls.len();
        urls.get(i)
    }

    /// The upstream URI for a request path (already normalised and prefix-stripped)
    /// and query.
    pub fn target(&self, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
        let base = self
            .pick()
            .ok_or_else(|| GatewayError::UpstreamUnavailable("no address".into()))?;
        let base_path = base.path().trim_end_matches('/');
        let mut pq =
            String::with_capacity(base_path.len() + path.len() + 1 + query.map_or(0, str::len));
        pq.push_str(base_path);
        pq.push_str(path);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(
            PathAndQuery::try_from(pq)
                .map_err(|_| GatewayError::BadRequest("Invalid request path"))?,
        );
        Uri::from_parts(parts).map_err(|_| GatewayError::BadRequest("Invalid request path"))
    }

    /// Sends `req` and waits for the response head within the response timeout.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
        match tokio::time::timeout(self.upstream.response_timeout, self.client.request(req)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // Connect timeouts surface as connect errors whose source says so.
                let text = format!("{e:?}");
                if e.is_connect() && text.contains("Timeout") || text.contains("timed out") {
                    Err(GatewayError::UpstreamTimeout)
                } else {
                    Err(GatewayError::UpstreamUnavailable(text))
                }
            }
        }
    }
}
