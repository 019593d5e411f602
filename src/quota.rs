//! Request quotas per calendar period (SPEC §3: `429 Quota exceeded`), counted in the
//! store so they hold across replicas.
//!
//! `rate_limit.quota` gives every token (or every owner, for all their tokens
//! together) `requests` per UTC day or month; each route costs `quota_cost` (default
//! 1, 0 = free). A request is charged after it passed every other check, in one atomic
//! store step that refuses to go over the quota (a refused request costs nothing);
//! over quota the answer is `429 {"error":"Quota exceeded"}` with `Retry-After` = the
//! time to the period's end.
//!
//! Store unreachable: the request is let through uncharged and
//! `patgate_quota_unavailable_total` counts it. A quota is an allowance, not a
//! protection (the rate limit is that), and failing closed here would turn a Redis
//! outage into an outage for every cached token.

use std::time::Duration;

use jiff::tz::Offset;
use jiff::{Timestamp, ToSpan};

use crate::auth::Deny;
use crate::config::{QuotaPeriod, QuotaSettings, QuotaSubject, WebhookEvent};
use crate::metrics::metrics;
use crate::store::{StoreError, TokenStore, TokenView};
use crate::webhooks::Webhooks;

/// A subject's quota right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// Requests per period.
    pub limit: u64,
    /// Used so far in this period.
    pub used: u64,
    /// Time until the period ends.
    pub reset: Duration,
}

impl QuotaState {
    /// JSON for whoami: `{limit, used, remaining, resetSeconds}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "limit": self.limit,
            "used": self.used,
            "remaining": self.limit.saturating_sub(self.used),
            "resetSeconds": self.reset.as_secs() + u64::from(self.reset.subsec_nanos() > 0),
        })
    }
}

/// The period containing `now`: its start and end in Unix seconds.
pub fn period(now: Timestamp, p: QuotaPeriod) -> (u64, u64) {
    let secs = u64::try_from(now.as_second()).unwrap_or(0);
    match p {
        QuotaPeriod::Day => {
            let start = secs / 86_400 * 86_400;
            (start, start + 86_400)
        }
        QuotaPeriod::Month => {
            let utc = Offset::UTC;
            let first = utc.to_datetime(now).date().first_of_month();
            let unix = |d: jiff::civil::Date| {
                utc.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
                    .ok()
                    .and_then(|t| u64::try_from(t.as_second()).ok())
            };
            let start = unix(first).unwrap_or(secs);
            let end = first
                .checked_add(1.month())
                .ok()
                .and_then(unix)
                .unwrap_or(start + 31 * 86_400);
            (start, end)
        }
    }
}

fn subject(q: &QuotaSettings, token_id: &str, owner_id: &str) -> String {
    match q.per {
        QuotaSubject::Token => format!("t:{token_id}"),
        QuotaSubject::Owner => format!("o:{owner_id}"),
    }
}

/// Charges `cost` for `token`'s request. `Err(QuotaExceeded)` when it would go over.
/// Tells `hooks` when this request took the subject past 80 % of its quota
/// (`token.quota_warning`) or used it up (`token.quota_exhausted`, also on the first
/// refusal); both at most once per subject and period across replicas.
pub async fn charge(
    store: &dyn TokenStore,
    q: &QuotaSettings,
    token: &TokenView,
    cost: u64,
    hooks: &Webhooks,
) -> Result<Option<QuotaState>, Deny> {
    if cost == 0 {
        return Ok(None);
    }
    let now = crate::clock::wall();
    let (start, end) = period(now, q.period);
    let reset =
        Duration::from_secs(end.saturating_sub(u64::try_from(now.as_second()).unwrap_or(0)));
    let subject = subject(q, token.id(), token.owner_id());
    match store
        .charge_quota(&subject, start, end, cost, q.requests)
        .await
    {
        Ok((charged, used)) => {
            let state = QuotaState {
                limit: q.requests,
                used,
                reset,
            };
            let warn_at = q.requests.saturating_mul(4).div_ceil(5);
            let event = if !charged || used >= q.requests {
                Some(WebhookEvent::TokenQuotaExhausted)
            } else if used >= warn_at && used.saturating_sub(cost) < warn_at {
                Some(WebhookEvent::TokenQuotaWarning)
            } else {
                None
            };
            if let Some(event) = event {
                notify(hooks, event, q, token, &subject, start, state);
            }
            if charged {
                Ok(Some(state))
            } else {
                Err(Deny::QuotaExceeded(reset))
            }
        }
        Err(e) => {
            metrics().quota_unavailable.inc();
            tracing::debug!(error = %e, "quota store unreachable; request not charged");
            Ok(None)
        }
    }
}

