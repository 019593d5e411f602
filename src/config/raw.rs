//! Raw serde mirror of the YAML file: one struct per section, every field optional.
//!
//! Invariants: every struct has `deny_unknown_fields` (a typo is an error, never a
//! silently ignored key); no defaults or checks live here — an absent key is `None`
//! and [`super::validate`] decides its default, so defaults are in one place.
//! Numbers and booleans also accept their string form, because `${ENV}` expansion
//! always yields strings (`requests: ${RATE}`).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The whole file. Each section is deserialized on its own (see
/// [`super::validate`]) so that one broken section does not hide errors in others;
/// a section that failed to deserialize is left `None` and its error recorded.
#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub admin: Option<RawAdmin>,
    pub store: Option<RawStore>,
    pub cache: Option<RawCache>,
    pub tokens: Option<RawTokens>,
    pub rate_limit: Option<RawRateLimit>,
    pub client_ip: Option<RawClientIp>,
    pub identity_headers: Option<RawIdentityHeaders>,
    pub forward_authorization: Option<bool>,
    pub whoami_path: Option<String>,
    /// One slot per list entry; `None` where the entry failed to deserialize, so
    /// later errors keep the entry's original index.
    pub routes: Vec<Option<RawRoute>>,
    /// `None` where the entry failed to deserialize (suppresses "unknown upstream").
    pub upstreams: BTreeMap<String, Option<RawUpstream>>,
    /// The `upstreams` section itself was broken: no route reference can be judged.
    pub upstreams_broken: bool,
    pub timeouts: Option<RawTimeouts>,
    pub limits: Option<RawLimits>,
    pub logging: Option<RawLogging>,
    pub webhooks: Option<RawWebhooks>,
}

