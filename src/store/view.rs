//! The cached auth view of a token: what the request path reads, and nothing else.
//!
//! A [`TokenView`] is built once from a [`Lookup`] when it enters the
//! [`crate::cache::TokenCache`] and never changes afterwards (a changed record becomes
//! a new view). It holds id, display prefix, name, type, owner, org, project, scopes,
//! permissions, IP allowlist, rate-limit override, expiry, the active and revoked
//! flags, and the lookup's grace deadline. It leaves out description, metadata,
//! `createdAt`, `createdBy`, `lastUsedAt` and `usageCount`: only management reads
//! those, and management reads the store.
//!
//! Memory, since a million of these is most of the cache's footprint:
//! - the six strings share one `Box<str>`, delimited by 16-bit offsets;
//! - scopes, permissions, IP allowlist and rate-limit override form a [`Grant`],
//!   interned process-wide: views with equal grants share one allocation. The interner
//!   holds weak references only (a dead grant's contents are freed at once, its
//!   80-byte shell at the next sweep) and sweeps the dead ones whenever its entries
//!   have doubled since the last sweep, so it stays within twice the live grants
//!   (or 1024 entries);
//! - the expiry is kept as seconds and nanoseconds (12 bytes instead of the 24 of
//!   `Option<Timestamp>`), with its presence a flag bit;
//! - what almost no view needs (an old secret's grace deadline, strings beyond
//!   64 KiB in all) moves the strings into a box beside it, so that the usual view
//!   pays nothing for it.
//!
//! A typical view (`tests::a_typical_view_costs_at_most_150_bytes`) is a 48-byte
//! struct, 64 bytes with its `Arc`'s counts, plus one allocation of its strings.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use ipnet::IpNet;
use jiff::Timestamp;

use super::{Lookup, RateLimit, TokenType};

/// What a token may do and from where. Immutable; shared by every view whose grant
/// has the same contents (see [`TokenView`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Scopes, in the record's order.
    scopes: Box<[Box<str>]>,
    /// Permissions, in the record's order.
    permissions: Box<[Box<str>]>,
    /// CIDRs the token may be used from; empty = any.
    ip_allowlist: Box<[IpNet]>,
    /// Per-token rate-limit override.
    rate_limit: Option<RateLimit>,
}

/// The flag bits of [`TokenView::flags`].
const ACTIVE: u8 = 1;
const REVOKED: u8 = 1 << 1;
const HAS_ORG: u8 = 1 << 2;
const HAS_PROJECT: u8 = 1 << 3;
const EXPIRES: u8 = 1 << 4;

/// Indices of the strings in [`TokenView::text`], in order.
const ID: usize = 0;
const PREFIX: usize = 1;
const NAME: usize = 2;
const OWNER: usize = 3;
const ORG: usize = 4;
const PROJECT: usize = 5;

/// The cached, immutable view of one token hash's [`Lookup`]. Shared behind an `Arc`
/// between the cache and the requests using it.
pub struct TokenView {
    /// id, prefix, name, ownerId, orgId, projectId, concatenated (an absent org or
    /// project is empty; [`Self::flags`] tells absent from empty).
    strings: Strings,
    /// Scopes, permissions, IP allowlist, rate limit (interned).
    grant: Arc<Grant>,
    /// `expiresAt`, whole seconds (valid when [`EXPIRES`] is set).
    expires_second: i64,
    /// `expiresAt`, the nanoseconds beyond `expires_second`.
    expires_nanosecond: i32,
    /// Where each string but the last ends in the text (unless [`Rare::long_ends`]).
    ends: [u16; 5],
    /// The token's type.
    kind: TokenType,
    /// [`ACTIVE`], [`REVOKED`], [`HAS_ORG`], [`HAS_PROJECT`], [`EXPIRES`].
    flags: u8,
}

