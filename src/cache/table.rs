//! The token table: a concurrent, bounded, expiring map from [`TokenHash`] to a small
//! `Clone` value, built for the token cache (moka's per-entry bookkeeping cost more than
//! the whole memory budget of a million tokens).
//!
//! Layout and invariants:
//! - Sharded by key bytes 8..16 (a SHA-256 is uniformly random, so no hashing); each
//!   shard is a `RwLock` around a `hashbrown::HashTable` hashed by key bytes 0..8. An
//!   entry is the key, the value, a 32-bit deadline and a 32-bit recency stamp: 24 bytes
//!   beside the key and value, plus hashbrown's control byte and spare buckets.
//! - Bounded: shard `i` holds at most its share of `max_entries` (the shares add up to
//!   exactly `max_entries`). Random keys don't fill the shards quite evenly, so the
//!   fullest start evicting a little early: 1 M distinct keys into a 1 M table keep
//!   99.5 % of them, 10 k into 10 k keep 95.5 %. Small tables have fewer shards so
//!   every share is ≥ 64, down to one shard for `max_entries` < 128.
//! - Eviction is sampled LRU: recency is counted in inserts into the shard (a hit copies
//!   the shard's insert count into the entry with a relaxed store, only when it
//!   changed); a full shard evicts the least recent of the next [`SAMPLE`] entries at
//!   its rotating hand, or the first expired one it meets there. A hot set therefore
//!   survives a scan of cold keys as long as it is hit faster than the scan turns the
//!   shard over.
//! - Expiry: each entry's lifetime comes from the table's `expire_after` when it is
//!   written; deadlines are in [`TICK`]s since the table was built and round up, so an
//!   entry lives at least its lifetime and at most two ticks longer. An expired entry is
//!   never returned. Its memory is reclaimed by whichever comes first: an insert into
//!   its shard (each looks at [`SWEEP_STEP`] buckets past the hand), eviction, or
//!   [`Table::sweep`] / [`Table::sweep_part`] (the owner calls it periodically; it
//!   also shrinks shards that emptied). After ≈ 13 years of uptime the tick counter saturates and every entry
//!   counts as expired: the cache stops caching rather than serve stale entries.
//! - Misses are coalesced: [`Table::get_or_try_insert_with`] runs one fetch per key at
//!   a time; the others wait for its result (value or error). If the fetching caller is
//!   dropped mid-fetch, a waiter takes over and fetches.
//!
//! Cost of a hit ([`Table::get`]): a coarse-clock read (an atomic load), one shard read
//! lock, one probe, a relaxed atomic load (and a store at most once per insert into the
//! shard), one `V::clone`. No allocation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::sync::Notify;

use crate::token::{HashKeyState, TokenHash};

/// Deadline resolution (and the coarse clock's order of magnitude, times ten).
pub const TICK: Duration = Duration::from_millis(100);
/// Entries a full shard compares before evicting one.
pub const SAMPLE: usize = 8;
/// Buckets an insert checks for expired entries, past the shard's hand.
pub const SWEEP_STEP: usize = 4;
/// Most shards a table has (a power of two).
const MAX_SHARDS: usize = 128;
/// Fewest entries per shard that justify one more shard.
const MIN_SHARE: u64 = 64;

/// Why the table dropped entries on its own (invalidations are the owner's doing and
/// are not reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The shard was full.
    Size,
    /// The entry's lifetime had passed.
    Expired,
}

type ExpireAfter<V> = Box<dyn Fn(&V) -> Duration + Send + Sync>;
type OnEvict = Box<dyn Fn(Removal, u64) + Send + Sync>;
type Flights<V, E> = HashMap<TokenHash, Arc<Flight<V, E>>, HashKeyState>;

/// A concurrent, bounded, expiring map from token hash to `V`; fetches that fail do so
/// with `E`. See the module docs.
pub struct Table<V, E> {
    /// A power-of-two number of shards.
    shards: Box<[Shard<V, E>]>,
    /// The time deadlines count from.
    base: quanta::Instant,
    /// Lifetime of a value, decided when it is written.
    expire_after: ExpireAfter<V>,
    /// Told how many entries the table dropped, and why.
    on_evict: OnEvict,
    /// Where [`Table::sweep_part`] goes on.
    sweep_cursor: AtomicUsize,
}

