//! Prometheus metrics (prometheus-client), served at `GET /metrics` on the admin
//! listener.
//!
//! One process-wide [`Metrics`] (like a default registry): the data plane, cache,
//! server and reload paths record into it; [`Metrics::encode`] renders OpenMetrics
//! text. Label values are bounded — route names from the config, status codes, deny
//! reasons from a fixed list — never token ids or client addresses.
//! Cost on the request path: a few relaxed atomic adds and one family lookup.

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `patgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name (`""` when no route matched).
    pub route: Arc<str>,
    /// Response status code.
    pub status: u16,
    /// `allowed`, `none` (auth: none route) or the deny reason.
    pub outcome: &'static str,
}

/// Labels of `patgate_cache_evictions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// `size` (the cache was full) or `expired` (kept past `max_staleness`, or a
    /// negative entry past `negative_ttl`).
    pub cause: &'static str,
}

/// Labels of per-route histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: Arc<str>,
}

/// Labels of `patgate_config_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `rejected`.
    pub result: &'static str,
}

/// Every metric patgate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, status and auth outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Auth decision latency (seconds).
    pub auth_seconds: Histogram,
    /// Upstream latency to response head (seconds), by route.
    pub upstream_seconds: Family<RouteLabels, Histogram>,
    /// Store lookup latency on cache misses (seconds).
    pub store_seconds: Histogram,
    /// Cache hits.
    pub cache_hits: Counter,
    /// Cache hits of negative (unknown-token) entries.
    pub cache_negative_hits: Counter,
    /// Cache misses (store lookups).
    pub cache_misses: Counter,
    /// Stale entries served while refreshing or while the store is down.
    pub cache_stale_served: Counter,
    /// Cached token entries (set at scrape time).
    pub cache_entries: Gauge,
    /// Entries the cache dropped by itself, by cause.
    pub cache_evictions: Family<EvictionLabels, Counter>,
    /// Store calls that failed.
    pub store_errors: Counter,
    /// Invalidations applied (local and from other replicas).
    pub invalidations: Counter,
    /// Requests rejected by rate limits.
    pub rate_limited: Counter,
    /// Requests let through uncharged because the quota store was unreachable.
    pub quota_unavailable: Counter,
    /// Requests rejected with `429 Quota exceeded`.
    pub quota_exceeded: Counter,
    /// Requests whose global (`mode: redis`) limit was decided by the local fallback.
    pub rate_limit_fallback: Counter,
    /// 1 while global limits are decided by the local fallback (Redis unreachable).
    pub rate_limit_fallback_active: Gauge,
    /// Open client connections (data plane and admin).
    pub open_connections: Gauge,
    /// Config reloads.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Usage counts flushed to the store.
    pub usage_flushed: Counter,
    /// Usage flushes that failed (kept and retried).
    pub usage_flush_errors: Counter,
    /// Unix time of the last successful usage flush (lag = now - this).
    pub usage_last_flush: Gauge,
    /// Invalidation subscriptions re-established after a loss.
    pub pubsub_reconnects: Counter,
    /// Webhook events put in the outbox, by event.
    pub webhook_events: Family<EventLabels, Counter>,
    /// Webhook delivery attempts, by result (`delivered`, `retry`, `failed`).
    pub webhook_attempts: Family<ResultLabels, Counter>,
    /// Webhook events waiting in memory for the store (it was unreachable).
    pub webhook_queued: Gauge,
}

/// Labels of `patgate_webhook_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Event name (`token.revoked`, …).
    pub event: &'static str,
}

