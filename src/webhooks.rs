//! Webhooks: token events POSTed to the configured endpoints, signed, retried from a
//! persistent outbox in the store.
//!
//! # Events
//! Management changes (`token.created`, `token.updated`, `token.revoked`,
//! `token.regenerated`, `token.deleted`, `owner.disabled`) are written to the outbox
//! by the management call itself, right after the change ([`Webhooks::emit_now`]).
//! Events seen on the request path (`token.rate_limited`, `token.quota_warning`,
//! `token.quota_exhausted`) and by the usage flusher (`token.new_ip`) are queued in
//! memory ([`Webhooks::emit`], no store call on the request path) and moved to the
//! outbox by the worker within a second; a graceful shutdown moves the rest. Events
//! that must happen once (the first 429 of a token per interval, a quota crossing
//! 80 % in a period, a token entering the expiry window) are deduplicated across
//! replicas by a one-shot marker in the store ([`crate::store::Outbox::once`]), and on this
//! replica by a small in-memory set so a flood of 429s costs no store call each.
//! `token.expiring` comes from a scan that runs once per
//! `webhooks.expiring_scan_interval_seconds` across all replicas (the first replica
//! to claim the interval's marker runs it).
//!
//! # Delivery
//! Every replica runs a worker that claims due deliveries from the outbox with a
//! lease (so two replicas never send the same attempt), POSTs the payload and
//! writes the outcome back: `delivered` on 2xx; otherwise the next attempt is due
//! after `retry_initial · 2^(attempts-1)` (at most `retry_max`, ±10 % jitter), and
//! after `max_attempts` it is `failed`. A replica that dies mid-attempt leaves the
//! lease to expire and another replica retries: delivery is at least once; receivers
//! deduplicate on the event id (`Patgate-Event-Id`, the payload's `id`).
//!
//! # Request
//! `POST <url>` with `Content-Type: application/json`, `Patgate-Event: <name>`,
//! `Patgate-Event-Id: evt_…`, `Patgate-Delivery: <delivery id>` and
//! `Patgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! (Stripe's scheme: receivers recompute the HMAC over the raw body and reject old
//! timestamps). Body: `{"id", "type", "createdAt", "data"}`; `data` never holds a
//! secret (token records carry only their display prefix).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::{WebhookEvent, WebhookSettings};
use crate::lifecycle::new_id;
use crate::metrics::{EventLabels, ResultLabels, metrics};
use crate::store::{Delivery, DeliveryStatus, ListQuery, TokenRecord, TokenStore};

/// Deliveries claimed per round.
const BATCH: usize = 32;
/// Longest wait between worker rounds when nothing woke it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Events kept in memory while the store is unreachable; beyond it the oldest go.
const MAX_QUEUED: usize = 100_000;
/// Longest error text kept on a delivery.
const MAX_ERROR_LEN: usize = 300;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An event waiting for the outbox.
#[derive(Debug, Clone)]
struct Queued {
    event: WebhookEvent,
    id: String,
    at: Timestamp,
    data: Value,
    /// A one-shot marker that must be claimed first (key, lifetime).
    once: Option<(String, Duration)>,
}

/// The webhook service of one replica. Cheap to call when no endpoint is configured.
pub struct Webhooks {
    settings: ArcSwap<WebhookSettings>,
    /// [`WebhookSettings::subscribed`] of the current settings.
    subscribed: AtomicU16,
    store: Arc<dyn TokenStore>,
    queue: Mutex<Vec<Queued>>,
    wake: Notify,
    /// One-shot keys this replica emitted recently (a local pre-filter of `once`).
    recent: moka::sync::Cache<String, ()>,
    client: HttpClient,
    /// When the worker next looks whether an expiry scan is due.
    next_scan: Mutex<std::time::Instant>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("endpoints", &self.settings.load().endpoints.len())
            .finish_non_exhaustive()
    }
}

/// `t=<secs>,v1=<hex HMAC-SHA256(secret, "<secs>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex::encode(ctx.sign().as_ref()))
}

/// The wait before attempt `attempts + 1`, before jitter.
pub fn backoff(s: &WebhookSettings, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    s.retry_initial
        .saturating_mul(1u32 << doublings)
        .min(s.retry_max)
}

fn jittered(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b).map_or(0, |()| u16::from_le_bytes(b));
    // ±10 %.
    let tenth = d / 10;
    let span = tenth.as_nanos().saturating_mul(2);
    let offset = span.saturating_mul(u128::from(r)) / u128::from(u16::MAX);
    (d - tenth) + Duration::from_nanos(u64::try_from(offset).unwrap_or(0))
}

