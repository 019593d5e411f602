//! Upstream pools: one pooled keep-alive hyper client per upstream (TCP_NODELAY,
//! its own connect timeout, `http://` and `https://` — TLS from
//! [`crate::tls::client_config`]: the upstream's CA or the system's roots, its client
//! certificate if any; HTTP/2 when the upstream offers it by ALPN, or HTTP/2 only
//! with `http2: true`, which is h2c with prior knowledge on `http://`), round-robin
//! over its addresses, passive health, one safe retry, and the mapping of client
//! failures to 502 / 504.
//!
//! Passive health: an address whose connection fails `max_fails` times in a row is
//! skipped for `fail_timeout`; after that one attempt is let through, and one more
//! failure skips it again (a success clears the count). When every address is
//! skipped, round-robin goes on over all of them rather than failing outright.
//!
//! Retry: a request whose *connection* failed (nothing was sent) is retried once on
//! the next live address, only when it is idempotent (GET, HEAD, OPTIONS, PUT,
//! DELETE) and has no body. A request that reached an upstream is never retried.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use crate::body::Body;
use crate::config::{ConfigError, Upstream};
use crate::error::GatewayError;

/// Connect-failure bookkeeping of one upstream address.
#[derive(Debug, Default)]
struct PeerHealth {
    /// Consecutive connect failures.
    fails: AtomicU32,
    /// Skipped until this many milliseconds after the pool's `epoch` (0: not skipped).
    down_until_ms: AtomicU64,
}

/// A pooled client for one upstream.
pub struct UpstreamPool {
    /// Its configuration.
    pub upstream: Upstream,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    next: AtomicUsize,
    /// One entry per `upstream.urls` entry.
    health: Vec<PeerHealth>,
    epoch: Instant,
}

/// A failed attempt: the response to give, and whether the request was never sent
/// (the connection failed), which makes a retry safe for a bodiless idempotent one.
struct Failure {
    error: GatewayError,
    not_sent: bool,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.upstream.name)
            .finish()
    }
}

