//! The authentication decision: a fixed, documented order of plain functions.
//!
//! 1. [`credentials`]: `Authorization: Bearer <token>` is present and well-formed
//!    (prefix, length, charset, checksum) — no I/O, no allocation.
//! 2. lookup: SHA-256 of the token, then the [`crate::cache::TokenCache`] (store on a
//!    miss). Store unreachable and nothing cached → 503, never 401.
//! 3. [`state`]: revoked → expired (against the clock, also for cached records) →
//!    inactive → old secret past its grace → owner disabled.
//! 4. [`ip_allowlist`]: the client IP against the token's `ipAllowlist`.
//! 5. [`policy`]: the route's required scopes and permissions, project/org binding.
//! 6. rate limit ([`crate::ratelimit`]): local, or one Redis round trip with
//!    `rate_limit.mode: redis`.
//!
//! Each stage returns `Result<_, Deny>`; the first `Deny` ends the pipeline.

pub mod credentials;
pub mod ip_allowlist;
pub mod policy;
pub mod state;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::cache::TokenCache;
use crate::config::{Route, TokenSettings};
use crate::ratelimit::{RateHeaders, RateLimiter};
use crate::store::TokenView;
use crate::token::{FormatError, TokenHash};

/// Why a request was refused. Mapped to status + message in [`crate::error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    /// No `Authorization` header, or not a Bearer credential.
    Missing,
    /// A Bearer credential that is not a well-formed token.
    Malformed(FormatError),
    /// Well-formed, but no such hash (or an old secret past its grace period).
    Unknown,
    /// Revoked (permanent).
    Revoked,
    /// `expiresAt` has passed.
    Expired,
    /// `isActive` is false.
    Inactive,
    /// The token's owner is disabled.
    OwnerDisabled,
    /// Client IP outside the token's allowlist.
    IpNotAllowed,
    /// The route requires this scope.
    MissingScope(String),
    /// The route requires this permission.
    MissingPermission(String),
    /// Project/org-bound token used on another project's/org's path.
    WrongProject,
    /// Over the token's rate limit.
    RateLimited(RateHeaders),
    /// The quota for the period is used up; the period ends in this long.
    QuotaExceeded(std::time::Duration),
    /// The store is unreachable and the token is not cached.
    BackendUnavailable,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// What the token resolved to (shared with the cache; no copy per request).
    pub token: Arc<TokenView>,
    /// Rate-limit state after counting this request, when the token is limited.
    pub rate: Option<RateHeaders>,
}

/// What a request looks like to the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Request headers (for `Authorization`).
    pub headers: &'a HeaderMap,
    /// Method (for `permissions_by_method`).
    pub method: &'a Method,
    /// Normalised path (for project/org binding).
    pub path: &'a str,
    /// Resolved client IP.
    pub client_ip: IpAddr,
}

/// Runs the pipeline. `route` is `None` for patgate's own endpoints (whoami), which
/// check state, IP and rate limit but no route policy.
pub async fn authenticate(
    facts: RequestFacts<'_>,
    route: Option<&Route>,
    tokens: &TokenSettings,
    cache: &TokenCache,
    limiters: &RateLimiter,
) -> Result<Identity, Deny> {
    let token = credentials::bearer(facts.headers)?;
    credentials::check_format(token, tokens)?;
    let hash = TokenHash::of(token);
    let token = cache
        .lookup(hash)
        .await
        .map_err(|_| Deny::BackendUnavailable)?
        .ok_or(Deny::Unknown)?;
    state::check(&token, crate::clock::wall)?;
    let owner_disabled = cache
        .owner_disabled(token.owner_id())
        .await
        .map_err(|_| Deny::BackendUnavailable)?;
    if owner_disabled {
        return Err(Deny::OwnerDisabled);
    }
    ip_allowlist::check(&token, facts.client_ip)?;
    if let Some(route) = route {
        policy::check(&token, route, facts.method, facts.path)?;
    }
    let rate = limiters.check(&token).await.map_err(Deny::RateLimited)?;
    Ok(Identity { token, rate })
}