/// Emits a quota event once per subject and period.
fn notify(
    hooks: &Webhooks,
    event: WebhookEvent,
    q: &QuotaSettings,
    token: &TokenView,
    subject: &str,
    start: u64,
    state: QuotaState,
) {
    let key = format!("{}:{subject}:{start}", event.name());
    // The marker outlives the period (a month at most) by a day.
    let ttl = state.reset + Duration::from_secs(86_400);
    hooks.emit_once(event, key, ttl, || {
        let mut data = state.to_json();
        if let Some(m) = data.as_object_mut() {
            m.insert("tokenId".into(), token.id().into());
            m.insert("ownerId".into(), token.owner_id().into());
            m.insert(
                "per".into(),
                match q.per {
                    QuotaSubject::Token => "token",
                    QuotaSubject::Owner => "owner",
                }
                .into(),
            );
            m.insert(
                "period".into(),
                match q.period {
                    QuotaPeriod::Day => "day",
                    QuotaPeriod::Month => "month",
                }
                .into(),
            );
        }
        data
    });
}

/// The quota state of `token`'s subject, without charging (for whoami); `None`
/// when the store is unreachable.
pub async fn state(
    store: &dyn TokenStore,
    q: &QuotaSettings,
    token: &TokenView,
) -> Option<QuotaState> {
    let now = crate::clock::wall();
    read(store, q, token.id(), token.owner_id(), now).await.ok()
}

/// The quota state of the subject of the token `token_id` (owned by `owner_id`) at
/// `now`, without charging.
pub async fn read(
    store: &dyn TokenStore,
    q: &QuotaSettings,
    token_id: &str,
    owner_id: &str,
    now: Timestamp,
) -> Result<QuotaState, StoreError> {
    let (start, end) = period(now, q.period);
    let used = store
        .quota_used(&subject(q, token_id, owner_id), start)
        .await?;
    Ok(QuotaState {
        limit: q.requests,
        used,
        reset: Duration::from_secs(end.saturating_sub(u64::try_from(now.as_second()).unwrap_or(0))),
    })
}

/// `GET /v1/tokens/{id}/quota`'s `quota` object: whoami's fields plus the period,
/// whose quota it is and when it resets (`now` + `resetSeconds`, the period's end).
pub fn admin_json(state: &QuotaState, q: &QuotaSettings, now: Timestamp) -> serde_json::Value {
    let mut v = state.to_json();
    let (_, end) = period(now, q.period);
    let reset_at = i64::try_from(end)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|t| t.to_string());
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "period".into(),
            match q.period {
                QuotaPeriod::Day => "day",
                QuotaPeriod::Month => "month",
            }
            .into(),
        );
        o.insert(
            "per".into(),
            match q.per {
                QuotaSubject::Token => "token",
                QuotaSubject::Owner => "owner",
            }
            .into(),
        );
        o.insert("resetAt".into(), reset_at.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn admin_json_names_the_period_subject_and_reset_time() {
        let q = QuotaSettings {
            requests: 100,
            period: QuotaPeriod::Month,
            per: QuotaSubject::Owner,
        };
        let now = ts("2026-11-23T17:05:00Z");
        let state = QuotaState {
            limit: 100,
            used: 30,
            reset: Duration::from_secs(10),
        };
        assert_eq!(
            admin_json(&state, &q, now),
            serde_json::json!({
                "limit": 100, "used": 30, "remaining": 70, "resetSeconds": 10,
                "period": "month", "per": "owner", "resetAt": "2026-12-01T00:00:00Z",
            })
        );
    }

    #[test]
    fn periods_are_utc_calendar_days_and_months() {
        let (s, e) = period(ts("2026-11-23T17:05:00Z"), QuotaPeriod::Day);
        assert_eq!(s, ts("2026-11-23T00:00:00Z").as_second() as u64);
        assert_eq!(e, ts("2026-11-24T00:00:00Z").as_second() as u64);
        let (s, e) = period(ts("2026-11-23T17:05:00Z"), QuotaPeriod::Month);
        assert_eq!(s, ts("2026-11-01T00:00:00Z").as_second() as u64);
        assert_eq!(e, ts("2026-12-01T00:00:00Z").as_second() as u64);
        let (s, e) = period(ts("2026-12-31T23:59:59Z"), QuotaPeriod::Month);
        assert_eq!(s, ts("2026-12-01T00:00:00Z").as_second() as u64);
        assert_eq!(e, ts("2027-01-01T00:00:00Z").as_second() as u64);
        let (s, e) = period(ts("2028-02-29T12:00:00Z"), QuotaPeriod::Month);
        assert_eq!(s, ts("2028-02-01T00:00:00Z").as_second() as u64);
        assert_eq!(e, ts("2028-03-01T00:00:00Z").as_second() as u64);
    }
}
