//! Usage tracking without a store write on the request path.
//!
//! Each accepted request bumps an in-memory counter for its token id, and the request
//! count of its client-IP prefix (`client_ip.signals`: IPv4 /24 and IPv6 /64 by
//! default); a flusher task writes the aggregated counts to the store every `interval`
//! (≤ 1 s), in store calls of [`FLUSH_CHUNK`] tokens. What a failed call did not
//! write is kept and retried with the next flush, so counts are not dropped while the
//! store is down; [`UsageRecorder::flush`]
//! runs once more on graceful shutdown. Loss bound on a crash: the counts of the last
//! interval.
//!
//! Memory bound: per token and interval at most `max_per_token` prefixes are pending;
//! a further new prefix replaces the least recently seen one (the store keeps the most
//! recently seen ones too, so nothing it would keep is lost).
//!
//! New prefixes: the store reports the prefixes a token had not been seen from
//! ([`NewIpSeen`]); the flusher sends them to the channel given to
//! [`UsageRecorder::report_new_ips_to`] (webhooks turn them into `token.new_ip`).
//! Delivery is at most once: a report is lost if the flush that found it fails
//! half-way (the retry no longer sees the prefix as new) or the receiver is gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;
use tokio::sync::mpsc::UnboundedSender;

use futures_util::future::BoxFuture;

use crate::config::IpSignals;
use crate::store::{ClientIpSeen, IpRetention, NewIpSeen, StoreError, TokenStore, UsageDelta};

/// Tokens written per store call by a flush. A call's work is built and sent in one
/// go on the runtime's thread, so this bounds the pause a flush puts into request
/// handling (≈ 1–2 µs per token with Redis: one script invocation each); the calls
/// of one flush run one after another.
pub const FLUSH_CHUNK: usize = 64;

/// What one store call of a flush returns, and the chunk it was given.
type ChunkWritten = (Result<Vec<NewIpSeen>, StoreError>, Vec<UsageDelta>);

/// One token's pending usage.
#[derive(Debug)]
struct Pending {
    /// Requests since the last flush.
    count: u64,
    /// Latest request.
    last: Timestamp,
    /// Distinct client-IP prefixes since the last flush (≤ `max_per_token`).
    ips: Vec<ClientIpSeen>,
}

impl Pending {
    /// Counts one request at `at`, from `seen` (when prefixes are recorded).
    fn add(&mut self, at: Timestamp, seen: Option<ClientIpSeen>, max: usize) {
        self.count += 1;
        if at > self.last {
            self.last = at;
        }
        if let Some(seen) = seen {
            add_ip(&mut self.ips, seen, max);
        }
    }
}

/// What the request path changes, under one lock.
#[derive(Debug, Default)]
struct State {
    /// Pending usage per token id.
    tokens: HashMap<String, Pending>,
    /// The current `client_ip.signals` (replaced on reload).
    signals: IpSignals,
}

/// Pending counts per token id, and where new client-IP prefixes are reported.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    state: Mutex<State>,
    /// Receiver of new-prefix reports, if any (set once by the webhook wiring).
    new_ips: Mutex<Option<UnboundedSender<NewIpSeen>>>,
}

/// The prefix `ip` is grouped under: IPv4-mapped IPv6 as IPv4, host bits cleared.
pub fn ip_prefix(ip: IpAddr, signals: &IpSignals) -> IpNet {
    let ip = crate::client_ip::canonical(ip);
    let len = match ip {
        IpAddr::V4(_) => signals.ipv4_prefix,
        IpAddr::V6(_) => signals.ipv6_prefix,
    };
    // Validated lengths never fail; a bad one falls back to the exact address.
    IpNet::new(ip, len).map_or(IpNet::from(ip), |n| n.trunc())
}

/// Adds one prefix's requests to a pending list of at most `max` entries (at the
/// bound, the least recently seen entry makes room). No allocation once the list has
/// grown to its size; a scan of at most `max` entries.
fn add_ip(ips: &mut Vec<ClientIpSeen>, seen: ClientIpSeen, max: usize) {
    if let Some(e) = ips.iter_mut().find(|e| e.prefix == seen.prefix) {
        e.merge(&seen);
        return;
    }
    if ips.len() < max.max(1) {
        ips.push(seen);
        return;
    }
    if let Some(oldest) = ips.iter_mut().min_by_key(|e| e.last_seen_at)
        && oldest.last_seen_at <= seen.last_seen_at
    {
        *oldest = seen;
    }
}