/// The view's text and, for the few views that have them, the rare parts. As an
/// enum it takes no more room than the `Box<str>` alone (the second variant lives
/// in the first's null-pointer niche).
enum Strings {
    /// The usual case.
    Plain(Box<str>),
    /// The text, and a grace deadline or long strings.
    WithRare(Box<Rare>),
}

/// The parts of a view almost none has.
struct Rare {
    /// The strings.
    text: Box<str>,
    /// The lookup's grace deadline (the hash is a regenerated token's old secret).
    grace_until: Option<Timestamp>,
    /// The string ends when the text is longer than 16-bit offsets reach (never for
    /// records the admin API wrote; a store written by something else might hold one).
    long_ends: Option<[u32; 5]>,
}

impl TokenView {
    /// Builds the view of `lookup`. Cost: one allocation for the strings, one for the
    /// view's `Arc` (made by the caller), and a lock of the grant interner, which
    /// allocates only for a grant no live view has.
    pub fn new(lookup: Lookup) -> Self {
        let Lookup {
            record: r,
            grace_until,
        } = lookup;
        let parts = [
            r.id.as_str(),
            r.prefix.as_str(),
            r.name.as_str(),
            r.owner_id.as_str(),
            r.org_id.as_deref().unwrap_or(""),
            r.project_id.as_deref().unwrap_or(""),
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut long_ends = [0u32; 5];
        for (i, part) in parts.iter().enumerate() {
            text.push_str(part);
            if let Some(end) = long_ends.get_mut(i) {
                *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
            }
        }
        let text = text.into_boxed_str();
        let ends = long_ends.map(|e| u16::try_from(e).unwrap_or(u16::MAX));
        let long_ends = u16::try_from(text.len()).is_err().then_some(long_ends);
        let strings = if grace_until.is_none() && long_ends.is_none() {
            Strings::Plain(text)
        } else {
            Strings::WithRare(Box::new(Rare {
                text,
                grace_until,
                long_ends,
            }))
        };

        let mut flags = 0;
        for (set, bit) in [
            (r.is_active, ACTIVE),
            (r.revoked_at.is_some(), REVOKED),
            (r.org_id.is_some(), HAS_ORG),
            (r.project_id.is_some(), HAS_PROJECT),
            (r.expires_at.is_some(), EXPIRES),
        ] {
            if set {
                flags |= bit;
            }
        }
        let expires = r.expires_at.unwrap_or(Timestamp::UNIX_EPOCH);
        let boxed = |v: Vec<String>| -> Box<[Box<str>]> {
            v.into_iter().map(String::into_boxed_str).collect()
        };
        let grant = intern(Grant {
            scopes: boxed(r.scopes),
            permissions: boxed(r.permissions),
            ip_allowlist: r.ip_allowlist.into_boxed_slice(),
            rate_limit: r.rate_limit,
        });
        TokenView {
            strings,
            grant,
            expires_second: expires.as_second(),
            expires_nanosecond: expires.subsec_nanosecond(),
            ends,
            kind: r.kind,
            flags,
        }
    }

    /// String `i` of the text. Cost: a branch and two offset reads, no allocation.
    fn part(&self, i: usize) -> &str {
        let (text, long_ends) = match &self.strings {
            Strings::Plain(text) => (text, None),
            Strings::WithRare(rare) => (&rare.text, rare.long_ends.as_ref()),
        };
        let end = |j: usize| match long_ends {
            Some(ends) => ends.get(j).map_or(text.len(), |&e| e as usize),
            None => self.ends.get(j).map_or(text.len(), |&e| e.into()),
        };
        let start = if i == 0 { 0 } else { end(i - 1) };
        // The offsets were taken at char boundaries of this very text.
        text.get(start..end(i)).unwrap_or("")
    }

    fn flag(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    /// Stable token id (`id`).
    pub fn id(&self) -> &str {
        self.part(ID)
    }

    /// Display prefix (`prefix`): the token's first 12 characters.
    pub fn prefix(&self) -> &str {
        self.part(PREFIX)
    }

    /// `name`.
    pub fn name(&self) -> &str {
        self.part(NAME)
    }

    /// `type`.
    pub fn kind(&self) -> TokenType {
        self.kind
    }

    /// `ownerId`.
    pub fn owner_id(&self) -> &str {
        self.part(OWNER)
    }

    /// `orgId`, if any.
    pub fn org_id(&self) -> Option<&str> {
        self.flag(HAS_ORG).then(|| self.part(ORG))
    }

    /// `projectId`, if any.
    pub fn project_id(&self) -> Option<&str> {
        self.flag(HAS_PROJECT).then(|| self.part(PROJECT))
    }

    /// `scopes`, in the record's order.
    pub fn scopes(&self) -> &[Box<str>] {
        &self.grant.scopes
    }

    /// `permissions`, in the record's order.
    pub fn permissions(&self) -> &[Box<str>] {
        &self.grant.permissions
    }

    /// Whether the token holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.grant.scopes.iter().any(|s| &**s == scope)
    }

    /// Whether the token holds `permission`.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.grant.permissions.iter().any(|p| &**p == permission)
    }

