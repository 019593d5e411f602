//! The stored shapes both stores share (JSON in a redb table or a Redis string), so a
//! record means the same in either backend.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::{StoreError, TokenRecord};
use crate::token::TokenHash;

/// What a token hash resolves to.
// Short-lived decode target; boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokEntry {
    /// The current secret of a token.
    Current {
        /// The record.
        record: TokenRecord,
    },
    /// A rotated-out secret, valid until `grace_until`.
    Alias {
        /// The current hash (hex) it stands for.
        #[serde(rename = "aliasOf")]
        alias_of: String,
        /// End of the grace period.
        #[serde(rename = "graceUntil")]
        grace_until: Timestamp,
    },
}

/// Where a token's record lives, by id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct IdEntry {
    /// Current hash (hex).
    pub hash: String,
    /// Rotated-out hashes (possibly) still in their grace period.
    #[serde(default)]
    pub graced: Vec<Graced>,
}

/// One rotated-out hash and the end of its grace period.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Graced {
    /// The hash (hex).
    pub hash: String,
    /// End of its grace period.
    pub until: Timestamp,
}

/// Stored data that does not decode.
pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// JSON for storage.
pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(corrupt)
}

/// A stored hex hash.
pub(crate) fn hash_of(hex: &str) -> Result<TokenHash, StoreError> {
    TokenHash::from_hex(hex).ok_or_else(|| StoreError::Corrupt(format!("bad hash {hex:?}")))
}

/// `now + d`, saturating at the end of time.
pub(crate) fn after(now: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}
