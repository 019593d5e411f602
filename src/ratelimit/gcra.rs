//! The GCRA step that `rate_limit.mode: redis` runs inside Redis, as pure Rust (the
//! reference the unit tests pin down) and as the Lua script ([`GCRA_LUA`]) that mirrors
//! it line by line.
//!
//! State per token: one integer, the theoretical arrival time (TAT, µs on the Redis
//! clock). With emission interval `T = per_seconds / requests` and bucket `burst`:
//! a request at `now` is admitted iff `now >= max(tat, now) + T - burst·T`; admission
//! moves the TAT to `max(tat, now) + T`. The key expires when the TAT passes, i.e.
//! when the bucket is full again, so an idle token costs Redis nothing.
//! Times come from Redis `TIME` inside the script: replicas' clocks never matter.

use std::time::Duration;

use crate::config::RateSpec;

/// The parameters of one token's bucket, in the script's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraParams {
    /// Emission interval `T` in µs (≥ 1).
    pub interval_us: u64,
    /// Bucket size (≥ 1).
    pub burst: u32,
}

impl GcraParams {
    /// `T = per_seconds / requests` (at least 1 µs), bucket `burst` (at least 1).
    pub fn of(spec: RateSpec) -> Self {
        let period_us = u64::from(spec.per_seconds.max(1)) * 1_000_000;
        GcraParams {
            interval_us: (period_us / u64::from(spec.requests.max(1))).max(1),
            burst: spec.burst.max(1),
        }
    }
}

/// The outcome of one step (what the script returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraOutcome {
    /// Admitted.
    pub allowed: bool,
    /// Requests that would still be admitted right now.
    pub remaining: u32,
    /// Time until the bucket is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// Time until the next request would be admitted (zero when admitted).
    pub retry_after: Duration,
}

/// One GCRA step at `now_us` on stored TAT `tat_us` (`None`: no key, a full bucket).
/// Returns the outcome and the TAT to store (`None` when rejected: nothing is written).
pub fn step(p: GcraParams, now_us: u64, tat_us: Option<u64>) -> (GcraOutcome, Option<u64>) {
    let t = p.interval_us.max(1);
    let capacity = t.saturating_mul(u64::from(p.burst.max(1)));
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat.saturating_add(t);
    // allow_at = new_tat - capacity; admitted iff now >= allow_at.
    if new_tat.saturating_sub(now_us) > capacity {
        let retry = new_tat - now_us - capacity;
        return (
            GcraOutcome {
                allowed: false,
                remaining: 0,
                reset: Duration::from_micros(tat - now_us),
                retry_after: Duration::from_micros(retry),
            },
            None,
        );
    }
    let remaining = (capacity - (new_tat - now_us)) / t;
    (
        GcraOutcome {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: Duration::from_micros(new_tat - now_us),
            retry_after: Duration::ZERO,
        },
        Some(new_tat),
    )
}

/// [`step`] in Lua. `KEYS[1]` = the token's bucket key, `ARGV[1]` = interval µs,
/// `ARGV[2]` = burst. Returns `{allowed (0/1), remaining, reset µs, retry_after µs}`.
/// µs since the epoch (~2^51) are exact in Lua's doubles; `%.0f` keeps them integral
/// in the stored string. The key's PX is the time to a full bucket, rounded up.
pub const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local v = tonumber(stored)
  if v and v > now then tat = v end
end
local new_tat = tat + interval
if new_tat - now > capacity then
  return {0, 0, tat - now, new_tat - now - capacity}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((capacity - (new_tat - now)) / interval), new_tat - now, 0}
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(requests: u32, per_seconds: u32, burst: u32) -> GcraParams {
        GcraParams::of(RateSpec {
            requests,
            per_seconds,
            burst,
        })
    }

    /// Runs `n` requests at `now`, threading the TAT; returns the admitted count.
    fn drive(params: GcraParams, now: u64, tat: &mut Option<u64>, n: usize) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            let (o, new) = step(params, now, *tat);
            if o.allowed {
                admitted += 1;
                *tat = new;
            } else {
                assert_eq!(new, None, "a rejection writes nothing");
            }
        }
        admitted
    }

    #[test]
    fn interval_is_period_over_requests() {
        assert_eq!(p(10, 1, 5).interval_us, 100_000);
        assert_eq!(p(1, 60, 1).interval_us, 60_000_000);
        assert_eq!(p(3, 1, 1).interval_us, 333_333);
        // More than a million per second still has a non-zero interval.
        assert_eq!(p(u32::MAX, 1, 1).interval_us, 1);
    }

    #[test]
    fn a_full_bucket_admits_burst_then_counts_down_remaining() {
        let g = p(10, 1, 3);
        let now = 1_700_000_000_000_000;
        let mut tat = None;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (o, new) = step(g, now, tat);
            assert!(o.allowed);
            remaining.push(o.remaining);
            tat = new;
        }
        assert_eq!(remaining, vec![2, 1, 0]);
        // After three admissions the bucket is full again in 3 intervals.
        assert_eq!(tat, Some(now + 300_000));
        let (o, new) = step(g, now, tat);
        assert!(!o.allowed);
        assert_eq!(new, None);
        assert_eq!(o.remaining, 0);
        assert_eq!(o.retry_after, Duration::from_millis(100));
        assert_eq!(o.reset, Duration::from_millis(300));
    }

    #[test]
    fn admits_one_more_per_interval_after_the_burst() {
        let g = p(10, 1, 3);
        let start = 1_000_000_000;
        let mut tat = None;
        assert_eq!(drive(g, start, &mut tat, 10), 3);
        // 99 ms later: nothing yet; 100 ms: exactly one.
        assert_eq!(drive(g, start + 99_999, &mut tat, 5), 0);
        assert_eq!(drive(g, start + 100_000, &mut tat, 5), 1);
        // Idle for a long time: the bucket refills to `burst`, never beyond.
        assert_eq!(drive(g, start + 60_000_000, &mut tat, 10), 3);
    }

    #[test]
    fn sustained_rate_admits_rate_times_time_plus_burst() {
        // 20/s with burst 5, offered 1000/s for 3 s: 20 × 3 + 5 (±1 for the edge).
        let g = p(20, 1, 5);
        let start = 5_000_000;
        let mut tat = None;
        let mut admitted = 0;
        for ms in 0..3000u64 {
            admitted += drive(g, start + ms * 1000, &mut tat, 1);
        }
        assert!((64..=66).contains(&admitted), "{admitted}");
    }

    #[test]
    fn retry_after_points_at_the_first_admitted_instant() {
        let g = p(1, 10, 2);
        let now = 42_000_000;
        let mut tat = None;
        assert_eq!(drive(g, now, &mut tat, 2), 2);
        let (o, _) = step(g, now + 1_000_000, tat);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, Duration::from_secs(9));
        let (o, _) = step(g, now + 1_000_000 + o.retry_after.as_micros() as u64, tat);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
    }

    #[test]
    fn a_stale_tat_in_the_past_means_a_full_bucket() {
        let g = p(5, 1, 5);
        let (o, new) = step(g, 10_000_000, Some(1));
        assert!(o.allowed);
        assert_eq!(o.remaining, 4);
        assert_eq!(new, Some(10_200_000));
        assert_eq!(o.reset, Duration::from_millis(200));
    }
}