    /// `ipAllowlist`; empty = any address.
    pub fn ip_allowlist(&self) -> &[IpNet] {
        &self.grant.ip_allowlist
    }

    /// `rateLimit`, the per-token override.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.grant.rate_limit
    }

    /// `expiresAt`, or `None` for never.
    pub fn expires_at(&self) -> Option<Timestamp> {
        // The parts came from a valid timestamp, so `new` cannot fail; were it to,
        // the earliest instant keeps the token expired rather than valid forever.
        self.flag(EXPIRES).then(|| {
            Timestamp::new(self.expires_second, self.expires_nanosecond).unwrap_or(Timestamp::MIN)
        })
    }

    /// `isActive`.
    pub fn is_active(&self) -> bool {
        self.flag(ACTIVE)
    }

    /// Whether `revokedAt` is set (the time itself is not kept: only management shows it).
    pub fn is_revoked(&self) -> bool {
        self.flag(REVOKED)
    }

    /// `Some(t)` when the hash is a regenerated token's old secret, valid until `t`.
    pub fn grace_until(&self) -> Option<Timestamp> {
        match &self.strings {
            Strings::Plain(_) => None,
            Strings::WithRare(rare) => rare.grace_until,
        }
    }

    /// The heap bytes this view owns besides its own `Arc` allocation (its strings,
    /// and the rare parts when present). The [`Grant`] is shared and not counted.
    pub fn owned_heap_bytes(&self) -> usize {
        match &self.strings {
            Strings::Plain(text) => text.len(),
            Strings::WithRare(rare) => size_of::<Rare>() + rare.text.len(),
        }
    }
}

impl std::fmt::Debug for TokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenView")
            .field("id", &self.id())
            .field("prefix", &self.prefix())
            .field("kind", &self.kind())
            .field("owner_id", &self.owner_id())
            .field("org_id", &self.org_id())
            .field("project_id", &self.project_id())
            .field("grant", &self.grant)
            .field("expires_at", &self.expires_at())
            .field("is_active", &self.is_active())
            .field("is_revoked", &self.is_revoked())
            .field("grace_until", &self.grace_until())
            .finish_non_exhaustive()
    }
}

/// Shares immutable values by content through weak references: an entry lives as
/// long as some `Arc` to it does, plus until the next sweep.
struct Interner<T> {
    hasher: RandomState,
    /// Weak references by content hash (colliding contents share a bucket).
    buckets: HashMap<u64, Vec<Weak<T>>>,
    /// Weak references held.
    held: usize,
    /// When `held` reaches this, the dead references are dropped.
    sweep_at: usize,
}

/// The least `sweep_at`: below it a sweep would cost more than the entries it frees.
const MIN_SWEEP_AT: usize = 1024;

impl<T: Hash + Eq> Interner<T> {
    fn new() -> Self {
        Interner {
            hasher: RandomState::new(),
            buckets: HashMap::new(),
            held: 0,
            sweep_at: MIN_SWEEP_AT,
        }
    }

