//! Usage tracking without a store write on the request path.
//!
//! Each accepted request bumps an in-memory counter for its token id; a flusher task
//! writes the aggregated counts to the store every `interval` (≤ 1 s) in one batch.
//! A failed flush keeps the batch and retries it with the next one, so counts are not
//! dropped while the store is down; [`UsageRecorder::flush`] runs once more on
//! graceful shutdown. Loss bound on a crash: the counts of the last interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use crate::store::{TokenStore, UsageDelta};

/// Pending counts per token id.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<String, (u64, Timestamp)>>,
}

impl UsageRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one accepted request. Cost: one short uncontended lock; allocates only
    /// for the first request of a token in a flush interval.
    pub fn record(&self, id: &str, at: Timestamp) {
        let Ok(mut map) = self.pending.lock() else {
            return;
        };
        if let Some(e) = map.get_mut(id) {
            e.0 += 1;
            if at > e.1 {
                e.1 = at;
            }
        } else {
            map.insert(id.to_string(), (1, at));
        }
    }

    fn take(&self) -> Vec<UsageDelta> {
        let Ok(mut map) = self.pending.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut *map)
            .into_iter()
            .map(|(id, (count, last_used_at))| UsageDelta {
                id,
                count,
                last_used_at,
            })
            .collect()
    }

    fn put_back(&self, batch: Vec<UsageDelta>) {
        let Ok(mut map) = self.pending.lock() else {
            return;
        };
        for d in batch {
            let e = map.entry(d.id).or_insert((0, d.last_used_at));
            e.0 += d.count;
            if d.last_used_at > e.1 {
                e.1 = d.last_used_at;
            }
        }
    }

    /// Writes pending counts; on failure keeps them for the next flush.
    pub async fn flush(&self, store: &dyn TokenStore) -> Result<usize, crate::store::StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            crate::metrics::metrics()
                .usage_last_flush
                .set(jiff::Timestamp::now().as_second());
            return Ok(0);
        }
        let n = batch.len();
        match store.record_usage(&batch).await {
            Ok(()) => {
                crate::metrics::metrics().usage_flushed.inc_by(n as u64);
                crate::metrics::metrics()
                    .usage_last_flush
                    .set(jiff::Timestamp::now().as_second());
                Ok(n)
            }
            Err(e) => {
                crate::metrics::metrics().usage_flush_errors.inc();
                self.put_back(batch);
                Err(e)
            }
        }
    }

    /// Flushes every `interval` until the task is aborted.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        store: Arc<dyn TokenStore>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = this.flush(store.as_ref()).await {
                    tracing::warn!(error = %e, "usage flush failed; will retry");
                }
            }
        })
    }
}