impl UpstreamPool {
    /// A pool for `upstream`; idle connections are kept `idle` long. Reads the
    /// upstream's TLS files (blocking); fails when they are unusable, naming the
    /// field (`upstreams.<name>.tls.ca`).
    pub fn new(upstream: Upstream, idle: Duration) -> Result<Self, ConfigError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(false);
        let section = format!("upstreams.{}.tls", upstream.name);
        let tls = upstream.tls.as_ref();
        let config = crate::tls::client_config(&section, crate::tls::upstream_files(tls))?;
        let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        if let Some(name) = tls.and_then(|t| t.server_name.as_deref()) {
            // Checked by config validation; re-checked rather than trusted.
            let name = ServerName::try_from(name.to_owned()).map_err(|e| ConfigError {
                path: format!("{section}.server_name"),
                reason: e.to_string(),
            })?;
            builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
        }
        // ALPN: `h2` only when the upstream is configured for HTTP/2, else both.
        let connector = if upstream.http2 {
            builder.enable_http2().wrap_connector(connector)
        } else {
            builder.enable_all_versions().wrap_connector(connector)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(upstream.http2)
            .build(connector);
        let health = upstream
            .urls
            .iter()
            .map(|_| PeerHealth::default())
            .collect();
        Ok(UpstreamPool {
            upstream,
            client,
            next: AtomicUsize::new(0),
            health,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_up(&self, i: usize, now_ms: u64) -> bool {
        self.health
            .get(i)
            .is_none_or(|h| h.down_until_ms.load(Ordering::Relaxed) <= now_ms)
    }

    /// The next address, round-robin over those not being skipped (over all of them
    /// when every one is). Cost: one atomic add, one load per address looked at.
    fn pick(&self) -> Option<usize> {
        let n = self.upstream.urls.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|k| start.wrapping_add(k) % n)
            .find(|&i| self.is_up(i, now))
            .or(Some(start % n))
    }

    /// The next address after `failed` that is not being skipped, if any.
    fn pick_after(&self, failed: usize) -> Option<usize> {
        let n = self.upstream.urls.len();
        let now = self.now_ms();
        (1..n)
            .map(|k| (failed + k) % n)
            .find(|&i| self.is_up(i, now))
    }

    fn record_success(&self, i: usize) {
        if let Some(h) = self.health.get(i)
            && h.fails.load(Ordering::Relaxed) != 0
        {
            h.fails.store(0, Ordering::Relaxed);
        }
    }

    fn record_connect_failure(&self, i: usize) {
        let Some(h) = self.health.get(i) else { return };
        let max = self.upstream.max_fails.max(1);
        let fails = h.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if fails < max {
            return;
        }
        let now = self.now_ms();
        let was_up = h.down_until_ms.load(Ordering::Relaxed) <= now;
        let cool = u64::try_from(self.upstream.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        h.down_until_ms
            .store(now.saturating_add(cool).max(1), Ordering::Relaxed);
        // On probation: one more failure after the cool-down skips it again.
        h.fails.store(max - 1, Ordering::Relaxed);
        if was_up {
            tracing::warn!(
                upstream = %self.upstream.name,
                upstream.addr = %self.base(i).map(|u| u.to_string()).unwrap_or_default(),
                fails,
                skip_seconds = self.upstream.fail_timeout.as_secs(),
                "upstream address failing; skipping it"
            );
        }
    }

    fn base(&self, i: usize) -> Option<&Uri> {
        self.upstream.urls.get(i)
    }

    /// Forwards a request (its `uri` is replaced by the chosen address's) with
    /// `body`: picks an address, sends, records connect failures, and retries once on
    /// the next address when the connection failed and the request is idempotent and
    /// `bodiless`. Cost: with several addresses, a retryable request's method and
    /// headers are cloned up front (so it can be sent again).
    pub async fn forward(
        &self,
        path: &str,
        query: Option<&str>,
        mut parts: http::request::Parts,
        body: Body,
        bodiless: bool,
    ) -> Result<Response<Incoming>, GatewayError> {
        let first = self
            .pick()
            .ok_or_else(|| GatewayError::UpstreamUnavailable("no address".into()))?;
        let spare = (bodiless && self.upstream.urls.len() > 1 && idempotent(&parts.method))
            .then(|| (parts.method.clone(), parts.headers.clone()));
        parts.uri = self.target(first, path, query)?;
        let failure = match self.attempt(first, Request::from_parts(parts, body)).await {
            Ok(resp) => return Ok(resp),
            Err(f) => f,
        };
        let (Some((method, headers)), true) = (spare, failure.not_sent) else {
            return Err(failure.error);
        };
        let Some(next) = self.pick_after(first) else {
            return Err(failure.error);
        };
        let mut req = Request::new(crate::body::empty());
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        *req.uri_mut() = self.target(next, path, query)?;
        tracing::debug!(upstream = %self.upstream.name, "connect failed; retrying on the next address");
        self.attempt(next, req).await.map_err(|f| f.error)
    }

    /// One attempt on address `i`, with its health recorded.
    async fn attempt(&self, i: usize, req: Request<Body>) -> Result<Response<Incoming>, Failure> {
        let result = self.send(req).await;
        match &result {
            Ok(_) => self.record_success(i),
            Err(f) if f.not_sent => self.record_connect_failure(i),
            Err(_) => {}
        }
        result
    }

    /// The upstream URI on address `i` for a request path (already normalised and
    /// prefix-stripped) and query.
    fn target(&self, i: usize, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
        let base = self
            .base(i)
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
    async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, Failure> {
        match tokio::time::timeout(self.upstream.response_timeout, self.client.request(req)).await {
            Err(_) => Err(Failure {
                error: GatewayError::UpstreamTimeout,
                not_sent: false,
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // Connect timeouts surface as connect errors whose source says so.
                let text = format!("{e:?}");
                let error =
                    if e.is_connect() && text.contains("Timeout") || text.contains("timed out") {
                        GatewayError::UpstreamTimeout
                    } else {
                        GatewayError::UpstreamUnavailable(text)
                    };
                Err(Failure {
                    error,
                    not_sent: e.is_connect(),
                })
            }
        }
    }
}

/// Methods a retry cannot turn into a different outcome (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_fails: u32, fail_timeout: Duration) -> UpstreamPool {
        UpstreamPool::new(
            Upstream {
                name: "pair".into(),
                urls: vec![
                    Uri::from_static("http://10.0.0.1:80"),
                    Uri::from_static("http://10.0.0.2:80"),
                ],
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                max_fails,
                fail_timeout,
                tls: None,
                http2: false,
            },
            Duration::from_secs(60),
        )
        .expect("no TLS files to read")
    }

    #[test]
    fn round_robin_skips_an_address_after_max_fails_in_a_row() {
        let p = pool(3, Duration::from_secs(60));
        let picks: Vec<_> = (0..4).filter_map(|_| p.pick()).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        p.record_connect_failure(0);
        p.record_connect_failure(0);
        p.record_success(0); // the count is of failures in a row
        p.record_connect_failure(0);
        p.record_connect_failure(0);
        assert!((0..4).filter_map(|_| p.pick()).any(|i| i == 0));
        p.record_connect_failure(0);
        assert!((0..6).filter_map(|_| p.pick()).all(|i| i == 1));
        assert_eq!(p.pick_after(1), None, "no other live address");
        assert_eq!(p.pick_after(0), Some(1));
    }

    #[test]
    fn after_the_cool_down_one_more_failure_skips_the_address_again() {
        let p = pool(3, Duration::from_millis(300));
        for _ in 0..3 {
            p.record_connect_failure(0);
        }
        assert!(!p.is_up(0, p.now_ms()));
        std::thread::sleep(Duration::from_millis(350));
        assert!(p.is_up(0, p.now_ms()), "let through after the cool-down");
        p.record_connect_failure(0);
        assert!(
            !p.is_up(0, p.now_ms()),
            "on probation: one failure is enough"
        );
        std::thread::sleep(Duration::from_millis(350));
        p.record_success(0);
        p.record_connect_failure(0);
        assert!(p.is_up(0, p.now_ms()), "a success clears the count");
    }

    #[test]
    fn when_every_address_is_skipped_all_are_tried() {
        let p = pool(1, Duration::from_secs(60));
        p.record_connect_failure(0);
        p.record_connect_failure(1);
        let picks: Vec<_> = (0..4).filter_map(|_| p.pick()).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&m), "{m}");
        }
    }
}
