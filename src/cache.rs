//! The token cache: moka in front of the [`TokenStore`], keyed by token hash.
//!
//! Entries and their lifetimes:
//! - positive (`Some(lookup)`): served for `ttl` as fresh; after that the next hit is
//!   still served while one background refresh runs (stale-while-revalidate). If the
//!   store is unreachable the entry keeps being served until `max_staleness` after it
//!   was fetched, when moka evicts it — then the token gets 503, never 401.
//! - negative (`None`, unknown hash): kept `negative_ttl`, so a flood of random
//!   well-formed tokens costs one store call per distinct token per `negative_ttl`.
//! - owner disabled-state: same rules as positive entries.
//!
//! Concurrent misses for one key are coalesced by moka's `try_get_with` into one
//! store call. Invalidations (local changes and the store's pub/sub) drop entries at
//! once; an epoch counter keeps a fetch that raced an invalidation from being cached.
//! Cost of a hit: one moka lookup (no allocation, no lock held across `await`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use tokio::sync::broadcast::error::RecvError;

use crate::config::CacheSettings;
use crate::store::{Invalidation, Lookup, StoreError, TokenStore};
use crate::token::TokenHash;

/// The store could not be reached and nothing usable was cached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token store unavailable: {0}")]
pub struct Unavailable(pub String);

#[derive(Clone)]
struct Slot<V> {
    value: V,
    fetched: Instant,
    refreshing: Arc<AtomicBool>,
}

impl<V> Slot<V> {
    fn new(value: V) -> Self {
        Slot {
            value,
            fetched: Instant::now(),
            refreshing: Arc::new(AtomicBool::new(false)),
        }
    }
}

struct TokenExpiry {
    positive: Duration,
    negative: Duration,
}

impl Expiry<TokenHash, Slot<Option<Arc<Lookup>>>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Slot<Option<Arc<Lookup>>>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(if value.value.is_some() {
            self.positive
        } else {
            self.negative
        })
    }

    fn expire_after_update(
        &self,
        key: &TokenHash,
        value: &Slot<Option<Arc<Lookup>>>,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Positive hits.
    pub hits: AtomicU64,
    /// Negative hits (unknown hash answered from cache).
    pub negative_hits: AtomicU64,
    /// Misses that went to the store.
    pub misses: AtomicU64,
    /// Stale entries served (refresh pending or store down).
    pub stale_served: AtomicU64,
    /// Store calls that failed.
    pub store_errors: AtomicU64,
    /// Invalidations applied.
    pub invalidations: AtomicU64,
}

