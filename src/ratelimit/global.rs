//! Global limits (`rate_limit.mode: redis`): one bucket per token shared by every
//! replica, stepped atomically in Redis ([`super::gcra`]), with a local fallback.
//!
//! Fallback: when a step fails (Redis unreachable, command timeout, any error) the
//! request is decided by an in-memory limiter holding this replica's share of the
//! limit — `requests` and `burst` divided by `rate_limit.replicas`, rounded up, at
//! least 1 — so an outage neither lifts the limit nor rejects everyone. For
//! [`FALLBACK_PROBE`] after a failure requests go straight to the fallback (no
//! request waits for a dead Redis more than once per probe interval); then the next
//! request tries Redis again. `patgate_rate_limit_fallback_total` counts requests
//! decided by the fallback, `patgate_rate_limit_fallback_active` is 1 while in it.
//!
//! Cost on the request path: one `EVALSHA` round trip (bounded by
//! `store.redis.command_timeout_ms`); in fallback, the local limiter's cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::gcra::{GcraOutcome, GcraParams};
use super::{RateHeaders, RateLimiters, effective_spec};
use crate::config::RateSpec;
use crate::metrics::metrics;
use crate::store::{StoreError, TokenView};

/// How long after a failed step requests skip Redis and use the fallback.
pub const FALLBACK_PROBE: Duration = Duration::from_secs(1);

/// Where the shared buckets live (Redis; a fake in tests).
#[async_trait]
pub trait GcraBackend: Send + Sync + 'static {
    /// One atomic GCRA step for token `token_id`'s bucket on the backend's clock.
    async fn gcra(&self, token_id: &str, params: GcraParams) -> Result<GcraOutcome, StoreError>;
}

/// Global limits with a local fallback. See the module doc.
pub struct GlobalLimiter {
    /// Where the shared buckets live.
    backend: Arc<dyn GcraBackend>,
    /// Spec for tokens without an override.
    default: Option<RateSpec>,
    /// `rate_limit.replicas` (≥ 1): the fallback holds 1/replicas of each limit.
    replicas: u32,
    /// The fallback's buckets (keyed by token id like the shared ones).
    fallback: RateLimiters,
    /// Whether the last step failed (for the gauge and one log line per outage).
    in_fallback: AtomicBool,
    /// Milliseconds since `epoch` before which Redis is not tried.
    skip_until_ms: AtomicU64,
    /// Origin of `skip_until_ms`.
    epoch: Instant,
}

impl std::fmt::Debug for GlobalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalLimiter")
            .field("default", &self.default)
            .field("replicas", &self.replicas)
            .field("in_fallback", &self.in_fallback)
            .finish_non_exhaustive()
    }
}

/// One replica's share of `spec` among `replicas`: requests and burst divided,
/// rounded up, at least 1; the period unchanged.
pub fn share(spec: RateSpec, replicas: u32) -> RateSpec {
    let n = replicas.max(1);
    RateSpec {
        requests: spec.requests.div_ceil(n).max(1),
        per_seconds: spec.per_seconds,
        burst: spec.burst.div_ceil(n).max(1),
    }
}

