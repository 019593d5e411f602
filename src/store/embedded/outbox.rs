//! The webhook outbox and one-shot markers in redb.
//!
//! | table | key | value |
//! |---|---|---|
//! | `webhook_deliveries` | delivery id (ULID, time ordered) | JSON [`Delivery`] |
//! | `webhook_due` | (due Unix ms, delivery id) | `()`: the pending queue, in due order |
//! | `webhook_pending` | delivery id | its current due ms (its key in `webhook_due`) |
//! | `once` | marker key | expiry Unix ms |

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::{EmbeddedStore, Step, db_err, newest_first};
use crate::store::entry::{corrupt, to_json};
use crate::store::outbox::lease_end_ms;
use crate::store::{Delivery, DeliveryQuery, Outbox, StoreError};

const DELIVERIES: TableDefinition<&str, &str> = TableDefinition::new("webhook_deliveries");
const DUE: TableDefinition<(i64, &str), ()> = TableDefinition::new("webhook_due");
const PENDING: TableDefinition<&str, i64> = TableDefinition::new("webhook_pending");
const ONCE: TableDefinition<&str, i64> = TableDefinition::new("once");

/// Expired markers are swept when the table holds more than this many.
const ONCE_SWEEP_AT: u64 = 10_000;

/// Creates the outbox tables (called when the file is opened).
pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(DELIVERIES).map_err(db_err)?;
    tx.open_table(DUE).map_err(db_err)?;
    tx.open_table(PENDING).map_err(db_err)?;
    tx.open_table(ONCE).map_err(db_err)?;
    Ok(())
}

/// Writes `d` and moves it in the due queue (out of it when final).
fn put(tx: &WriteTransaction, d: &Delivery, json: &str) -> Result<(), StoreError> {
    let mut due = tx.open_table(DUE).map_err(db_err)?;
    let mut pending = tx.open_table(PENDING).map_err(db_err)?;
    let old = pending
        .get(d.id.as_str())
        .map_err(db_err)?
        .map(|v| v.value());
    if let Some(old) = old {
        due.remove((old, d.id.as_str())).map_err(db_err)?;
    }
    match d.due_ms() {
        Some(at) => {
            due.insert((at, d.id.as_str()), ()).map_err(db_err)?;
            pending.insert(d.id.as_str(), at).map_err(db_err)?;
        }
        None => {
            pending.remove(d.id.as_str()).map_err(db_err)?;
        }
    }
    tx.open_table(DELIVERIES)
        .map_err(db_err)?
        .insert(d.id.as_str(), json)
        .map_err(db_err)?;
    Ok(())
}

/// Drops the final deliveries among those older than the newest `keep`.
fn trim(tx: &WriteTransaction, keep: u64) -> Result<(), StoreError> {
    let mut all = tx.open_table(DELIVERIES).map_err(db_err)?;
    let pending = tx.open_table(PENDING).map_err(db_err)?;
    let len = all.len().map_err(db_err)?;
    if len <= keep {
        return Ok(());
    }
    let mut drop = Vec::new();
    for row in all
        .iter()
        .map_err(db_err)?
        .take(usize::try_from(len - keep).unwrap_or(usize::MAX))
    {
        let (k, _) = row.map_err(db_err)?;
        let id = k.value().to_string();
        if pending.get(id.as_str()).map_err(db_err)?.is_none() {
            drop.push(id);
        }
    }
    for id in drop {
        all.remove(id.as_str()).map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl Outbox for EmbeddedStore {
    async fn enqueue_deliveries(
        &self,
        deliveries: &[Delivery],
        keep: u64,
    ) -> Result<(), StoreError> {
        let rows = deliveries
            .iter()
            .map(|d| Ok((d.clone(), to_json(d)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            for (d, json) in &rows {
                put(&tx, d, json)?;
            }
            trim(&tx, keep)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now_ms = now.as_millisecond();
        let until = lease_end_ms(now, lease);
        self.run(move |db: &Database| {
            let tx = db.begin_write().map_err(db_err)?;
            let mut out = Vec::new();
            {
                let mut due = tx.open_table(DUE).map_err(db_err)?;
                let mut pending = tx.open_table(PENDING).map_err(db_err)?;
                let all = tx.open_table(DELIVERIES).map_err(db_err)?;
                let mut taken = Vec::new();
                for row in due
                    .range((i64::MIN, "")..=(now_ms, "\u{10FFFF}"))
                    .map_err(db_err)?
                {
                    let (k, _) = row.map_err(db_err)?;
                    let (at, id) = k.value();
                    taken.push((at, id.to_string()));
                    if taken.len() >= limit {
                        break;
                    }
                }
                for (at, id) in taken {
                    due.remove((at, id.as_str())).map_err(db_err)?;
                    let Some(json) = all.get(id.as_str()).map_err(db_err)? else {
                        pending.remove(id.as_str()).map_err(db_err)?;
                        continue;
                    };
                    let d: Delivery = serde_json::from_str(json.value()).map_err(corrupt)?;
                    due.insert((until, id.as_str()), ()).map_err(db_err)?;
                    pending.insert(id.as_str(), until).map_err(db_err)?;
                    out.push(d);
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
    }

    async fn save_delivery(&self, d: &Delivery) -> Result<(), StoreError> {
        let d = d.clone();
        let json = to_json(&d)?;
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            put(&tx, &d, &json)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let q = q.clone();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DELIVERIES).map_err(db_err)?;
            newest_first(&t, q.cursor.as_deref(), q.limit, |d: &Delivery| {
                if q.matches(d) { Step::Keep } else { Step::Skip }
            })
        })
        .await
    }

    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let id = id.to_string();
        self.run(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DELIVERIES).map_err(db_err)?;
            match t.get(id.as_str()).map_err(db_err)? {
                None => Ok(None),
                Some(v) => serde_json::from_str(v.value()).map(Some).map_err(corrupt),
            }
        })
        .await
    }

    async fn once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = key.to_string();
        let at = Timestamp::now();
        let (now, until) = (at.as_millisecond(), lease_end_ms(at, ttl));
        self.run(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let first = {
                let mut t = tx.open_table(ONCE).map_err(db_err)?;
                let live = t
                    .get(key.as_str())
                    .map_err(db_err)?
                    .is_some_and(|v| v.value() > now);
                if !live {
                    t.insert(key.as_str(), until).map_err(db_err)?;
                    if t.len().map_err(db_err)? > ONCE_SWEEP_AT {
                        t.retain(|_, exp| exp > now).map_err(db_err)?;
                    }
                }
                !live
            };
            tx.commit().map_err(db_err)?;
            Ok(first)
        })
        .await
    }
}
