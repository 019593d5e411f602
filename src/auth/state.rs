//! Stage 3: the token's own state, checked against the clock on every request —
//! also when the record comes from cache.

use jiff::Timestamp;

use super::Deny;
use crate::store::TokenView;

/// Revoked → old secret past its grace period → expired → inactive.
///
/// `now` is only called when the token has an expiry or a grace period, so tokens
/// that never expire cost no clock read.
pub fn check(token: &TokenView, now: impl FnOnce() -> Timestamp) -> Result<(), Deny> {
    let expires_at = token.expires_at();
    let grace_until = token.grace_until();
    if expires_at.is_none() && grace_until.is_none() {
        return if token.is_revoked() {
            Err(Deny::Revoked)
        } else if !token.is_active() {
            Err(Deny::Inactive)
        } else {
            Ok(())
        };
    }
    let now = now();
    if token.is_revoked() {
        return Err(Deny::Revoked);
    }
    if let Some(grace) = grace_until
        && now >= grace
    {
        return Err(Deny::Unknown);
    }
    if let Some(exp) = expires_at
        && now >= exp
    {
        return Err(Deny::Expired);
    }
    if !token.is_active() {
        return Err(Deny::Inactive);
    }
    Ok(())
}
