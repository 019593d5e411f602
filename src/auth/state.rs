//! Stage 3: the token's own state, checked against the clock on every request —
//! also when the record comes from cache.

use jiff::Timestamp;

use super::Deny;
use crate::store::Lookup;

/// Revoked → expired → inactive → old secret past its grace period.
pub fn check(lookup: &Lookup, now: Timestamp) -> Result<(), Deny> {
    let r = &lookup.record;
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
