//! Embedded store: one redb file, for `patgate dev` and single-node deployments.
//!
//! redb is synchronous, so every operation runs on the blocking pool
//! (`spawn_blocking`) against a shared `Arc<Database>`. Each trait method is one redb
//! transaction (write or read), so a crash or error never leaves a half-written change.
//! [`TokenStore::update`] is the one exception to "one call = one closure": the
//! [`Mutation`] borrows the caller's data and cannot move to the blocking pool, so it
//! reads, applies the mutation on the async side, then commits with a compare-and-set
//! in one write transaction (retried on conflict).
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `tokens` | SHA-256 bytes | JSON `{"record": TokenRecord}` for the current secret, or `{"aliasOf": "<new hex>", "graceUntil": RFC 3339}` for a rotated-out secret in its grace period |
//! | `ids` | token id | JSON `{"hash": "<current hex>", "graced": [{"hash", "until"}]}` |
//! | `disabled_owners` | owner id | `()` (present = disabled) |
//! | `creations` | owner id | `(window start secs, count)`: one fixed window per owner |
//! | `audit` | event id (ULID, time ordered) | JSON event; trimmed to `audit_max_events` |
//! | `usage_hourly` | (token id, hours since the epoch) | requests in that hour; pruned to 8 days when the token's usage is next recorded, removed on delete |
//! | `client_ips` | token id | JSON `[{"prefix", "firstSeenAt", "lastSeenAt", "count"}]`: the token's client-IP prefixes, at most `max_per_token`, pruned to the retention when the token's usage is next recorded, removed on delete |
//!
//! Usage (`usageCount`, `lastUsedAt`) is folded directly into the record. Aliases always
//! point at the *current* hash (a rotation rewrites older aliases), so a lookup is at
//! most two reads. Expired aliases are removed at the next rotate or delete of the token.
//!
//! Invalidations go through a local `tokio::sync::broadcast` channel: a single node has
//! no one else to tell.

mod outbox;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::entry::{Graced, IdEntry, TokEntry, after, corrupt, hash_of, to_json};
use jiff::Timestamp;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::broadcast;

use super::{
    AuditEvent, AuditQuery, Changed, ClientIpSeen, HOURLY_RETENTION_HOURS, Invalidation,
    InvalidationRx, IpRetention, ListQuery, Lookup, Mutation, NewIpSeen, Page, StoreError,
    TokenRecord, TokenStore, UsageDelta, hour_of, merge_client_ips, retention_cutoff,
    sort_client_ips,
};
use crate::config::EmbeddedSettings;
use crate::token::TokenHash;

const TOKENS: TableDefinition<&[u8], &str> = TableDefinition::new("tokens");
const IDS: TableDefinition<&str, &str> = TableDefinition::new("ids");
const DISABLED_OWNERS: TableDefinition<&str, ()> = TableDefinition::new("disabled_owners");
const CREATIONS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("creations");
/// Quota use per subject: (period start, used). One row per subject, reset by a new period.
const QUOTAS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("quotas");
const AUDIT: TableDefinition<&str, &str> = TableDefinition::new("audit");
/// Requests per (token id, hour number); rows older than the retention are pruned
/// when the token's usage is next recorded, and all of a token's rows on delete.
const USAGE_HOURLY: TableDefinition<(&str, i64), u64> = TableDefinition::new("usage_hourly");
/// A token's client-IP prefixes (JSON list, bounded by `max_per_token`): one small
/// row per token, rewritten when its usage is recorded.
const CLIENT_IPS: TableDefinition<&str, &str> = TableDefinition::new("client_ips");

/// Capacity of the local invalidation channel; a lagging receiver clears its cache.
const INVALIDATION_CAPACITY: usize = 1024;
/// Compare-and-set attempts of [`TokenStore::update`] before giving up.
const UPDATE_ATTEMPTS: usize = 8;