struct Inner {
    store: Arc<dyn TokenStore>,
    tokens: Cache<TokenHash, Slot<Option<Arc<Lookup>>>>,
    owners: Cache<String, Slot<bool>>,
    ttl: Duration,
    epoch: AtomicU64,
    stats: CacheStats,
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
        let tokens = Cache::builder()
            .max_capacity(settings.max_entries)
            .expire_after(TokenExpiry {
                positive: keep,
                negative: settings.negative_ttl,
            })
            .build();
        let owners = Cache::builder()
            .max_capacity(settings.max_entries)
            .time_to_live(keep)
            .build();
        TokenCache {
            inner: Arc::new(Inner {
                store,
                tokens,
                owners,
                ttl: settings.ttl,
                epoch: AtomicU64::new(0),
                stats: CacheStats::default(),
            }),
        }
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.inner.store
    }

    /// Counters.
    pub fn stats(&self) -> &CacheStats {
        &self.inner.stats
    }

    /// Number of cached token entries (approximate).
    pub fn len(&self) -> u64 {
        self.inner.tokens.entry_count()
    }

    /// Whether the cache holds no token entry (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves a hash: from cache, else from the store (coalesced).
    pub async fn lookup(&self, hash: TokenHash) -> Result<Option<Arc<Lookup>>, Unavailable> {
        let inner = &self.inner;
        if let Some(slot) = inner.tokens.get(&hash).await {
            match &slot.value {
                Some(_) => {
                    inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                    if slot.fetched.elapsed() >= inner.ttl {
                        inner.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                        self.refresh_token(hash, &slot);
                    }
                }
                None => {
                    inner.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Ok(slot.value);
        }
        inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        let epoch = inner.epoch.load(Ordering::Acquire);
        let store = inner.store.clone();
        let slot = inner
            .tokens
            .try_get_with(hash, async move {
                store
                    .lookup(&hash)
                    .await
                    .map(|v| Slot::new(v.map(Arc::new)))
            })
            .await
            .map_err(|e| {
                inner.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                unavailable(&e)
            })?;
        if inner.epoch.load(Ordering::Acquire) != epoch {
            // An invalidation raced this fetch: answer with it, but don't keep it.
            inner.tokens.invalidate(&hash).await;
        }
        Ok(slot.value)
    }

    fn refresh_token(&self, hash: TokenHash, slot: &Slot<Option<Arc<Lookup>>>) {
        if slot.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let flag = slot.refreshing.clone();
        tokio::spawn(async move {
            let inner = &this.inner;
            let epoch = inner.epoch.load(Ordering::Acquire);
            match inner.store.lookup(&hash).await {
                Ok(v) => {
                    if inner.epoch.load(Ordering::Acquire) == epoch {
                        inner.tokens.insert(hash, Slot::new(v.map(Arc::new))).await;
                    } else {
                        inner.tokens.invalidate(&hash).await;
                    }
                }
                Err(e) => {
                    inner.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "cache refresh failed; serving stale entry");
                    // Let the next hit try again.
                    flag.store(false, Ordering::Release);
                }
            }
        });
    }

    /// Whether an owner is disabled: from cache, else from the store (coalesced).
    pub async fn owner_disabled(&self, owner_id: &str) -> Result<bool, Unavailable> {
        let inner = &self.inner;
        if let Some(slot) = inner.owners.get(owner_id).await {
            if slot.fetched.elapsed() >= inner.ttl && !slot.refreshing.swap(true, Ordering::AcqRel)
            {
                let this = self.clone();
                let owner = owner_id.to_string();
                let flag = slot.refreshing.clone();
                tokio::spawn(async move {
                    let inner = &this.inner;
                    let epoch = inner.epoch.load(Ordering::Acquire);
                    match inner.store.owner_disabled(&owner).await {
                        Ok(v) if inner.epoch.load(Ordering::Acquire) == epoch => {
                            inner.owners.insert(owner, Slot::new(v)).await;
                        }
                        Ok(_) => inner.owners.invalidate(&owner).await,
                        Err(_) => flag.store(false, Ordering::Release),
                    }
                });
            }
            return Ok(slot.value);
        }
        let epoch = inner.epoch.load(Ordering::Acquire);
        let store = inner.store.clone();
        let owner = owner_id.to_string();
        let slot = inner
            .owners
            .try_get_with(owner.clone(), async move {
                store.owner_disabled(&owner).await.map(Slot::new)
            })
            .await
            .map_err(|e| {
                inner.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                unavailable(&e)
            })?;
        if inner.epoch.load(Ordering::Acquire) != epoch {
            inner.owners.invalidate(owner_id).await;
        }
        Ok(slot.value)
    }

    /// Applies one invalidation to this replica's cache.
    pub async fn apply(&self, invalidation: &Invalidation) {
        let inner = &self.inner;
        inner.epoch.fetch_add(1, Ordering::AcqRel);
        inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        match invalidation {
            Invalidation::Hash(h) => inner.tokens.invalidate(h).await,
            Invalidation::Owner(o) => inner.owners.invalidate(o.as_str()).await,
            Invalidation::All => {
                inner.tokens.invalidate_all();
                inner.owners.invalidate_all();
            }
        }
    }

    /// Follows the store's invalidation feed until the store drops it. A lagging
    /// receiver (missed messages) clears everything.
    pub fn spawn_invalidation_listener(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let mut rx = self.inner.store.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(inv) => this.apply(&inv).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "invalidation feed lagged; clearing cache");
                        this.apply(&Invalidation::All).await;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }
}
