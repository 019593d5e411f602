//! The token cache: a [`table::Table`] in front of the [`TokenStore`], keyed by token
//! hash, plus this replica's copy of the (small) set of disabled owners.
//!
//! Token entries and their lifetimes (at most `max_entries` of them; a full cache
//! drops the least recently used it samples, see [`table`]):
//! - positive (`Some(view)`): served for `ttl` as fresh; after that the next hit is
//!   still served while one background refresh runs (stale-while-revalidate). If the
//!   store is unreachable the entry keeps being served until `max_staleness` after it
//!   was fetched (give or take the table's [`table::TICK`]), when it expires — then the
//!   token gets 503, never 401.
//! - negative (`None`, unknown hash): kept `negative_ttl`, so a flood of random
//!   well-formed tokens costs one store call per distinct token per `negative_ttl`.
//!   Expired entries are reclaimed by later inserts and by a sweep of
//!   1/[`SWEEP_PARTS`] of the table every [`SWEEP_EVERY`] (in the invalidation
//!   listener), not only when the cache is full.
//!
//! Disabled owners: the whole set is held in memory (an `ArcSwap`), reloaded on every
//! owner invalidation, on `All`, and every `ttl` as a backstop; checking it costs an
//! atomic load and, only when the set is non-empty, one hash lookup. Until it has been
//! loaded once, requests fail closed (503).
//!
//! Concurrent misses for one key are coalesced by the table into one store call (a
//! failure reaches every waiter; if the caller making the call goes away, a waiter
//! makes it). Invalidations (local changes and the store's pub/sub) drop entries at
//! once; the table's per-shard invalidation count ([`table::Table::generation`]),
//! checked under the shard lock as a fetched entry is written, keeps a fetch that
//! raced an invalidation from being cached.
//! Cost of a hit: one table lookup (a shard read lock, no allocation, no lock held
//! across `await`; freshness timed with [`crate::clock::recent`]).

pub mod table;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use quanta::Instant;
use tokio::sync::broadcast::error::RecvError;

use crate::config::CacheSettings;
use crate::metrics::metrics;
use crate::store::{Invalidation, Lookup, StoreError, TokenStore, TokenView};
use crate::token::{HashKeyState, TokenHash};

use self::table::{Removal, Table};

/// How often the invalidation listener reclaims expired token entries…
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// … from this fraction of the table (a full pass over 1 M entries costs ≈ 10 ms).
pub const SWEEP_PARTS: usize = 8;

/// The store could not be reached and nothing usable was cached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token store unavailable: {0}")]
pub struct Unavailable(pub String);

/// A cache entry. Kept small: a million of them is the cache's whole footprint.
#[derive(Clone)]
struct Slot {
    value: Option<Arc<TokenView>>,
    fetched: Instant,
}

impl Slot {
    /// Keeps only the [`TokenView`] of a found record: what the request path reads.
    fn new(value: Option<Lookup>) -> Self {
        Slot {
            value: value.map(|l| Arc::new(TokenView::new(l))),
            fetched: crate::clock::recent(),
        }
    }
}

struct Inner {
    store: Arc<dyn TokenStore>,
    tokens: Table<Slot, StoreError>,
    /// `None` until loaded once.
    disabled_owners: ArcSwapOption<HashSet<String>>,
    /// Serialises owner-set reloads (and coalesces concurrent first loads).
    owners_reload: tokio::sync::Mutex<()>,
    /// Hashes with a background refresh in flight (stale hits start at most one).
    refreshing: std::sync::Mutex<HashSet<TokenHash, HashKeyState>>,
    /// Set when an owner reload failed; the refresher then retries quickly.
    owners_dirty: AtomicBool,
    ttl: Duration,
}

/// The cache; cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("tokens", &self.inner.tokens.entry_count())
            .finish()
    }
}

fn unavailable(e: &StoreError) -> Unavailable {
    Unavailable(e.to_string())
}

impl TokenCache {
    /// A cache over `store`. Call [`TokenCache::spawn_invalidation_listener`] to follow
    /// other replicas' changes.
    pub fn new(store: Arc<dyn TokenStore>, settings: &CacheSettings) -> Self {
        let keep = settings.max_staleness.max(settings.ttl);
        let negative = settings.negative_ttl;
        let tokens = Table::new(
            settings.max_entries,
            move |slot: &Slot| {
                if slot.value.is_some() { keep } else { negative }
            },
            |removal, n| {
                let cause = match removal {
                    Removal::Size => "size",
                    Removal::Expired => "expired",
                };
                metrics()
                    .cache_evictions
                    .get_or_create(&crate::metrics::EvictionLabels { cause })
                    .inc_by(n);
            },
        );
        TokenCache {
            inner: Arc::new(Inner {
                store,
                tokens,
                disabled_owners: ArcSwapOption::empty(),
                owners_reload: tokio::sync::Mutex::new(()),
                refreshing: std::sync::Mutex::new(HashSet::default()),
                owners_dirty: AtomicBool::new(false),
                ttl: settings.ttl,
            }),
        }
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.inner.store
    }

    /// Number of cached token entries (approximate).
    pub fn len(&self) -> u64 {
        metrics()
            .cache_entries
            .set(self.inner.tokens.entry_count() as i64);
        self.inner.tokens.entry_count()
    }

