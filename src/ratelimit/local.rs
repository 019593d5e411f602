//! Per-replica limits (`rate_limit.mode: local`, and the fallback of `mode: redis`):
//! governor GCRA in memory.
//!
//! Each token id gets its own direct limiter built from its override or the config
//! default; a token whose limit changes gets a fresh limiter. Limiters live in a
//! sharded map; [`RateLimiters::sweep`] (run every minute) drops the ones idle for
//! longer than their bucket needs to refill, so forgetting them loses nothing.
//! Cost on the request path: one map lookup (no allocation and no clock read once the
//! token has a limiter) and one lock-free GCRA update (precise clock: see
//! [`crate::clock`] for why not the coarse one).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{RateHeaders, effective_spec};
use crate::config::RateSpec;
use crate::store::TokenView;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct Entry {
    spec: RateSpec,
    limiter: Limiter,
    /// Sweep tick of the last use.
    last_tick: AtomicU64,
}

impl Entry {
    /// Sweep ticks (minutes) after which an idle bucket is certainly full again.
    fn idle_ticks(&self) -> u64 {
        (u64::from(self.spec.per_seconds) / 60 + 2).max(10)
    }
}

/// The limiters of this replica.
pub struct RateLimiters {
    default: Option<RateSpec>,
    limiters: DashMap<String, Arc<Entry>, foldhash::fast::RandomState>,
    clock: DefaultClock,
    /// Advanced by each [`RateLimiters::sweep`]: a clock without a clock read.
    tick: AtomicU64,
}

impl std::fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiters")
            .field("default", &self.default)
            .field("tokens", &self.limiters.len())
            .finish()
    }
}

fn quota(spec: RateSpec) -> Quota {
    let period = Duration::from_secs(u64::from(spec.per_seconds.max(1)));
    let interval = (period / spec.requests.max(1)).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
    // `with_period` is None only for a zero interval, excluded by the max() above.
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl RateLimiters {
    /// Limiters with `default` for tokens without an override.
    pub fn new(default: Option<RateSpec>) -> Self {
        RateLimiters {
            default,
            limiters: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            clock: DefaultClock::default(),
            tick: AtomicU64::new(0),
        }
    }

    /// Counts one request for `token`. `Ok(None)`: unlimited. `Ok(Some)`: allowed,
    /// with header values. `Err`: rejected, with header values and retry time.
    pub fn check(&self, token: &TokenView) -> Result<Option<RateHeaders>, RateHeaders> {
        match effective_spec(token, self.default) {
            Some(spec) => self.check_spec(token.id(), spec).map(Some),
            None => Ok(None),
        }
    }

    /// Counts one request of token `id` against `spec` (a token whose spec changed
    /// gets a fresh bucket). Allocates only for a token's first request.
    pub fn check_spec(&self, id: &str, spec: RateSpec) -> Result<RateHeaders, RateHeaders> {
        let found = self
            .limiters
            .get(id)
            .filter(|e| e.spec == spec)
            .map(|e| e.value().clone());
        let entry = match found {
            Some(e) => e,
            None => {
                let e = Arc::new(Entry {
                    spec,
                    limiter: RateLimiter::direct_with_clock(quota(spec), self.clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                    last_tick: AtomicU64::new(0),
                });
                self.limiters.insert(id.to_owned(), e.clone());
                e
            }
        };
        entry
            .last_tick
            .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
        let interval = quota(spec).replenish_interval();
        match entry.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(RateHeaders {
                    limit: spec.burst,
                    remaining,
                    reset: interval * spec.burst.saturating_sub(remaining),
                    retry_after: Duration::ZERO,
                    spec,
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(RateHeaders {
                    limit: spec.burst,
                    remaining: 0,
                    reset: interval * spec.burst,
                    retry_after: wait,
                    spec,
                })
            }
        }
    }

    /// Advances the idle clock by one tick (call once a minute) and drops limiters
    /// idle long enough for their bucket to be full: forgetting them loses nothing.
    pub fn sweep(&self) {
        let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        self.limiters.retain(|_, e| {
            now.saturating_sub(e.last_tick.load(Ordering::Relaxed)) < e.idle_ticks()
        });
    }

    /// Number of tokens with a limiter.
    pub fn len(&self) -> usize {
        self.limiters.len()
    }

    /// Whether no token has a limiter.
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{Lookup, RateLimit, TokenRecord, TokenType};

    pub(crate) fn token(id: &str, rate: Option<RateLimit>) -> TokenView {
        TokenView::new(Lookup {
            record: record(id, rate),
            grace_until: None,
        })
    }

    fn record(id: &str, rate: Option<RateLimit>) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: "t".into(),
            description: String::new(),
            prefix: "pat_abcdefgh".into(),
            kind: TokenType::User,
            owner_id: "u1".into(),
            org_id: None,
            project_id: None,
            permissions: vec![],
            scopes: vec![],
            created_at: jiff::Timestamp::now(),
            created_by: "test".into(),
            expires_at: None,
            is_active: true,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            ip_allowlist: vec![],
            rate_limit: rate,
            metadata: Default::default(),
        }
    }

    #[test]
    fn burst_is_allowed_then_limited_with_retry_after() {
        let l = RateLimiters::new(Some(RateSpec {
            requests: 1,
            per_seconds: 10,
            burst: 3,
        }));
        let r = token("a", None);
        let remaining: Vec<u32> = (0..3)
            .map(|_| l.check(&r).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let denied = l.check(&r).unwrap_err();
        assert_eq!(denied.remaining, 0);
        assert!(denied.retry_after > Duration::from_secs(8), "{denied:?}");
        assert!(denied.retry_after <= Duration::from_secs(10));
        // Another token has its own bucket.
        assert!(l.check(&token("b", None)).is_ok());
    }

    #[test]
    fn per_token_override_wins_and_unlimited_without_default() {
        let l = RateLimiters::new(None);
        assert_eq!(l.check(&token("a", None)), Ok(None));
        let r = token(
            "b",
            Some(RateLimit {
                requests: 2,
                per_seconds: 60,
                burst: None,
            }),
        );
        assert!(l.check(&r).is_ok());
        assert!(l.check(&r).is_ok());
        assert!(l.check(&r).is_err());
    }

    #[test]
    fn changed_override_gets_a_fresh_bucket() {
        let l = RateLimiters::new(None);
        let r = token(
            "c",
            Some(RateLimit {
                requests: 1,
                per_seconds: 60,
                burst: None,
            }),
        );
        assert!(l.check(&r).is_ok());
        assert!(l.check(&r).is_err());
        let r = token(
            "c",
            Some(RateLimit {
                requests: 5,
                per_seconds: 60,
                burst: None,
            }),
        );
        assert!(l.check(&r).is_ok());
    }

    #[test]
    fn sweep_drops_only_idle_limiters() {
        let l = RateLimiters::new(Some(RateSpec {
            requests: 1,
            per_seconds: 1,
            burst: 1,
        }));
        l.check(&token("idle", None)).ok();
        for _ in 0..5 {
            l.sweep();
        }
        l.check(&token("busy", None)).ok();
        for _ in 0..5 {
            l.sweep();
        }
        assert_eq!(l.len(), 1, "the idle limiter is gone, the recent one stays");
        assert!(l.limiters.contains_key("busy"));
    }
}
