//! Token stores: the [`TokenStore`] trait and its two implementations.
//!
//! - [`redis`]: production; shared by every replica, publishes invalidations.
//! - [`embedded`]: redb, one file, for `dev` and single-node deployments.
//! - [`TokenView`]: the compact, immutable form of a [`Lookup`] that the cache holds
//!   and the request path reads.
//!
//! Every method is one logical operation; implementations make each atomic (a redb
//! write transaction, or a single-slot Redis command / Lua script), so a failed call
//! leaves nothing half-written. Store calls happen only on cache misses and in
//! management operations — never on the cached request path.

mod entry;
mod outbox;
mod record;
mod view;

pub use outbox::{Delivery, DeliveryQuery, DeliveryStatus, Outbox, token_of as outbox_token};

pub use record::{
    AuditEvent, AuditQuery, Changed, ClientIpSeen, Invalidation, IpRetention, ListQuery, Lookup,
    NewIpSeen, Page, RateLimit, TokenRecord, TokenType, UsageDelta,
};
pub use view::{Grant, TokenView, interned_grants};

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::broadcast;

use crate::token::TokenHash;

/// How long hourly usage buckets are kept: 8 days, so the console's 7-day chart is
/// always complete.
pub const HOURLY_RETENTION_HOURS: i64 = 8 * 24;

/// Sorts client-IP prefixes most recently seen first (ties: the prefix, so the order
/// is stable).
pub fn sort_client_ips(ips: &mut [ClientIpSeen]) {
    ips.sort_by(|a, b| {
        b.last_seen_at
            .cmp(&a.last_seen_at)
            .then_with(|| a.prefix.cmp(&b.prefix))
    });
}

/// The oldest "last seen" a stored prefix may have to survive a batch whose latest
/// request was at `latest`.
pub fn retention_cutoff(latest: Timestamp, r: IpRetention) -> Timestamp {
    jiff::SignedDuration::try_from(r.retention)
        .ok()
        .and_then(|d| latest.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
}

/// Merges a batch's prefixes (`seen`) into a token's stored ones, then drops those last
/// seen before `cutoff` and, beyond `max`, the least recently seen. Returns the indexes
/// into `seen` of the prefixes `stored` did not hold (unexpired) before. The embedded
/// store's merge; the Redis store runs the same steps in Lua. Leaves `stored` sorted
/// most recently seen first.
pub fn merge_client_ips(
    stored: &mut Vec<ClientIpSeen>,
    seen: &[ClientIpSeen],
    cutoff: Timestamp,
    max: usize,
) -> Vec<usize> {
    stored.retain(|e| e.last_seen_at >= cutoff);
    let mut new = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        match stored.iter_mut().find(|e| e.prefix == s.prefix) {
            Some(e) => e.merge(s),
            None => {
                stored.push(*s);
                new.push(i);
            }
        }
    }
    stored.retain(|e| e.last_seen_at >= cutoff);
    sort_client_ips(stored);
    stored.truncate(max);
    new
}

/// The hour number of `t`: whole hours since the Unix epoch (the key of an hourly
/// usage bucket).
pub fn hour_of(t: jiff::Timestamp) -> i64 {
    t.as_second().div_euclid(3600)
}

/// A store failure. `Unavailable` means "could not reach / timed out" — the data plane
/// answers 503 for uncached tokens; the admin API answers 503 too.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was violated (same id or hash already stored).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A change was refused by the mutation (e.g. reactivating a revoked token).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Stored data could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// A change applied atomically to one record by [`TokenStore::update`]. It may run
/// more than once (optimistic retries), so it must be a pure function of the record.
pub type Mutation<'a> = &'a (dyn Fn(&mut TokenRecord) -> Result<(), String> + Send + Sync);

/// What a subscriber receives: an invalidation (or `All` after a reconnect).
pub type InvalidationRx = broadcast::Receiver<Invalidation>;