impl GlobalLimiter {
    /// Global limits in `backend`, `default` for tokens without an override, and a
    /// fallback holding 1/`replicas` of each limit.
    pub fn new(backend: Arc<dyn GcraBackend>, default: Option<RateSpec>, replicas: u32) -> Self {
        GlobalLimiter {
            backend,
            default,
            replicas: replicas.max(1),
            fallback: RateLimiters::new(None),
            in_fallback: AtomicBool::new(false),
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts one request for `token`; see [`super::RateLimiter::check`].
    pub async fn check(&self, token: &TokenView) -> Result<Option<RateHeaders>, RateHeaders> {
        let Some(spec) = effective_spec(token, self.default) else {
            return Ok(None);
        };
        if self.now_ms() >= self.skip_until_ms.load(Ordering::Relaxed) {
            match self.backend.gcra(token.id(), GcraParams::of(spec)).await {
                Ok(o) => {
                    if self.in_fallback.swap(false, Ordering::Relaxed) {
                        metrics().rate_limit_fallback_active.set(0);
                        tracing::info!("global rate limits: Redis reachable again");
                    }
                    return headers(o, spec).map(Some);
                }
                Err(e) => {
                    let probe = u64::try_from(FALLBACK_PROBE.as_millis()).unwrap_or(1000);
                    self.skip_until_ms
                        .store(self.now_ms().saturating_add(probe), Ordering::Relaxed);
                    if !self.in_fallback.swap(true, Ordering::Relaxed) {
                        metrics().rate_limit_fallback_active.set(1);
                        tracing::warn!(
                            error = %e,
                            replicas = self.replicas,
                            "global rate limits unavailable; limiting locally with this replica's share"
                        );
                    }
                }
            }
        }
        metrics().rate_limit_fallback.inc();
        self.fallback
            .check_spec(token.id(), share(spec, self.replicas))
            .map(Some)
    }

    /// Drops idle fallback buckets.
    pub fn sweep(&self) {
        self.fallback.sweep();
    }

    /// Whether requests are currently decided by the local fallback.
    pub fn in_fallback(&self) -> bool {
        self.in_fallback.load(Ordering::Relaxed)
    }
}

/// Header values of a step's outcome.
fn headers(o: GcraOutcome, spec: RateSpec) -> Result<RateHeaders, RateHeaders> {
    let h = RateHeaders {
        limit: spec.burst,
        remaining: o.remaining,
        reset: o.reset,
        retry_after: o.retry_after,
        spec,
    };
    if o.allowed { Ok(h) } else { Err(h) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::gcra::step;
    use crate::ratelimit::local::tests::token;
    use std::sync::Mutex;

    /// An in-memory backend on a fixed clock that can be switched off.
    #[derive(Default)]
    struct Fake {
        tat: Mutex<Option<u64>>,
        down: AtomicBool,
        calls: AtomicU64,
    }

    #[async_trait]
    impl GcraBackend for Fake {
        async fn gcra(&self, _id: &str, p: GcraParams) -> Result<GcraOutcome, StoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("redis: command timed out".into()));
            }
            let mut tat = self.tat.lock().unwrap();
            let (o, new) = step(p, 1_000_000, *tat);
            if new.is_some() {
                *tat = new;
            }
            Ok(o)
        }
    }

    fn spec(requests: u32, burst: u32) -> RateSpec {
        RateSpec {
            requests,
            per_seconds: 60,
            burst,
        }
    }

    #[test]
    fn share_divides_rounding_up_never_to_zero() {
        assert_eq!(share(spec(100, 30), 3), spec(34, 10));
        assert_eq!(share(spec(1, 1), 5), spec(1, 1));
        assert_eq!(share(spec(10, 10), 0), spec(10, 10));
    }

    #[tokio::test]
    async fn shared_bucket_decides_and_reports_headers() {
        let fake = Arc::new(Fake::default());
        let l = GlobalLimiter::new(fake.clone(), Some(spec(6, 2)), 3);
        let r = token("a", None);
        let h = l.check(&r).await.unwrap().unwrap();
        assert_eq!((h.limit, h.remaining), (2, 1));
        assert!(l.check(&r).await.is_ok());
        let denied = l.check(&r).await.unwrap_err();
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after, Duration::from_secs(10));
        assert!(!l.in_fallback());
    }

    #[tokio::test]
    async fn unreachable_backend_falls_back_to_the_replica_share_then_recovers() {
        let fake = Arc::new(Fake::default());
        fake.down.store(true, Ordering::Relaxed);
        // 9 per minute, burst 9, 3 replicas: the fallback admits 3 and then limits.
        let l = GlobalLimiter::new(fake.clone(), Some(spec(9, 9)), 3);
        let r = token("a", None);
        let before = metrics().rate_limit_fallback.get();
        let results: Vec<bool> = futures_util::future::join_all((0..6).map(|_| l.check(&r)))
            .await
            .into_iter()
            .map(|x| x.is_ok())
            .collect();
        assert_eq!(results.iter().filter(|ok| **ok).count(), 3, "{results:?}");
        assert!(l.in_fallback());
        assert!(metrics().rate_limit_fallback.get() >= before + 6);
        // Within the probe interval Redis is not asked again.
        let calls = fake.calls.load(Ordering::Relaxed);
        let _ = l.check(&r).await;
        assert_eq!(fake.calls.load(Ordering::Relaxed), calls);
        // After it, the next request probes and the shared bucket is back.
        fake.down.store(false, Ordering::Relaxed);
        l.skip_until_ms.store(0, Ordering::Relaxed);
        let h = l.check(&r).await.unwrap().unwrap();
        assert_eq!(h.limit, 9);
        assert!(!l.in_fallback());
    }

    #[tokio::test]
    async fn unlimited_tokens_never_touch_the_backend() {
        let fake = Arc::new(Fake::default());
        let l = GlobalLimiter::new(fake.clone(), None, 1);
        assert_eq!(l.check(&token("a", None)).await, Ok(None));
        assert_eq!(fake.calls.load(Ordering::Relaxed), 0);
    }
}
