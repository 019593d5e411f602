//! The token record (SPEC §2) and the values the store trait exchanges.
//!
//! JSON field names are the external contract (camelCase). The record never holds a
//! secret: the token's SHA-256 lives beside it in the store, not in it.

use std::collections::BTreeMap;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::token::TokenHash;

/// What a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// A person's token (`ownerId` is the user).
    User,
    /// An organisation's token, bound to `orgId`.
    Organization,
    /// A project's token, bound to `projectId`.
    Project,
}

impl TokenType {
    /// The JSON / header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::User => "user",
            TokenType::Organization => "organization",
            TokenType::Project => "project",
        }
    }
}

/// A per-token rate limit: `requests` per `perSeconds`, bursting to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub requests: u32,
    /// Period length in seconds.
    pub per_seconds: u32,
    /// Bucket size; defaults to `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The effective burst (bucket size).
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests).max(1)
    }
}

/// A token record, exactly the SPEC §2 fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Stable id; never changes, also not on regenerate.
    pub id: String,
    /// 1-100 characters.
    pub name: String,
    /// ≤ 500 characters.
    #[serde(default)]
    pub description: String,
    /// Display prefix: the token's first 12 characters.
    pub prefix: String,
    /// What the token belongs to.
    #[serde(rename = "type")]
    pub kind: TokenType,
    /// The owner (a user id, or the org/project for non-user tokens).
    pub owner_id: String,
    /// Organisation, if any.
    #[serde(default)]
    pub org_id: Option<String>,
    /// Project, if any (required for `project` tokens).
    #[serde(default)]
    pub project_id: Option<String>,
    /// Permissions, e.g. `read`, `write`, `tokens:admin`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Scopes, e.g. `documents`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Who created it (admin key name or token id).
    #[serde(default)]
    pub created_by: String,
    /// Expiry, or `None` for never.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// False while deactivated.
    pub is_active: bool,
    /// Set once on revoke; permanent.
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
    /// Last accepted request (maintained by the usage flusher).
    #[serde(default)]
    pub last_used_at: Option<Timestamp>,
    /// Accepted requests (maintained by the usage flusher).
    #[serde(default)]
    pub usage_count: u64,
    /// CIDRs the token may be used from; empty = any.
    #[serde(default)]
    pub ip_allowlist: Vec<IpNet>,
    /// Per-token rate limit override.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Free-form string map.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What a hash resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The token's record.
    pub record: TokenRecord,
    /// `Some(t)` when the hash is a regenerated token's *old* secret, valid until `t`.
    pub grace_until: Option<Timestamp>,
}

/// A record after a mutation, with every hash whose cache entry must be dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    /// The record as now stored (as it was, for a delete).
    pub record: TokenRecord,
    /// The current hash and any hashes still in their grace period.
    pub hashes: Vec<TokenHash>,
}

/// Filters and paging for [`crate::store::TokenStore::list`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only this owner's tokens.
    pub owner_id: Option<String>,
    /// Only this org's tokens.
    pub org_id: Option<String>,
    /// Only this project's tokens.
    pub project_id: Option<String>,
    /// Only this type.
    pub kind: Option<TokenType>,
    /// `Some(true)`: active (isActive, not revoked, not expired); `Some(false)`: the rest.
    pub active: Option<bool>,
    /// Case-insensitive substring of name or description.
    pub q: Option<String>,
    /// Only tokens expiring between now and now + this many days.
    pub expiring_within_days: Option<u32>,
    /// Page size (1-1000).
    pub limit: usize,
    /// Opaque cursor from the previous page (the last id returned).
    pub cursor: Option<String>,
}

impl ListQuery {
    /// Whether `r` passes every filter (paging aside), evaluated at `now`.
    pub fn matches(&self, r: &TokenRecord, now: Timestamp) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have.as_deref() == Some(w.as_str()),
        };
        if let Some(owner) = &self.owner_id
            && &r.owner_id != owner
        {
            return false;
        }
        if !eq(&self.org_id, &r.org_id) || !eq(&self.project_id, &r.project_id) {
            return false;
        }
        if let Some(kind) = self.kind
            && r.kind != kind
        {
            return false;
        }
        if let Some(active) = self.active {
            let is = r.is_active && r.revoked_at.is_none() && r.expires_at.is_none_or(|e| e > now);
            if is != active {
                return false;
            }
        }
        if let Some(q) = &self.q {
            let q = q.to_lowercase();
            if !r.name.to_lowercase().contains(&q) && !r.description.to_lowercase().contains(&q) {
                return false;
            }
        }
        if let Some(days) = self.expiring_within_days {
            let horizon = now + jiff::SignedDuration::from_hours(24 * i64::from(days));
            match r.expires_at {
                Some(e) if e > now && e <= horizon => {}
                _ => return false,
            }
        }
        true
    }
}