/// One shard, on its own cache line so shards don't share lock words.
#[repr(align(64))]
struct Shard<V, E> {
    /// The entries.
    map: RwLock<Map<V>>,
    /// Fetches in flight, by key.
    flights: Mutex<Flights<V, E>>,
    /// Invalidations of this shard so far (changed under the `map` write lock).
    generation: AtomicU64,
}

struct Map<V> {
    /// The entries, hashed by [`hash_of`] their key.
    entries: HashTable<Entry<V>>,
    /// Most entries this shard holds.
    cap: usize,
    /// Inserts into this shard so far (wrapping): the recency clock.
    clock: u32,
    /// Next bucket eviction and the incremental sweep look at.
    hand: usize,
}

struct Entry<V> {
    /// The key.
    key: TokenHash,
    /// First tick at which the entry is expired.
    expires: u32,
    /// The shard's `clock` at the last write or hit.
    touched: AtomicU32,
    /// The value.
    value: V,
}

/// The hash the shard's `HashTable` uses: key bytes 0..8 (as [`HashKeyState`] does).
fn hash_of(key: &TokenHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key.0[..8]);
    u64::from_le_bytes(b)
}

/// Key bytes 8..16, independent of the bits hashbrown uses inside a shard.
fn shard_bits(key: &TokenHash) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key.0[8..16]);
    u64::from_le_bytes(b) as usize
}