fn client() -> anyhow::Result<HttpClient> {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let config = crate::tls::client_config("webhooks", crate::tls::ClientFiles::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

impl Webhooks {
    /// The service for `settings` over `store`.
    pub fn new(settings: WebhookSettings, store: Arc<dyn TokenStore>) -> anyhow::Result<Self> {
        Ok(Webhooks {
            subscribed: AtomicU16::new(settings.subscribed()),
            settings: ArcSwap::from_pointee(settings),
            store,
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            recent: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            client: client()?,
            next_scan: Mutex::new(std::time::Instant::now()),
        })
    }

    /// Applies reloaded settings (endpoints and policy; deliveries already in the
    /// outbox go to the endpoint of their name, if it still exists).
    pub fn install(&self, settings: WebhookSettings) {
        self.subscribed
            .store(settings.subscribed(), Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<WebhookSettings> {
        self.settings.load_full()
    }

    /// Whether any endpoint subscribes to `event` (one atomic load).
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.subscribed.load(Ordering::Relaxed) & event.bit() != 0
    }

    fn queued(&self, event: WebhookEvent, data: Value, once: Option<(String, Duration)>) -> Queued {
        Queued {
            event,
            id: format!("evt_{}", new_id()),
            at: Timestamp::now(),
            data,
            once,
        }
    }

    fn push(&self, q: Queued) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        if queue.len() >= MAX_QUEUED {
            tracing::warn!(
                event = q.event.name(),
                "webhook queue full; dropping the oldest event"
            );
            queue.remove(0);
        }
        queue.push(q);
        metrics().webhook_queued.set(queue.len() as i64);
        drop(queue);
        self.wake.notify_one();
    }

    /// Queues `event` for the outbox (no I/O: safe on the request path).
    pub fn emit(&self, event: WebhookEvent, data: impl FnOnce() -> Value) {
        if self.wants(event) {
            let q = self.queued(event, data(), None);
            self.push(q);
        }
    }

    /// Queues `event` unless the one-shot marker `key` was claimed within `ttl` (on
    /// any replica). No I/O here: the marker is claimed by the worker.
    pub fn emit_once(
        &self,
        event: WebhookEvent,
        key: String,
        ttl: Duration,
        data: impl FnOnce() -> Value,
    ) {
        if !self.wants(event) || self.recent.contains_key(&key) {
            return;
        }
        self.recent.insert(key.clone(), ());
        let q = self.queued(event, data(), Some((key, ttl)));
        self.push(q);
    }

    /// Writes `event` to the outbox now (management calls: the event is stored when
    /// the call returns); queued for the worker when the store fails.
    pub async fn emit_now(&self, event: WebhookEvent, data: Value) {
        if !self.wants(event) {
            return;
        }
        let q = self.queued(event, data, None);
        if let Err(e) = self.store_events(std::slice::from_ref(&q)).await {
            tracing::warn!(error = %e, event = event.name(), "webhook outbox unreachable; event kept in memory");
            self.push(q);
        } else {
            self.wake.notify_one();
        }
    }

    /// The outbox deliveries of `q`: one per subscribed endpoint.
    fn deliveries(&self, settings: &WebhookSettings, q: &Queued) -> Vec<Delivery> {
        let payload = json!({
            "id": q.id,
            "type": q.event.name(),
            "createdAt": q.at,
            "data": q.data,
        });
        settings
            .endpoints
            .iter()
            .filter(|e| e.events.contains(&q.event))
            .map(|e| Delivery {
                id: new_id(),
                event_id: q.id.clone(),
                event: q.event.name().to_string(),
                endpoint: e.name.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                created_at: q.at,
                next_attempt_at: Some(q.at),
                last_attempt_at: None,
                delivered_at: None,
                last_status_code: None,
                last_error: None,
                payload: payload.clone(),
            })
            .collect()
    }

    async fn store_events(&self, events: &[Queued]) -> Result<(), crate::store::StoreError> {
        let settings = self.settings();
        let deliveries: Vec<Delivery> = events
            .iter()
            .flat_map(|q| self.deliveries(&settings, q))
            .collect();
        self.store
            .enqueue_deliveries(&deliveries, settings.keep_deliveries)
            .await?;
        for q in events {
            metrics()
                .webhook_events
                .get_or_create(&EventLabels {
                    event: q.event.name(),
                })
                .inc();
        }
        Ok(())
    }

    /// Moves queued events to the outbox (claiming one-shot markers first). Events
    /// the store could not take stay queued.
    pub async fn flush(&self) -> Result<(), crate::store::StoreError> {
        let batch = match self.queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Ok(()),
        };
        if batch.is_empty() {
            return Ok(());
        }
        let mut keep = Vec::new();
        let mut ready = Vec::new();
        let mut failure = None;
        for q in batch {
            if failure.is_some() {
                keep.push(q);
                continue;
            }
            match &q.once {
                None => ready.push(q),
                Some((key, ttl)) => match self.store.once(key, *ttl).await {
                    Ok(true) => ready.push(Queued { once: None, ..q }),
                    Ok(false) => {}
                    Err(e) => {
                        failure = Some(e);
                        keep.push(q);
                    }
                },
            }
        }
        if !ready.is_empty()
            && let Err(e) = self.store_events(&ready).await
        {
            keep.splice(0..0, ready);
            failure = Some(e);
        }
        if let Ok(mut q) = self.queue.lock() {
            keep.append(&mut q);
            *q = keep;
            metrics().webhook_queued.set(q.len() as i64);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Runs the worker until the task is aborted: outbox writes, the expiry scan and
    /// deliveries.
    pub fn spawn_worker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.flush().await {
                    tracing::warn!(error = %e, "webhook outbox unreachable; events kept in memory");
                }
                this.scan_if_due().await;
                let claimed = match this.deliver_due().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "webhook outbox unreachable");
                        0
                    }
                };
                if claimed < BATCH {
                    tokio::select! {
                        () = this.wake.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
            }
        })
    }

    /// One round of deliveries; returns how many were claimed.
    pub async fn deliver_due(&self) -> Result<usize, crate::store::StoreError> {
        let settings = self.settings();
        if settings.endpoints.is_empty() {
            return Ok(0);
        }
        let lease = settings.timeout + Duration::from_secs(30);
        let claimed = self
            .store
            .claim_deliveries(Timestamp::now(), lease, BATCH)
            .await?;
        let n = claimed.len();
        let attempts = claimed.into_iter().map(|d| self.attempt(&settings, d));
        for d in futures_util::future::join_all(attempts).await {
            if let Err(e) = self.store.save_delivery(&d).await {
                // The lease runs out and the delivery is tried again: at least once.
                tracing::warn!(error = %e, delivery = %d.id, "saving a webhook delivery failed");
            }
        }
        Ok(n)
    }

    /// Sends `d` once and returns it with the outcome recorded.
    async fn attempt(&self, settings: &WebhookSettings, mut d: Delivery) -> Delivery {
        let now = Timestamp::now();
        d.attempts += 1;
        d.last_attempt_at = Some(now);
        let Some(endpoint) = settings.endpoints.iter().find(|e| e.name == d.endpoint) else {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_at = None;
            d.last_error = Some(format!("endpoint `{}` is no longer configured", d.endpoint));
            count_attempt("failed");
            return d;
        };
        let body = serde_json::to_vec(&d.payload).unwrap_or_default();
        let sig = signature(&endpoint.secret, now.as_second(), &body);
        let req = Request::builder()
            .method(Method::POST)
            .uri(endpoint.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("patgate/", env!("CARGO_PKG_VERSION")),
            )
            .header("patgate-event", d.event.as_str())
            .header("patgate-event-id", d.event_id.as_str())
            .header("patgate-delivery", d.id.as_str())
            .header("patgate-signature", sig)
            .body(Full::new(Bytes::from(body)));
        let outcome = match req {
            Err(e) => Err((None, format!("cannot build the request: {e}"))),
            Ok(req) => match tokio::time::timeout(settings.timeout, self.client.request(req)).await
            {
                Err(_) => Err((None, format!("timed out after {:?}", settings.timeout))),
                Ok(Err(e)) => Err((None, format!("request failed: {}", chain(&e)))),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    // Drain (bounded by the timeout) so the connection can be reused.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect())
                            .await;
                    if status.is_success() {
                        Ok(status.as_u16())
                    } else {
                        Err((Some(status.as_u16()), format!("receiver answered {status}")))
                    }
                }
            },
        };
        match outcome {
            Ok(code) => {
                d.status = DeliveryStatus::Delivered;
                d.delivered_at = Some(Timestamp::now());
                d.next_attempt_at = None;
                d.last_status_code = Some(code);
                d.last_error = None;
                count_attempt("delivered");
            }
            Err((code, mut error)) => {
                error.truncate(
                    (0..=MAX_ERROR_LEN.min(error.len()))
                        .rev()
                        .find(|&i| error.is_char_boundary(i))
                        .unwrap_or(0),
                );
                d.last_status_code = code;
                d.last_error = Some(error);
                if d.attempts >= settings.max_attempts {
                    d.status = DeliveryStatus::Failed;
                    d.next_attempt_at = None;
                    count_attempt("failed");
                    tracing::warn!(delivery = %d.id, endpoint = %d.endpoint, event = %d.event, "webhook delivery failed for good");
                } else {
                    let wait = jittered(backoff(settings, d.attempts));
                    d.next_attempt_at = Some(
                        now.checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
                            .unwrap_or(now),
                    );
                    count_attempt("retry");
                }
            }
        }
        d
    }

    /// Runs the expiry scan when its interval came round and this replica claimed
    /// it. Checked at most once a minute (and at start).
    async fn scan_if_due(&self) {
        if !self.wants(WebhookEvent::TokenExpiring) {
            return;
        }
        let settings = self.settings();
        {
            let Ok(mut next) = self.next_scan.lock() else {
                return;
            };
            let now = std::time::Instant::now();
            if now < *next {
                return;
            }
            *next = now + settings.expiring_scan_interval.min(Duration::from_secs(60));
        }
        let every = settings.expiring_scan_interval.as_secs().max(1);
        let slot = u64::try_from(Timestamp::now().as_second()).unwrap_or(0) / every;
        match self
            .store
            .once(
                &format!("scan:expiring:{every}:{slot}"),
                settings.expiring_scan_interval,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "expiry scan skipped: store unreachable");
                return;
            }
        }
        if let Err(e) = self.scan_expiring(&settings).await {
            tracing::warn!(error = %e, "expiry scan failed");
        }
    }

    /// Emits `token.expiring` once per token and expiry date for every active token
    /// expiring within `expiring_days`.
    async fn scan_expiring(
        &self,
        settings: &WebhookSettings,
    ) -> Result<(), crate::store::StoreError> {
        let days = settings.expiring_days;
        let mut query = ListQuery {
            active: Some(true),
            expiring_within_days: Some(days),
            limit: 500,
            ..ListQuery::default()
        };
        let marker_ttl = Duration::from_secs((u64::from(days) + 1) * 86_400);
        loop {
            let page = self.store.list(&query).await?;
            let now = Timestamp::now();
            for r in &page.items {
                let Some(expires) = r.expires_at else {
                    continue;
                };
                let key = format!("expiring:{}:{}", r.id, expires.as_second());
                if self.store.once(&key, marker_ttl).await? {
                    let left = expires.duration_since(now).as_secs().max(0);
                    let data = json!({
                        "tokenId": r.id,
                        "token": r,
                        "expiresAt": expires,
                        "daysLeft": left / 86_400,
                    });
                    let q = self.queued(WebhookEvent::TokenExpiring, data, None);
                    self.push(q);
                }
            }
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => return Ok(()),
            }
        }
    }
}