/// Top-level keys, in the order the SPEC lists them.
pub(crate) const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "tls",
    "admin",
    "store",
    "cache",
    "tokens",
    "rate_limit",
    "client_ip",
    "identity_headers",
    "forward_authorization",
    "whoami_path",
    "routes",
    "upstreams",
    "timeouts",
    "limits",
    "logging",
    "webhooks",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub api_keys: Option<Vec<RawAdminKey>>,
    pub api_keys_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdminKey {
    pub name: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawBackend {
    Redis,
    Embedded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStore {
    pub backend: Option<RawBackend>,
    pub redis: Option<RawRedis>,
    pub embedded: Option<RawEmbedded>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRedis {
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    #[serde(deserialize_with = "opt_bool")]
    pub cluster: Option<bool>,
    pub sentinel: Option<RawSentinel>,
    #[serde(deserialize_with = "opt_num")]
    pub command_timeout_ms: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub connect_timeout_ms: Option<u64>,
    pub key_prefix: Option<String>,
    #[serde(deserialize_with = "opt_num")]
    pub audit_max_events: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSentinel {
    pub master_name: Option<String>,
    pub urls: Option<Vec<String>>,
    pub master_username: Option<String>,
    pub master_password: Option<String>,
    #[serde(deserialize_with = "opt_num")]
    pub db: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawEmbedded {
    pub path: Option<String>,
    #[serde(deserialize_with = "opt_num")]
    pub audit_max_events: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCache {
    #[serde(deserialize_with = "opt_num")]
    pub ttl_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub negative_ttl_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub max_staleness_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub max_entries: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTokens {
    pub prefix: Option<String>,
    pub foreign_prefixes: Option<Vec<String>>,
    pub default_expiry: Option<String>,
    pub max_expiry: Option<String>,
    #[serde(deserialize_with = "opt_bool")]
    pub accept_foreign: Option<bool>,
    #[serde(deserialize_with = "opt_num")]
    pub creation_limit: Option<u32>,
    #[serde(deserialize_with = "opt_num")]
    pub max_grace_period_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawRateLimitMode {
    Local,
    Redis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRateLimit {
    pub mode: Option<RawRateLimitMode>,
    #[serde(deserialize_with = "opt_num")]
    pub replicas: Option<u32>,
    /// Absent = the built-in default; explicit `null` = unlimited.
    #[serde(deserialize_with = "present")]
    pub default: Option<Option<RawRate>>,
    pub quota: Option<RawQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawQuota {
    #[serde(deserialize_with = "opt_num")]
    pub requests: Option<u64>,
    pub period: Option<String>,
    pub per: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRate {
    #[serde(deserialize_with = "opt_num")]
    pub requests: Option<u32>,
    #[serde(deserialize_with = "opt_num")]
    pub per_seconds: Option<u32>,
    #[serde(deserialize_with = "opt_num")]
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawClientIp {
    pub trusted_proxies: Option<Vec<String>>,
    pub signals: Option<RawIpSignals>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawIpSignals {
    #[serde(deserialize_with = "opt_bool")]
    pub enabled: Option<bool>,
    #[serde(deserialize_with = "opt_num")]
    pub ipv4_prefix: Option<u8>,
    #[serde(deserialize_with = "opt_num")]
    pub ipv6_prefix: Option<u8>,
    #[serde(deserialize_with = "opt_num")]
    pub max_per_token: Option<u32>,
    #[serde(deserialize_with = "opt_num")]
    pub retention_days: Option<u32>,
    #[serde(deserialize_with = "opt_num")]
    pub warn_above: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawWebhooks {
    pub endpoints: Option<Vec<RawWebhookEndpoint>>,
    #[serde(deserialize_with = "opt_num")]
    pub expiring_days: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub expiring_scan_interval_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub rate_limited_interval_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub max_attempts: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub retry_initial_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub retry_max_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub timeout_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub keep_deliveries: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawWebhookEndpoint {
    pub name: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawIdentityHeaders {
    pub prefix: Option<String>,
    pub user_id: Option<String>,
    pub token_id: Option<String>,
    pub token_prefix: Option<String>,
    pub token_type: Option<String>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub scopes: Option<String>,
    pub permissions: Option<String>,
    pub assertion: Option<RawAssertion>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAssertion {
    pub header: Option<String>,
    #[serde(deserialize_with = "opt_num")]
    pub ttl_seconds: Option<u64>,
    pub issuer: Option<String>,
    pub keys: Option<Vec<RawAssertionKey>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAssertionKey {
    pub id: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAuth {
    Required,
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    pub auth: Option<RawAuth>,
    pub require: Option<RawRequire>,
    #[serde(deserialize_with = "opt_bool")]
    pub permissions_by_method: Option<bool>,
    pub project_param: Option<String>,
    pub org_param: Option<String>,
    #[serde(deserialize_with = "opt_num")]
    pub max_body_bytes: Option<u64>,
    #[serde(deserialize_with = "opt_bool")]
    pub strip_prefix: Option<bool>,
    #[serde(deserialize_with = "opt_num")]
    pub quota_cost: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRequire {
    pub scopes: Option<Vec<String>>,
    pub permissions: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpstream {
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    #[serde(deserialize_with = "opt_num")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub response_timeout_ms: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub max_fails: Option<u32>,
    #[serde(deserialize_with = "opt_num")]
    pub fail_timeout_seconds: Option<u64>,
    pub tls: Option<RawUpstreamTls>,
    #[serde(deserialize_with = "opt_bool")]
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpstreamTls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTimeouts {
    #[serde(deserialize_with = "opt_num")]
    pub header_read_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub shutdown_grace_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub upstream_connect_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub upstream_response_seconds: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub idle_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLimits {
    #[serde(deserialize_with = "opt_num")]
    pub max_header_bytes: Option<usize>,
    #[serde(deserialize_with = "opt_num")]
    pub max_body_bytes: Option<u64>,
    #[serde(deserialize_with = "opt_num")]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawLogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLogging {
    pub format: Option<RawLogFormat>,
    pub level: Option<String>,
    #[serde(deserialize_with = "opt_bool")]
    pub access_log: Option<bool>,
    pub access_log_sample_rate: Option<f64>,
}

/// `Some(v)` whenever the key is present, even as `null` (`Some(None)`); with
/// `#[serde(default)]` an absent key stays `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A non-negative integer, or a string holding one (from `${ENV}`); `null` = absent.
pub(crate) fn opt_num<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    struct V<T>(PhantomData<T>);

    impl<'de, T: TryFrom<u64>> Visitor<'de> for V<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            T::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is too large")))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!("{v} must not be negative"))),
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.trim().parse::<u64>() {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
    }

    d.deserialize_any(V(PhantomData))
}

/// `true`/`false`, or a string holding one (from `${ENV}`); `null` = absent.
pub(crate) fn opt_bool<'de, D>(d: D) -> Result<Option<bool>, D::Error>
where
    D: Deserializer<'de>,
{
    struct V;

    impl<'de> Visitor<'de> for V {
        type Value = Option<bool>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.trim() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
    }

    d.deserialize_any(V)
}
