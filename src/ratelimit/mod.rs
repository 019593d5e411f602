//! Per-token rate limits and the `RateLimit-*` headers.
//!
//! One [`RateLimiter`], chosen when a config generation is built:
//! - [`RateLimiter::Local`] (`rate_limit.mode: local`, the default): per replica, in
//!   memory ([`local`], governor). No I/O.
//! - [`RateLimiter::Global`] (`mode: redis`): one limit shared by every replica, an
//!   atomic GCRA step inside Redis ([`gcra`], [`global`]): one round trip per request.
//!   While Redis is unreachable each replica falls back to a local limiter holding
//!   its share of the limit (`rate_limit.replicas`) — never unlimited, never
//!   rejecting everything.
//!
//! Both report the same [`RateHeaders`], so responses look alike in either mode.

pub mod gcra;
pub mod global;
pub mod local;

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use self::gcra::{GcraOutcome, GcraParams};
pub use self::global::{GcraBackend, GlobalLimiter};
pub use self::local::RateLimiters;
use crate::config::RateSpec;
use crate::store::TokenView;

/// Values of the `RateLimit-*` (and on 429 `Retry-After`) headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// Bucket size (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Time until the bucket is full again (`RateLimit-Reset`, seconds, rounded up).
    pub reset: Duration,
    /// Time until the next request would be allowed (zero when allowed).
    pub retry_after: Duration,
    /// The policy, for `RateLimit-Policy`.
    pub spec: RateSpec,
}

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateHeaders {
    /// Writes `RateLimit-Limit`, `-Remaining`, `-Reset` and `-Policy`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(REMAINING.clone(), HeaderValue::from(self.remaining));
        headers.insert(RESET.clone(), HeaderValue::from(ceil_secs(self.reset)));
        let policy = format!(
            "{};w={};burst={}",
            self.spec.requests, self.spec.per_seconds, self.spec.burst
        );
        if let Ok(v) = HeaderValue::from_str(&policy) {
            headers.insert(POLICY.clone(), v);
        }
    }

    /// JSON form for whoami.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "limit": self.limit,
            "remaining": self.remaining,
            "resetSeconds": ceil_secs(self.reset),
            "requests": self.spec.requests,
            "perSeconds": self.spec.per_seconds,
            "burst": self.spec.burst,
        })
    }
}

/// The spec that applies to a token: its override, else the default.
pub fn effective_spec(token: &TokenView, default: Option<RateSpec>) -> Option<RateSpec> {
    match token.rate_limit() {
        Some(r) => Some(RateSpec {
            requests: r.requests.max(1),
            per_seconds: r.per_seconds.max(1),
            burst: r.burst(),
        }),
        None => default,
    }
}

/// The rate limiter of one config generation.
#[derive(Debug)]
pub enum RateLimiter {
    /// Per replica, in memory.
    Local(RateLimiters),
    /// Shared by every replica, in Redis, with a local fallback.
    Global(GlobalLimiter),
}

impl RateLimiter {
    /// Per-replica limits with `default` for tokens without an override.
    pub fn local(default: Option<RateSpec>) -> Self {
        RateLimiter::Local(RateLimiters::new(default))
    }

    /// Counts one request for `token`. `Ok(None)`: unlimited. `Ok(Some)`: allowed,
    /// with header values. `Err`: rejected, with header values and retry time.
    /// Cost: local — no I/O; global — one Redis round trip (none while in fallback).
    pub async fn check(&self, token: &TokenView) -> Result<Option<RateHeaders>, RateHeaders> {
        match self {
            RateLimiter::Local(l) => l.check(token),
            RateLimiter::Global(g) => g.check(token).await,
        }
    }

    /// Drops idle in-memory buckets (call once a minute).
    pub fn sweep(&self) {
        match self {
            RateLimiter::Local(l) => l.sweep(),
            RateLimiter::Global(g) => g.sweep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_written() {
        let mut h = HeaderMap::new();
        RateHeaders {
            limit: 10,
            remaining: 4,
            reset: Duration::from_millis(1500),
            retry_after: Duration::ZERO,
            spec: RateSpec {
                requests: 10,
                per_seconds: 1,
                burst: 10,
            },
        }
        .apply(&mut h);
        assert_eq!(h["ratelimit-limit"], "10");
        assert_eq!(h["ratelimit-remaining"], "4");
        assert_eq!(h["ratelimit-reset"], "2");
        assert_eq!(h["ratelimit-policy"], "10;w=1;burst=10");
    }
}
