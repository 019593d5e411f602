//! Stage 3: the token's own state, checked against the clock on every request —
//! also when the record comes from cache.

use jiff::Timestamp;

use super::Deny;
use crate::store::Lookup;

/// Revoked → old secret past its grace period → expired → inactive.
///
/// `now` is only called when the record has an expiry or a grace period, so tokens
/// that never expire cost no clock read.
pub fn check(lookup: &Lookup, now: impl FnOnce() -> Timestamp) -> Result<(), Deny> {
    let r = &lookup.record;
    if r.expires_at.is_none() && lookup.grace_until.is_none() {
        return if r.revoked_at.is_some() {
            Err(Deny::Revoked)
        } else if !r.is_active {
            Err(Deny::Inactive)
        } else {
            Ok(())
        };
    }
    let now = now();
    if r.revoked_at.is_some() {
        return Err(Deny::Revoked);
    }
    if let Some(grace) = lookup.grace_until
        && now >= grace
    {
        return Err(Deny::Unknown);
    }
    if let Some(exp) = r.expires_at
        && now >= exp
    {
        return Err(Deny::Expired);
    }
    if !r.is_active {
        return Err(Deny::Inactive);
    }
    Ok(())
}