fn ticks_ceil(d: Duration) -> u32 {
    let t = d.as_nanos().div_ceil(TICK.as_nanos());
    u32::try_from(t).unwrap_or(u32::MAX)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Entries the table dropped during one operation, reported after the lock is released.
#[derive(Default)]
struct Dropped {
    size: u64,
    expired: u64,
}

impl<V> Map<V> {
    fn new(cap: usize) -> Self {
        Map {
            entries: HashTable::new(),
            cap,
            clock: 0,
            hand: 0,
        }
    }

    /// Removes the expired entries among the `n` buckets past the hand.
    fn sweep_some(&mut self, now: u32, n: usize, dropped: &mut Dropped) {
        let buckets = self.entries.num_buckets();
        if self.entries.is_empty() || buckets == 0 {
            return;
        }
        for _ in 0..n.min(buckets) {
            self.hand = if self.hand + 1 >= buckets {
                0
            } else {
                self.hand + 1
            };
            if let Ok(e) = self.entries.get_bucket_entry(self.hand)
                && e.get().expires <= now
            {
                e.remove();
                dropped.expired += 1;
            }
        }
    }

    /// Makes room for one entry: drops the first expired entry past the hand, or the
    /// least recently used of the next [`SAMPLE`] entries. Returns whether it dropped
    /// one (it does unless the shard is empty).
    fn evict_one(&mut self, now: u32, dropped: &mut Dropped) -> bool {
        let buckets = self.entries.num_buckets();
        let mut victim: Option<(usize, u32)> = None;
        let mut seen = 0;
        let mut i = self.hand;
        for _ in 0..buckets {
            i = if i + 1 >= buckets { 0 } else { i + 1 };
            let Some(e) = self.entries.get_bucket(i) else {
                continue;
            };
            if e.expires <= now {
                self.hand = i;
                if let Ok(e) = self.entries.get_bucket_entry(i) {
                    e.remove();
                    dropped.expired += 1;
                    return true;
                }
                return false;
            }
            let age = self.clock.wrapping_sub(e.touched.load(Ordering::Relaxed));
            if victim.is_none_or(|(_, oldest)| age > oldest) {
                victim = Some((i, age));
            }
            seen += 1;
            if seen == SAMPLE {
                break;
            }
        }
        self.hand = i;
        if let Some((i, _)) = victim
            && let Ok(e) = self.entries.get_bucket_entry(i)
        {
            e.remove();
            dropped.size += 1;
            return true;
        }
        false
    }

    /// Writes `key` → `value`, evicting first if the shard is full.
    fn put(&mut self, key: TokenHash, value: V, expires: u32, now: u32, dropped: &mut Dropped) {
        self.clock = self.clock.wrapping_add(1);
        self.sweep_some(now, SWEEP_STEP, dropped);
        let hash = hash_of(&key);
        if let Some(e) = self.entries.find_mut(hash, |e| e.key == key) {
            if e.expires <= now {
                dropped.expired += 1;
            }
            e.value = value;
            e.expires = expires;
            *e.touched.get_mut() = self.clock;
            return;
        }
        while self.entries.len() >= self.cap && self.evict_one(now, dropped) {}
        let entry = Entry {
            key,
            expires,
            touched: AtomicU32::new(self.clock),
            value,
        };
        self.entries.insert_unique(hash, entry, |e| hash_of(&e.key));
    }
}

impl<V: Clone + Send + Sync, E: Send + Sync> Table<V, E> {
    /// A table of at most `max_entries` (at least 1) entries, each living
    /// `expire_after(&value)` from when it was written (a zero lifetime: never stored).
    /// `on_evict` hears of entries dropped for room or because they expired; it is
    /// called outside the shard locks.
    pub fn new(
        max_entries: u64,
        expire_after: impl Fn(&V) -> Duration + Send + Sync + 'static,
        on_evict: impl Fn(Removal, u64) + Send + Sync + 'static,
    ) -> Self {
        let max_entries = max_entries.max(1);
        let wanted = (max_entries / MIN_SHARE).max(1);
        let n = if wanted >= MAX_SHARDS as u64 {
            MAX_SHARDS
        } else {
            // Largest power of two ≤ wanted (which is < MAX_SHARDS, so this fits).
            1usize << (63 - wanted.leading_zeros())
        };
        let share = max_entries / n as u64;
        let extra = max_entries % n as u64;
        let shards = (0..n as u64)
            .map(|i| {
                let cap = share + u64::from(i < extra);
                Shard {
                    map: RwLock::new(Map::new(usize::try_from(cap).unwrap_or(usize::MAX))),
                    flights: Mutex::new(HashMap::default()),
                    generation: AtomicU64::new(0),
                }
            })
            .collect();
        Table {
            shards,
            base: crate::clock::recent(),
            expire_after: Box::new(expire_after),
            on_evict: Box::new(on_evict),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &TokenHash) -> &Shard<V, E> {
        &self.shards[shard_bits(key) & (self.shards.len() - 1)]
    }

    /// Ticks since the table was built, from the coarse clock.
    fn now(&self) -> u32 {
        let d = crate::clock::recent().saturating_duration_since(self.base);
        let t = d.as_secs() * 10 + u64::from(d.subsec_millis() / 100);
        u32::try_from(t).unwrap_or(u32::MAX)
    }

    fn report(&self, dropped: Dropped) {
        if dropped.size > 0 {
            (self.on_evict)(Removal::Size, dropped.size);
        }
        if dropped.expired > 0 {
            (self.on_evict)(Removal::Expired, dropped.expired);
        }
    }

    /// The live value for `key`, marking it recently used. Cost: see the module docs.
    pub fn get(&self, key: &TokenHash) -> Option<V> {
        self.get_at(key, self.now())
    }

    fn get_at(&self, key: &TokenHash, now: u32) -> Option<V> {
        let map = read(&self.shard(key).map);
        let e = map.entries.find(hash_of(key), |e| e.key == *key)?;
        if e.expires <= now {
            return None;
        }
        if e.touched.load(Ordering::Relaxed) != map.clock {
            e.touched.store(map.clock, Ordering::Relaxed);
        }
        Some(e.value.clone())
    }

    /// Writes `key` → `value` (replacing any entry), evicting if the shard is full.
    /// Cost: one shard write lock; allocation only when the shard grows.
    pub fn insert(&self, key: TokenHash, value: V) {
        self.insert_if(key, value, || true);
    }

    /// As [`Table::insert`], but only if `keep()` (called under the shard's write lock,
    /// so it must be quick) says so; returns whether it did. An invalidation that
    /// happens after `keep` said yes finds the entry and removes it.
    pub fn insert_if(&self, key: TokenHash, value: V, keep: impl FnOnce() -> bool) -> bool {
        self.insert_at(key, value, keep, self.now())
    }

    fn insert_at(&self, key: TokenHash, value: V, keep: impl FnOnce() -> bool, now: u32) -> bool {
        let life = (self.expire_after)(&value);
        let mut dropped = Dropped::default();
        let kept = {
            let mut map = write(&self.shard(&key).map);
            let kept = keep();
            if kept && !life.is_zero() {
                // One tick more: `now` is rounded down.
                let expires = now.saturating_add(ticks_ceil(life)).saturating_add(1);
                map.put(key, value, expires, now, &mut dropped);
            }
            kept
        };
        self.report(dropped);
        kept
    }

    /// How many invalidations `key`'s shard has seen: a fetch that read it before
    /// asking the store keeps its answer only if it is unchanged when the answer is
    /// written (`insert_if(key, v, || table.generation(&key) == seen)`, checked under
    /// the shard lock). Per shard, so an invalidation of one token discards racing
    /// fetches of 1/shards of the others, not of all of them.
    pub fn generation(&self, key: &TokenHash) -> u64 {
        self.shard(key).generation.load(Ordering::Acquire)
    }

    /// Removes `key`'s entry, if any.
    pub fn invalidate(&self, key: &TokenHash) {
        let shard = self.shard(key);
        let removed = {
            let mut map = write(&shard.map);
            shard.generation.fetch_add(1, Ordering::AcqRel);
            map.entries
                .find_entry(hash_of(key), |e| e.key == *key)
                .ok()
                .map(|e| e.remove().0)
        };
        drop(removed);
    }

    /// Removes every entry and frees the shards' memory.
    pub fn invalidate_all(&self) {
        for shard in &self.shards {
            let old = {
                let mut map = write(&shard.map);
                shard.generation.fetch_add(1, Ordering::AcqRel);
                std::mem::take(&mut map.entries)
            };
            drop(old);
        }
    }

    /// Number of entries, counting expired ones not yet reclaimed.
    pub fn entry_count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| read(&s.map).entries.len() as u64)
            .sum()
    }

    /// Removes every expired entry and shrinks shards that are less than a quarter
    /// full. Cost: each shard's write lock in turn, a pass over its buckets (≈ 10 ms
    /// for 1 M entries on a 2-core VM).
    pub fn sweep(&self) {
        self.sweep_at(0..self.shards.len(), self.now());
    }

    /// As [`Table::sweep`], over the next `1/parts` of the shards (at least one): `parts`
    /// calls make a full pass, in short lock-holding steps.
    pub fn sweep_part(&self, parts: usize) {
        let n = self.shards.len();
        let step = n.div_ceil(parts.max(1));
        let first = self.sweep_cursor.fetch_add(step, Ordering::Relaxed) % n;
        let now = self.now();
        self.sweep_at(first..(first + step).min(n), now);
        if first + step > n {
            self.sweep_at(0..first + step - n, now);
        }
    }

    fn sweep_at(&self, shards: std::ops::Range<usize>, now: u32) {
        let mut dropped = Dropped::default();
        for shard in &self.shards[shards] {
            let mut map = write(&shard.map);
            let before = map.entries.len();
            map.entries.retain(|e| e.expires > now);
            dropped.expired += (before - map.entries.len()) as u64;
            let (len, capacity) = (map.entries.len(), map.entries.capacity());
            if capacity > 64 && len < capacity / 4 {
                map.entries.shrink_to(len * 2, |e| hash_of(&e.key));
                map.hand = 0;
            }
        }
        self.report(dropped);
    }

    /// The live value for `key`, else the result of `fetch` (inserted if `Ok` and
    /// `keep()` agrees, see [`Table::insert_if`]).
    ///
    /// Concurrent calls for one key run one fetch: the first caller's; the others
    /// wait and get a clone of its result, error included (errors are not cached). If
    /// that caller is dropped before its fetch completes, one waiter runs its own
    /// `fetch` instead. No lock is held across an `await`.
    pub async fn get_or_try_insert_with<F>(
        &self,
        key: TokenHash,
        fetch: F,
        keep: impl FnOnce() -> bool,
    ) -> Result<V, Arc<E>>
    where
        F: Future<Output = Result<V, E>>,
    {
        let shard = self.shard(&key);
        let flight = loop {
            if let Some(v) = self.get(&key) {
                return Ok(v);
            }
            let (flight, leads) = {
                let mut flights = lock(&shard.flights);
                match flights.get(&key) {
                    Some(f) => (f.clone(), false),
                    None => {
                        let f = Arc::new(Flight::new());
                        flights.insert(key, f.clone());
                        (f, true)
                    }
                }
            };
            if leads {
                break flight;
            }
            if let Some(result) = flight.wait().await {
                return result;
            }
            // Its fetcher was dropped: try again, perhaps as the fetcher.
        };
        let mut lead = Lead {
            shard,
            key,
            flight,
            finished: false,
        };
        // A fetcher that finished between our miss and our taking the lead has
        // inserted by now.
        if let Some(v) = self.get(&key) {
            lead.finish(Ok(v.clone()));
            return Ok(v);
        }
        let result = fetch.await.map_err(Arc::new);
        if let Ok(v) = &result {
            self.insert_if(key, v.clone(), keep);
        }
        lead.finish(result.clone());
        result
    }
}