/// One page of records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// Records in id order (ids sort by creation time).
    pub items: Vec<TokenRecord>,
    /// Cursor for the next page, `None` at the end.
    pub next_cursor: Option<String>,
}

/// Usage seen by one replica since its last flush, for one token.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageDelta {
    /// Token id.
    pub id: String,
    /// Accepted requests to add to `usageCount`.
    pub count: u64,
    /// Latest use; `lastUsedAt` only moves forward.
    pub last_used_at: Timestamp,
    /// The client-IP prefixes of those requests, one entry per distinct prefix (empty
    /// when `client_ip.signals` is off). Merged into the token's stored prefixes.
    pub ips: Vec<ClientIpSeen>,
}

/// One client-IP prefix a token was used from: requests counted, first and last
/// seen. In a [`UsageDelta`] it covers one flush interval; as stored (and in
/// `GET /v1/tokens/{id}/ips`) it covers the retention window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpSeen {
    /// The prefix, host bits zero (`203.0.113.0/24`; `/32` or `/128` for an exact
    /// address).
    pub prefix: IpNet,
    /// First request from it.
    pub first_seen_at: Timestamp,
    /// Latest request from it.
    pub last_seen_at: Timestamp,
    /// Requests from it.
    pub count: u64,
}

impl ClientIpSeen {
    /// Merges `other` (same prefix) into `self`: counts add, first seen is the
    /// earlier, last seen the later.
    pub fn merge(&mut self, other: &ClientIpSeen) {
        self.count = self.count.saturating_add(other.count);
        self.first_seen_at = self.first_seen_at.min(other.first_seen_at);
        self.last_seen_at = self.last_seen_at.max(other.last_seen_at);
    }
}

/// How the store keeps each token's client-IP prefixes (`client_ip.signals`),
/// applied by [`crate::store::TokenStore::record_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRetention {
    /// At most this many prefixes per token; the least recently seen go first.
    pub max_per_token: usize,
    /// Prefixes last seen longer than this before the batch's latest request
    /// (`last_used_at`) are dropped.
    pub retention: std::time::Duration,
}

/// A client-IP prefix a token had not been seen from (within the retention) before a
/// usage batch: the input of `token.new_ip` signals. The first prefix of a brand-new
/// token is new too, and so is a prefix seen again after it was dropped (retention or
/// the per-token bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIpSeen {
    /// Token id.
    pub token_id: String,
    /// The new prefix.
    pub prefix: IpNet,
    /// The first request from it (in this batch).
    pub first_seen_at: Timestamp,
    /// Requests from it in this batch.
    pub count: u64,
    /// Distinct prefixes the token has now (after this batch, within the bound).
    pub distinct: usize,
}

/// One audit event (SPEC §4 `GET /v1/audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Unique, time-ordered id (also the paging cursor).
    pub id: String,
    /// When it happened.
    pub time: Timestamp,
    /// Who did it: `admin:<key name>` or `token:<id>`.
    pub actor: String,
    /// What was done, e.g. `token.create`, `token.revoke`, `owner.disable`.
    pub action: String,
    /// The token concerned, if any.
    #[serde(default)]
    pub token_id: Option<String>,
    /// The owner concerned, if any.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// Caller's IP.
    #[serde(default)]
    pub source_ip: Option<String>,
    /// `success` or `denied`.
    pub outcome: String,
    /// Action details (changed field names, reason of a denial); never a secret.
    #[serde(default)]
    pub details: serde_json::Value,
}

/// Filters for the audit trail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only events about this token.
    pub token_id: Option<String>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Page size.
    pub limit: usize,
    /// Events strictly older than this id (newest first).
    pub cursor: Option<String>,
}

/// A cache invalidation, published on every management change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Drop the entry of this hash.
    Hash(TokenHash),
    /// Drop the cached disabled-state of this owner.
    Owner(String),
    /// Drop everything (also sent locally after a lost subscription is re-established).
    All,
}

impl Invalidation {
    /// Wire form on the pub/sub channel: `h:<hex>`, `o:<owner>`, `*`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Hash(h) => format!("h:{}", h.to_hex()),
            Invalidation::Owner(o) => format!("o:{o}"),
            Invalidation::All => "*".to_string(),
        }
    }

    /// Parses the wire form; unknown messages are `None` (ignored by receivers).
    pub fn decode(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Invalidation::All);
        }
        if let Some(h) = s.strip_prefix("h:") {
            return TokenHash::from_hex(h).map(Invalidation::Hash);
        }
        s.strip_prefix("o:")
            .map(|o| Invalidation::Owner(o.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_round_trips() {
        for inv in [
            Invalidation::Hash(TokenHash::of("t")),
            Invalidation::Owner("user:42".into()),
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::decode(&inv.encode()), Some(inv));
        }
        assert_eq!(Invalidation::decode("nonsense"), None);
    }
}