fn latency() -> Histogram {
    // 50 µs … ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.5, 14))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("patgate");
        let m = Metrics {
            requests: Family::default(),
            auth_seconds: latency(),
            upstream_seconds: Family::new_with_constructor(latency),
            store_seconds: latency(),
            cache_hits: Counter::default(),
            cache_negative_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_stale_served: Counter::default(),
            cache_entries: Gauge::default(),
            cache_evictions: Family::default(),
            store_errors: Counter::default(),
            invalidations: Counter::default(),
            rate_limited: Counter::default(),
            quota_unavailable: Counter::default(),
            quota_exceeded: Counter::default(),
            rate_limit_fallback: Counter::default(),
            rate_limit_fallback_active: Gauge::default(),
            open_connections: Gauge::default(),
            webhook_events: Family::default(),
            webhook_attempts: Family::default(),
            webhook_queued: Gauge::default(),
            config_reloads: Family::default(),
            usage_flushed: Counter::default(),
            usage_flush_errors: Counter::default(),
            usage_last_flush: Gauge::default(),
            pubsub_reconnects: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Data-plane requests by route, status and auth outcome",
            m.requests.clone(),
        );
        registry.register(
            "auth_decision_seconds",
            "Time to decide allow/deny",
            m.auth_seconds.clone(),
        );
        registry.register(
            "upstream_seconds",
            "Upstream time to response head",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "store_lookup_seconds",
            "Store lookups on cache misses",
            m.store_seconds.clone(),
        );
        registry.register("cache_hits", "Token cache hits", m.cache_hits.clone());
        registry.register(
            "cache_negative_hits",
            "Token cache hits of unknown-token entries",
            m.cache_negative_hits.clone(),
        );
        registry.register("cache_misses", "Token cache misses", m.cache_misses.clone());
        registry.register(
            "cache_stale_served",
            "Stale cache entries served",
            m.cache_stale_served.clone(),
        );
        registry.register(
            "cache_entries",
            "Cached token entries",
            m.cache_entries.clone(),
        );
        registry.register(
            "cache_evictions",
            "Cache entries dropped by the cache itself: size (full) or expired",
            m.cache_evictions.clone(),
        );
        registry.register("store_errors", "Failed store calls", m.store_errors.clone());
        registry.register(
            "invalidations",
            "Cache invalidations applied",
            m.invalidations.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests rejected by rate limits",
            m.rate_limited.clone(),
        );
        registry.register(
            "quota_exceeded",
            "Requests rejected because their quota for the period is used up",
            m.quota_exceeded.clone(),
        );
        registry.register(
            "quota_unavailable",
            "Requests let through uncharged because the quota store was unreachable",
            m.quota_unavailable.clone(),
        );
        registry.register(
            "rate_limit_fallback",
            "Requests whose global rate limit was decided locally because Redis was unreachable",
            m.rate_limit_fallback.clone(),
        );
        registry.register(
            "rate_limit_fallback_active",
            "1 while global rate limits fall back to per-replica limits",
            m.rate_limit_fallback_active.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections",
            m.open_connections.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads",
            m.config_reloads.clone(),
        );
        registry.register(
            "usage_flushed",
            "Token usage counts flushed to the store",
            m.usage_flushed.clone(),
        );
        registry.register(
            "usage_flush_errors",
            "Usage flushes that failed and will be retried",
            m.usage_flush_errors.clone(),
        );
        registry.register(
            "usage_last_flush_timestamp_seconds",
            "Unix time of the last successful usage flush (flush lag = time() - this)",
            m.usage_last_flush.clone(),
        );
        registry.register(
            "pubsub_reconnects",
            "Invalidation subscriptions re-established after a loss (caches cleared)",
            m.pubsub_reconnects.clone(),
        );
        registry.register(
            "webhook_events",
            "Webhook events put in the outbox",
            m.webhook_events.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by result (delivered, retry, failed)",
            m.webhook_attempts.clone(),
        );
        registry.register(
            "webhook_queued",
            "Webhook events held in memory because the store was unreachable",
            m.webhook_queued.clone(),
        );
        Metrics { registry, ..m }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics_with_prefix() {
        let m = metrics();
        m.requests
            .get_or_create(&RequestLabels {
                route: "api".into(),
                status: 200,
                outcome: "allowed",
            })
            .inc();
        m.auth_seconds.observe(0.000_2);
        let text = m.encode();
        assert!(
            text.contains(r#"patgate_requests_total{route="api",status="200",outcome="allowed"}"#),
            "{text}"
        );
        assert!(text.contains("patgate_auth_decision_seconds_bucket"));
        assert!(text.contains("patgate_open_connections"));
        assert!(text.ends_with("# EOF\n"));
    }
}
