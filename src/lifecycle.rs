//! Token lifecycle operations shared by the admin API and `patgate dev`: create,
//! update, revoke, regenerate, delete, import, owner disable/enable.
//!
//! Every change follows the same three steps, in this order:
//! 1. one atomic store operation (nothing half-written on failure);
//! 2. invalidation: this replica's cache at once, every other replica through the
//!    store's pub/sub (a failed publish is logged; the cache TTL bounds staleness);
//! 3. an audit event (actor, action, token id, source IP; never a secret).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

use crate::cache::TokenCache;
use crate::config::{TokenSettings, WebhookEvent};
use crate::store::{
    AuditEvent, Changed, Invalidation, RateLimit, StoreError, TokenRecord, TokenStore, TokenType,
};
use crate::token::{self, TokenHash};
use crate::webhooks::Webhooks;

/// Who performs a management action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An admin key, by its configured name.
    Admin(String),
    /// A PAT caller, by token id.
    Token(String),
    /// patgate itself (dev mode bootstrap).
    System,
}

/// Who performs an action, and from where (for the audit trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The actor.
    pub actor: Actor,
    /// Source IP of the request, when there was one.
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// A caller without a source IP.
    pub fn new(actor: Actor) -> Self {
        Caller { actor, ip: None }
    }
}

impl Actor {
    /// `admin:<name>`, `token:<id>` or `system`.
    pub fn label(&self) -> String {
        match self {
            Actor::Admin(n) => format!("admin:{n}"),
            Actor::Token(id) => format!("token:{id}"),
            Actor::System => "system".into(),
        }
    }
}

/// A failed management operation. Mapped to HTTP by the admin API.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// Input failed validation: the field and why.
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// No such token.
    #[error("Token not found")]
    NotFound,
    /// No such webhook delivery.
    #[error("Delivery not found")]
    NoSuchDelivery,
    /// The caller may not do this (a PAT outside its rights).
    #[error("{0}")]
    Forbidden(String),
    /// The change conflicts with the token's state (e.g. revoked).
    #[error("{0}")]
    Conflict(String),
    /// Creation limit reached.
    #[error("Too many tokens created recently. Try again in an hour.")]
    TooManyCreations {
        /// Time until the window ends.
        retry_after: Duration,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The OS CSPRNG failed.
    #[error("random number generator failed")]
    Rng,
}

