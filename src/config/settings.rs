//! Validated, typed settings: what the rest of patgate reads.
//!
//! Produced only by [`crate::config::load`] / [`crate::config::from_yaml`] after every
//! field and cross-field rule has been checked, so consumers never re-validate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data-plane listener.
    pub listen: SocketAddr,
    /// TLS on the data-plane listener.
    pub tls: Option<TlsSettings>,
    /// Admin listener and credentials.
    pub admin: AdminSettings,
    /// Token store.
    pub store: StoreSettings,
    /// Token cache.
    pub cache: CacheSettings,
    /// Token format and lifecycle policy.
    pub tokens: TokenSettings,
    /// Rate limiting.
    pub rate_limit: RateLimitSettings,
    /// Client IP resolution.
    pub client_ip: ClientIpSettings,
    /// Names of injected identity headers.
    pub identity_headers: IdentityHeaders,
    /// Forward the client's `Authorization` header upstream.
    pub forward_authorization: bool,
    /// Path answered by patgate itself with the caller's identity.
    pub whoami_path: String,
    /// Routes, in file order (matching picks the longest prefix).
    pub routes: Vec<Route>,
    /// Named upstreams (routes with a URL get an anonymous entry here too).
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Size and connection limits.
    pub limits: Limits,
    /// Logging.
    pub logging: LoggingSettings,
    /// Webhook endpoints and delivery policy.
    pub webhooks: WebhookSettings,
}

/// PEM files for TLS termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Admin API settings.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Admin listener (default `127.0.0.1:9091`).
    pub listen: SocketAddr,
    /// Accepted admin keys, by SHA-256.
    pub api_keys: Vec<AdminKey>,
    /// TLS on the admin listener (default none: plain HTTP).
    pub tls: Option<TlsSettings>,
}

/// One admin key: a name for audit records and the SHA-256 of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey {
    /// Shown in audit records as `admin:<name>`.
    pub name: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
}

/// Which store backs the tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSettings {
    /// Redis (standalone or cluster).
    Redis(RedisSettings),
    /// redb file.
    Embedded(EmbeddedSettings),
}

/// Redis connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// `redis://` / `rediss://` URLs (one for standalone; seed nodes for a cluster;
    /// empty with `sentinel`).
    pub urls: Vec<String>,
    /// Use the cluster client.
    pub cluster: bool,
    /// Find the master through Redis Sentinel (and follow failovers).
    pub sentinel: Option<SentinelSettings>,
    /// Per-command timeout (default 250 ms): a store call never blocks a request longer.
    pub command_timeout: Duration,
    /// Connect timeout (default 1 s).
    pub connect_timeout: Duration,
    /// Prefix of every key and of the pub/sub channel (default `patgate:`).
    pub key_prefix: String,
    /// Max audit events kept (Redis stream MAXLEN ~, default 100000).
    pub audit_max_events: u64,
}

/// Redis Sentinel: where the sentinels are and which master to ask them for.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// The monitored master's name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Sentinel URLs (`redis://[user:password@]host:26379`; the credentials are the
    /// sentinels' own).
    pub urls: Vec<String>,
    /// ACL user for the master (and its replicas).
    pub master_username: Option<String>,
    /// Password for the master.
    pub master_password: Option<String>,
    /// Database number on the master (default 0).
    pub db: u32,
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs and the password may hold secrets.
        f.debug_struct("SentinelSettings")
            .field("master_name", &self.master_name)
            .field("sentinels", &self.urls.len())
            .field("master_username", &self.master_username)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Embedded store settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedSettings {
    /// redb file (created if missing).
    pub path: PathBuf,
    /// Max audit events kept (default 100000).
    pub audit_max_events: u64,
}

/// Token cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long a positive entry is served before it is refreshed (default 30 s).
    pub ttl: Duration,
    /// How long an unknown hash is remembered (default 5 s).
    pub negative_ttl: Duration,
    /// How long a positive entry may still be served while the store is unreachable
    /// (default 300 s; counted from when it was last fetched).
    pub max_staleness: Duration,
    /// Max entries (default 100000).
    pub max_entries: u64,
}

/// Token format and lifecycle policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// Prefix of new tokens (default `pat_`).
    pub prefix: String,
    /// Other prefixes accepted for imported tokens (with `accept_foreign`).
    pub foreign_prefixes: Vec<String>,
    /// Expiry given to new tokens that do not set one; `None` = never (default 365 d).
    pub default_expiry: Option<Duration>,
    /// Longest expiry a token may have; `None` = unbounded (default none).
    pub max_expiry: Option<Duration>,
    /// Let tokens with a known prefix that are not in patgate's format reach the lookup.
    pub accept_foreign: bool,
    /// Creations per owner per hour (default 5; 0 = unlimited).
    pub creation_limit: u32,
    /// Longest grace period on regenerate (default 86400 s).
    pub max_grace_period: Duration,
}

