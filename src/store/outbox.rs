//! The webhook outbox's records: one [`Delivery`] per (event, endpoint), kept in the
//! store so that nothing is lost on a restart and every replica can deliver.
//!
//! Life of a delivery: `pending` (due at `nextAttemptAt`) → claimed by one replica
//! for a lease → `delivered`, or back to `pending` with a later `nextAttemptAt`, or
//! `failed` after the last attempt. A replica that dies holding a lease only delays
//! the delivery until the lease ends: delivery is at least once, and receivers
//! deduplicate on the event id.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed (or the endpoint is no longer configured).
    Failed,
}

impl DeliveryStatus {
    /// `pending`, `delivered` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event on its way to one endpoint (the JSON of `GET /v1/webhooks/deliveries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// ULID of this delivery (time ordered).
    pub id: String,
    /// The event's id, the same for every endpoint: receivers deduplicate on it.
    pub event_id: String,
    /// Event name (`token.revoked`, …).
    pub event: String,
    /// Name of the endpoint (`webhooks.endpoints[].name`).
    pub endpoint: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the event happened.
    pub created_at: Timestamp,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
    /// When the receiver accepted it.
    pub delivered_at: Option<Timestamp>,
    /// HTTP status of the last attempt, when there was an answer.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The request body: `{"id", "type", "createdAt", "data"}`.
    pub payload: serde_json::Value,
}

impl Delivery {
    /// When the delivery should next be picked up (`None` once final), in Unix ms.
    pub fn due_ms(&self) -> Option<i64> {
        match self.status {
            DeliveryStatus::Pending => Some(
                self.next_attempt_at
                    .unwrap_or(self.created_at)
                    .as_millisecond(),
            ),
            _ => None,
        }
    }
}

/// The end of a lease of `lease` taken at `now`, in Unix ms (saturating).
pub fn lease_end_ms(now: Timestamp, lease: Duration) -> i64 {
    now.as_millisecond()
        .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

/// Filters for [`Outbox::list_deliveries`]; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only deliveries in this state.
    pub status: Option<DeliveryStatus>,
    /// Only this event.
    pub event: Option<String>,
    /// Only this endpoint.
    pub endpoint: Option<String>,
    /// Only deliveries of this token (`payload.data.tokenId` or `.token.id`).
    pub token_id: Option<String>,
    /// Deliveries strictly older than this id.
    pub cursor: Option<String>,
    /// Page size.
    pub limit: usize,
}

impl DeliveryQuery {
    /// Whether `d` passes the filters (the cursor is applied by the store).
    pub fn matches(&self, d: &Delivery) -> bool {
        self.status.is_none_or(|s| s == d.status)
            && self.event.as_deref().is_none_or(|e| e == d.event)
            && self.endpoint.as_deref().is_none_or(|e| e == d.endpoint)
            && self
                .token_id
                .as_deref()
                .is_none_or(|t| token_of(&d.payload) == Some(t))
    }
}

/// The token a payload is about, if any.
pub fn token_of(payload: &serde_json::Value) -> Option<&str> {
    let data = payload.get("data")?;
    data.get("tokenId")
        .or_else(|| data.get("token").and_then(|t| t.get("id")))
        .and_then(|v| v.as_str())
}

/// The webhook outbox of a store (a supertrait of [`super::TokenStore`]; each
/// method is one atomic step, like the token store's).
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Adds webhook deliveries to the outbox (each due at its `due_ms`), then drops
    /// the final (delivered or failed) ones outside the newest `keep`; pending
    /// deliveries are never dropped.
    async fn enqueue_deliveries(
        &self,
        deliveries: &[Delivery],
        keep: u64,
    ) -> Result<(), StoreError>;

    /// Takes up to `limit` pending deliveries due at `now` and leases them until
    /// `now + lease`: until then no other caller gets them. One atomic step.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Writes a delivery back after an attempt: pending ones are due again at their
    /// `nextAttemptAt`, final ones leave the queue.
    async fn save_delivery(&self, delivery: &Delivery) -> Result<(), StoreError>;

    /// One delivery by id.
    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError>;

    /// Deliveries newest first, filtered by `query`.
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;

    /// Claims the one-shot marker `key` for `ttl`: `true` for the first caller (on
    /// any replica), `false` while the marker lives. Dedups events across replicas.
    async fn once(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;
}