impl UsageRecorder {
    /// An empty recorder with the default `client_ip.signals`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `client_ip.signals` (at start and on every reload). Pending prefixes
    /// keep the grouping they were counted with.
    pub fn set_signals(&self, signals: IpSignals) {
        if let Ok(mut s) = self.state.lock() {
            s.signals = signals;
        }
    }

    /// Sends every new client-IP prefix the store reports to `tx` from now on
    /// (replacing an earlier receiver). Sends never block; a dropped receiver only
    /// loses the reports.
    pub fn report_new_ips_to(&self, tx: UnboundedSender<NewIpSeen>) {
        if let Ok(mut s) = self.new_ips.lock() {
            *s = Some(tx);
        }
    }

    /// Counts one accepted request from `client_ip`. Cost: one short uncontended
    /// lock and a scan of the token's pending prefixes (≤ `max_per_token`); allocates
    /// only for the first request of a token, and for its first prefix, in a flush
    /// interval.
    pub fn record(&self, id: &str, at: Timestamp, client_ip: IpAddr) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let State { tokens, signals } = &mut *state;
        let seen = signals.enabled.then(|| ClientIpSeen {
            prefix: ip_prefix(client_ip, signals),
            first_seen_at: at,
            last_seen_at: at,
            count: 1,
        });
        let max = signals.max_per_token;
        match tokens.get_mut(id) {
            Some(p) => p.add(at, seen, max),
            None => {
                let mut p = Pending {
                    count: 0,
                    last: at,
                    ips: Vec::new(),
                };
                p.add(at, seen, max);
                tokens.insert(id.to_string(), p);
            }
        }
    }

    /// The pending batch, and how the store is to bound what it keeps.
    fn take(&self) -> (Vec<UsageDelta>, IpRetention) {
        let Ok(mut state) = self.state.lock() else {
            return (Vec::new(), retention(&IpSignals::default()));
        };
        let retention = retention(&state.signals);
        let batch = std::mem::take(&mut state.tokens)
            .into_iter()
            .map(|(id, p)| UsageDelta {
                id,
                count: p.count,
                last_used_at: p.last,
                ips: p.ips,
            })
            .collect();
        (batch, retention)
    }

    fn put_back(&self, batch: Vec<UsageDelta>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let max = state.signals.max_per_token;
        for d in batch {
            let e = state.tokens.entry(d.id).or_insert(Pending {
                count: 0,
                last: d.last_used_at,
                ips: Vec::new(),
            });
            e.count += d.count;
            if d.last_used_at > e.last {
                e.last = d.last_used_at;
            }
            for ip in d.ips {
                add_ip(&mut e.ips, ip, max);
            }
        }
    }

    /// Writes pending counts, [`FLUSH_CHUNK`] tokens per store call; what a failed call
    /// and the calls after it did not write is kept for the next flush (what earlier
    /// calls wrote stays written). New client-IP prefixes go to the receiver set by
    /// [`UsageRecorder::report_new_ips_to`].
    pub async fn flush(&self, store: &dyn TokenStore) -> Result<usize, crate::store::StoreError> {
        self.flush_with(FLUSH_CHUNK, |chunk, retention| {
            Box::pin(async move {
                let written = store.record_usage(&chunk, retention).await;
                (written, chunk)
            })
        })
        .await
    }

    /// [`UsageRecorder::flush`] with `write` as the store call (which hands the chunk
    /// back, to be kept if the call failed).
    async fn flush_with<'a, W>(&self, chunk: usize, mut write: W) -> Result<usize, StoreError>
    where
        W: FnMut(Vec<UsageDelta>, IpRetention) -> BoxFuture<'a, ChunkWritten>,
    {
        let (mut rest, retention) = self.take();
        let mut written = 0;
        while !rest.is_empty() {
            let after = rest.split_off(chunk.max(1).min(rest.len()));
            let (result, batch) = write(rest, retention).await;
            match result {
                Ok(new_ips) => {
                    written += batch.len();
                    crate::metrics::metrics()
                        .usage_flushed
                        .inc_by(batch.len() as u64);
                    self.report(new_ips);
                    rest = after;
                }
                Err(e) => {
                    crate::metrics::metrics().usage_flush_errors.inc();
                    self.put_back(batch);
                    self.put_back(after);
                    return Err(e);
                }
            }
        }
        crate::metrics::metrics()
            .usage_last_flush
            .set(jiff::Timestamp::now().as_second());
        Ok(written)
    }

    fn report(&self, new_ips: Vec<NewIpSeen>) {
        if new_ips.is_empty() {
            return;
        }
        let Ok(sink) = self.new_ips.lock() else {
            return;
        };
        if let Some(tx) = sink.as_ref() {
            for seen in new_ips {
                if tx.send(seen).is_err() {
                    break;
                }
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

/// What the store keeps per token, from `client_ip.signals`.
fn retention(s: &IpSignals) -> IpRetention {
    IpRetention {
        max_per_token: s.max_per_token,
        retention: s.retention(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_grouped_by_the_configured_prefixes() {
        let d = IpSignals::default();
        assert_eq!(
            ip_prefix(ip("203.0.113.77"), &d).to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            ip_prefix(ip("2001:db8:1:2:3:4:5:6"), &d).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            ip_prefix(ip("::ffff:198.51.100.9"), &d).to_string(),
            "198.51.100.0/24",
            "IPv4-mapped IPv6 counts as IPv4"
        );
        let exact = IpSignals {
            ipv4_prefix: 32,
            ipv6_prefix: 128,
            ..d
        };
        assert_eq!(
            ip_prefix(ip("203.0.113.77"), &exact).to_string(),
            "203.0.113.77/32"
        );
        assert_eq!(
            ip_prefix(ip("2001:db8::1"), &exact).to_string(),
            "2001:db8::1/128"
        );
    }

    #[test]
    fn requests_are_counted_per_token_and_prefix() {
        let r = UsageRecorder::new();
        r.record("a", at(1), ip("10.0.0.1"));
        r.record("a", at(3), ip("10.0.0.2"));
        r.record("a", at(2), ip("10.0.1.1"));
        r.record("b", at(5), ip("10.0.0.1"));
        let (mut batch, retention) = r.take();
        assert_eq!(retention.max_per_token, 32);
        assert_eq!(retention.retention, Duration::from_secs(7 * 86_400));
        batch.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!((batch[0].count, batch[0].last_used_at), (3, at(3)));
        let a: Vec<_> = batch[0]
            .ips
            .iter()
            .map(|s| {
                (
                    s.prefix.to_string(),
                    s.count,
                    s.first_seen_at,
                    s.last_seen_at,
                )
            })
            .collect();
        assert_eq!(
            a,
            vec![
                ("10.0.0.0/24".to_string(), 2, at(1), at(3)),
                ("10.0.1.0/24".to_string(), 1, at(2), at(2)),
            ]
        );
        assert_eq!(batch[1].ips.len(), 1);
        assert!(r.take().0.is_empty(), "taken means gone");
    }

    #[test]
    fn pending_prefixes_are_bounded_and_keep_the_most_recent() {
        let r = UsageRecorder::new();
        r.set_signals(IpSignals {
            max_per_token: 2,
            warn_above: 1,
            ..IpSignals::default()
        });
        r.record("a", at(1), ip("10.0.1.1"));
        r.record("a", at(2), ip("10.0.2.1"));
        r.record("a", at(3), ip("10.0.3.1"));
        r.record("a", at(4), ip("10.0.2.9"));
        let (batch, retention) = r.take();
        assert_eq!(retention.max_per_token, 2);
        let mut got: Vec<_> = batch[0]
            .ips
            .iter()
            .map(|s| (s.prefix.to_string(), s.count))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("10.0.2.0/24".to_string(), 2),
                ("10.0.3.0/24".to_string(), 1)
            ]
        );
        assert_eq!(batch[0].count, 4, "every request is counted");
    }

    #[test]
    fn disabled_signals_record_counts_only() {
        let r = UsageRecorder::new();
        r.set_signals(IpSignals {
            enabled: false,
            ..IpSignals::default()
        });
        r.record("a", at(1), ip("10.0.0.1"));
        let (batch, _) = r.take();
        assert_eq!(batch[0].count, 1);
        assert!(batch[0].ips.is_empty());
    }

    #[tokio::test]
    async fn new_prefixes_are_handed_to_the_receiver_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::EmbeddedStore::open(&crate::config::EmbeddedSettings {
            path: dir.path().join("u.redb"),
            audit_max_events: 10,
        })
        .unwrap();
        let record = |id: &str| crate::store::TokenRecord {
            id: id.into(),
            name: "n".into(),
            description: String::new(),
            prefix: "pat_abcdefgh".into(),
            kind: crate::store::TokenType::User,
            owner_id: "u".into(),
            org_id: None,
            project_id: None,
            permissions: vec![],
            scopes: vec![],
            created_at: at(0),
            created_by: "admin:t".into(),
            expires_at: None,
            is_active: true,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            ip_allowlist: vec![],
            rate_limit: None,
            metadata: Default::default(),
        };
        store
            .create(&crate::token::TokenHash::of("t1"), &record("t1"))
            .await
            .unwrap();
        let r = UsageRecorder::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        r.report_new_ips_to(tx);

        // The first prefix of a brand-new token is new.
        r.record("t1", at(1), ip("203.0.113.5"));
        r.record("t1", at(2), ip("203.0.113.6"));
        assert_eq!(r.flush(&store).await.unwrap(), 1);
        let got = rx.try_recv().unwrap();
        assert_eq!(
            (
                got.token_id.as_str(),
                got.prefix.to_string(),
                got.count,
                got.distinct
            ),
            ("t1", "203.0.113.0/24".to_string(), 2, 1)
        );
        assert_eq!(got.first_seen_at, at(1));
        assert!(rx.try_recv().is_err());

        // Known: nothing; another network: reported.
        r.record("t1", at(3), ip("203.0.113.7"));
        r.record("t1", at(4), ip("2001:db8::1"));
        r.flush(&store).await.unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(
            (got.prefix.to_string(), got.distinct),
            ("2001:db8::/64".to_string(), 2)
        );
        assert!(rx.try_recv().is_err());
        let stored = store.client_ips("t1", Timestamp::MIN).await.unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1].count, 3);

        // A dropped receiver costs nothing but the reports.
        drop(rx);
        r.record("t1", at(5), ip("198.51.100.1"));
        assert_eq!(r.flush(&store).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_flush_writes_in_chunks_and_keeps_only_what_a_failed_chunk_did_not_write() {
        let r = UsageRecorder::new();
        for i in 0..10 {
            r.record(&format!("t{i}"), at(1), ip("10.0.0.1"));
        }
        // Chunks of 4: the first call writes, the second fails, the third is not made.
        let calls = std::sync::Mutex::new(Vec::new());
        let err = r
            .flush_with(4, |chunk, _| {
                let mut c = calls.lock().unwrap();
                c.push(chunk.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
                let fail = c.len() == 2;
                Box::pin(async move {
                    if fail {
                        (Err(StoreError::Unavailable("down".into())), chunk)
                    } else {
                        (Ok(Vec::new()), chunk)
                    }
                })
            })
            .await;
        assert!(err.is_err());
        let calls = calls.into_inner().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|c| c.len() == 4));
        let (kept, _) = r.take();
        let mut kept: Vec<String> = kept.into_iter().map(|d| d.id).collect();
        kept.sort();
        let mut expected: Vec<String> = (0..10)
            .map(|i| format!("t{i}"))
            .filter(|id| !calls[0].contains(id))
            .collect();
        expected.sort();
        assert_eq!(
            kept, expected,
            "the written chunk is not retried; the rest is"
        );

        // A successful flush reports how many tokens it wrote, over every chunk.
        for i in 0..10 {
            r.record(&format!("t{i}"), at(2), ip("10.0.0.1"));
        }
        let mut sizes = Vec::new();
        let n = r
            .flush_with(4, |chunk, _| {
                sizes.push(chunk.len());
                Box::pin(async { (Ok(Vec::new()), chunk) })
            })
            .await
            .unwrap();
        assert_eq!((n, sizes), (10, vec![4, 4, 2]));
        assert!(r.take().0.is_empty());
    }

    #[test]
    fn a_failed_batch_is_merged_back() {
        let r = UsageRecorder::new();
        r.record("a", at(1), ip("10.0.0.1"));
        let (batch, _) = r.take();
        r.record("a", at(5), ip("10.0.0.2"));
        r.put_back(batch);
        let (batch, _) = r.take();
        assert_eq!((batch[0].count, batch[0].last_used_at), (2, at(5)));
        assert_eq!(batch[0].ips.len(), 1);
        let s = batch[0].ips[0];
        assert_eq!(
            (s.count, s.first_seen_at, s.last_seen_at),
            (2, at(1), at(5))
        );
    }
}