impl Webhooks {
    /// Turns the usage flusher's reports of client-IP prefixes a token had not been
    /// seen from into `token.new_ip` events (see `client_ip.signals`). Runs until
    /// aborted; reports arrive at most once (see [`crate::usage`]).
    pub fn spawn_new_ip_events(
        self: &Arc<Self>,
        usage: &crate::usage::UsageRecorder,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::store::NewIpSeen>();
        usage.report_new_ips_to(tx);
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                this.emit(WebhookEvent::TokenNewIp, || {
                    json!({
                        "tokenId": n.token_id,
                        "prefix": n.prefix.to_string(),
                        "firstSeenAt": n.first_seen_at,
                        "count": n.count,
                        "distinct": n.distinct,
                    })
                });
            }
        })
    }
}

/// `e` and its sources, `: `-separated (hyper's top-level errors say little alone).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn count_attempt(result: &'static str) {
    metrics()
        .webhook_attempts
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// `data` of a token event: the record (never a secret) and who acted.
pub fn token_data(record: &TokenRecord, actor: &str) -> Value {
    json!({"tokenId": record.id, "ownerId": record.owner_id, "actor": actor, "token": record})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 test case 2 ("Jefe" / "what do ya want for nothing?"), split as
        // "<t>.<body>" = "what do ya want for nothing?" is not possible, so check
        // against an independently computed value of the same construction.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"whsec_0123456789abcdef");
        let expected = ring::hmac::sign(&key, b"1733370000.{\"a\":1}");
        assert_eq!(
            signature("whsec_0123456789abcdef", 1_733_370_000, br#"{"a":1}"#),
            format!("t=1733370000,v1={}", hex::encode(expected.as_ref()))
        );
        // RFC 4231 test case 2, for the primitive itself.
        let jefe = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            hex::encode(ring::hmac::sign(&jefe, b"what do ya want for nothing?").as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_max() {
        let s = WebhookSettings {
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
            ..WebhookSettings::default()
        };
        let waits: Vec<u64> = (1..=11).map(|a| backoff(&s, a).as_secs()).collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(backoff(&s, 1000), Duration::from_secs(3600));
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(100));
            assert!(
                j >= Duration::from_secs(90) && j <= Duration::from_secs(110),
                "{j:?}"
            );
        }
    }
}