/// Rate-limit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Where limits are counted.
    pub mode: RateLimitMode,
    /// Default per-token limit; `None` = unlimited unless the token sets one.
    pub default: Option<RateSpec>,
    /// Expected number of replicas (default 1). With `mode: redis`, while Redis is
    /// unreachable each replica enforces `1/replicas` of every limit locally.
    pub replicas: u32,
    /// Request quota per period (`rate_limit.quota`), counted in the store.
    pub quota: Option<QuotaSettings>,
}

/// `rate_limit.quota`: how many requests a token (or an owner's tokens together) may
/// make per calendar period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Requests (sum of route `quota_cost`s) per period.
    pub requests: u64,
    /// The period.
    pub period: QuotaPeriod,
    /// Whose quota a request counts against.
    pub per: QuotaSubject,
}

/// A quota period (UTC calendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    /// From 00:00 UTC to the next.
    Day,
    /// From the 1st, 00:00 UTC, to the next month's.
    Month,
}

/// Whose quota a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaSubject {
    /// Each token has its own.
    Token,
    /// All of an owner's tokens share one.
    Owner,
}

/// Where rate limits are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitMode {
    /// Per replica, in memory (governor).
    Local,
    /// Across replicas, in Redis.
    Redis,
}

/// A rate: `requests` per `per_seconds`, bucket `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateSpec {
    /// Requests per period (≥ 1).
    pub requests: u32,
    /// Period in seconds (≥ 1).
    pub per_seconds: u32,
    /// Bucket size (≥ 1).
    pub burst: u32,
}

/// Client IP resolution.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientIpSettings {
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Key-sharing signals: the client-IP prefixes each token is used from.
    pub signals: IpSignals,
}

/// `client_ip.signals`: which client-IP prefixes each token was used from, kept per
/// token (bounded) so an operator can spot a key used from many places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpSignals {
    /// Record prefixes at all (default true).
    pub enabled: bool,
    /// IPv4 addresses are grouped by this prefix length (default 24; 32 = exact).
    pub ipv4_prefix: u8,
    /// IPv6 addresses are grouped by this prefix length (default 64; 128 = exact).
    pub ipv6_prefix: u8,
    /// Prefixes kept per token (default 32); the least recently seen are dropped.
    pub max_per_token: usize,
    /// Prefixes not seen for this many days are dropped (default 7).
    pub retention_days: u32,
    /// The console flags a token seen from more distinct prefixes than this
    /// (default 3).
    pub warn_above: usize,
}

impl Default for IpSignals {
    fn default() -> Self {
        IpSignals {
            enabled: true,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            max_per_token: 32,
            retention_days: 7,
            warn_above: 3,
        }
    }
}

impl IpSignals {
    /// How long a prefix is kept after it was last seen.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }
}

/// Identity header names (all lower-case `HeaderName`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// Every client header starting with this (case-insensitive) is stripped.
    /// Stored lower-case; default `x-auth-`.
    pub prefix: String,
    /// Default `X-Auth-User-Id` (the token's ownerId).
    pub user_id: HeaderName,
    /// Default `X-Auth-Token-Id`.
    pub token_id: HeaderName,
    /// Default `X-Auth-Token-Prefix`.
    pub token_prefix: HeaderName,
    /// Default `X-Auth-Token-Type`.
    pub token_type: HeaderName,
    /// Default `X-Auth-Org-Id`.
    pub org_id: HeaderName,
    /// Default `X-Auth-Project-Id`.
    pub project_id: HeaderName,
    /// Default `X-Auth-Scopes`.
    pub scopes: HeaderName,
    /// Default `X-Auth-Permissions`.
    pub permissions: HeaderName,
    /// The signed identity assertion (`identity_headers.assertion`), when configured.
    pub assertion: Option<AssertionSettings>,
}

/// `identity_headers.assertion`: a compact JWS (EdDSA) of the identity for upstreams
/// that verify it (see [`crate::assertion`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionSettings {
    /// Header name (default `<prefix>assertion`, e.g. `x-auth-assertion`).
    pub header: HeaderName,
    /// Lifetime of an assertion (`exp` − `iat`; default 60 s, 5 s to 1 h).
    pub ttl: Duration,
    /// The `iss` claim (default `patgate`).
    pub issuer: String,
    /// Ed25519 keys; the first signs, all are published in the JWKS.
    pub keys: Vec<AssertionKey>,
}