/// One fetch in flight, and its waiters.
struct Flight<V, E> {
    /// What became of the fetch.
    state: Mutex<FlightState<V, E>>,
    /// Wakes the waiters when `state` leaves `Running`.
    done: Notify,
}

enum FlightState<V, E> {
    Running,
    Done(Result<V, Arc<E>>),
    /// The fetching caller was dropped.
    Abandoned,
}

impl<V: Clone, E> Flight<V, E> {
    fn new() -> Self {
        Flight {
            state: Mutex::new(FlightState::Running),
            done: Notify::new(),
        }
    }

    /// The fetch's result, or `None` if its fetcher was dropped.
    async fn wait(&self) -> Option<Result<V, Arc<E>>> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            // Registered before looking, so a finish in between still wakes us.
            notified.as_mut().enable();
            let outcome = match &*lock(&self.state) {
                FlightState::Running => None,
                FlightState::Done(r) => Some(Some(r.clone())),
                FlightState::Abandoned => Some(None),
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
            notified.await;
        }
    }
}

/// The fetching caller's duty: publish the outcome, even if it is dropped mid-fetch.
struct Lead<'a, V, E> {
    shard: &'a Shard<V, E>,
    key: TokenHash,
    flight: Arc<Flight<V, E>>,
    finished: bool,
}