    /// Whether the cache holds no token entry (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves a hash: from cache, else from the store (coalesced).
    pub async fn lookup(&self, hash: TokenHash) -> Result<Option<Arc<TokenView>>, Unavailable> {
        let inner = &self.inner;
        if let Some(slot) = inner.tokens.get(&hash) {
            match &slot.value {
                Some(_) => {
                    metrics().cache_hits.inc();
                    if crate::clock::recent().saturating_duration_since(slot.fetched) >= inner.ttl {
                        metrics().cache_stale_served.inc();
                        self.refresh_token(hash);
                    }
                }
                None => {
                    metrics().cache_negative_hits.inc();
                }
            }
            return Ok(slot.value);
        }
        metrics().cache_misses.inc();
        let generation = inner.tokens.generation(&hash);
        let store = inner.store.clone();
        let slot = inner
            .tokens
            .get_or_try_insert_with(
                hash,
                async move {
                    let started = Instant::now();
                    let found = store.lookup(&hash).await.map(Slot::new);
                    metrics()
                        .store_seconds
                        .observe(started.elapsed().as_secs_f64());
                    found
                },
                // An invalidation raced this fetch: answer with it, but don't keep it.
                || inner.tokens.generation(&hash) == generation,
            )
            .await
            .map_err(|e| {
                metrics().store_errors.inc();
                unavailable(&e)
            })?;
        Ok(slot.value)
    }

    fn refresh_token(&self, hash: TokenHash) {
        let started = self
            .inner
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hash);
        if !started {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let inner = &this.inner;
            let generation = inner.tokens.generation(&hash);
            match inner.store.lookup(&hash).await {
                Ok(v) => {
                    // Not kept when an invalidation came in meanwhile: it has removed
                    // the stale entry, and the next request fetches afresh.
                    inner.tokens.insert_if(hash, Slot::new(v), || {
                        inner.tokens.generation(&hash) == generation
                    });
                }
                Err(e) => {
                    metrics().store_errors.inc();
                    tracing::debug!(error = %e, "cache refresh failed; serving stale entry");
                }
            }
            // Done either way: after a failure the next stale hit tries again.
            inner
                .refreshing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&hash);
        });
    }

    /// Whether an owner is disabled. Cost on the hot path: one atomic load (plus one
    /// set lookup while any owner is disabled); the store only before the first load.
    pub async fn owner_disabled(&self, owner_id: &str) -> Result<bool, Unavailable> {
        if let Some(set) = &*self.inner.disabled_owners.load() {
            return Ok(!set.is_empty() && set.contains(owner_id));
        }
        self.reload_owners().await?;
        match &*self.inner.disabled_owners.load() {
            Some(set) => Ok(set.contains(owner_id)),
            None => Err(Unavailable("disabled owners not loaded".into())),
        }
    }

    /// Reloads the disabled-owner set from the store.
    async fn reload_owners(&self) -> Result<(), Unavailable> {
        let inner = &self.inner;
        let _guard = inner.owners_reload.lock().await;
        match inner.store.disabled_owners().await {
            Ok(list) => {
                inner
                    .disabled_owners
                    .store(Some(Arc::new(list.into_iter().collect())));
                inner.owners_dirty.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                metrics().store_errors.inc();
                inner.owners_dirty.store(true, Ordering::Release);
                Err(unavailable(&e))
            }
        }
    }

    /// Applies one invalidation to this replica's cache.
    pub async fn apply(&self, invalidation: &Invalidation) {
        let inner = &self.inner;
        metrics().invalidations.inc();
        match invalidation {
            Invalidation::Hash(h) => inner.tokens.invalidate(h),
            Invalidation::Owner(_) => {
                if let Err(e) = self.reload_owners().await {
                    tracing::warn!(error = %e, "owner reload failed; retrying");
                }
            }
            Invalidation::All => {
                inner.tokens.invalidate_all();
                if let Err(e) = self.reload_owners().await {
                    tracing::warn!(error = %e, "owner reload failed; retrying");
                }
            }
        }
    }

    /// Follows the store's invalidation feed until the store drops it (a lagging
    /// receiver clears everything), keeps the disabled-owner set fresh (every `ttl`,
    /// or every 250 ms while a reload is owed), and sweeps expired token entries from
    /// 1/[`SWEEP_PARTS`] of the table every [`SWEEP_EVERY`].
    pub fn spawn_invalidation_listener(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let mut rx = self.inner.store.subscribe();
        tokio::spawn(async move {
            let mut last_owner_load = Instant::now();
            let _ = this.reload_owners().await;
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let due = if this.inner.owners_dirty.load(Ordering::Acquire) {
                    Duration::from_millis(250)
                } else {
                    this.inner.ttl
                };
                let wait = due.saturating_sub(last_owner_load.elapsed());
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Ok(inv) => this.apply(&inv).await,
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "invalidation feed lagged; clearing cache");
                            this.apply(&Invalidation::All).await;
                        }
                        Err(RecvError::Closed) => break,
                    },
                    () = tokio::time::sleep(wait) => {
                        let _ = this.reload_owners().await;
                        last_owner_load = Instant::now();
                    }
                    _ = sweep.tick() => this.inner.tokens.sweep_part(SWEEP_PARTS),
                }
            }
        })
    }
}