/// One assertion signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionKey {
    /// The JWS `kid`.
    pub id: String,
    /// PKCS#8 PEM file with the Ed25519 private key.
    pub file: PathBuf,
}

/// Whether a route requires a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid token is required (default).
    Required,
    /// No authentication; identity headers are still stripped.
    None,
}

/// Where a project/org id sits in the path.
///
/// Parsed from `project_param` / `org_param`: a value containing `{` is a template
/// (must start with `/`, exactly one whole-segment `{name}` placeholder; a trailing
/// `/...`, `/*` or `/**` is dropped and means "and anything below"); anything else
/// is a plain segment name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathParam {
    /// A template such as `/v1/projects/{project}`: the segment at the placeholder.
    Template {
        /// Template segments; `None` marks the placeholder position.
        segments: Vec<Option<String>>,
    },
    /// A segment name such as `projects`: the segment right after it.
    After(String),
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name (metrics, logs, JWT audience later).
    pub name: String,
    /// Host to match (lower-case, without port); `None` = any.
    pub host: Option<String>,
    /// Path prefix to match.
    pub path_prefix: String,
    /// Methods to match; empty = any.
    pub methods: Vec<Method>,
    /// Upstream to forward to.
    pub upstream: Arc<Upstream>,
    /// Authentication requirement.
    pub auth: AuthMode,
    /// Scopes the token must hold.
    pub require_scopes: Vec<String>,
    /// Permissions the token must hold.
    pub require_permissions: Vec<String>,
    /// GET/HEAD/OPTIONS need `read`, other methods `write`.
    pub permissions_by_method: bool,
    /// Project binding.
    pub project_param: Option<PathParam>,
    /// Org binding.
    pub org_param: Option<PathParam>,
    /// Body limit for this route (defaults to `limits.max_body_bytes`).
    pub max_body_bytes: u64,
    /// Remove `path_prefix` before forwarding (default false).
    pub strip_prefix: bool,
    /// What a request on this route costs against `rate_limit.quota` (default 1; 0 =
    /// free).
    pub quota_cost: u64,
}

/// An upstream service.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Name (the `upstreams` key, or the route name for inline URLs).
    pub name: String,
    /// Base URLs (`http://host:port[/base]`); round-robin when several.
    pub urls: Vec<Uri>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the response head arrives.
    pub response_timeout: Duration,
    /// Consecutive connect failures after which an address is skipped (default 3).
    pub max_fails: u32,
    /// How long an address that reached `max_fails` is skipped (default 10 s).
    pub fail_timeout: Duration,
    /// Trust and client identity for `https://` addresses (default: the system's CA
    /// roots, no client certificate).
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 only: h2c with prior knowledge to `http://` addresses, ALPN `h2`
    /// only to `https://` ones (default false: HTTP/1.1, or whatever ALPN picks).
    pub http2: bool,
}

/// TLS to an upstream: which CA to trust and which certificate to present (mTLS).
/// Files are read when the upstream's client is built (start-up and reload).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// PEM CA bundle trusted instead of the system roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM client private key (with `cert`).
    pub key: Option<PathBuf>,
    /// Name verified in the upstream's certificate (and sent as SNI) instead of the
    /// URL's host.
    pub server_name: Option<String>,
}

/// Timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Request head must arrive within this (default 10 s).
    pub header_read: Duration,
    /// Drain deadline on SIGTERM (default 30 s).
    pub shutdown_grace: Duration,
    /// Default upstream connect timeout (default 5 s).
    pub upstream_connect: Duration,
    /// Default upstream response-head timeout (default 60 s).
    pub upstream_response: Duration,
    /// Idle keep-alive connections are closed after this (default 60 s).
    pub idle: Duration,
}

/// Size and connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request head limit (default 16384).
    pub max_header_bytes: usize,
    /// Request body limit (default 100 MiB).
    pub max_body_bytes: u64,
    /// Concurrent client connections (default 10000).
    pub max_connections: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Logging.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggingSettings {
    /// Format (default json).
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is unset (default `info`).
    pub level: String,
    /// One line per request (default true).
    pub access_log: bool,
    /// Fraction of *allowed* requests that get an access-log line (default 1.0);
    /// denials and errors are always logged. Applied as "one in round(1/rate)".
    pub access_log_sample_rate: f64,
}