impl<V, E> Lead<'_, V, E> {
    fn publish(&mut self, state: FlightState<V, E>) {
        {
            let mut flights = lock(&self.shard.flights);
            if flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.key);
            }
        }
        *lock(&self.flight.state) = state;
        self.flight.done.notify_waiters();
        self.finished = true;
    }

    fn finish(&mut self, result: Result<V, Arc<E>>) {
        self.publish(FlightState::Done(result));
    }
}

impl<V, E> Drop for Lead<'_, V, E> {
    fn drop(&mut self) {
        if !self.finished {
            self.publish(FlightState::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering::SeqCst;

    /// A table of `u32` values (`0` marks a "negative" entry) living 10 ticks, or 3 for
    /// negatives, with its eviction counts.
    fn table(max: u64) -> (Table<u32, String>, Arc<[AtomicU64; 2]>) {
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let c = counts.clone();
        let t = Table::new(
            max,
            |v: &u32| TICK * if *v == 0 { 3 } else { 10 },
            move |cause, n| {
                c[usize::from(cause == Removal::Expired)].fetch_add(n, SeqCst);
            },
        );
        (t, counts)
    }

    fn key(i: u64) -> TokenHash {
        TokenHash::of(&format!("key-{i}"))
    }

    fn put(t: &Table<u32, String>, k: u64, v: u32, now: u32) {
        t.insert_at(key(k), v, || true, now);
    }

    #[test]
    fn shards_share_exactly_max_entries() {
        for max in [1, 2, 63, 64, 127, 128, 1000, 100_000, 1_000_003] {
            let (t, _) = table(max);
            let total: usize = t.shards.iter().map(|s| read(&s.map).cap).sum();
            assert_eq!(total as u64, max, "{max}");
            assert!(t.shards.len().is_power_of_two() && t.shards.len() <= MAX_SHARDS);
            assert!(t.shards.len() == 1 || max / t.shards.len() as u64 >= MIN_SHARE);
        }
    }

    #[test]
    fn an_invalidation_refuses_a_racing_fetch_of_its_shard_only() {
        let t: Table<u32, String> = Table::new(100_000, |_| TICK * 100, |_, _| {});
        let a = key(1);
        let same = (2..)
            .map(key)
            .find(|k| std::ptr::eq(t.shard(k), t.shard(&a)))
            .expect("a key in a's shard");
        let other = (2..)
            .map(key)
            .find(|k| !std::ptr::eq(t.shard(k), t.shard(&a)))
            .expect("a key in another shard");
        let (seen_same, seen_other) = (t.generation(&same), t.generation(&other));
        // `a` is invalidated while fetches of `same` and `other` are in flight.
        t.invalidate(&a);
        assert!(!t.insert_if(same, 1, || t.generation(&same) == seen_same));
        assert_eq!(t.get(&same), None);
        assert!(t.insert_if(other, 2, || t.generation(&other) == seen_other));
        assert_eq!(t.get(&other), Some(2));
        // invalidate_all reaches every shard.
        let seen = t.generation(&other);
        t.invalidate_all();
        assert!(!t.insert_if(other, 3, || t.generation(&other) == seen));
        assert_eq!(t.get(&other), None);
    }

    #[test]
    fn a_table_of_one_holds_the_latest_entry() {
        let (t, counts) = table(1);
        put(&t, 1, 10, 0);
        put(&t, 2, 20, 0);
        assert_eq!(t.entry_count(), 1);
        assert_eq!(t.get_at(&key(1), 0), None);
        assert_eq!(t.get_at(&key(2), 0), Some(20));
        put(&t, 2, 21, 0);
        assert_eq!(
            t.get_at(&key(2), 0),
            Some(21),
            "a replacement evicts nothing"
        );
        assert_eq!(counts[0].load(SeqCst), 1);
        assert_eq!(counts[1].load(SeqCst), 0);
    }

    #[test]
    fn the_table_never_holds_more_than_max_entries() {
        for max in [1, 7, 100, 1000, 5000] {
            let (t, counts) = table(max);
            for i in 0..20_000 {
                put(&t, i, 1, 0);
                assert!(t.entry_count() <= max);
            }
            assert_eq!(counts[0].load(SeqCst), 20_000 - t.entry_count());
            // Nearly full: random keys fill the shards about evenly.
            assert!(t.entry_count() as f64 >= max as f64 * 0.9, "{max}");
        }
    }

    #[test]
    fn entries_expire_after_their_lifetime_positive_and_negative_alike() {
        let (t, _) = table(100);
        put(&t, 1, 7, 0);
        put(&t, 2, 0, 0);
        // Lifetimes 10 and 3 ticks, plus the tick `now` was rounded down by.
        assert_eq!(t.get_at(&key(2), 3), Some(0));
        assert_eq!(t.get_at(&key(2), 4), None, "negative expired");
        assert_eq!(t.get_at(&key(1), 4), Some(7));
        assert_eq!(t.get_at(&key(1), 10), Some(7));
        assert_eq!(t.get_at(&key(1), 11), None, "positive expired");
        // Rewriting starts a new lifetime.
        put(&t, 1, 8, 11);
        assert_eq!(t.get_at(&key(1), 21), Some(8));
    }

    #[test]
    fn the_real_clock_drives_expiry() {
        let t: Table<u32, String> = Table::new(10, |_| Duration::from_millis(150), |_, _| {});
        t.insert(key(1), 1);
        assert_eq!(t.get(&key(1)), Some(1));
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(t.get(&key(1)), None);
    }

    #[test]
    fn a_zero_lifetime_or_a_refusal_stores_nothing() {
        let t: Table<u32, String> = Table::new(10, |_| Duration::ZERO, |_, _| {});
        t.insert(key(1), 1);
        assert_eq!(t.entry_count(), 0);
        let (t, _) = table(10);
        assert!(!t.insert_if(key(1), 1, || false));
        assert!(t.insert_if(key(2), 1, || true));
        assert_eq!((t.get(&key(1)), t.get(&key(2))), (None, Some(1)));
    }

    #[test]
    fn expired_entries_are_reclaimed_without_capacity_pressure() {
        // A burst of negative entries, then nothing but the periodic sweep.
        let (t, counts) = table(100_000);
        for i in 0..10_000 {
            put(&t, i, 0, 0);
        }
        let grown: usize = t
            .shards
            .iter()
            .map(|s| read(&s.map).entries.capacity())
            .sum();
        t.sweep_at(0..t.shards.len(), 3);
        assert_eq!(t.entry_count(), 10_000, "not expired yet");
        t.sweep_at(0..t.shards.len(), 4);
        assert_eq!(t.entry_count(), 0);
        assert_eq!(counts[1].load(SeqCst), 10_000);
        let shrunk: usize = t
            .shards
            .iter()
            .map(|s| read(&s.map).entries.capacity())
            .sum();
        assert!(shrunk * 10 < grown, "{grown} → {shrunk}");

        // Or inserts of other keys, a few buckets each.
        let (t, counts) = table(100_000);
        for i in 0..10_000 {
            put(&t, i, 0, 0);
        }
        for i in 0..20_000 {
            put(&t, 1_000_000 + i, 1, 4);
        }
        assert_eq!(t.entry_count(), 20_000);
        assert_eq!(counts[1].load(SeqCst), 10_000);
        assert_eq!(counts[0].load(SeqCst), 0);
    }

    #[test]
    fn sweeping_in_parts_covers_every_shard() {
        let t: Table<u32, String> = Table::new(100_000, |_| TICK, |_, _| {});
        assert_eq!(t.shards.len(), 128);
        for i in 0..10_000 {
            t.insert(key(i), 1);
        }
        std::thread::sleep(TICK * 3);
        for (parts, left) in [(3, 10_000 * 2 / 3), (3, 10_000 / 3), (3, 0)] {
            t.sweep_part(parts);
            let held = t.entry_count() as i64;
            assert!((held - left).abs() < 500, "{held} ≉ {left}");
        }
        t.sweep_part(1000);
        assert_eq!(t.entry_count(), 0);
    }

    #[test]
    fn a_full_shard_drops_expired_entries_not_live_ones() {
        let (t, counts) = table(64);
        for i in 0..64 {
            put(&t, i, 0, 0);
        }
        put(&t, 1000, 1, 0);
        assert_eq!(counts[0].load(SeqCst), 1, "live: the least recent goes");
        // At tick 4 the negatives are expired: new keys displace them, not live ones.
        for i in 100..116 {
            put(&t, i, 1, 4);
        }
        assert_eq!(counts[0].load(SeqCst), 1);
        assert!(counts[1].load(SeqCst) >= 16);
        assert_eq!(t.get_at(&key(1000), 4), Some(1));
    }

    #[test]
    fn a_hot_set_survives_a_scan_of_cold_keys() {
        let (t, counts) = table(1000);
        let hot = 100..200u64;
        for k in hot.clone() {
            put(&t, k, 1, 0);
        }
        for i in 0..100_000u64 {
            put(&t, 1_000_000 + i, 1, 0);
            if i % 50 == 0 {
                for k in hot.clone() {
                    assert_eq!(t.get_at(&key(k), 0), Some(1), "hot key {k} evicted at {i}");
                }
            }
        }
        assert!(counts[0].load(SeqCst) > 90_000);
        // Without the hits, the same scan flushes them.
        let (t, _) = table(1000);
        for k in hot.clone() {
            put(&t, k, 1, 0);
        }
        for i in 0..10_000u64 {
            put(&t, 1_000_000 + i, 1, 0);
        }
        let left = hot.filter(|k| t.get_at(&key(*k), 0).is_some()).count();
        assert!(left < 10, "{left} cold-unused keys survived");
    }

    #[test]
    fn invalidation_removes_one_or_all() {
        let (t, counts) = table(1000);
        for i in 0..500 {
            put(&t, i, 1, 0);
        }
        t.invalidate(&key(7));
        t.invalidate(&key(100_000));
        assert_eq!(t.get_at(&key(7), 0), None);
        assert_eq!(t.get_at(&key(8), 0), Some(1));
        assert_eq!(t.entry_count(), 499);
        t.invalidate_all();
        assert_eq!(t.entry_count(), 0);
        assert_eq!(t.get_at(&key(8), 0), None);
        assert_eq!(
            counts[0].load(SeqCst) + counts[1].load(SeqCst),
            0,
            "not evictions"
        );
        put(&t, 8, 2, 0);
        assert_eq!(t.get_at(&key(8), 0), Some(2));
    }

    async fn slow_fetch(
        calls: &AtomicU64,
        wait: Duration,
        answer: Result<u32, String>,
    ) -> Result<u32, String> {
        calls.fetch_add(1, SeqCst);
        tokio::time::sleep(wait).await;
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_for_one_key_make_one_fetch() {
        let (t, _) = table(1000);
        let t = Arc::new(t);
        let calls = Arc::new(AtomicU64::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (t, calls, start) = (t.clone(), calls.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    t.get_or_try_insert_with(
                        key(1),
                        slow_fetch(&calls, Duration::from_millis(100), Ok(5)),
                        || true,
                    )
                    .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 5);
        }
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(t.get(&key(1)), Some(5));
        assert!(lock(&t.shard(&key(1)).flights).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_fetch_reaches_every_waiter_and_caches_nothing() {
        let (t, _) = table(1000);
        let t = Arc::new(t);
        let calls = Arc::new(AtomicU64::new(0));
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (t, calls, start) = (t.clone(), calls.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    t.get_or_try_insert_with(
                        key(1),
                        slow_fetch(&calls, Duration::from_millis(100), Err("down".into())),
                        || true,
                    )
                    .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(*task.await.unwrap().unwrap_err(), "down");
        }
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(t.entry_count(), 0);
        // The next miss fetches again.
        let v = t
            .get_or_try_insert_with(key(1), slow_fetch(&calls, Duration::ZERO, Ok(3)), || true)
            .await;
        assert_eq!(v.unwrap(), 3);
        assert_eq!(calls.load(SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiters_of_a_cancelled_fetcher_fetch_for_themselves() {
        let (t, _) = table(1000);
        let t = Arc::new(t);
        let calls = Arc::new(AtomicU64::new(0));
        let leader = {
            let (t, calls) = (t.clone(), calls.clone());
            tokio::spawn(async move {
                t.get_or_try_insert_with(
                    key(1),
                    slow_fetch(&calls, Duration::from_secs(3600), Ok(1)),
                    || true,
                )
                .await
            })
        };
        while calls.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let followers: Vec<_> = (0..8)
            .map(|_| {
                let (t, calls) = (t.clone(), calls.clone());
                tokio::spawn(async move {
                    t.get_or_try_insert_with(
                        key(1),
                        slow_fetch(&calls, Duration::from_millis(50), Ok(2)),
                        || true,
                    )
                    .await
                })
            })
            .collect();
        // A waiter that gives up disturbs no one either.
        let quitter = tokio::time::timeout(
            Duration::from_millis(20),
            t.get_or_try_insert_with(key(1), slow_fetch(&calls, Duration::ZERO, Ok(3)), || true),
        )
        .await;
        assert!(quitter.is_err());
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        for f in followers {
            assert_eq!(f.await.unwrap().unwrap(), 2);
        }
        assert_eq!(calls.load(SeqCst), 2, "the abandoned fetch and one more");
        assert_eq!(t.get(&key(1)), Some(2));
    }

    #[tokio::test]
    async fn a_fetch_refused_by_keep_answers_but_is_not_cached() {
        let (t, _) = table(10);
        let calls = AtomicU64::new(0);
        let v = t
            .get_or_try_insert_with(key(1), slow_fetch(&calls, Duration::ZERO, Ok(4)), || false)
            .await;
        assert_eq!(v.unwrap(), 4);
        assert_eq!(t.entry_count(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Get(u8),
        Invalidate(u8),
        InvalidateAll,
        Sweep,
        Advance(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (any::<u8>(), 0..3u32).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => any::<u8>().prop_map(Op::Get),
            1 => any::<u8>().prop_map(Op::Invalidate),
            1 => Just(Op::InvalidateAll),
            1 => Just(Op::Sweep),
            2 => (0..6u8).prop_map(Op::Advance),
        ]
    }

    proptest::proptest! {
        /// Against a plain map of (value, deadline): the table never returns a value the
        /// model doesn't hold (evicted entries may be missing), never holds more than
        /// `max`, and loses nothing while there is room for every key.
        #[test]
        fn the_table_agrees_with_a_plain_map(
            max in 1..300u64,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let (t, _) = table(max);
            let mut model: BTreeMap<u8, (u32, u32)> = BTreeMap::new();
            let mut now = 0u32;
            let roomy = max >= 256;
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        put(&t, u64::from(k), v, now);
                        let life = if v == 0 { 3 } else { 10 };
                        model.insert(k, (v, now + life + 1));
                    }
                    Op::Get(k) => {
                        let want = model.get(&k).filter(|(_, exp)| now < *exp).map(|(v, _)| *v);
                        let got = t.get_at(&key(u64::from(k)), now);
                        if roomy {
                            proptest::prop_assert_eq!(got, want);
                        } else if got.is_some() {
                            proptest::prop_assert_eq!(got, want);
                        }
                    }
                    Op::Invalidate(k) => {
                        t.invalidate(&key(u64::from(k)));
                        model.remove(&k);
                    }
                    Op::InvalidateAll => {
                        t.invalidate_all();
                        model.clear();
                    }
                    Op::Sweep => t.sweep_at(0..t.shards.len(), now),
                    Op::Advance(n) => now += u32::from(n),
                }
                proptest::prop_assert!(t.entry_count() <= max);
                proptest::prop_assert!(t.entry_count() <= model.len() as u64);
            }
        }
    }
}