/// The embedded (redb) token store.
pub struct EmbeddedStore {
    /// The database; shared with the blocking tasks.
    db: Arc<Database>,
    /// Max audit events kept.
    audit_max_events: u64,
    /// Local invalidation fan-out.
    invalidations: broadcast::Sender<Invalidation>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("audit_max_events", &self.audit_max_events)
            .finish_non_exhaustive()
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

/// What a [`newest_first`] scan does with one row.
pub(super) enum Step {
    /// Return it.
    Keep,
    /// Leave it out and go on.
    Skip,
    /// Leave it out and end the scan.
    Stop,
}

/// The JSON rows of a table keyed by time-ordered ids (ULIDs), newest first and
/// strictly older than `cursor`: at most `limit` (at least 1) of those `pick` keeps.
pub(super) fn newest_first<T, R>(
    table: &R,
    cursor: Option<&str>,
    limit: usize,
    mut pick: impl FnMut(&T) -> Step,
) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned,
    R: ReadableTable<&'static str, &'static str>,
{
    let limit = limit.max(1);
    let range = match cursor {
        Some(c) => table.range::<&str>(..c),
        None => table.range::<&str>(..),
    }
    .map_err(db_err)?;
    let mut out = Vec::new();
    for row in range.rev() {
        let (_, v) = row.map_err(db_err)?;
        let item: T = serde_json::from_str(v.value()).map_err(corrupt)?;
        match pick(&item) {
            Step::Keep => out.push(item),
            Step::Skip => continue,
            Step::Stop => break,
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Reads and decodes a `tokens` entry.
fn read_tok<T: ReadableTable<&'static [u8], &'static str>>(
    table: &T,
    hash: &[u8],
) -> Result<Option<TokEntry>, StoreError> {
    match table.get(hash).map_err(db_err)? {
        None => Ok(None),
        Some(v) => serde_json::from_str(v.value()).map(Some).map_err(corrupt),
    }
}

/// Reads and decodes an `ids` entry.
fn read_id<T: ReadableTable<&'static str, &'static str>>(
    table: &T,
    id: &str,
) -> Result<Option<IdEntry>, StoreError> {
    match table.get(id).map_err(db_err)? {
        None => Ok(None),
        Some(v) => serde_json::from_str(v.value()).map(Some).map_err(corrupt),
    }
}

/// The record stored under an id's current hash.
fn read_record<T: ReadableTable<&'static [u8], &'static str>>(
    tokens: &T,
    entry: &IdEntry,
) -> Result<Option<TokenRecord>, StoreError> {
    let hash = hash_of(&entry.hash)?;
    match read_tok(tokens, &hash.0)? {
        Some(TokEntry::Current { record }) => Ok(Some(record)),
        Some(TokEntry::Alias { .. }) => Err(StoreError::Corrupt(
            "id points at an alias, not a record".into(),
        )),
        None => Ok(None),
    }
}

/// Current hash plus graced hashes still valid at `now`.
fn live_hashes(entry: &IdEntry, now: Timestamp) -> Result<Vec<TokenHash>, StoreError> {
    let mut out = vec![hash_of(&entry.hash)?];
    for g in entry.graced.iter().filter(|g| g.until > now) {
        out.push(hash_of(&g.hash)?);
    }
    Ok(out)
}

impl EmbeddedStore {
    /// Opens (or creates, with its parent directories) the redb file at
    /// `settings.path` and makes sure every table exists.
    pub fn open(settings: &EmbeddedSettings) -> Result<Self, StoreError> {
        if let Some(parent) = settings.path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                db_err(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        let db = Self::open_db(&settings.path)?;
        let (invalidations, _) = broadcast::channel(INVALIDATION_CAPACITY);
        Ok(EmbeddedStore {
            db: Arc::new(db),
            audit_max_events: settings.audit_max_events.max(1),
            invalidations,
        })
    }

    fn open_db(path: &Path) -> Result<Database, StoreError> {
        let db = Database::create(path)
            .map_err(|e| db_err(format!("cannot open {}: {e}", path.display())))?;
        // Create every table up front so read transactions never see a missing one.
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(TOKENS).map_err(db_err)?;
        tx.open_table(IDS).map_err(db_err)?;
        tx.open_table(DISABLED_OWNERS).map_err(db_err)?;
        tx.open_table(CREATIONS).map_err(db_err)?;
        tx.open_table(QUOTAS).map_err(db_err)?;
        tx.open_table(AUDIT).map_err(db_err)?;
        tx.open_table(USAGE_HOURLY).map_err(db_err)?;
        outbox::create_tables(&tx)?;
        tx.open_table(CLIENT_IPS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(db)
    }

    /// Runs `f` on the blocking pool with the database.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| db_err(format!("blocking task failed: {e}")))?
    }
}

#[async_trait]
impl TokenStore for EmbeddedStore {
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<Lookup>, StoreError> {
        let key = hash.0;
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let tokens = tx.open_table(TOKENS).map_err(db_err)?;
            match read_tok(&tokens, &key)? {
                None => Ok(None),
                Some(TokEntry::Current { record }) => Ok(Some(Lookup {
                    record,
                    grace_until: None,
                })),
                Some(TokEntry::Alias {
                    alias_of,
                    grace_until,
                }) => {
                    if grace_until <= Timestamp::now() {
                        return Ok(None);
                    }
                    let target = hash_of(&alias_of)?;
                    match read_tok(&tokens, &target.0)? {
                        Some(TokEntry::Current { record }) => Ok(Some(Lookup {
                            record,
                            grace_until: Some(grace_until),
                        })),
                        _ => Ok(None),
                    }
                }
            }
        })
        .await
    }

    async fn owner_disabled(&self, owner_id: &str) -> Result<bool, StoreError> {
        let owner = owner_id.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DISABLED_OWNERS).map_err(db_err)?;
            Ok(t.get(owner.as_str()).map_err(db_err)?.is_some())
        })
        .await
    }