    /// The live value equal to `value`, else `value` itself, now shared.
    fn intern(&mut self, value: T) -> Arc<T> {
        let hash = self.hasher.hash_one(&value);
        let bucket = self.buckets.entry(hash).or_default();
        if let Some(found) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|v| **v == value)
        {
            return found;
        }
        let before = bucket.len();
        bucket.retain(|w| w.strong_count() > 0);
        let shared = Arc::new(value);
        bucket.push(Arc::downgrade(&shared));
        self.held = self.held - before + bucket.len();
        if self.held >= self.sweep_at {
            self.sweep();
        }
        shared
    }

    /// Drops every dead reference; the next sweep comes when the live ones doubled.
    fn sweep(&mut self) {
        self.buckets.retain(|_, bucket| {
            bucket.retain(|w| w.strong_count() > 0);
            !bucket.is_empty()
        });
        self.held = self.buckets.values().map(Vec::len).sum();
        self.sweep_at = (2 * self.held).max(MIN_SWEEP_AT);
    }

    fn len(&self) -> usize {
        self.held
    }
}

static GRANTS: LazyLock<Mutex<Interner<Grant>>> = LazyLock::new(|| Mutex::new(Interner::new()));

/// The shared grant equal to `grant`.
fn intern(grant: Grant) -> Arc<Grant> {
    GRANTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .intern(grant)
}