/// Shortcut for validation errors.
pub fn invalid(field: &str, reason: impl Into<String>) -> LifecycleError {
    LifecycleError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Fields of a new token (validated by [`Lifecycle::create`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewToken {
    /// 1-100 characters.
    pub name: String,
    /// ≤ 500 characters.
    pub description: String,
    /// Type (default user).
    pub kind: Option<TokenType>,
    /// Owner (required).
    pub owner_id: String,
    /// Org.
    pub org_id: Option<String>,
    /// Project (required for project tokens).
    pub project_id: Option<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Expiry: `None` = default expiry, `Some(None)` = never, `Some(Some(t))` = at `t`.
    pub expires_at: Option<Option<Timestamp>>,
    /// Allowlist.
    pub ip_allowlist: Vec<IpNet>,
    /// Rate limit override.
    pub rate_limit: Option<RateLimit>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A partial update; `None` fields are left alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New permissions.
    pub permissions: Option<Vec<String>>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New expiry (`Some(None)` = never).
    pub expires_at: Option<Option<Timestamp>>,
    /// Activate / deactivate.
    pub is_active: Option<bool>,
    /// New allowlist.
    pub ip_allowlist: Option<Vec<IpNet>>,
    /// New rate limit (`Some(None)` = back to the default).
    pub rate_limit: Option<Option<RateLimit>>,
    /// New metadata (replaces the map).
    pub metadata: Option<BTreeMap<String, String>>,
}

impl TokenPatch {
    /// Names of the fields this patch sets (for the audit trail).
    pub fn fields(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        macro_rules! set {
            ($field:ident, $name:literal) => {
                if self.$field.is_some() {
                    f.push($name);
                }
            };
        }
        set!(name, "name");
        set!(description, "description");
        set!(permissions, "permissions");
        set!(scopes, "scopes");
        set!(expires_at, "expiresAt");
        set!(is_active, "isActive");
        set!(ip_allowlist, "ipAllowlist");
        set!(rate_limit, "rateLimit");
        set!(metadata, "metadata");
        f
    }
}

/// The lifecycle service.
#[derive(Clone)]
pub struct Lifecycle {
    store: Arc<dyn TokenStore>,
    cache: TokenCache,
    tokens: TokenSettings,
    webhooks: Option<Arc<Webhooks>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// How long a revocation keeps retrying a compare-and-set that lost to concurrent
/// writers before it gives up with `409`.
pub const REVOKE_RETRY_FOR: Duration = Duration::from_secs(3);

/// Up to `max` of cheap, non-cryptographic jitter (the clock's nanoseconds), so that
/// contending writers do not retry in lockstep.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let max_ns = u32::try_from(max.as_nanos()).unwrap_or(u32::MAX).max(1);
    Duration::from_nanos(u64::from(nanos % max_ns))
}

fn check_name(name: &str) -> Result<(), LifecycleError> {
    let n = name.chars().count();
    if n == 0 || n > 100 || name.trim().is_empty() {
        return Err(invalid("name", "must be 1-100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), LifecycleError> {
    if d.chars().count() > 500 {
        return Err(invalid("description", "must be at most 500 characters"));
    }
    Ok(())
}

fn check_list(field: &str, items: &[String]) -> Result<(), LifecycleError> {
    for s in items {
        if s.is_empty()
            || s.len() > 100
            || !s.chars().all(|c| c.is_ascii_graphic())
            || s.contains(',')
        {
            return Err(invalid(
                field,
                format!("{s:?} must be 1-100 printable ASCII characters without commas or spaces"),
            ));
        }
    }
    if items.len() > 100 {
        return Err(invalid(field, "at most 100 entries"));
    }
    Ok(())
}

fn check_id_field(field: &str, v: &str) -> Result<(), LifecycleError> {
    if v.is_empty() || v.len() > 200 || v.chars().any(|c| c.is_control()) {
        return Err(invalid(
            field,
            "must be 1-200 characters without control characters",
        ));
    }
    Ok(())
}

fn check_rate(r: &RateLimit) -> Result<(), LifecycleError> {
    if r.requests == 0 || r.per_seconds == 0 || r.burst == Some(0) {
        return Err(invalid(
            "rateLimit",
            "requests, perSeconds and burst must be at least 1",
        ));
    }
    Ok(())
}

fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), LifecycleError> {
    if m.len() > 50 {
        return Err(invalid("metadata", "at most 50 keys"));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 100 || v.len() > 1000 {
            return Err(invalid(
                "metadata",
                format!("key {k:?}: keys 1-100, values ≤ 1000 characters"),
            ));
        }
    }
    Ok(())
}

impl Lifecycle {
    /// A service over `store`, invalidating `cache`.
    pub fn new(store: Arc<dyn TokenStore>, cache: TokenCache, tokens: TokenSettings) -> Self {
        Lifecycle {
            store,
            cache,
            tokens,
            webhooks: None,
        }
    }

    /// Sends this service's changes to `webhooks` as events.
    #[must_use]
    pub fn with_webhooks(mut self, webhooks: Arc<Webhooks>) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// The webhook event of audit action `action`, if it has one.
    fn event_of(action: &str) -> Option<WebhookEvent> {
        Some(match action {
            "token.create" | "token.import" => WebhookEvent::TokenCreated,
            "token.update" | "token.activate" | "token.deactivate" => WebhookEvent::TokenUpdated,
            "token.revoke" => WebhookEvent::TokenRevoked,
            "token.regenerate" => WebhookEvent::TokenRegenerated,
            "token.delete" => WebhookEvent::TokenDeleted,
            _ => return None,
        })
    }

    /// Writes the webhook event of a successful change to `record` to the outbox.
    async fn notify(&self, action: &str, record: &TokenRecord, by: &Caller) {
        if let (Some(hooks), Some(event)) = (&self.webhooks, Self::event_of(action)) {
            hooks
                .emit_now(
                    event,
                    crate::webhooks::token_data(record, &by.actor.label()),
                )
                .await;
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    /// The cache this service invalidates (also used to authenticate PAT callers).
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Token policy in force.
    pub fn token_settings(&self) -> &TokenSettings {
        &self.tokens
    }

    fn check_expiry(&self, at: Option<Timestamp>, now: Timestamp) -> Result<(), LifecycleError> {
        match (at, self.tokens.max_expiry) {
            (Some(t), _) if t <= now => Err(invalid("expiresAt", "must be in the future")),
            (Some(t), Some(max)) if t > now + signed(max) => Err(invalid(
                "expiresAt",
                format!(
                    "must be within tokens.max_expiry ({} days)",
                    max.as_secs() / 86400
                ),
            )),
            (None, Some(_)) => Err(invalid(
                "expiresAt",
                "tokens.max_expiry forbids tokens that never expire",
            )),
            _ => Ok(()),
        }
    }

    /// Validates `new` and builds its record (without id/prefix/timestamps filled by
    /// the caller of this function).
    fn validate_new(
        &self,
        new: &NewToken,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, LifecycleError> {
        check_name(&new.name)?;
        check_description(&new.description)?;
        if new.owner_id.is_empty() {
            return Err(invalid("ownerId", "is required"));
        }
        check_id_field("ownerId", &new.owner_id)?;
        if let Some(o) = &new.org_id {
            check_id_field("orgId", o)?;
        }
        if let Some(p) = &new.project_id {
            check_id_field("projectId", p)?;
        }
        match new.kind.unwrap_or(TokenType::User) {
            TokenType::Project if new.project_id.is_none() => {
                return Err(invalid("projectId", "required for project tokens"));
            }
            TokenType::Organization if new.org_id.is_none() => {
                return Err(invalid("orgId", "required for organization tokens"));
            }
            _ => {}
        }
        check_list("permissions", &new.permissions)?;
        check_list("scopes", &new.scopes)?;
        if let Some(r) = &new.rate_limit {
            check_rate(r)?;
        }
        check_metadata(&new.metadata)?;
        if new.ip_allowlist.len() > 100 {
            return Err(invalid("ipAllowlist", "at most 100 entries"));
        }
        let expires = match new.expires_at {
            Some(e) => e,
            None => self.tokens.default_expiry.map(|d| now + signed(d)),
        };
        self.check_expiry(expires, now)?;
        Ok(expires)
    }

    async fn invalidate(&self, invs: Vec<Invalidation>) {
        for inv in &invs {
            self.cache.apply(inv).await;
        }
        for inv in &invs {
            if let Err(e) = self.store.publish(inv).await {
                tracing::warn!(error = %e, "publishing invalidation failed; other replicas rely on the cache TTL");
            }
        }
    }

    /// The tail of every change to one token: drop its cache entries (here and on
    /// every replica), then record `action` in the audit trail.
    async fn committed(
        &self,
        changed: &Changed,
        by: &Caller,
        action: &str,
        details: serde_json::Value,
    ) {
        self.invalidate(
            changed
                .hashes
                .iter()
                .copied()
                .map(Invalidation::Hash)
                .collect(),
        )
        .await;
        self.audit(
            by,
            action,
            Some(&changed.record.id),
            Some(&changed.record.owner_id),
            "success",
            details,
        )
        .await;
        self.notify(action, &changed.record, by).await;
    }

    /// Appends an audit event; a failure is logged, not returned (the change stands).
    pub async fn audit(
        &self,
        by: &Caller,
        action: &str,
        token_id: Option<&str>,
        owner_id: Option<&str>,
        outcome: &str,
        details: serde_json::Value,
    ) {
        let event = AuditEvent {
            id: new_id(),
            time: Timestamp::now(),
            actor: by.actor.label(),
            action: action.to_string(),
            token_id: token_id.map(str::to_string),
            owner_id: owner_id.map(str::to_string),
            source_ip: by.ip.map(|ip| ip.to_string()),
            outcome: outcome.to_string(),
            details,
        };
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %e, action, "audit append failed");
        }
    }

    /// Creates a token; returns the raw token (shown once) and its record.
    pub async fn create(
        &self,
        new: NewToken,
        by: &Caller,
    ) -> Result<(String, TokenRecord), LifecycleError> {
        let now = Timestamp::now();
        let expires_at = self.validate_new(&new, now)?;
        if self.tokens.creation_limit > 0 {
            let (count, left) = self
                .store
                .count_creation(&new.owner_id, Duration::from_secs(3600))
                .await?;
            if count > u64::from(self.tokens.creation_limit) {
                self.audit(
                    by,
                    "token.create",
                    None,
                    Some(&new.owner_id),
                    "denied",
                    serde_json::json!({"reason": "creation limit"}),
                )
                .await;
                return Err(LifecycleError::TooManyCreations { retry_after: left });
            }
        }
        let raw = token::generate(&self.tokens.prefix).map_err(|_| LifecycleError::Rng)?;
        let record = TokenRecord {
            id: new_id(),
            name: new.name,
            description: new.description,
            prefix: token::display_prefix(&raw).to_string(),
            kind: new.kind.unwrap_or(TokenType::User),
            owner_id: new.owner_id,
            org_id: new.org_id,
            project_id: new.project_id,
            permissions: new.permissions,
            scopes: new.scopes,
            created_at: now,
            created_by: by.actor.label(),
            expires_at,
            is_active: true,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            ip_allowlist: new.ip_allowlist,
            rate_limit: new.rate_limit,
            metadata: new.metadata,
        };
        let hash = TokenHash::of(&raw);
        self.store.create(&hash, &record).await?;
        // A negative cache entry for this hash may exist (someone probed it): drop it.
        self.invalidate(vec![Invalidation::Hash(hash)]).await;
        self.audit(
            by,
            "token.create",
            Some(&record.id),
            Some(&record.owner_id),
            "success",
            serde_json::json!({"name": record.name, "type": record.kind, "prefix": record.prefix}),
        )
        .await;
        self.notify("token.create", &record, by).await;
        Ok((raw, record))
    }

    /// Imports an existing token by its SHA-256.
    pub async fn import(
        &self,
        sha256: &str,
        display_prefix: Option<String>,
        new: NewToken,
        by: &Caller,
    ) -> Result<TokenRecord, LifecycleError> {
        let hash = TokenHash::from_hex(sha256)
            .ok_or_else(|| invalid("sha256", "must be 64 hexadecimal characters"))?;
        let now = Timestamp::now();
        let mut new = new;
        // Imported tokens keep the expiry they are given; none means never.
        if new.expires_at.is_none() {
            new.expires_at = Some(None);
        }
        let expires_at = match self.validate_new(&new, now) {
            Err(LifecycleError::Invalid { field, .. })
                if field == "expiresAt" && new.expires_at == Some(None) =>
            {
                None
            }
            other => other?,
        };
        let prefix = display_prefix.unwrap_or_default();
        if prefix.chars().count() > token::DISPLAY_PREFIX_LEN {
            return Err(invalid(
                "prefix",
                "at most 12 characters (the display prefix)",
            ));
        }
        let record = TokenRecord {
            id: new_id(),
            name: new.name,
            description: new.description,
            prefix,
            kind: new.kind.unwrap_or(TokenType::User),
            owner_id: new.owner_id,
            org_id: new.org_id,
            project_id: new.project_id,
            permissions: new.permissions,
            scopes: new.scopes,
            created_at: now,
            created_by: by.actor.label(),
            expires_at,
            is_active: true,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            ip_allowlist: new.ip_allowlist,
            rate_limit: new.rate_limit,
            metadata: new.metadata,
        };
        match self.store.create(&hash, &record).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(LifecycleError::Conflict(
                    "A token with this sha256 already exists".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.invalidate(vec![Invalidation::Hash(hash)]).await;
        self.audit(
            by,
            "token.import",
            Some(&record.id),
            Some(&record.owner_id),
            "success",
            serde_json::json!({"name": record.name}),
        )
        .await;
        self.notify("token.import", &record, by).await;
        Ok(record)
    }

    /// Applies a patch (no rotation).
    pub async fn update(
        &self,
        id: &str,
        patch: TokenPatch,
        by: &Caller,
        action: &str,
    ) -> Result<TokenRecord, LifecycleError> {
        let now = Timestamp::now();
        if let Some(n) = &patch.name {
            check_name(n)?;
        }
        if let Some(d) = &patch.description {
            check_description(d)?;
        }
        if let Some(p) = &patch.permissions {
            check_list("permissions", p)?;
        }
        if let Some(s) = &patch.scopes {
            check_list("scopes", s)?;
        }
        if let Some(Some(r)) = &patch.rate_limit {
            check_rate(r)?;
        }
        if let Some(m) = &patch.metadata {
            check_metadata(m)?;
        }
        if let Some(e) = patch.expires_at {
            self.check_expiry(e, now)?;
        }
        let p = patch.clone();
        let change = move |r: &mut TokenRecord| -> Result<(), String> {
            if p.is_active == Some(true) && r.revoked_at.is_some() {
                return Err("A revoked token cannot be reactivated".into());
            }
            if let Some(v) = &p.name {
                r.name = v.clone();
            }
            if let Some(v) = &p.description {
                r.description = v.clone();
            }
            if let Some(v) = &p.permissions {
                r.permissions = v.clone();
            }
            if let Some(v) = &p.scopes {
                r.scopes = v.clone();
            }
            if let Some(v) = p.expires_at {
                r.expires_at = v;
            }
            if let Some(v) = p.is_active {
                r.is_active = v;
            }
            if let Some(v) = &p.ip_allowlist {
                r.ip_allowlist = v.clone();
            }
            if let Some(v) = p.rate_limit {
                r.rate_limit = v;
            }
            if let Some(v) = &p.metadata {
                r.metadata = v.clone();
            }
            Ok(())
        };
        let changed = match self.store.update(id, &change).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(LifecycleError::NotFound),
            Err(StoreError::Rejected(m)) => return Err(LifecycleError::Conflict(m)),
            Err(e) => return Err(e.into()),
        };
        self.committed(
            &changed,
            by,
            action,
            serde_json::json!({"fields": patch.fields()}),
        )
        .await;
        Ok(changed.record)
    }

    /// Revokes a token permanently.
    ///
    /// A revocation must not lose to concurrent edits of the same token (a burst of
    /// PATCHes would otherwise exhaust the store's compare-and-set attempts and
    /// answer `409`): on a store conflict it retries with jittered backoff for up to
    /// [`REVOKE_RETRY_FOR`].
    pub async fn revoke(&self, id: &str, by: &Caller) -> Result<TokenRecord, LifecycleError> {
        let now = Timestamp::now();
        let change = move |r: &mut TokenRecord| -> Result<(), String> {
            if r.revoked_at.is_none() {
                r.revoked_at = Some(now);
            }
            r.is_active = false;
            Ok(())
        };
        let deadline = std::time::Instant::now() + REVOKE_RETRY_FOR;
        let mut pause = Duration::from_millis(1);
        let changed = loop {
            match self.store.update(id, &change).await {
                Err(StoreError::Conflict(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause + jitter(pause)).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                other => break other?.ok_or(LifecycleError::NotFound)?,
            }
        };
        self.committed(&changed, by, "token.revoke", serde_json::Value::Null)
            .await;
        Ok(changed.record)
    }

    /// New secret, same id; the old secret stays valid for `grace`.
    pub async fn regenerate(
        &self,
        id: &str,
        grace: Duration,
        by: &Caller,
    ) -> Result<(String, TokenRecord), LifecycleError> {
        if grace > self.tokens.max_grace_period {
            return Err(invalid(
                "gracePeriodSeconds",
                format!("must be at most {}", self.tokens.max_grace_period.as_secs()),
            ));
        }
        let current = self.store.get(id).await?.ok_or(LifecycleError::NotFound)?;
        if current.revoked_at.is_some() {
            return Err(LifecycleError::Conflict(
                "A revoked token cannot be regenerated".into(),
            ));
        }
        let raw = token::generate(&self.tokens.prefix).map_err(|_| LifecycleError::Rng)?;
        let hash = TokenHash::of(&raw);
        let prefix = token::display_prefix(&raw).to_string();
        let changed = self
            .store
            .rotate(id, &hash, &prefix, grace)
            .await?
            .ok_or(LifecycleError::NotFound)?;
        self.committed(
            &changed,
            by,
            "token.regenerate",
            serde_json::json!({"gracePeriodSeconds": grace.as_secs(), "prefix": prefix}),
        )
        .await;
        let record = changed.record;
        Ok((raw, record))
    }

    /// Deletes a token permanently.
    pub async fn delete(&self, id: &str, by: &Caller) -> Result<TokenRecord, LifecycleError> {
        let changed = self
            .store
            .delete(id)
            .await?
            .ok_or(LifecycleError::NotFound)?;
        self.committed(&changed, by, "token.delete", serde_json::Value::Null)
            .await;
        Ok(changed.record)
    }

    /// Disables or enables every token of an owner.
    pub async fn set_owner_disabled(
        &self,
        owner_id: &str,
        disabled: bool,
        by: &Caller,
    ) -> Result<(), LifecycleError> {
        check_id_field("ownerId", owner_id)?;
        self.store.set_owner_disabled(owner_id, disabled).await?;
        self.invalidate(vec![Invalidation::Owner(owner_id.to_string())])
            .await;
        let action = if disabled {
            "owner.disable"
        } else {
            "owner.enable"
        };
        self.audit(
            by,
            action,
            None,
            Some(owner_id),
            "success",
            serde_json::Value::Null,
        )
        .await;
        if disabled && let Some(hooks) = &self.webhooks {
            let data = serde_json::json!({"ownerId": owner_id, "actor": by.actor.label()});
            hooks.emit_now(WebhookEvent::OwnerDisabled, data).await;
        }
        Ok(())
    }
}

/// A new ULID, strictly increasing within this process (also within one millisecond),
/// so ids list in creation order.
pub fn new_id() -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    match GENERATOR.lock() {
        // `generate` fails only when 2^80 ids were made in one millisecond.
        Ok(mut g) => g
            .generate()
            .unwrap_or_else(|_| ulid::Ulid::new())
            .to_string(),
        Err(_) => ulid::Ulid::new().to_string(),
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}