    async fn disabled_owners(&self) -> Result<Vec<String>, StoreError> {
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DISABLED_OWNERS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                out.push(k.value().to_string());
            }
            Ok(out)
        })
        .await
    }

    async fn set_owner_disabled(&self, owner_id: &str, disabled: bool) -> Result<(), StoreError> {
        let owner = owner_id.to_string();
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(DISABLED_OWNERS).map_err(db_err)?;
                if disabled {
                    t.insert(owner.as_str(), ()).map_err(db_err)?;
                } else {
                    t.remove(owner.as_str()).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn create(&self, hash: &TokenHash, record: &TokenRecord) -> Result<(), StoreError> {
        let key = hash.0;
        let hex = hash.to_hex();
        let id = record.id.clone();
        let tok = to_json(&TokEntry::Current {
            record: record.clone(),
        })?;
        let entry = to_json(&IdEntry {
            hash: hex,
            graced: Vec::new(),
        })?;
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut ids = tx.open_table(IDS).map_err(db_err)?;
                let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
                if ids.get(id.as_str()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("token id already exists".into()));
                }
                if tokens.get(key.as_slice()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("token hash already exists".into()));
                }
                ids.insert(id.as_str(), entry.as_str()).map_err(db_err)?;
                tokens
                    .insert(key.as_slice(), tok.as_str())
                    .map_err(db_err)?;
            }
            // Dropping `tx` on an error path above aborts it: nothing is written.
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let id = id.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let ids = tx.open_table(IDS).map_err(db_err)?;
            let tokens = tx.open_table(TOKENS).map_err(db_err)?;
            match read_id(&ids, &id)? {
                None => Ok(None),
                Some(entry) => read_record(&tokens, &entry),
            }
        })
        .await
    }

    async fn update(&self, id: &str, change: Mutation<'_>) -> Result<Option<Changed>, StoreError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let idc = id.to_string();
            let current = self
                .run(move |db| {
                    let tx = db.begin_read().map_err(db_err)?;
                    let ids = tx.open_table(IDS).map_err(db_err)?;
                    let tokens = tx.open_table(TOKENS).map_err(db_err)?;
                    let Some(entry) = read_id(&ids, &idc)? else {
                        return Ok(None);
                    };
                    Ok(read_record(&tokens, &entry)?.map(|r| (entry, r)))
                })
                .await?;
            let Some((entry, before)) = current else {
                return Ok(None);
            };
            let mut after_rec = before.clone();
            change(&mut after_rec).map_err(StoreError::Rejected)?;
            let before_json = to_json(&TokEntry::Current { record: before })?;
            let after_json = to_json(&TokEntry::Current {
                record: after_rec.clone(),
            })?;
            let key = hash_of(&entry.hash)?.0;
            let written = self
                .run(move |db| {
                    let tx = db.begin_write().map_err(db_err)?;
                    {
                        let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
                        let same = match tokens.get(key.as_slice()).map_err(db_err)? {
                            Some(v) => v.value() == before_json,
                            None => false,
                        };
                        if !same {
                            return Ok(false);
                        }
                        tokens
                            .insert(key.as_slice(), after_json.as_str())
                            .map_err(db_err)?;
                    }
                    tx.commit().map_err(db_err)?;
                    Ok(true)
                })
                .await?;
            if written {
                return Ok(Some(Changed {
                    record: after_rec,
                    hashes: live_hashes(&entry, Timestamp::now())?,
                }));
            }
        }
        Err(StoreError::Conflict(
            "record changed concurrently too often; try again".into(),
        ))
    }

    async fn rotate(
        &self,
        id: &str,
        new_hash: &TokenHash,
        new_prefix: &str,
        grace: Duration,
    ) -> Result<Option<Changed>, StoreError> {
        let id = id.to_string();
        let new = *new_hash;
        let new_prefix = new_prefix.to_string();
        self.run(move |db| {
            let now = Timestamp::now();
            let tx = db.begin_write().map_err(db_err)?;
            let changed = {
                let mut ids = tx.open_table(IDS).map_err(db_err)?;
                let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
                let Some(entry) = read_id(&ids, &id)? else {
                    return Ok(None);
                };
                let Some(mut record) = read_record(&tokens, &entry)? else {
                    return Ok(None);
                };
                record.prefix = new_prefix;
                if tokens.get(new.0.as_slice()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("token hash already exists".into()));
                }
                let old = hash_of(&entry.hash)?;
                let new_hex = new.to_hex();
                let mut hashes = vec![old, new];
                tokens
                    .insert(
                        new.0.as_slice(),
                        to_json(&TokEntry::Current {
                            record: record.clone(),
                        })?
                        .as_str(),
                    )
                    .map_err(db_err)?;
                // Older aliases are dropped when expired, else re-pointed at the new hash.
                let mut graced = Vec::new();
                for g in entry.graced {
                    let h = hash_of(&g.hash)?;
                    hashes.push(h);
                    if g.until <= now {
                        tokens.remove(h.0.as_slice()).map_err(db_err)?;
                        continue;
                    }
                    let alias = to_json(&TokEntry::Alias {
                        alias_of: new_hex.clone(),
                        grace_until: g.until,
                    })?;
                    tokens
                        .insert(h.0.as_slice(), alias.as_str())
                        .map_err(db_err)?;
                    graced.push(g);
                }
                if grace.is_zero() {
                    tokens.remove(old.0.as_slice()).map_err(db_err)?;
                } else {
                    let until = after(now, grace);
                    let alias = to_json(&TokEntry::Alias {
                        alias_of: new_hex.clone(),
                        grace_until: until,
                    })?;
                    tokens
                        .insert(old.0.as_slice(), alias.as_str())
                        .map_err(db_err)?;
                    graced.push(Graced {
                        hash: entry.hash.clone(),
                        until,
                    });
                }
                let entry = to_json(&IdEntry {
                    hash: new_hex,
                    graced,
                })?;
                ids.insert(id.as_str(), entry.as_str()).map_err(db_err)?;
                Changed { record, hashes }
            };
            tx.commit().map_err(db_err)?;
            Ok(Some(changed))
        })
        .await
    }

    async fn delete(&self, id: &str) -> Result<Option<Changed>, StoreError> {
        let id = id.to_string();
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let changed = {
                let mut ids = tx.open_table(IDS).map_err(db_err)?;
                let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
                let Some(entry) = read_id(&ids, &id)? else {
                    return Ok(None);
                };
                let Some(record) = read_record(&tokens, &entry)? else {
                    return Ok(None);
                };
                let mut hashes = vec![hash_of(&entry.hash)?];
                for g in &entry.graced {
                    hashes.push(hash_of(&g.hash)?);
                }
                for h in &hashes {
                    tokens.remove(h.0.as_slice()).map_err(db_err)?;
                }
                ids.remove(id.as_str()).map_err(db_err)?;
                let mut hourly = tx.open_table(USAGE_HOURLY).map_err(db_err)?;
                hourly
                    .retain_in((id.as_str(), i64::MIN)..=(id.as_str(), i64::MAX), |_, _| {
                        false
                    })
                    .map_err(db_err)?;
                let mut ips = tx.open_table(CLIENT_IPS).map_err(db_err)?;
                ips.remove(id.as_str()).map_err(db_err)?;
                Changed { record, hashes }
            };
            tx.commit().map_err(db_err)?;
            Ok(Some(changed))
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let query = query.clone();
        self.run(move |db| {
            let now = Timestamp::now();
            let limit = query.limit.clamp(1, 1000);
            let tx = db.begin_read().map_err(db_err)?;
            let ids = tx.open_table(IDS).map_err(db_err)?;
            let tokens = tx.open_table(TOKENS).map_err(db_err)?;
            let range = match &query.cursor {
                Some(c) => ids.range::<&str>((
                    std::ops::Bound::Excluded(c.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => ids.range::<&str>(..),
            }
            .map_err(db_err)?;
            let mut items = Vec::new();
            let mut more = false;
            for row in range {
                let (_, v) = row.map_err(db_err)?;
                if items.len() >= limit {
                    more = true;
                    break;
                }
                let entry: IdEntry = serde_json::from_str(v.value()).map_err(corrupt)?;
                if let Some(r) = read_record(&tokens, &entry)?
                    && query.matches(&r, now)
                {
                    items.push(r);
                }
            }
            // `more` only says another id exists; the next page may come back empty.
            let next_cursor = if more {
                items.last().map(|r: &TokenRecord| r.id.clone())
            } else {
                None
            };
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn record_usage(
        &self,
        batch: &[UsageDelta],
        retention: IpRetention,
    ) -> Result<Vec<NewIpSeen>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch = batch.to_vec();
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let mut new_ips = Vec::new();
            {
                let ids = tx.open_table(IDS).map_err(db_err)?;
                let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
                let mut hourly = tx.open_table(USAGE_HOURLY).map_err(db_err)?;
                let mut client_ips = tx.open_table(CLIENT_IPS).map_err(db_err)?;
                for d in &batch {
                    let Some(entry) = read_id(&ids, &d.id)? else {
                        continue;
                    };
                    if !d.ips.is_empty() {
                        let mut stored: Vec<ClientIpSeen> =
                            match client_ips.get(d.id.as_str()).map_err(db_err)? {
                                Some(v) => serde_json::from_str(v.value()).map_err(corrupt)?,
                                None => Vec::new(),
                            };
                        let cutoff = retention_cutoff(d.last_used_at, retention);
                        let new =
                            merge_client_ips(&mut stored, &d.ips, cutoff, retention.max_per_token);
                        new_ips.extend(new.into_iter().filter_map(|i| d.ips.get(i)).map(|s| {
                            NewIpSeen {
                                token_id: d.id.clone(),
                                prefix: s.prefix,
                                first_seen_at: s.first_seen_at,
                                count: s.count,
                                distinct: stored.len(),
                            }
                        }));
                        client_ips
                            .insert(d.id.as_str(), to_json(&stored)?.as_str())
                            .map_err(db_err)?;
                    }
                    let hour = hour_of(d.last_used_at);
                    let key = (d.id.as_str(), hour);
                    let prev = hourly.get(key).map_err(db_err)?.map_or(0, |v| v.value());
                    hourly
                        .insert(key, prev.saturating_add(d.count))
                        .map_err(db_err)?;
                    let cutoff = hour - HOURLY_RETENTION_HOURS;
                    hourly
                        .retain_in(
                            (d.id.as_str(), i64::MIN)..(d.id.as_str(), cutoff),
                            |_, _| false,
                        )
                        .map_err(db_err)?;
                    let Some(mut record) = read_record(&tokens, &entry)? else {
                        continue;
                    };
                    record.usage_count = record.usage_count.saturating_add(d.count);
                    if record.last_used_at.is_none_or(|l| l < d.last_used_at) {
                        record.last_used_at = Some(d.last_used_at);
                    }
                    let key = hash_of(&entry.hash)?.0;
                    let json = to_json(&TokEntry::Current { record })?;
                    tokens
                        .insert(key.as_slice(), json.as_str())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(new_ips)
        })
        .await
    }

    async fn client_ips(
        &self,
        id: &str,
        since: Timestamp,
    ) -> Result<Vec<ClientIpSeen>, StoreError> {
        let id = id.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(CLIENT_IPS).map_err(db_err)?;
            let mut ips: Vec<ClientIpSeen> = match table.get(id.as_str()).map_err(db_err)? {
                Some(v) => serde_json::from_str(v.value()).map_err(corrupt)?,
                None => Vec::new(),
            };
            ips.retain(|e| e.last_seen_at >= since);
            sort_client_ips(&mut ips);
            Ok(ips)
        })
        .await
    }

    async fn hourly_usage(
        &self,
        id: &str,
        from_hour: i64,
        hours: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let id = id.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let hourly = tx.open_table(USAGE_HOURLY).map_err(db_err)?;
            let mut out = vec![0u64; hours];
            let end = from_hour.saturating_add(i64::try_from(hours).unwrap_or(i64::MAX));
            for row in hourly
                .range((id.as_str(), from_hour)..(id.as_str(), end))
                .map_err(db_err)?
            {
                let (k, v) = row.map_err(db_err)?;
                let (_, hour) = k.value();
                if let Some(slot) = usize::try_from(hour - from_hour)
                    .ok()
                    .and_then(|i| out.get_mut(i))
                {
                    *slot = v.value();
                }
            }
            Ok(out)
        })
        .await
    }

    async fn count_creation(
        &self,
        owner_id: &str,
        window: Duration,
    ) -> Result<(u64, Duration), StoreError> {
        let owner = owner_id.to_string();
        let window_secs = window.as_secs().max(1);
        self.run(move |db| {
            let now = Timestamp::now();
            let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
            let start = (now_ms / 1000) / window_secs * window_secs;
            let tx = db.begin_write().map_err(db_err)?;
            let count = {
                let mut t = tx.open_table(CREATIONS).map_err(db_err)?;
                let prev = t.get(owner.as_str()).map_err(db_err)?.map(|v| v.value());
                let count = match prev {
                    Some((s, c)) if s == start => c.saturating_add(1),
                    _ => 1,
                };
                t.insert(owner.as_str(), (start, count)).map_err(db_err)?;
                count
            };
            tx.commit().map_err(db_err)?;
            let end_ms = (start + window_secs) * 1000;
            Ok((count, Duration::from_millis(end_ms.saturating_sub(now_ms))))
        })
        .await
    }

    async fn charge_quota(
        &self,
        subject: &str,
        period_start: u64,
        _period_end: u64,
        cost: u64,
        limit: u64,
    ) -> Result<(bool, u64), StoreError> {
        let subject = subject.to_string();
        self.run(move |db| {
            let mut tx = db.begin_write().map_err(db_err)?;
            // One write per request: durable with the next durable commit (the usage
            // flush, every 500 ms), not fsynced on its own.
            tx.set_durability(redb::Durability::None).map_err(db_err)?;
            let result = {
                let mut t = tx.open_table(QUOTAS).map_err(db_err)?;
                let used = match t.get(subject.as_str()).map_err(db_err)?.map(|v| v.value()) {
                    Some((start, used)) if start == period_start => used,
                    _ => 0,
                };
                if used.saturating_add(cost) > limit {
                    (false, used)
                } else {
                    let used = used + cost;
                    t.insert(subject.as_str(), (period_start, used))
                        .map_err(db_err)?;
                    (true, used)
                }
            };
            tx.commit().map_err(db_err)?;
            Ok(result)
        })
        .await
    }

    async fn quota_used(&self, subject: &str, period_start: u64) -> Result<u64, StoreError> {
        let subject = subject.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(QUOTAS).map_err(db_err)?;
            Ok(
                match t.get(subject.as_str()).map_err(db_err)?.map(|v| v.value()) {
                    Some((start, used)) if start == period_start => used,
                    _ => 0,
                },
            )
        })
        .await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let id = event.id.clone();
        let json = to_json(event)?;
        let max = self.audit_max_events;
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(AUDIT).map_err(db_err)?;
                t.insert(id.as_str(), json.as_str()).map_err(db_err)?;
                let mut len = t.len().map_err(db_err)?;
                while len > max {
                    t.pop_first().map_err(db_err)?;
                    len -= 1;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let query = query.clone();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(AUDIT).map_err(db_err)?;
            newest_first(
                &t,
                query.cursor.as_deref(),
                query.limit,
                |ev: &AuditEvent| {
                    if query.since.is_some_and(|since| ev.time < since) {
                        // Ids are time ordered: everything further back is older still.
                        Step::Stop
                    } else if query
                        .token_id
                        .as_ref()
                        .is_some_and(|t| ev.token_id.as_ref() != Some(t))
                        || query.actor.as_ref().is_some_and(|a| &ev.actor != a)
                    {
                        Step::Skip
                    } else {
                        Step::Keep
                    }
                },
            )
        })
        .await
    }

    async fn publish(&self, invalidation: &Invalidation) -> Result<(), StoreError> {
        // No receiver is not an error: nobody caches yet.
        let _ = self.invalidations.send(invalidation.clone());
        Ok(())
    }

    fn subscribe(&self) -> InvalidationRx {
        self.invalidations.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|db| {
            db.begin_read().map_err(db_err)?;
            Ok(())
        })
        .await
    }
}