/// Grants the interner holds (live ones, and dead ones not yet swept).
pub fn interned_grants() -> usize {
    GRANTS.lock().unwrap_or_else(PoisonError::into_inner).len()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::TokenRecord;

    /// A realistic record: an id as `lifecycle::new_id` makes them (a ULID), a
    /// 12-character display prefix, a 20-character name, owner/org/project ids, two
    /// scopes, two permissions, an expiry, a rate-limit override, no allowlist —
    /// and the fields a view leaves out, filled.
    fn record(i: u32) -> TokenRecord {
        TokenRecord {
            id: crate::lifecycle::new_id(),
            name: format!("ci deploy key {i:06}"),
            description: "Used by the nightly deployment pipeline".into(),
            prefix: "pat_AbCdEfGh".into(),
            kind: TokenType::Project,
            owner_id: format!("user-{:05}", i % 50_000),
            org_id: Some(format!("org-{:04}", i % 1_000)),
            project_id: Some(format!("proj-{:05}", i % 20_000)),
            permissions: vec!["read".into(), "write".into()],
            scopes: vec!["documents".into(), "billing".into()],
            created_at: Timestamp::now(),
            created_by: "admin:ops".into(),
            expires_at: Some(Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)),
            is_active: true,
            revoked_at: None,
            last_used_at: Some(Timestamp::now()),
            usage_count: 1234,
            ip_allowlist: vec![],
            rate_limit: Some(RateLimit {
                requests: 100,
                per_seconds: 1,
                burst: Some(200),
            }),
            metadata: BTreeMap::from([("team".to_string(), "platform".to_string())]),
        }
    }

    fn view(r: TokenRecord, grace_until: Option<Timestamp>) -> TokenView {
        TokenView::new(Lookup {
            record: r,
            grace_until,
        })
    }

    /// What one cached view costs: its `Arc` allocation (two counts and the struct)
    /// plus the heap it owns. Grants are shared between tokens and not counted.
    fn cost(v: &TokenView) -> usize {
        2 * size_of::<usize>() + size_of::<TokenView>() + v.owned_heap_bytes()
    }

    #[test]
    fn a_typical_view_costs_at_most_150_bytes() {
        // A new inline field (a `String` is 24 bytes) breaks this first.
        assert!(
            size_of::<TokenView>() <= 48,
            "TokenView grew to {} bytes",
            size_of::<TokenView>()
        );
        let r = record(7);
        let strings = r.id.len() + r.prefix.len() + r.name.len() + r.owner_id.len() + 8 + 10;
        let v = view(r, None);
        assert_eq!(v.owned_heap_bytes(), strings, "only the strings are owned");
        let bytes = cost(&v);
        assert!(bytes <= 150, "a typical view costs {bytes} bytes");
    }

    #[test]
    fn every_field_reads_back() {
        let r = record(1);
        let v = view(r.clone(), None);
        assert_eq!(v.id(), r.id);
        assert_eq!(v.prefix(), r.prefix);
        assert_eq!(v.name(), r.name);
        assert_eq!(v.kind(), r.kind);
        assert_eq!(v.owner_id(), r.owner_id);
        assert_eq!(v.org_id(), r.org_id.as_deref());
        assert_eq!(v.project_id(), r.project_id.as_deref());
        let strs = |l: &[Box<str>]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(strs(v.scopes()), r.scopes);
        assert_eq!(strs(v.permissions()), r.permissions);
        assert!(v.has_scope("billing") && !v.has_scope("bill"));
        assert!(v.has_permission("write") && !v.has_permission("admin"));
        assert_eq!(v.ip_allowlist(), &r.ip_allowlist[..]);
        assert_eq!(v.rate_limit(), r.rate_limit);
        assert_eq!(v.expires_at(), r.expires_at);
        assert!(v.is_active() && !v.is_revoked());
        assert_eq!(v.grace_until(), None);
    }

    #[test]
    fn absent_differs_from_empty_and_odd_values_survive() {
        let grace = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
        let before_1970 = Timestamp::new(-86_400, -1).unwrap();
        let v = view(
            TokenRecord {
                name: "ünïcödé ✓".into(),
                org_id: Some(String::new()),
                project_id: None,
                expires_at: Some(before_1970),
                is_active: false,
                revoked_at: Some(Timestamp::now()),
                ip_allowlist: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                rate_limit: None,
                scopes: vec![],
                ..record(2)
            },
            Some(grace),
        );
        assert_eq!(v.name(), "ünïcödé ✓");
        assert_eq!(v.org_id(), Some(""));
        assert_eq!(v.project_id(), None);
        assert_eq!(v.expires_at(), Some(before_1970));
        assert!(!v.is_active() && v.is_revoked());
        assert_eq!(v.grace_until(), Some(grace));
        assert_eq!(v.ip_allowlist().len(), 2);
        assert_eq!(v.rate_limit(), None);
        assert!(v.scopes().is_empty());
        let never = view(
            TokenRecord {
                expires_at: None,
                ..record(3)
            },
            None,
        );
        assert_eq!(never.expires_at(), None);
    }

    #[test]
    fn strings_beyond_64_kib_are_kept_whole() {
        let long = "x".repeat(70_000);
        let v = view(
            TokenRecord {
                owner_id: long.clone(),
                project_id: Some("p".into()),
                ..record(4)
            },
            None,
        );
        assert_eq!(v.owner_id(), long);
        assert_eq!(v.org_id(), Some("org-0004"));
        assert_eq!(v.project_id(), Some("p"));
        assert_eq!(v.prefix(), "pat_AbCdEfGh");
    }

    #[test]
    fn equal_grants_are_shared_and_dead_ones_swept() {
        let a = view(record(5), None);
        let b = view(record(6), None);
        assert!(Arc::ptr_eq(&a.grant, &b.grant));
        let other = view(
            TokenRecord {
                scopes: vec!["documents".into()],
                ..record(5)
            },
            None,
        );
        assert!(!Arc::ptr_eq(&a.grant, &other.grant));

        // A private interner: the global one is shared with the other tests.
        let mut interner = Interner::new();
        let keep = interner.intern(7u32);
        assert!(Arc::ptr_eq(&keep, &interner.intern(7)));
        for i in 0..10 * MIN_SWEEP_AT as u32 {
            drop(interner.intern(1000 + i));
        }
        assert!(interner.len() <= MIN_SWEEP_AT, "held {}", interner.len());
        assert!(Arc::ptr_eq(&keep, &interner.intern(7)), "live entries stay");
    }
}