/// The token store. See the module doc for atomicity rules. Its webhook outbox is
/// the supertrait [`Outbox`].
#[async_trait]
pub trait TokenStore: Outbox + Send + Sync + 'static {
    /// Resolves a hash to its record: the current secret, or an old one in its grace
    /// period (`grace_until` set). `None` when unknown or its grace has ended.
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<Lookup>, StoreError>;

    /// Whether `owner_id` is disabled.
    async fn owner_disabled(&self, owner_id: &str) -> Result<bool, StoreError>;

    /// Every disabled owner (the set is small: replicas hold it in memory).
    async fn disabled_owners(&self) -> Result<Vec<String>, StoreError>;

    /// Sets or clears an owner's disabled flag.
    async fn set_owner_disabled(&self, owner_id: &str, disabled: bool) -> Result<(), StoreError>;

    /// Stores a new record under `hash`. `Conflict` if the id or the hash exists.
    async fn create(&self, hash: &TokenHash, record: &TokenRecord) -> Result<(), StoreError>;

    /// One record by id.
    async fn get(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// Applies `change` to the record atomically; `None` if the id is unknown.
    /// A mutation error becomes `StoreError::Rejected` and nothing is written.
    async fn update(&self, id: &str, change: Mutation<'_>) -> Result<Option<Changed>, StoreError>;

    /// Moves the record to `new_hash` and sets its display prefix to `new_prefix`, in
    /// the same step. The old hash keeps resolving for `grace` (zero: it stops at
    /// once). `None` if the id is unknown.
    async fn rotate(
        &self,
        id: &str,
        new_hash: &TokenHash,
        new_prefix: &str,
        grace: Duration,
    ) -> Result<Option<Changed>, StoreError>;

    /// Removes the record and every hash that resolves to it.
    async fn delete(&self, id: &str) -> Result<Option<Changed>, StoreError>;

    /// A page of records in id order after `query.cursor`, filtered by `query`.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Adds usage counts and moves `lastUsedAt` forward; unknown ids are skipped.
    /// Also adds each delta's count to the token's hourly bucket for the hour of its
    /// `last_used_at` (a batch covers ≤ 1 s, so at most that much lands in the next
    /// hour's bucket); buckets are kept [`HOURLY_RETENTION_HOURS`].
    ///
    /// Each delta's `ips` are merged into the token's client-IP prefixes (count
    /// added, first seen = min, last seen = max); then prefixes last seen more than
    /// `ips.retention` before the delta's `last_used_at` are dropped, and beyond
    /// `ips.max_per_token` the least recently seen. Returns the prefixes that were
    /// not stored for their token before this call ([`NewIpSeen`]), in batch order;
    /// with concurrent writers (replicas) each new prefix is reported once.
    async fn record_usage(
        &self,
        batch: &[UsageDelta],
        ips: IpRetention,
    ) -> Result<Vec<NewIpSeen>, StoreError>;

    /// The client-IP prefixes token `id` was used from, last seen at or after `since`,
    /// most recently seen first (at most the `max_per_token` last written). Empty for
    /// unknown ids.
    async fn client_ips(&self, id: &str, since: Timestamp)
    -> Result<Vec<ClientIpSeen>, StoreError>;

    /// Requests per hour for token `id` over `hours` consecutive hours starting at
    /// `from_hour` (an [`hour_of`] number), oldest first; zero where nothing was
    /// counted (also for unknown ids and hours past retention).
    async fn hourly_usage(
        &self,
        id: &str,
        from_hour: i64,
        hours: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// Counts a creation for `owner_id` in the current fixed window of `window`;
    /// returns the count including this one and the time left in the window.
    async fn count_creation(
        &self,
        owner_id: &str,
        window: Duration,
    ) -> Result<(u64, Duration), StoreError>;

    /// Charges `cost` against `subject`'s quota of `limit` for the period that starts
    /// at `period_start` and ends at `period_end` (Unix seconds), unless that would
    /// exceed it: one atomic step. Returns whether it was charged and the amount used
    /// afterwards (unchanged when refused). A new period starts from zero.
    async fn charge_quota(
        &self,
        subject: &str,
        period_start: u64,
        period_end: u64,
        cost: u64,
        limit: u64,
    ) -> Result<(bool, u64), StoreError>;

    /// How much of `subject`'s quota the period starting at `period_start` has used.
    async fn quota_used(&self, subject: &str, period_start: u64) -> Result<u64, StoreError>;

    /// Appends an audit event (the store caps the trail's length).
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// Audit events, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError>;

    /// Tells every replica (this one included) to drop cached entries.
    async fn publish(&self, invalidation: &Invalidation) -> Result<(), StoreError>;

    /// Invalidations published by any replica. After a lost subscription is
    /// re-established the receiver gets `Invalidation::All`.
    fn subscribe(&self) -> InvalidationRx;

    /// Cheap reachability check for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}

pub mod embedded;
pub mod redis;

pub use self::embedded::EmbeddedStore;
pub use self::redis::RedisStore;