/// What a webhook endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookEvent {
    /// A token was created or imported.
    TokenCreated,
    /// A token's fields changed (PATCH, deactivate, activate).
    TokenUpdated,
    /// A token was revoked.
    TokenRevoked,
    /// A token got a new secret.
    TokenRegenerated,
    /// A token was deleted.
    TokenDeleted,
    /// A token expires within `webhooks.expiring_days`.
    TokenExpiring,
    /// A quota passed 80 % of its period's allowance.
    TokenQuotaWarning,
    /// A quota is used up for its period.
    TokenQuotaExhausted,
    /// A token got its first 429 of a `rate_limited_interval_seconds` window.
    TokenRateLimited,
    /// A token was used from a client IP prefix not seen for it before.
    TokenNewIp,
    /// Every token of an owner was disabled.
    OwnerDisabled,
}

impl WebhookEvent {
    /// Every event, in documentation order.
    pub const ALL: [WebhookEvent; 11] = [
        WebhookEvent::TokenCreated,
        WebhookEvent::TokenUpdated,
        WebhookEvent::TokenRevoked,
        WebhookEvent::TokenRegenerated,
        WebhookEvent::TokenDeleted,
        WebhookEvent::TokenExpiring,
        WebhookEvent::TokenQuotaWarning,
        WebhookEvent::TokenQuotaExhausted,
        WebhookEvent::TokenRateLimited,
        WebhookEvent::TokenNewIp,
        WebhookEvent::OwnerDisabled,
    ];

    /// The event's wire name (`token.created`, …).
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::TokenCreated => "token.created",
            WebhookEvent::TokenUpdated => "token.updated",
            WebhookEvent::TokenRevoked => "token.revoked",
            WebhookEvent::TokenRegenerated => "token.regenerated",
            WebhookEvent::TokenDeleted => "token.deleted",
            WebhookEvent::TokenExpiring => "token.expiring",
            WebhookEvent::TokenQuotaWarning => "token.quota_warning",
            WebhookEvent::TokenQuotaExhausted => "token.quota_exhausted",
            WebhookEvent::TokenRateLimited => "token.rate_limited",
            WebhookEvent::TokenNewIp => "token.new_ip",
            WebhookEvent::OwnerDisabled => "owner.disabled",
        }
    }

    /// The event named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// This event's bit in an [`WebhookSettings::subscribed`] mask.
    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// One receiver of webhook deliveries.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Unique name (deliveries refer to their endpoint by it).
    pub name: String,
    /// `http(s)://` URL the deliveries are POSTed to.
    pub url: http::Uri,
    /// HMAC-SHA256 key of the `Patgate-Signature` header.
    pub secret: String,
    /// Events sent to this endpoint (`events` absent or `["*"]`: all).
    pub events: Vec<WebhookEvent>,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the secret nor the URL's path and query (often a credential too).
        f.debug_struct("WebhookEndpoint")
            .field("name", &self.name)
            .field("host", &self.url.host())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// `webhooks`: endpoints, event options and the delivery policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Receivers (none: webhooks are off).
    pub endpoints: Vec<WebhookEndpoint>,
    /// `token.expiring` is sent this many days before `expiresAt` (default 7).
    pub expiring_days: u32,
    /// How often the expiry scan runs, once across all replicas (default a day).
    pub expiring_scan_interval: Duration,
    /// At most one `token.rate_limited` per token this often (default an hour).
    pub rate_limited_interval: Duration,
    /// Attempts before a delivery is marked failed (default 12).
    pub max_attempts: u32,
    /// Wait before the first retry; doubles per attempt (default 10 s).
    pub retry_initial: Duration,
    /// Longest wait between attempts (default an hour).
    pub retry_max: Duration,
    /// Per-attempt timeout (default 10 s).
    pub timeout: Duration,
    /// Deliveries kept for `GET /v1/webhooks/deliveries` (default 10 000; pending
    /// ones are never dropped).
    pub keep_deliveries: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            endpoints: Vec::new(),
            expiring_days: 7,
            expiring_scan_interval: Duration::from_secs(86_400),
            rate_limited_interval: Duration::from_secs(3600),
            max_attempts: 12,
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            keep_deliveries: 10_000,
        }
    }
}

impl WebhookSettings {
    /// The events at least one endpoint subscribes to, as a bit mask.
    pub fn subscribed(&self) -> u16 {
        self.endpoints
            .iter()
            .flat_map(|e| e.events.iter())
            .fold(0, |m, e| m | e.bit())
    }
}
