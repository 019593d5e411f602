//! Second stage: YAML text → raw structs → [`Settings`], collecting every problem.
//!
//! Order: YAML syntax (fatal: nothing else can be read) → `${ENV}` expansion →
//! per-section deserialization (one broken section does not hide the others; a type
//! error stops only its own section or list entry) → semantic and cross-field checks.
//! Each check pushes a [`ConfigError`] with its field path and carries on with a
//! fallback value, so one run reports everything; `Settings` is returned only when
//! nothing was pushed. All defaults live here (and in `settings.rs` doc comments).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::env::{EnvLookup, display_root, expand_tree, join, key_to_string};
use super::raw::{self, RawConfig};
use super::settings::*;
use super::{ConfigError, ConfigErrors};

/// Default data-plane listener.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9091";
/// Default Redis URL.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default embedded store file.
const DEFAULT_EMBEDDED_PATH: &str = "data/patgate.redb";
/// hyper panics on a smaller HTTP/1 read buffer, and the head limit becomes that buffer.
const MIN_HEADER_BYTES: usize = 8192;
/// Methods a route may list (a typo such as `GTE` must not silently never match).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];
/// Headers an identity prefix must never cover: stripping them breaks every request.
const PROTECTED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "cookie",
    "accept",
    "user-agent",
    "te",
    "upgrade",
    "expect",
];

/// Parses, expands, deserializes and validates `text`.
pub(crate) fn settings_from_yaml(text: &str, env: EnvLookup<'_>) -> Result<Settings, ConfigErrors> {
    let mut root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(ConfigErrors(vec![syntax_error(&e)])),
    };
    let mut cx = Ctx::default();
    if root.is_null() {
        root = Value::Mapping(Default::default());
    }
    expand_tree(&mut root, "", env, &mut cx.errs);
    // A value whose `${VAR}` failed is reported once, not again as malformed.
    cx.suppressed = cx.errs.iter().map(|e| e.path.clone()).collect();
    let raw = match root {
        Value::Mapping(map) => parse_sections(map, &mut cx),
        _ => {
            cx.err("<root>", "expected a mapping of top-level keys");
            RawConfig::default()
        }
    };
    let settings = build(raw, env, &mut cx);
    if cx.errs.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigErrors(cx.errs))
    }
}

/// Collected problems.
#[derive(Default)]
struct Ctx {
    errs: Vec<ConfigError>,
    /// Paths already reported (failed `${VAR}` expansion): later errors there are noise.
    suppressed: HashSet<String>,
}

impl Ctx {
    fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        let path = path.into();
        if self.suppressed.contains(&path) {
            return;
        }
        self.errs.push(ConfigError {
            path,
            reason: reason.into(),
        });
    }
}

/// A YAML syntax error, located by line and column.
fn syntax_error(e: &serde_yaml::Error) -> ConfigError {
    let mut reason = e.to_string();
    let path = match e.location() {
        Some(l) => {
            reason = reason.replace(&format!(" at line {} column {}", l.line(), l.column()), "");
            format!("line {} column {}", l.line(), l.column())
        }
        None => "<yaml>".to_owned(),
    };
    ConfigError {
        path,
        reason: format!("invalid YAML: {reason}"),
    }
}

/// Deserializes one section (or list entry) at `base`; on failure records the error
/// with the full path of the offending field and returns `None`.
fn section<T: DeserializeOwned>(v: Value, base: &str, cx: &mut Ctx) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let mut path = base.to_owned();
            for seg in e.path() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => {
                        path.push_str(&format!("[{index}]"));
                    }
                    serde_path_to_error::Segment::Map { key } => path = join(&path, key),
                    serde_path_to_error::Segment::Enum { variant } => path = join(&path, variant),
                    serde_path_to_error::Segment::Unknown => path = join(&path, "?"),
                }
            }
            let msg = e.into_inner().to_string();
            let (path, reason) = refine_serde_message(path, msg);
            cx.err(display_root(&path), reason);
            None
        }
    }
}

/// serde reports `unknown field`/`missing field` at the enclosing struct; move the
/// field name into the path so the line reads `tokens.prefx: unknown field ...`.
fn refine_serde_message(path: String, msg: String) -> (String, String) {
    for (lead, reason) in [
        ("unknown field `", "unknown field"),
        ("missing field `", "is required"),
    ] {
        if let Some(rest) = msg.strip_prefix(lead)
            && let Some((field, tail)) = rest.split_once('`')
        {
            let tail = tail.trim_start_matches(',').trim();
            let reason = if tail.is_empty() {
                reason.to_owned()
            } else {
                format!("{reason}; {tail}")
            };
            // serde_path_to_error already ends the path with an unknown key.
            let already = path == field || path.ends_with(&format!(".{field}"));
            let path = if already { path } else { join(&path, field) };
            return (path, reason);
        }
    }
    (path, msg)
}

/// Splits the top-level mapping into sections, each deserialized on its own.
fn parse_sections(map: serde_yaml::Mapping, cx: &mut Ctx) -> RawConfig {
    let mut raw = RawConfig::default();
    for (k, v) in map {
        let key = key_to_string(&k);
        match key.as_str() {
            "listen" => raw.listen = section::<Option<String>>(v, &key, cx).flatten(),
            "tls" => raw.tls = section::<Option<_>>(v, &key, cx).flatten(),
            "admin" => raw.admin = section::<Option<_>>(v, &key, cx).flatten(),
            "store" => raw.store = section::<Option<_>>(v, &key, cx).flatten(),
            "cache" => raw.cache = section::<Option<_>>(v, &key, cx).flatten(),
            "tokens" => raw.tokens = section::<Option<_>>(v, &key, cx).flatten(),
            "rate_limit" => raw.rate_limit = section::<Option<_>>(v, &key, cx).flatten(),
            "client_ip" => raw.client_ip = section::<Option<_>>(v, &key, cx).flatten(),
            "identity_headers" => {
                raw.identity_headers = section::<Option<_>>(v, &key, cx).flatten();
            }
            "forward_authorization" => match raw::opt_bool(v) {
                Ok(b) => raw.forward_authorization = b,
                Err(e) => cx.err(key, e.to_string()),
            },
            "whoami_path" => raw.whoami_path = section::<Option<String>>(v, &key, cx).flatten(),
            "routes" => match v {
                Value::Null => {}
                Value::Sequence(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        raw.routes.push(section(item, &format!("routes[{i}]"), cx));
                    }
                }
                _ => cx.err(key, "expected a list of routes"),
            },
            "upstreams" => match v {
                Value::Null => {}
                Value::Mapping(entries) => {
                    for (name, item) in entries {
                        let name = key_to_string(&name);
                        let path = format!("upstreams.{name}");
                        let parsed = section::<Option<raw::RawUpstream>>(item, &path, cx);
                        let parsed = match parsed {
                            Some(None) => {
                                cx.err(path, "expected an upstream with `url` or `urls`");
                                None
                            }
                            Some(Some(u)) => Some(u),
                            None => None,
                        };
                        raw.upstreams.insert(name, parsed);
                    }
                }
                _ => {
                    raw.upstreams_broken = true;
                    cx.err(key, "expected a mapping of upstream names to upstreams");
                }
            },
            "timeouts" => raw.timeouts = section::<Option<_>>(v, &key, cx).flatten(),
            "limits" => raw.limits = section::<Option<_>>(v, &key, cx).flatten(),
            "logging" => raw.logging = section::<Option<_>>(v, &key, cx).flatten(),
            "webhooks" => raw.webhooks = section::<Option<_>>(v, &key, cx).flatten(),
            _ => {
                let expected = raw::TOP_LEVEL_KEYS.join("`, `");
                cx.err(key, format!("unknown field; expected one of `{expected}`"));
            }
        }
    }
    raw
}

/// Builds every section in dependency order (timeouts before upstreams, upstreams
/// and limits before routes, store before rate limits).
fn build(mut raw: RawConfig, env: EnvLookup<'_>, cx: &mut Ctx) -> Settings {
    let listen = socket_addr(cx, "listen", raw.listen.as_deref(), DEFAULT_LISTEN);
    let tls = tls(cx, "tls", raw.tls.take());
    let admin = admin(cx, raw.admin.take().unwrap_or_default(), env, listen);
    let store = store(cx, raw.store.take().unwrap_or_default());
    let cache = cache(cx, raw.cache.take().unwrap_or_default());
    let tokens = tokens(cx, raw.tokens.take().unwrap_or_default());
    let rate_limit = rate_limit(cx, raw.rate_limit.take().unwrap_or_default(), &store);
    let client_ip = client_ip(cx, raw.client_ip.take().unwrap_or_default());
    let identity_headers = identity_headers(cx, raw.identity_headers.take().unwrap_or_default());
    let whoami_path = raw
        .whoami_path
        .take()
        .unwrap_or_else(|| "/_patgate/whoami".to_owned());
    if let Err(reason) = check_path("whoami_path", &whoami_path) {
        cx.err("whoami_path", reason);
    }
    let timeouts = timeouts(cx, raw.timeouts.take().unwrap_or_default());
    let limits = limits(cx, raw.limits.take().unwrap_or_default());
    let mut upstreams = upstreams(cx, &raw.upstreams, &timeouts);
    let raw_routes = std::mem::take(&mut raw.routes);
    let routes = routes(cx, raw_routes, &raw, &mut upstreams, &timeouts, &limits);
    let logging = logging(cx, raw.logging.take().unwrap_or_default());
    let webhooks = webhooks(cx, raw.webhooks.take().unwrap_or_default());
    Settings {
        listen,
        tls,
        admin,
        store,
        cache,
        tokens,
        rate_limit,
        client_ip,
        identity_headers,
        forward_authorization: raw.forward_authorization.take().unwrap_or(false),
        whoami_path,
        routes,
        upstreams: upstreams
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect(),
        timeouts,
        limits,
        logging,
        webhooks,
    }
}

// ---------------------------------------------------------------- small checks

/// Fallback used after an error has been recorded; never reaches a caller because
/// `Settings` is only returned when no error was recorded.
const FALLBACK_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn socket_addr(cx: &mut Ctx, path: &str, v: Option<&str>, default: &str) -> SocketAddr {
    let s = v.unwrap_or(default);
    match s.trim().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            cx.err(
                path,
                format!("`{s}` is not an IP:port socket address (e.g. 127.0.0.1:8080, [::]:8080)"),
            );
            FALLBACK_ADDR
        }
    }
}

/// `v` (or `default`), which must be at least `min`.
fn at_least(cx: &mut Ctx, path: &str, v: Option<u64>, default: u64, min: u64) -> u64 {
    let n = v.unwrap_or(default);
    if n < min {
        cx.err(path, format!("must be at least {min}"));
        return default.max(min);
    }
    n
}

/// `v` (or `default`) within `min..=max`; out of range is an error (and `default`).
fn within(cx: &mut Ctx, path: &str, v: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
    let n = at_least(cx, path, v, default, min);
    if n > max {
        cx.err(path, format!("must be at most {max}"));
        return default;
    }
    n
}

/// Longest timer a config may set: far beyond any sane value, far below the point
/// where `Instant + Duration` arithmetic would overflow and panic.
const MAX_TIMER_SECS: u64 = 365 * 86_400;

/// Longest token expiry (jiff timestamps end in year 9999).
const MAX_EXPIRY_SECS: u64 = 100 * 365 * 86_400;

/// A timer in seconds: at least `min`, at most [`MAX_TIMER_SECS`].
fn secs(cx: &mut Ctx, path: &str, v: Option<u64>, default: u64, min: u64) -> Duration {
    let n = at_least(cx, path, v, default, min);
    if n > MAX_TIMER_SECS {
        cx.err(path, format!("must be at most {MAX_TIMER_SECS} (a year)"));
        return Duration::from_secs(default);
    }
    Duration::from_secs(n)
}

/// A timer in milliseconds: at least 1, at most [`MAX_TIMER_SECS`] worth.
fn millis(cx: &mut Ctx, path: &str, v: Option<u64>, default: Duration) -> Duration {
    // Defaults come from `secs`, so they fit in u64 milliseconds.
    let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    let n = at_least(cx, path, v, default, 1);
    if n > MAX_TIMER_SECS * 1000 {
        cx.err(
            path,
            format!("must be at most {} (a year)", MAX_TIMER_SECS * 1000),
        );
        return Duration::from_millis(default);
    }
    Duration::from_millis(n)
}

fn positive(cx: &mut Ctx, path: &str, v: Option<u64>, default: u64) -> u64 {
    at_least(cx, path, v, default, 1)
}

fn positive_u32(cx: &mut Ctx, path: &str, v: Option<u32>, default: u32) -> u32 {
    // The value came from a u32, so it fits back.
    positive(cx, path, v.map(u64::from), u64::from(default)) as u32
}

/// Absolute URL path: starts with `/`, no query, fragment or whitespace.
fn check_path(what: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{what} must start with `/`"));
    }
    if p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what} must not contain `?`, `#` or whitespace"));
    }
    Ok(())
}

/// Route and upstream names: used in metrics labels and logs.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 64 {
        return Err("must be at most 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may only contain letters, digits, `-`, `_` and `.`".into());
    }
    Ok(())
}

/// Scope and permission names travel comma-joined in identity headers.
fn check_grants(cx: &mut Ctx, path: &str, list: Option<Vec<String>>) -> Vec<String> {
    let list = list.unwrap_or_default();
    for (i, s) in list.iter().enumerate() {
        if s.is_empty()
            || s.chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        {
            cx.err(
                format!("{path}[{i}]"),
                "must be non-empty without commas or whitespace",
            );
        }
    }
    list
}

/// Parses `365d`, `12h`, `30m`, `45s`, `2w`; `never` is `None`.
pub(crate) fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let bad = || format!("`{s}` is not a duration (e.g. 365d, 12h, 30m, 45s, 2w, or never)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err("must be longer than zero (use `never` for no expiry)".into());
    }
    match n.checked_mul(mult) {
        Some(secs) if secs <= MAX_EXPIRY_SECS => Ok(Some(Duration::from_secs(secs))),
        _ => Err(format!("`{s}` is too long (at most 100 years)")),
    }
}

fn hex32(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(format!(
            "must be 64 hex characters (a SHA-256), got {} characters",
            s.len()
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| "must be 64 hex characters (a SHA-256)")?;
    Ok(out)
}

/// An upstream base URL: http(s), with a host, no user info, query or fragment.
fn upstream_url(s: &str) -> Result<Uri, String> {
    if s.contains('#') {
        return Err("must not contain a fragment (`#`)".into());
    }
    let uri: Uri = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    }
    let Some(auth) = uri.authority() else {
        return Err(format!("`{s}` has no host"));
    };
    if auth.host().is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    if auth.as_str().contains('@') {
        return Err("must not contain user info (`user@`)".into());
    }
    if uri.query().is_some() {
        return Err(format!("`{s}` must not contain a query (`?`)"));
    }
    Ok(uri)
}

/// Parses `project_param` / `org_param` (see [`PathParam`]).
pub(crate) fn parse_path_param(s: &str) -> Result<PathParam, String> {
    if !s.contains(['{', '}']) {
        if s.is_empty() || s.contains('/') || s.chars().any(|c| c.is_whitespace()) {
            return Err(
                "must be a segment name such as `projects`, or a template such as `/v1/projects/{project}`"
                    .into(),
            );
        }
        return Ok(PathParam::After(s.to_owned()));
    }
    if !s.starts_with('/') {
        return Err("a template must start with `/`, e.g. `/v1/projects/{project}`".into());
    }
    // `/v1/projects/{project}/...` (as the SPEC writes it) means "and anything below".
    let mut t = s.trim_end_matches('/');
    for tail in ["/...", "/**", "/*"] {
        if let Some(stripped) = t.strip_suffix(tail) {
            t = stripped;
            break;
        }
    }
    let mut segments = Vec::new();
    let mut placeholders = 0;
    for seg in t[1..].split('/') {
        if seg.is_empty() {
            return Err("a template must not contain empty segments (`//`)".into());
        }
        if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
            let inner = &seg[1..seg.len() - 1];
            if inner.contains(['{', '}']) {
                return Err(format!("malformed placeholder `{seg}`"));
            }
            placeholders += 1;
            segments.push(None);
        } else if seg.contains(['{', '}']) {
            return Err(format!(
                "a placeholder must be a whole segment like `{{project}}`, not `{seg}`"
            ));
        } else {
            segments.push(Some(seg.to_owned()));
        }
    }
    if placeholders != 1 {
        return Err(format!(
            "a template needs exactly one `{{...}}` placeholder, found {placeholders}"
        ));
    }
    Ok(PathParam::Template { segments })
}

// ---------------------------------------------------------------- sections

/// A listener's `tls` section (`tls` or `admin.tls`): both files required.
fn tls(cx: &mut Ctx, section: &str, raw: Option<raw::RawTls>) -> Option<TlsSettings> {
    let raw = raw?;
    let mut file = |name: &str, v: Option<String>| match v {
        Some(p) if !p.trim().is_empty() => PathBuf::from(p),
        _ => {
            cx.err(format!("{section}.{name}"), "is required (a PEM file path)");
            PathBuf::new()
        }
    };
    let cert = file("cert", raw.cert);
    let key = file("key", raw.key);
    Some(TlsSettings { cert, key })
}

fn admin(cx: &mut Ctx, raw: raw::RawAdmin, env: EnvLookup<'_>, data: SocketAddr) -> AdminSettings {
    let listen = socket_addr(
        cx,
        "admin.listen",
        raw.listen.as_deref(),
        DEFAULT_ADMIN_LISTEN,
    );
    if listen == data && listen.port() != 0 {
        cx.err("admin.listen", "must differ from `listen`");
    }
    let mut api_keys = Vec::new();
    for (i, k) in raw.api_keys.unwrap_or_default().into_iter().enumerate() {
        let base = format!("admin.api_keys[{i}]");
        let name = match k.name {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => {
                cx.err(format!("{base}.name"), "is required");
                String::new()
            }
        };
        let sha256 = match k.sha256.as_deref().map(hex32) {
            Some(Ok(h)) => h,
            Some(Err(reason)) => {
                cx.err(format!("{base}.sha256"), reason);
                [0; 32]
            }
            None => {
                cx.err(
                    format!("{base}.sha256"),
                    "is required (from `patgate admin-key new`)",
                );
                [0; 32]
            }
        };
        api_keys.push((base, AdminKey { name, sha256 }));
    }
    if let Some(var) = raw.api_keys_env {
        let path = "admin.api_keys_env";
        let var = var.trim();
        let valid_name = !var.is_empty()
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            cx.err(
                path,
                "must be an environment variable name such as PATGATE_ADMIN_KEYS",
            );
        } else if let Some(value) = env(var) {
            // Unset = no extra keys: the shipped examples stay loadable without it.
            let entries = value.split(',').map(str::trim).filter(|e| !e.is_empty());
            for (i, entry) in entries.enumerate() {
                let (name, hash) = match entry.rsplit_once(':') {
                    Some((n, h)) => (n.trim().to_owned(), h),
                    None => (format!("env-{}", i + 1), entry),
                };
                match hex32(hash) {
                    Ok(sha256) if !name.is_empty() => {
                        api_keys
                            .push((format!("${var} entry {}", i + 1), AdminKey { name, sha256 }));
                    }
                    Ok(_) => cx.err(
                        path,
                        format!("${var} entry {}: empty name before `:`", i + 1),
                    ),
                    Err(reason) => cx.err(path, format!("${var} entry {}: sha256 {reason}", i + 1)),
                }
            }
        }
    }
    let mut names = HashMap::new();
    let mut hashes = HashMap::new();
    for (path, k) in &api_keys {
        if k.name.is_empty() {
            continue;
        }
        if let Some(first) = names.insert(k.name.clone(), path.clone()) {
            cx.err(
                path.clone(),
                format!("duplicate admin key name `{}` (also {first})", k.name),
            );
        }
        if k.sha256 != [0; 32]
            && let Some(first) = hashes.insert(k.sha256, path.clone())
        {
            cx.err(
                path.clone(),
                format!("duplicate admin key sha256 (also {first})"),
            );
        }
    }
    AdminSettings {
        listen,
        api_keys: api_keys.into_iter().map(|(_, k)| k).collect(),
        tls: tls(cx, "admin.tls", raw.tls),
    }
}

fn store(cx: &mut Ctx, raw: raw::RawStore) -> StoreSettings {
    let redis = redis(cx, raw.redis.unwrap_or_default());
    let e = raw.embedded.unwrap_or_default();
    let path = e.path.unwrap_or_else(|| DEFAULT_EMBEDDED_PATH.to_owned());
    if path.trim().is_empty() {
        cx.err("store.embedded.path", "must not be empty");
    }
    let embedded = EmbeddedSettings {
        path: PathBuf::from(path),
        audit_max_events: positive(
            cx,
            "store.embedded.audit_max_events",
            e.audit_max_events,
            100_000,
        ),
    };
    match raw.backend.unwrap_or(raw::RawBackend::Redis) {
        raw::RawBackend::Redis => StoreSettings::Redis(redis),
        raw::RawBackend::Embedded => StoreSettings::Embedded(embedded),
    }
}

fn redis(cx: &mut Ctx, r: raw::RawRedis) -> RedisSettings {
    let cluster = r.cluster.unwrap_or(false);
    let sentinel = r.sentinel.map(|sn| sentinel(cx, sn));
    let urls: Vec<(String, String)> = match (r.url, r.urls) {
        (Some(_), Some(_)) => {
            cx.err("store.redis.urls", "give either `url` or `urls`, not both");
            Vec::new()
        }
        (Some(u), None) => vec![("store.redis.url".to_owned(), u)],
        (None, Some(list)) => {
            if list.is_empty() {
                cx.err("store.redis.urls", "must list at least one URL");
            }
            list.into_iter()
                .enumerate()
                .map(|(i, u)| (format!("store.redis.urls[{i}]"), u))
                .collect()
        }
        (None, None) if sentinel.is_some() => Vec::new(),
        (None, None) => vec![("store.redis.url".to_owned(), DEFAULT_REDIS_URL.to_owned())],
    };
    check_redis_urls(cx, &urls);
    if sentinel.is_some() {
        if !urls.is_empty() {
            cx.err(
                "store.redis.sentinel",
                "give either `sentinel` or `url`/`urls`: the master's address comes from the sentinels",
            );
        }
        if cluster {
            cx.err(
                "store.redis.sentinel",
                "Sentinel and `cluster: true` exclude each other",
            );
        }
    }
    if !cluster && urls.len() > 1 {
        cx.err("store.redis.urls", "several URLs need `cluster: true`");
    }
    let key_prefix = r.key_prefix.unwrap_or_else(|| "patgate:".to_owned());
    if key_prefix.is_empty()
        || key_prefix.contains(['{', '}'])
        || key_prefix.contains(char::is_whitespace)
    {
        cx.err(
            "store.redis.key_prefix",
            "must be non-empty, without whitespace, `{` or `}` (the store adds its own hash tags)",
        );
    }
    RedisSettings {
        urls: urls.into_iter().map(|(_, u)| u.trim().to_owned()).collect(),
        cluster,
        sentinel,
        command_timeout: millis(
            cx,
            "store.redis.command_timeout_ms",
            r.command_timeout_ms,
            Duration::from_millis(250),
        ),
        connect_timeout: millis(
            cx,
            "store.redis.connect_timeout_ms",
            r.connect_timeout_ms,
            Duration::from_secs(1),
        ),
        key_prefix,
        audit_max_events: positive(
            cx,
            "store.redis.audit_max_events",
            r.audit_max_events,
            100_000,
        ),
    }
}

fn cache(cx: &mut Ctx, r: raw::RawCache) -> CacheSettings {
    CacheSettings {
        ttl: secs(cx, "cache.ttl_seconds", r.ttl_seconds, 30, 1),
        negative_ttl: secs(
            cx,
            "cache.negative_ttl_seconds",
            r.negative_ttl_seconds,
            5,
            0,
        ),
        max_staleness: secs(
            cx,
            "cache.max_staleness_seconds",
            r.max_staleness_seconds,
            300,
            0,
        ),
        max_entries: positive(cx, "cache.max_entries", r.max_entries, 100_000),
    }
}

fn tokens(cx: &mut Ctx, r: raw::RawTokens) -> TokenSettings {
    let prefix = r.prefix.unwrap_or_else(|| "pat_".to_owned());
    if let Err(reason) = crate::token::validate_prefix(&prefix) {
        cx.err("tokens.prefix", format!("`{prefix}` {reason}"));
    }
    let foreign_prefixes = r.foreign_prefixes.unwrap_or_default();
    let mut seen = HashSet::new();
    for (i, p) in foreign_prefixes.iter().enumerate() {
        let path = format!("tokens.foreign_prefixes[{i}]");
        if p.is_empty() || p.len() > 32 || !p.chars().all(|c| c.is_ascii_graphic()) {
            cx.err(
                path,
                "must be 1-32 printable ASCII characters without spaces",
            );
        } else if *p == prefix {
            cx.err(path, "is the same as tokens.prefix");
        } else if !seen.insert(p.as_str()) {
            cx.err(path, format!("duplicate prefix `{p}`"));
        }
    }
    let mut expiry = |name: &str, v: Option<String>, default: Option<Duration>| match v {
        None => default,
        Some(s) => parse_duration(&s).unwrap_or_else(|reason| {
            cx.err(format!("tokens.{name}"), reason);
            default
        }),
    };
    let default_expiry = expiry(
        "default_expiry",
        r.default_expiry,
        Some(Duration::from_secs(365 * 86_400)),
    );
    let max_expiry = expiry("max_expiry", r.max_expiry, None);
    if let Some(max) = max_expiry {
        match default_expiry {
            None => cx.err("tokens.default_expiry", "`never` exceeds tokens.max_expiry"),
            Some(d) if d > max => cx.err("tokens.default_expiry", "exceeds tokens.max_expiry"),
            Some(_) => {}
        }
    }
    TokenSettings {
        prefix,
        foreign_prefixes,
        default_expiry,
        max_expiry,
        accept_foreign: r.accept_foreign.unwrap_or(false),
        creation_limit: r.creation_limit.unwrap_or(5),
        max_grace_period: secs(
            cx,
            "tokens.max_grace_period_seconds",
            r.max_grace_period_seconds,
            86_400,
            0,
        ),
    }
}

/// Every URL must parse; a URL may hold a password, so it is never echoed.
fn check_redis_urls(cx: &mut Ctx, urls: &[(String, String)]) {
    use redis::IntoConnectionInfo;
    for (path, u) in urls {
        if u.trim().into_connection_info().is_err() {
            cx.err(
                path.clone(),
                "not a Redis URL (redis://[user:password@]host:port[/db], rediss://..., or unix:///path)",
            );
        }
    }
}

fn sentinel(cx: &mut Ctx, r: raw::RawSentinel) -> SentinelSettings {
    let master_name = r.master_name.unwrap_or_default().trim().to_owned();
    if master_name.is_empty() {
        cx.err(
            "store.redis.sentinel.master_name",
            "is required (the name in `sentinel monitor <name> ...`)",
        );
    }
    let list = r.urls.unwrap_or_default();
    if list.is_empty() {
        cx.err(
            "store.redis.sentinel.urls",
            "must list at least one sentinel URL",
        );
    }
    let urls: Vec<(String, String)> = list
        .into_iter()
        .enumerate()
        .map(|(i, u)| (format!("store.redis.sentinel.urls[{i}]"), u))
        .collect();
    check_redis_urls(cx, &urls);
    SentinelSettings {
        master_name,
        urls: urls.into_iter().map(|(_, u)| u.trim().to_owned()).collect(),
        master_username: r.master_username.filter(|u| !u.is_empty()),
        master_password: r.master_password.filter(|p| !p.is_empty()),
        db: r.db.unwrap_or(0),
    }
}

fn rate_limit(cx: &mut Ctx, r: raw::RawRateLimit, store: &StoreSettings) -> RateLimitSettings {
    let mode = match r.mode.unwrap_or(raw::RawRateLimitMode::Local) {
        raw::RawRateLimitMode::Local => RateLimitMode::Local,
        raw::RawRateLimitMode::Redis => RateLimitMode::Redis,
    };
    if mode == RateLimitMode::Redis && !matches!(store, StoreSettings::Redis(_)) {
        cx.err("rate_limit.mode", "`redis` needs `store.backend: redis`");
    }
    let builtin = RateSpec {
        requests: 100,
        per_seconds: 1,
        burst: 100,
    };
    let default = match r.default {
        None => Some(builtin),
        Some(None) => None,
        Some(Some(d)) => {
            let requests = match d.requests {
                Some(n) => positive_u32(cx, "rate_limit.default.requests", Some(n), 1),
                None => {
                    cx.err(
                        "rate_limit.default.requests",
                        "is required (or `default: null` for no limit)",
                    );
                    1
                }
            };
            Some(RateSpec {
                requests,
                per_seconds: positive_u32(cx, "rate_limit.default.per_seconds", d.per_seconds, 1),
                burst: positive_u32(cx, "rate_limit.default.burst", d.burst, requests),
            })
        }
    };
    let replicas = positive_u32(cx, "rate_limit.replicas", r.replicas, 1);
    let quota = r.quota.map(|q| {
        let requests = match q.requests {
            Some(n) if n > 0 => n,
            Some(_) => {
                cx.err("rate_limit.quota.requests", "must be at least 1");
                1
            }
            None => {
                cx.err("rate_limit.quota.requests", "is required");
                1
            }
        };
        let period = match q.period.as_deref().unwrap_or("month") {
            "day" => QuotaPeriod::Day,
            "month" => QuotaPeriod::Month,
            other => {
                cx.err(
                    "rate_limit.quota.period",
                    format!("`{other}`: expected `day` or `month`"),
                );
                QuotaPeriod::Month
            }
        };
        let per = match q.per.as_deref().unwrap_or("token") {
            "token" => QuotaSubject::Token,
            "owner" => QuotaSubject::Owner,
            other => {
                cx.err(
                    "rate_limit.quota.per",
                    format!("`{other}`: expected `token` or `owner`"),
                );
                QuotaSubject::Token
            }
        };
        QuotaSettings {
            requests,
            period,
            per,
        }
    });
    RateLimitSettings {
        mode,
        default,
        replicas,
        quota,
    }
}

fn client_ip(cx: &mut Ctx, r: raw::RawClientIp) -> ClientIpSettings {
    let mut trusted_proxies = Vec::new();
    for (i, s) in r.trusted_proxies.unwrap_or_default().iter().enumerate() {
        let s = s.trim();
        match s.parse::<IpNet>() {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => trusted_proxies.push(IpNet::from(ip)),
                Err(_) => cx.err(
                    format!("client_ip.trusted_proxies[{i}]"),
                    format!("`{s}` is not a CIDR (10.0.0.0/8) or an IP address"),
                ),
            },
        }
    }
    ClientIpSettings {
        trusted_proxies,
        signals: ip_signals(cx, r.signals.unwrap_or_default()),
    }
}

/// `client_ip.signals`; the defaults are [`IpSignals::default`].
fn ip_signals(cx: &mut Ctx, r: raw::RawIpSignals) -> IpSignals {
    let d = IpSignals::default();
    // The ranges keep every value well inside the target types: the casts are lossless.
    let ipv4_prefix = within(
        cx,
        "client_ip.signals.ipv4_prefix",
        r.ipv4_prefix.map(u64::from),
        u64::from(d.ipv4_prefix),
        1,
        32,
    ) as u8;
    let ipv6_prefix = within(
        cx,
        "client_ip.signals.ipv6_prefix",
        r.ipv6_prefix.map(u64::from),
        u64::from(d.ipv6_prefix),
        1,
        128,
    ) as u8;
    let max_per_token = within(
        cx,
        "client_ip.signals.max_per_token",
        r.max_per_token.map(u64::from),
        d.max_per_token as u64,
        1,
        1000,
    ) as usize;
    let retention_days = within(
        cx,
        "client_ip.signals.retention_days",
        r.retention_days.map(u64::from),
        u64::from(d.retention_days),
        1,
        90,
    ) as u32;
    // Unset: the default, lowered below a small `max_per_token` so the badge can show.
    let warn_default = d.warn_above.min(max_per_token.saturating_sub(1)).max(1);
    let warn_above = within(
        cx,
        "client_ip.signals.warn_above",
        r.warn_above.map(u64::from),
        warn_default as u64,
        1,
        1000,
    ) as usize;
    if r.warn_above.is_some() && warn_above >= max_per_token {
        cx.err(
            "client_ip.signals.warn_above",
            format!(
                "{warn_above} must be less than max_per_token ({max_per_token}): no token \
                 keeps more prefixes than that"
            ),
        );
    }
    IpSignals {
        enabled: r.enabled.unwrap_or(d.enabled),
        ipv4_prefix,
        ipv6_prefix,
        max_per_token,
        retention_days,
        warn_above,
    }
}

fn identity_headers(cx: &mut Ctx, r: raw::RawIdentityHeaders) -> IdentityHeaders {
    let prefix = r
        .prefix
        .unwrap_or_else(|| "X-Auth-".to_owned())
        .to_ascii_lowercase();
    let prefix_ok = !prefix.is_empty() && HeaderName::from_bytes(prefix.as_bytes()).is_ok();
    if !prefix_ok {
        cx.err(
            "identity_headers.prefix",
            "must be a non-empty header-name prefix such as `X-Auth-`",
        );
    } else if let Some(h) = PROTECTED_HEADERS.iter().find(|h| h.starts_with(&prefix)) {
        cx.err(
            "identity_headers.prefix",
            format!("would strip every client's `{h}` header; use a longer prefix"),
        );
    }
    let mut seen: HashMap<HeaderName, &str> = HashMap::new();
    let mut header = |field: &'static str, v: Option<String>, suffix: &str| -> HeaderName {
        let path = format!("identity_headers.{field}");
        let name = v.unwrap_or_else(|| format!("{prefix}{suffix}"));
        let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
            cx.err(path, format!("`{name}` is not a valid header name"));
            return HeaderName::from_static("x-invalid");
        };
        if prefix_ok && !h.as_str().starts_with(&prefix) {
            cx.err(
                path.clone(),
                format!("`{name}` must start with identity_headers.prefix `{prefix}` so client copies are stripped"),
            );
        }
        if let Some(other) = seen.insert(h.clone(), field) {
            cx.err(path, format!("same header as identity_headers.{other}"));
        }
        h
    };
    let user_id = header("user_id", r.user_id, "user-id");
    let token_id = header("token_id", r.token_id, "token-id");
    let token_prefix = header("token_prefix", r.token_prefix, "token-prefix");
    let token_type = header("token_type", r.token_type, "token-type");
    let org_id = header("org_id", r.org_id, "org-id");
    let project_id = header("project_id", r.project_id, "project-id");
    let scopes = header("scopes", r.scopes, "scopes");
    let permissions = header("permissions", r.permissions, "permissions");
    let assertion_header = r
        .assertion
        .as_ref()
        .map(|a| header("assertion.header", a.header.clone(), "assertion"));
    let assertion = r.assertion.zip(assertion_header).map(|(a, header)| {
        let ttl = secs(
            cx,
            "identity_headers.assertion.ttl_seconds",
            a.ttl_seconds,
            60,
            5,
        );
        if ttl > Duration::from_secs(3600) {
            cx.err(
                "identity_headers.assertion.ttl_seconds",
                "at most 3600: assertions are meant to be short-lived",
            );
        }
        let issuer = a.issuer.unwrap_or_else(|| "patgate".to_owned());
        if issuer.trim().is_empty() {
            cx.err("identity_headers.assertion.issuer", "must not be empty");
        }
        let raw_keys = a.keys.unwrap_or_default();
        if raw_keys.is_empty() {
            cx.err(
                "identity_headers.assertion.keys",
                "at least one key is required (`openssl genpkey -algorithm ed25519 -out k1.pem`)",
            );
        }
        let mut ids = HashSet::new();
        let keys = raw_keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let base = format!("identity_headers.assertion.keys[{i}]");
                let id = match k.id {
                    Some(id) if !id.trim().is_empty() => id,
                    _ => {
                        cx.err(format!("{base}.id"), "is required (the JWS `kid`)");
                        String::new()
                    }
                };
                if !id.is_empty() && !ids.insert(id.clone()) {
                    cx.err(format!("{base}.id"), format!("duplicate key id `{id}`"));
                }
                let file = match k.file {
                    Some(f) if !f.trim().is_empty() => PathBuf::from(f),
                    _ => {
                        cx.err(
                            format!("{base}.file"),
                            "is required (an Ed25519 PKCS#8 PEM file)",
                        );
                        PathBuf::new()
                    }
                };
                AssertionKey { id, file }
            })
            .collect();
        AssertionSettings {
            header,
            ttl,
            issuer,
            keys,
        }
    });
    IdentityHeaders {
        assertion,
        user_id,
        token_id,
        token_prefix,
        token_type,
        org_id,
        project_id,
        scopes,
        permissions,
        prefix,
    }
}

fn timeouts(cx: &mut Ctx, r: raw::RawTimeouts) -> Timeouts {
    let mut secs = |name: &str, v: Option<u64>, default: u64, min: u64| {
        secs(cx, &format!("timeouts.{name}"), v, default, min)
    };
    Timeouts {
        header_read: secs("header_read_seconds", r.header_read_seconds, 10, 1),
        shutdown_grace: secs("shutdown_grace_seconds", r.shutdown_grace_seconds, 30, 0),
        upstream_connect: secs("upstream_connect_seconds", r.upstream_connect_seconds, 5, 1),
        upstream_response: secs(
            "upstream_response_seconds",
            r.upstream_response_seconds,
            60,
            1,
        ),
        idle: secs("idle_seconds", r.idle_seconds, 60, 1),
    }
}

fn limits(cx: &mut Ctx, r: raw::RawLimits) -> Limits {
    let max_header_bytes = r.max_header_bytes.unwrap_or(16_384);
    if max_header_bytes < MIN_HEADER_BYTES {
        cx.err(
            "limits.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES} (the HTTP/1 read buffer's minimum)"),
        );
    }
    let max_connections = r.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        cx.err("limits.max_connections", "must be at least 1");
    }
    Limits {
        max_header_bytes,
        max_body_bytes: positive(cx, "limits.max_body_bytes", r.max_body_bytes, 104_857_600),
        max_connections,
    }
}

fn logging(cx: &mut Ctx, r: raw::RawLogging) -> LoggingSettings {
    let level = r.level.unwrap_or_else(|| "info".to_owned());
    // Span field filters (`target[span{field=value}]`) compile their values as
    // regexes into DFAs that can grow exponentially (the config fuzzer found a
    // 300-byte filter taking seconds): not accepted here. RUST_LOG still takes them.
    if level.contains(['{', '}']) {
        cx.err(
            "logging.level",
            "span field filters (`{…}`) are not accepted here; use RUST_LOG for them",
        );
    } else if level.len() > 1024 {
        cx.err("logging.level", "must be at most 1024 characters");
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        cx.err(
            "logging.level",
            format!("`{level}` is not a log filter: {e}"),
        );
    }
    LoggingSettings {
        format: match r.format.unwrap_or(raw::RawLogFormat::Json) {
            raw::RawLogFormat::Json => LogFormat::Json,
            raw::RawLogFormat::Pretty => LogFormat::Pretty,
        },
        level,
        access_log: r.access_log.unwrap_or(true),
        access_log_sample_rate: match r.access_log_sample_rate {
            None => 1.0,
            Some(v) if (0.0..=1.0).contains(&v) => v,
            Some(v) => {
                cx.err(
                    "logging.access_log_sample_rate",
                    format!("{v} must be between 0 and 1"),
                );
                1.0
            }
        },
    }
}

/// Consecutive connect failures before an upstream address is skipped.
const DEFAULT_MAX_FAILS: u32 = 3;
/// How long a failing upstream address is skipped, in seconds.
const DEFAULT_FAIL_TIMEOUT_SECS: u64 = 10;

/// Named upstreams; `None` marks an entry that failed (its errors are recorded).
type UpstreamSlots = BTreeMap<String, Option<Arc<Upstream>>>;

fn webhooks(cx: &mut Ctx, r: raw::RawWebhooks) -> WebhookSettings {
    let d = WebhookSettings::default();
    let mut names = HashSet::new();
    let endpoints = r
        .endpoints
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let base = format!("webhooks.endpoints[{i}]");
            let url = match e.url.as_deref().map(webhook_url) {
                Some(Ok(u)) => Some(u),
                Some(Err(reason)) => {
                    cx.err(format!("{base}.url"), reason);
                    None
                }
                None => {
                    cx.err(format!("{base}.url"), "is required");
                    None
                }
            };
            // Default name: the URL's origin. Not the whole URL: its path or query
            // may be a credential (`/services/T0/B0/secret`), and names are shown in
            // the deliveries API and stored with every delivery.
            let name = e
                .name
                .or_else(|| url.as_ref().map(origin))
                .unwrap_or_default();
            if name.trim().is_empty() {
                cx.err(format!("{base}.name"), "must not be empty");
            } else if !names.insert(name.clone()) {
                cx.err(format!("{base}.name"), format!("duplicate endpoint `{name}`"));
            }
            let secret = e.secret.unwrap_or_default();
            if secret.is_empty() {
                cx.err(
                    format!("{base}.secret"),
                    "is required (the HMAC key receivers verify `Patgate-Signature` with; e.g. `openssl rand -hex 32`)",
                );
            } else if secret.len() < 16 {
                cx.err(format!("{base}.secret"), "must be at least 16 characters");
            }
            let mut events = Vec::new();
            match e.events {
                None => events.extend(WebhookEvent::ALL),
                Some(list) if list.is_empty() => {
                    cx.err(format!("{base}.events"), "must not be empty (omit it for every event)");
                }
                Some(list) => {
                    for (j, name) in list.iter().enumerate() {
                        if name == "*" {
                            events.extend(WebhookEvent::ALL);
                        } else if let Some(ev) = WebhookEvent::parse(name) {
                            events.push(ev);
                        } else {
                            let known: Vec<_> = WebhookEvent::ALL.iter().map(|e| e.name()).collect();
                            cx.err(
                                format!("{base}.events[{j}]"),
                                format!("unknown event `{name}`; expected `*` or one of `{}`", known.join("`, `")),
                            );
                        }
                    }
                }
            }
            events.sort();
            events.dedup();
            Some(WebhookEndpoint {
                name,
                url: url?,
                secret,
                events,
            })
        })
        .collect();
    let expiring_days = within(
        cx,
        "webhooks.expiring_days",
        r.expiring_days,
        u64::from(d.expiring_days),
        1,
        365,
    );
    let max_attempts = within(
        cx,
        "webhooks.max_attempts",
        r.max_attempts,
        u64::from(d.max_attempts),
        1,
        100,
    );
    let retry_initial = secs(
        cx,
        "webhooks.retry_initial_seconds",
        r.retry_initial_seconds,
        d.retry_initial.as_secs(),
        1,
    );
    let retry_max = secs(
        cx,
        "webhooks.retry_max_seconds",
        r.retry_max_seconds,
        d.retry_max.as_secs(),
        1,
    );
    if retry_max < retry_initial {
        cx.err(
            "webhooks.retry_max_seconds",
            "must be at least webhooks.retry_initial_seconds",
        );
    }
    let timeout = secs(
        cx,
        "webhooks.timeout_seconds",
        r.timeout_seconds,
        d.timeout.as_secs(),
        1,
    );
    if timeout > Duration::from_secs(300) {
        cx.err("webhooks.timeout_seconds", "must be at most 300");
    }
    WebhookSettings {
        endpoints,
        expiring_days: u32::try_from(expiring_days).unwrap_or(365),
        expiring_scan_interval: secs(
            cx,
            "webhooks.expiring_scan_interval_seconds",
            r.expiring_scan_interval_seconds,
            d.expiring_scan_interval.as_secs(),
            1,
        ),
        rate_limited_interval: secs(
            cx,
            "webhooks.rate_limited_interval_seconds",
            r.rate_limited_interval_seconds,
            d.rate_limited_interval.as_secs(),
            1,
        ),
        max_attempts: u32::try_from(max_attempts).unwrap_or(100),
        retry_initial,
        retry_max,
        timeout,
        keep_deliveries: at_least(
            cx,
            "webhooks.keep_deliveries",
            r.keep_deliveries,
            d.keep_deliveries,
            100,
        ),
    }
}

/// `scheme://host[:port]` of `uri` (no user info, path or query).
fn origin(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

/// A webhook receiver URL: absolute `http` or `https` with a host.
fn webhook_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must be an http:// or https:// URL".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    Ok(uri)
}

fn upstreams(
    cx: &mut Ctx,
    raw: &BTreeMap<String, Option<raw::RawUpstream>>,
    t: &Timeouts,
) -> UpstreamSlots {
    let mut out = BTreeMap::new();
    for (name, slot) in raw {
        let base = format!("upstreams.{name}");
        let Some(u) = slot else {
            out.insert(name.clone(), None);
            continue;
        };
        let before = cx.errs.len();
        if let Err(reason) = check_name(name) {
            cx.err(base.clone(), format!("upstream name {reason}"));
        }
        let list: Vec<(String, &String)> = match (&u.url, &u.urls) {
            (Some(_), Some(_)) => {
                cx.err(
                    format!("{base}.urls"),
                    "give either `url` or `urls`, not both",
                );
                Vec::new()
            }
            (Some(url), None) => vec![(format!("{base}.url"), url)],
            (None, Some(urls)) => {
                if urls.is_empty() {
                    cx.err(format!("{base}.urls"), "must list at least one URL");
                }
                urls.iter()
                    .enumerate()
                    .map(|(i, u)| (format!("{base}.urls[{i}]"), u))
                    .collect()
            }
            (None, None) => {
                cx.err(format!("{base}.url"), "is required (or `urls: [...]`)");
                Vec::new()
            }
        };
        let mut urls = Vec::new();
        for (path, s) in list {
            match upstream_url(s) {
                Ok(uri) => urls.push(uri),
                Err(reason) => cx.err(path, reason),
            }
        }
        let connect_timeout = millis(
            cx,
            &format!("{base}.connect_timeout_ms"),
            u.connect_timeout_ms,
            t.upstream_connect,
        );
        let response_timeout = millis(
            cx,
            &format!("{base}.response_timeout_ms"),
            u.response_timeout_ms,
            t.upstream_response,
        );
        let max_fails = positive_u32(
            cx,
            &format!("{base}.max_fails"),
            u.max_fails,
            DEFAULT_MAX_FAILS,
        );
        let fail_timeout = secs(
            cx,
            &format!("{base}.fail_timeout_seconds"),
            u.fail_timeout_seconds,
            DEFAULT_FAIL_TIMEOUT_SECS,
            1,
        );
        let tls = upstream_tls(cx, &base, u.tls.as_ref(), &urls);
        let ok = cx.errs.len() == before;
        out.insert(
            name.clone(),
            ok.then(|| {
                Arc::new(Upstream {
                    name: name.clone(),
                    urls,
                    connect_timeout,
                    response_timeout,
                    max_fails,
                    fail_timeout,
                    tls,
                    http2: u.http2.unwrap_or(false),
                })
            }),
        );
    }
    out
}

/// `upstreams.<name>.tls`: only with an `https://` address; `cert` and `key`
/// together; `server_name` a DNS name or IP address. The files are read when the
/// upstream's client is built ([`crate::tls::client_config`]).
fn upstream_tls(
    cx: &mut Ctx,
    base: &str,
    raw: Option<&raw::RawUpstreamTls>,
    urls: &[Uri],
) -> Option<UpstreamTls> {
    let raw = raw?;
    let base = format!("{base}.tls");
    if !urls.is_empty() && !urls.iter().any(|u| u.scheme_str() == Some("https")) {
        cx.err(
            base.clone(),
            "applies only to https:// URLs; this upstream has none",
        );
    }
    let mut file = |name: &str, v: &Option<String>| match v {
        Some(p) if p.trim().is_empty() => {
            cx.err(format!("{base}.{name}"), "must be a PEM file path");
            None
        }
        Some(p) => Some(PathBuf::from(p)),
        None => None,
    };
    let ca = file("ca", &raw.ca);
    let cert = file("cert", &raw.cert);
    let key = file("key", &raw.key);
    match (&raw.cert, &raw.key) {
        (Some(_), None) => cx.err(format!("{base}.key"), "is required with `cert`"),
        (None, Some(_)) => cx.err(format!("{base}.cert"), "is required with `key`"),
        _ => {}
    }
    let server_name = raw.server_name.as_ref().map(|n| n.trim().to_owned());
    if let Some(n) = &server_name
        && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
    {
        cx.err(
            format!("{base}.server_name"),
            format!("`{n}` is not a DNS name or IP address"),
        );
    }
    Some(UpstreamTls {
        ca,
        cert,
        key,
        server_name,
    })
}

fn routes(
    cx: &mut Ctx,
    raw_routes: Vec<Option<raw::RawRoute>>,
    raw: &RawConfig,
    upstreams: &mut UpstreamSlots,
    t: &Timeouts,
    limits: &Limits,
) -> Vec<Route> {
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, slot) in raw_routes.into_iter().enumerate() {
        let Some(r) = slot else { continue };
        let base = format!("routes[{i}]");
        let name = r.name.unwrap_or_default();
        if let Err(reason) = check_name(&name) {
            cx.err(format!("{base}.name"), reason);
        } else if let Some(first) = names.insert(name.clone(), i) {
            cx.err(
                format!("{base}.name"),
                format!("duplicate route name `{name}` (also routes[{first}])"),
            );
        }
        let host = r.host.map(|h| {
            let h = h.trim().to_ascii_lowercase();
            let valid = !h.is_empty()
                && !h.contains(['@', '*', '/'])
                && h.parse::<http::uri::Authority>()
                    .is_ok_and(|a| a.port().is_none() && a.host() == h);
            if !valid {
                cx.err(
                    format!("{base}.host"),
                    format!("`{h}` is not a host name (no port, scheme, path or wildcard)"),
                );
            }
            h
        });
        let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_owned());
        if let Err(reason) = check_path("path_prefix", &path_prefix) {
            cx.err(format!("{base}.path_prefix"), reason);
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.unwrap_or_default().iter().enumerate() {
            let upper = m.trim().to_ascii_uppercase();
            match METHODS
                .contains(&upper.as_str())
                .then(|| Method::from_bytes(upper.as_bytes()))
            {
                Some(Ok(m)) => {
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
                _ => cx.err(
                    format!("{base}.methods[{j}]"),
                    format!(
                        "`{m}` is not an HTTP method (one of {})",
                        METHODS.join(", ")
                    ),
                ),
            }
        }
        let upstream = route_upstream(cx, &base, &name, r.upstream, raw, upstreams, t);
        let auth = match r.auth.unwrap_or(raw::RawAuth::Required) {
            raw::RawAuth::Required => AuthMode::Required,
            raw::RawAuth::None => AuthMode::None,
        };
        let require = r.require.unwrap_or_default();
        let require_scopes = check_grants(cx, &format!("{base}.require.scopes"), require.scopes);
        let require_permissions = check_grants(
            cx,
            &format!("{base}.require.permissions"),
            require.permissions,
        );
        let permissions_by_method = r.permissions_by_method.unwrap_or(false);
        let mut param = |field: &str, v: Option<String>| {
            v.and_then(|s| match parse_path_param(&s) {
                Ok(p) => Some(p),
                Err(reason) => {
                    cx.err(format!("{base}.{field}"), reason);
                    None
                }
            })
        };
        let project_param = param("project_param", r.project_param);
        let org_param = param("org_param", r.org_param);
        if auth == AuthMode::None {
            let unused = [
                ("require.scopes", !require_scopes.is_empty()),
                ("require.permissions", !require_permissions.is_empty()),
                ("permissions_by_method", permissions_by_method),
                ("project_param", project_param.is_some()),
                ("org_param", org_param.is_some()),
            ];
            for (field, set) in unused {
                if set {
                    cx.err(format!("{base}.{field}"), "has no effect with `auth: none`");
                }
            }
        }
        let max_body_bytes = positive(
            cx,
            &format!("{base}.max_body_bytes"),
            r.max_body_bytes,
            limits.max_body_bytes,
        );
        let Some(upstream) = upstream else { continue };
        out.push(Route {
            name,
            host,
            path_prefix,
            methods,
            upstream,
            auth,
            require_scopes,
            require_permissions,
            permissions_by_method,
            project_param,
            org_param,
            max_body_bytes,
            strip_prefix: r.strip_prefix.unwrap_or(false),
            quota_cost: r.quota_cost.unwrap_or(1),
        });
    }
    out
}

/// A route's `upstream`: an inline URL (becomes an upstream named after the route)
/// or the name of an `upstreams` entry.
fn route_upstream(
    cx: &mut Ctx,
    base: &str,
    route_name: &str,
    v: Option<String>,
    raw: &RawConfig,
    upstreams: &mut UpstreamSlots,
    t: &Timeouts,
) -> Option<Arc<Upstream>> {
    let path = format!("{base}.upstream");
    let Some(v) = v else {
        cx.err(
            path,
            "is required (a URL or the name of an entry under `upstreams`)",
        );
        return None;
    };
    let v = v.trim();
    if v.contains("://") {
        let uri = match upstream_url(v) {
            Ok(u) => u,
            Err(reason) => {
                cx.err(path, reason);
                return None;
            }
        };
        if raw.upstreams.contains_key(route_name) {
            cx.err(
                path,
                format!("route `{route_name}` has an inline URL but `upstreams.{route_name}` also exists; rename one"),
            );
            return None;
        }
        let up = Arc::new(Upstream {
            name: route_name.to_owned(),
            urls: vec![uri],
            connect_timeout: t.upstream_connect,
            response_timeout: t.upstream_response,
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: Duration::from_secs(DEFAULT_FAIL_TIMEOUT_SECS),
            tls: None,
            http2: false,
        });
        if !route_name.is_empty() {
            upstreams.insert(route_name.to_owned(), Some(up.clone()));
        }
        return Some(up);
    }
    match raw.upstreams.get(v) {
        Some(_) => upstreams.get(v).cloned().flatten(),
        None if raw.upstreams_broken => None,
        None => {
            let known: Vec<&str> = raw.upstreams.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no `upstreams` are defined; give a URL such as http://127.0.0.1:3000".to_owned()
            } else {
                format!("known: {}", known.join(", "))
            };
            cx.err(path, format!("unknown upstream `{v}` ({hint})"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn ok(yaml: &str) -> Settings {
        match settings_from_yaml(yaml, &no_env) {
            Ok(s) => s,
            Err(e) => panic!("expected valid config, got:\n{e}"),
        }
    }

    /// Every error as `path: reason`.
    fn errs(yaml: &str) -> Vec<String> {
        match settings_from_yaml(yaml, &no_env) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.path, e.reason))
                    .collect()
            }
        }
    }

    /// The error paths only.
    fn paths(yaml: &str) -> Vec<String> {
        match settings_from_yaml(yaml, &no_env) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(e) => e.0.into_iter().map(|e| e.path).collect(),
        }
    }

    /// The SPEC §5 example, verbatim except for the placeholder hash.
    fn spec_example() -> String {
        r#"
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9091
  api_keys:
    - name: ops
      sha256: "<hex SHA-256 of the admin key>"   # from `patgate admin-key new`
store:
  backend: redis                 # or: embedded
  redis:
    url: redis://127.0.0.1:6379  # Redis Cluster: a seed node's URL (or `urls: [...]`)
    cluster: false
  embedded:
    path: data/patgate.redb
tokens:
  prefix: pat_
  default_expiry: 365d           # or: never
rate_limit:
  mode: local                    # or: redis (one limit shared by all replicas)
  default:                       # per token, unless the token overrides it
    requests: 100
    per_seconds: 1
    burst: 100
client_ip:
  trusted_proxies: [10.0.0.0/8]
routes:
  - name: api
    path_prefix: /api/
    upstream: http://127.0.0.1:3000   # a URL, or the name of an entry under `upstreams`
    require:
      scopes: [documents]
      permissions: [read]
  - name: health
    path_prefix: /health
    upstream: http://127.0.0.1:3000
    auth: none
# optional sections, shown with their key names:
tls:                             # terminate TLS on `listen`
  cert: /etc/patgate/tls.crt     # PEM chain
  key: /etc/patgate/tls.key      # PEM private key
limits:
  max_header_bytes: 16384        # larger request head -> 431
  max_body_bytes: 104857600      # larger body -> 413 (per route override allowed)
timeouts:
  header_read_seconds: 10        # slow request heads are cut off
  shutdown_grace_seconds: 30     # drain deadline on SIGTERM
logging:
  format: json                   # or: pretty
"#
        .replace("<hex SHA-256 of the admin key>", HASH)
    }

    #[test]
    fn spec_example_parses_into_the_expected_settings() {
        let s = ok(&spec_example());
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.admin.listen, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(s.admin.api_keys.len(), 1);
        assert_eq!(s.admin.api_keys[0].name, "ops");
        assert_eq!(hex::encode(s.admin.api_keys[0].sha256), HASH);
        let StoreSettings::Redis(r) = &s.store else {
            panic!("expected redis store, got {:?}", s.store)
        };
        assert_eq!(r.urls, vec!["redis://127.0.0.1:6379".to_owned()]);
        assert!(!r.cluster);
        assert_eq!(s.tokens.prefix, "pat_");
        assert_eq!(
            s.tokens.default_expiry,
            Some(Duration::from_secs(365 * 86_400))
        );
        assert_eq!(s.rate_limit.mode, RateLimitMode::Local);
        assert_eq!(
            s.rate_limit.default,
            Some(RateSpec {
                requests: 100,
                per_seconds: 1,
                burst: 100
            })
        );
        assert_eq!(
            s.client_ip.trusted_proxies,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.routes.len(), 2);
        let api = &s.routes[0];
        assert_eq!(api.name, "api");
        assert_eq!(api.path_prefix, "/api/");
        assert_eq!(api.auth, AuthMode::Required);
        assert_eq!(api.require_scopes, vec!["documents"]);
        assert_eq!(api.require_permissions, vec!["read"]);
        assert_eq!(api.upstream.name, "api");
        assert_eq!(
            api.upstream.urls,
            vec![Uri::from_static("http://127.0.0.1:3000")]
        );
        assert_eq!(api.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(api.max_body_bytes, 104_857_600);
        assert_eq!(s.routes[1].auth, AuthMode::None);
        assert_eq!(
            s.upstreams.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["api", "health"]
        );
        assert_eq!(
            s.tls,
            Some(TlsSettings {
                cert: "/etc/patgate/tls.crt".into(),
                key: "/etc/patgate/tls.key".into()
            })
        );
        assert_eq!(s.limits.max_header_bytes, 16_384);
        assert_eq!(s.timeouts.header_read, Duration::from_secs(10));
        assert_eq!(s.timeouts.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.logging.format, LogFormat::Json);
    }

    #[test]
    fn empty_file_yields_production_defaults() {
        for yaml in ["", "# nothing\n", "{}"] {
            let s = ok(yaml);
            assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
            assert!(s.tls.is_none());
            assert_eq!(s.admin.listen, "127.0.0.1:9091".parse().unwrap());
            assert!(s.admin.api_keys.is_empty());
            assert_eq!(
                s.store,
                StoreSettings::Redis(RedisSettings {
                    urls: vec!["redis://127.0.0.1:6379".into()],
                    cluster: false,
                    sentinel: None,
                    command_timeout: Duration::from_millis(250),
                    connect_timeout: Duration::from_secs(1),
                    key_prefix: "patgate:".into(),
                    audit_max_events: 100_000,
                })
            );
            assert_eq!(
                s.cache,
                CacheSettings {
                    ttl: Duration::from_secs(30),
                    negative_ttl: Duration::from_secs(5),
                    max_staleness: Duration::from_secs(300),
                    max_entries: 100_000,
                }
            );
            assert_eq!(
                s.tokens,
                TokenSettings {
                    prefix: "pat_".into(),
                    foreign_prefixes: vec![],
                    default_expiry: Some(Duration::from_secs(365 * 86_400)),
                    max_expiry: None,
                    accept_foreign: false,
                    creation_limit: 5,
                    max_grace_period: Duration::from_secs(86_400),
                }
            );
            assert_eq!(
                s.rate_limit,
                RateLimitSettings {
                    mode: RateLimitMode::Local,
                    default: Some(RateSpec {
                        requests: 100,
                        per_seconds: 1,
                        burst: 100
                    }),
                    replicas: 1,
                    quota: None,
                }
            );
            assert!(s.client_ip.trusted_proxies.is_empty());
            assert_eq!(
                s.client_ip.signals,
                IpSignals {
                    enabled: true,
                    ipv4_prefix: 24,
                    ipv6_prefix: 64,
                    max_per_token: 32,
                    retention_days: 7,
                    warn_above: 3,
                }
            );
            assert_eq!(s.identity_headers.prefix, "x-auth-");
            assert_eq!(s.identity_headers.user_id, "x-auth-user-id");
            assert_eq!(s.identity_headers.token_id, "x-auth-token-id");
            assert_eq!(s.identity_headers.token_prefix, "x-auth-token-prefix");
            assert_eq!(s.identity_headers.token_type, "x-auth-token-type");
            assert_eq!(s.identity_headers.org_id, "x-auth-org-id");
            assert_eq!(s.identity_headers.project_id, "x-auth-project-id");
            assert_eq!(s.identity_headers.scopes, "x-auth-scopes");
            assert_eq!(s.identity_headers.permissions, "x-auth-permissions");
            assert!(!s.forward_authorization);
            assert_eq!(s.whoami_path, "/_patgate/whoami");
            assert!(s.routes.is_empty());
            assert!(s.upstreams.is_empty());
            assert_eq!(
                s.timeouts,
                Timeouts {
                    header_read: Duration::from_secs(10),
                    shutdown_grace: Duration::from_secs(30),
                    upstream_connect: Duration::from_secs(5),
                    upstream_response: Duration::from_secs(60),
                    idle: Duration::from_secs(60),
                }
            );
            assert_eq!(
                s.limits,
                Limits {
                    max_header_bytes: 16_384,
                    max_body_bytes: 104_857_600,
                    max_connections: 10_000,
                }
            );
            assert_eq!(
                s.logging,
                LoggingSettings {
                    format: LogFormat::Json,
                    level: "info".into(),
                    access_log: true,
                    access_log_sample_rate: 1.0,
                }
            );
        }
    }

    #[test]
    fn embedded_store_defaults_to_data_dir() {
        let s = ok("store:\n  backend: embedded\n");
        assert_eq!(
            s.store,
            StoreSettings::Embedded(EmbeddedSettings {
                path: "data/patgate.redb".into(),
                audit_max_events: 100_000,
            })
        );
    }

    #[test]
    fn redis_sentinel_takes_master_name_and_sentinel_urls() {
        let s = ok(r#"
store:
  redis:
    sentinel:
      master_name: mymaster
      urls: ["redis://s1:26379", "redis://s2:26379"]
      master_password: hunter2
      db: 3
"#);
        let StoreSettings::Redis(r) = s.store else {
            panic!("redis expected")
        };
        assert!(r.urls.is_empty(), "no default URL beside the sentinels");
        let sn = r.sentinel.expect("sentinel settings");
        assert_eq!(sn.master_name, "mymaster");
        assert_eq!(sn.urls.len(), 2);
        assert_eq!(sn.master_password.as_deref(), Some("hunter2"));
        assert_eq!(sn.db, 3);
        assert!(
            !format!("{sn:?}").contains("hunter2"),
            "Debug hides the password"
        );
    }

    #[test]
    fn redis_cluster_takes_seed_urls() {
        let s = ok(r#"
store:
  redis:
    urls: ["redis://a:7000", "redis://:secret@b:7001/0"]
    cluster: true
    command_timeout_ms: 100
    key_prefix: "gw:"
"#);
        let StoreSettings::Redis(r) = s.store else {
            panic!("redis expected")
        };
        assert_eq!(r.urls.len(), 2);
        assert!(r.cluster);
        assert_eq!(r.command_timeout, Duration::from_millis(100));
        assert_eq!(r.key_prefix, "gw:");
    }

    #[test]
    fn rate_limit_default_absent_null_and_partial() {
        let s = ok("rate_limit:\n  mode: local\n");
        assert_eq!(
            s.rate_limit.default,
            Some(RateSpec {
                requests: 100,
                per_seconds: 1,
                burst: 100
            })
        );
        let s = ok("rate_limit:\n  default: null\n");
        assert_eq!(s.rate_limit.default, None);
        let s = ok("rate_limit:\n  default: {requests: 20, per_seconds: 60}\n");
        assert_eq!(
            s.rate_limit.default,
            Some(RateSpec {
                requests: 20,
                per_seconds: 60,
                burst: 20
            })
        );
        let s = ok("store: {backend: redis}\nrate_limit: {mode: redis, replicas: 3}\n");
        assert_eq!(s.rate_limit.mode, RateLimitMode::Redis);
        assert_eq!(s.rate_limit.replicas, 3);
    }

    #[test]
    fn named_upstreams_are_shared_by_routes() {
        let s = ok(r#"
timeouts: {upstream_connect_seconds: 2}
upstreams:
  billing:
    urls: [http://10.0.0.1:8000, "https://billing.internal/base"]
    response_timeout_ms: 1500
routes:
  - {name: a, path_prefix: /a, upstream: billing, methods: [get, POST, GET]}
  - {name: b, path_prefix: /b, upstream: billing, host: API.Example.com, strip_prefix: true}
"#);
        let up = &s.upstreams["billing"];
        assert_eq!(up.urls.len(), 2);
        assert_eq!(up.connect_timeout, Duration::from_secs(2));
        assert_eq!(up.response_timeout, Duration::from_millis(1500));
        assert!(Arc::ptr_eq(&s.routes[0].upstream, &s.routes[1].upstream));
        assert_eq!(s.routes[0].methods, vec![Method::GET, Method::POST]);
        assert_eq!(s.routes[1].host.as_deref(), Some("api.example.com"));
        assert!(s.routes[1].strip_prefix);
        assert_eq!(s.upstreams.len(), 1);
    }

    #[test]
    fn upstream_tls_and_http2_settings_are_read_and_checked() {
        let s = ok(r#"
upstreams:
  secure:
    url: https://10.0.0.1:8443
    http2: "true"
    tls: {ca: /ca.pem, cert: /c.pem, key: /k.pem, server_name: api.internal}
  plain: {url: http://10.0.0.3:8000}
admin: {tls: {cert: /a.crt, key: /a.key}}
routes:
  - {name: a, path_prefix: /a, upstream: secure}
  - {name: b, path_prefix: /b, upstream: plain}
"#);
        let secure = &s.upstreams["secure"];
        assert!(secure.http2);
        assert_eq!(
            secure.tls,
            Some(UpstreamTls {
                ca: Some("/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
                server_name: Some("api.internal".into()),
            })
        );
        assert!(!s.upstreams["plain"].http2);
        assert_eq!(s.upstreams["plain"].tls, None);
        assert_eq!(
            s.admin.tls,
            Some(TlsSettings {
                cert: "/a.crt".into(),
                key: "/a.key".into()
            })
        );
        let cases: &[(&str, &str)] = &[
            (
                "upstreams: {b: {url: \"https://h\", tls: {cert: /c.pem}}}\n",
                "upstreams.b.tls.key",
            ),
            (
                "upstreams: {b: {url: \"https://h\", tls: {key: /k.pem}}}\n",
                "upstreams.b.tls.cert",
            ),
            (
                "upstreams: {b: {url: \"https://h\", tls: {ca: \"\"}}}\n",
                "upstreams.b.tls.ca",
            ),
            (
                "upstreams: {b: {url: \"https://h\", tls: {server_name: \"a b\"}}}\n",
                "upstreams.b.tls.server_name",
            ),
            (
                "upstreams: {b: {url: \"http://h\", tls: {ca: /ca.pem}}}\n",
                "upstreams.b.tls",
            ),
            (
                "upstreams: {b: {url: \"https://h\", tls: {insecure_skip_verify: true}}}\n",
                "upstreams.b.tls.insecure_skip_verify",
            ),
            (
                "upstreams: {b: {url: \"http://h\", http2: maybe}}\n",
                "upstreams.b.http2",
            ),
            ("admin: {tls: {cert: /a.crt}}\n", "admin.tls.key"),
        ];
        for (yaml, path) in cases {
            assert_eq!(
                paths(yaml),
                vec![path.to_string()],
                "for {yaml:?}: {:?}",
                errs(yaml)
            );
        }
    }

    #[test]
    fn upstream_passive_health_settings_default_and_are_checked() {
        let s = ok(r#"
upstreams:
  tuned: {urls: [http://10.0.0.1:8000, http://10.0.0.2:8000], max_fails: 5, fail_timeout_seconds: "30"}
  plain: {url: http://10.0.0.3:8000}
routes:
  - {name: a, path_prefix: /a, upstream: tuned}
  - {name: b, path_prefix: /b, upstream: plain}
  - {name: c, path_prefix: /c, upstream: http://10.0.0.4:8000}
"#);
        assert_eq!(s.upstreams["tuned"].max_fails, 5);
        assert_eq!(s.upstreams["tuned"].fail_timeout, Duration::from_secs(30));
        for name in ["plain", "c"] {
            assert_eq!(s.upstreams[name].max_fails, 3, "{name}");
            assert_eq!(
                s.upstreams[name].fail_timeout,
                Duration::from_secs(10),
                "{name}"
            );
        }
        assert_eq!(
            errs(
                r#"
upstreams:
  app: {url: http://10.0.0.1:8000, max_fails: 0, fail_timeout_seconds: 0}
routes:
  - {name: a, path_prefix: /a, upstream: app}
"#
            ),
            vec![
                "upstreams.app.max_fails: must be at least 1",
                "upstreams.app.fail_timeout_seconds: must be at least 1",
            ]
        );
        assert_eq!(
            paths("upstreams:\n  app: {url: http://10.0.0.1:8000, max_fails: -1}\n"),
            vec!["upstreams.app.max_fails"]
        );
    }

    #[test]
    fn route_policy_fields() {
        let s = ok(r#"
limits: {max_body_bytes: 1000}
routes:
  - name: projects
    path_prefix: /v1/projects/
    upstream: http://127.0.0.1:3000
    permissions_by_method: true
    project_param: /v1/projects/{project}/...
    org_param: orgs
    max_body_bytes: 10
  - {name: other, path_prefix: /, upstream: http://127.0.0.1:3000}
"#);
        let r = &s.routes[0];
        assert!(r.permissions_by_method);
        assert_eq!(
            r.project_param,
            Some(PathParam::Template {
                segments: vec![Some("v1".into()), Some("projects".into()), None]
            })
        );
        assert_eq!(r.org_param, Some(PathParam::After("orgs".into())));
        assert_eq!(r.max_body_bytes, 10);
        assert_eq!(s.routes[1].max_body_bytes, 1000);
    }

    #[test]
    fn path_param_syntax() {
        assert_eq!(
            parse_path_param("/v1/{org}/x"),
            Ok(PathParam::Template {
                segments: vec![Some("v1".into()), None, Some("x".into())]
            })
        );
        assert_eq!(
            parse_path_param("projects"),
            Ok(PathParam::After("projects".into()))
        );
        for bad in [
            "",
            "a/b",
            "v1/{p}",
            "/v1/{a}/{b}",
            "/v1/x{p}",
            "/v1//{p}",
            "/v1/{}",
            "/v1",
        ] {
            assert!(parse_path_param(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s);
        assert_eq!(d("365d"), Ok(Some(Duration::from_secs(365 * 86_400))));
        assert_eq!(d("90d"), Ok(Some(Duration::from_secs(90 * 86_400))));
        assert_eq!(d("12h"), Ok(Some(Duration::from_secs(12 * 3600))));
        assert_eq!(d("30m"), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(d("45s"), Ok(Some(Duration::from_secs(45))));
        assert_eq!(d("2w"), Ok(Some(Duration::from_secs(14 * 86_400))));
        assert_eq!(d("never"), Ok(None));
        for bad in [
            "",
            "d",
            "10",
            "1.5d",
            "-1d",
            "0d",
            "10y",
            "1d2h",
            "99999999999999999999d",
            "36501d",
        ] {
            assert!(d(bad).is_err(), "{bad:?} should be rejected");
        }
        let s = ok("tokens: {default_expiry: never}\n");
        assert_eq!(s.tokens.default_expiry, None);
        let s = ok("tokens: {default_expiry: 30d, max_expiry: 90d}\n");
        assert_eq!(s.tokens.max_expiry, Some(Duration::from_secs(90 * 86_400)));
    }

    #[test]
    fn log_filters_with_span_field_regexes_are_refused() {
        // From the config fuzzer: EnvFilter compiled this field value into a DFA
        // for seconds. Plain directives still work.
        let e = errs("logging: {level: \"a[b{c=.*..........................x}]\"}\n");
        assert_eq!(
            e,
            [
                "logging.level: span field filters (`{…}`) are not accepted here; use RUST_LOG for them"
            ]
        );
        assert_eq!(
            ok("logging: {level: \"warn,patgate=debug,hyper[conn]=trace\"}\n")
                .logging
                .level,
            "warn,patgate=debug,hyper[conn]=trace"
        );
    }

    #[test]
    fn webhooks_endpoints_events_and_policy_are_read() {
        let s = ok(r#"
webhooks:
  endpoints:
    - name: ops
      url: https://hooks.example.com/patgate
      secret: whsec_0123456789abcdef
      events: [token.revoked, owner.disabled, token.revoked]
    - url: http://10.0.0.5:8000/in
      secret: "0123456789abcdef"
  expiring_days: 3
  max_attempts: "5"
  retry_initial_seconds: 2
  retry_max_seconds: 60
"#);
        let w = &s.webhooks;
        assert_eq!(w.endpoints.len(), 2);
        assert_eq!(w.endpoints[0].name, "ops");
        assert_eq!(
            w.endpoints[0].events,
            [WebhookEvent::TokenRevoked, WebhookEvent::OwnerDisabled]
        );
        // No name: the URL's origin names it (a path may be a credential); no
        // events: every event.
        assert_eq!(w.endpoints[1].name, "http://10.0.0.5:8000");
        assert_eq!(w.endpoints[1].events, WebhookEvent::ALL);
        assert_eq!((w.expiring_days, w.max_attempts), (3, 5));
        assert_eq!(w.retry_initial, Duration::from_secs(2));
        assert_eq!(w.retry_max, Duration::from_secs(60));
        assert_eq!(w.timeout, Duration::from_secs(10));
        assert_eq!(
            w.subscribed() & WebhookEvent::TokenNewIp.bit(),
            WebhookEvent::TokenNewIp.bit()
        );
        // The secret is never printed.
        assert!(!format!("{w:?}").contains("whsec_"));
        // Absent section: no endpoints, nothing subscribed.
        assert_eq!(ok("").webhooks.subscribed(), 0);
    }

    #[test]
    fn webhook_problems_are_reported_with_their_paths() {
        let yaml = r#"
webhooks:
  endpoints:
    - name: a
      url: ftp://x
      secret: short
      events: [token.created, token.exploded]
    - name: a
      secret: "0123456789abcdef"
      events: []
  retry_initial_seconds: 100
  retry_max_seconds: 10
  max_attempts: 0
"#;
        // An unknown key fails the section as a whole (reported alone).
        let e = errs(&format!("{yaml}  colour: blue\n"));
        assert!(
            e.iter()
                .any(|l| l.starts_with("webhooks.colour: unknown field")),
            "{e:?}"
        );
        let e = errs(yaml);
        let has = |p: &str| e.iter().any(|l| l.starts_with(p));
        for p in [
            "webhooks.endpoints[0].url: must be an http:// or https:// URL",
            "webhooks.endpoints[0].secret: must be at least 16 characters",
            "webhooks.endpoints[0].events[1]: unknown event `token.exploded`",
            "webhooks.endpoints[1].url: is required",
            "webhooks.endpoints[1].name: duplicate endpoint `a`",
            "webhooks.endpoints[1].events: must not be empty",
            "webhooks.retry_max_seconds: must be at least webhooks.retry_initial_seconds",
            "webhooks.max_attempts: must be at least 1",
        ] {
            assert!(has(p), "missing {p:?} in {e:#?}");
        }
    }

    #[test]
    fn identity_headers_follow_a_custom_prefix() {
        let s = ok("identity_headers:\n  prefix: X-Gw-\n  user_id: X-GW-Owner\n");
        assert_eq!(s.identity_headers.prefix, "x-gw-");
        assert_eq!(s.identity_headers.user_id, "x-gw-owner");
        assert_eq!(s.identity_headers.scopes, "x-gw-scopes");
    }

    #[test]
    fn env_vars_expand_into_strings_numbers_and_booleans() {
        let env = |name: &str| match name {
            "SHA" => Some(HASH.to_owned()),
            "RATE" => Some("7".to_owned()),
            "CLUSTER" => Some("true".to_owned()),
            "KEYS" => Some(format!(
                "ci:{}, {}",
                HASH.replace('9', "7"),
                HASH.replace('9', "8")
            )),
            _ => None,
        };
        let s = settings_from_yaml(
            r#"
admin:
  api_keys: [{name: ops, sha256: "${SHA}"}]
  api_keys_env: KEYS
store: {redis: {urls: ["redis://${HOST:-a}:1", "redis://b:2"], cluster: "${CLUSTER}"}}
rate_limit: {default: {requests: "${RATE}"}}
whoami_path: /$${literal}
"#,
            &env,
        )
        .unwrap();
        assert_eq!(s.admin.api_keys.len(), 3);
        assert_eq!(s.admin.api_keys[1].name, "ci");
        assert_eq!(s.admin.api_keys[2].name, "env-2");
        assert_eq!(s.rate_limit.default.map(|d| d.requests), Some(7));
        let StoreSettings::Redis(r) = s.store else {
            panic!("redis expected")
        };
        assert!(r.cluster);
        assert_eq!(r.urls[0], "redis://a:1");
        assert_eq!(s.whoami_path, "/${literal}");
    }

    #[test]
    fn missing_env_var_names_the_field_and_the_variable() {
        assert_eq!(
            errs("admin:\n  api_keys:\n    - {name: ops, sha256: \"${PATGATE_TEST_UNSET_SHA}\"}\n"),
            vec![
                "admin.api_keys[0].sha256: environment variable PATGATE_TEST_UNSET_SHA is not set"
            ]
        );
    }

    #[test]
    fn unset_api_keys_env_adds_no_keys() {
        let s = ok("admin: {api_keys_env: PATGATE_TEST_UNSET_KEYS}\n");
        assert!(s.admin.api_keys.is_empty());
    }

    #[test]
    fn yaml_syntax_error_is_located() {
        let e = errs("listen: [\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("line 2 column 1: invalid YAML"), "{e:?}");
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        assert_eq!(paths("tokens:\n  prefx: pat_\n"), vec!["tokens.prefx"]);
        assert_eq!(paths("listn: 1\n"), vec!["listn"]);
        assert_eq!(
            paths("store:\n  redis:\n    uri: x\n"),
            vec!["store.redis.uri"]
        );
        assert_eq!(
            paths("routes:\n  - {name: a, upstream: http://h, require: {scope: [x]}}\n"),
            vec!["routes[0].require.scope"]
        );
        assert_eq!(
            paths("upstreams:\n  b: {url: http://h, timeout: 1}\n"),
            vec!["upstreams.b.timeout"]
        );
        let e = errs("tokens:\n  prefx: pat_\n");
        assert!(
            e[0].starts_with("tokens.prefx: unknown field; expected one of `prefix`"),
            "{e:?}"
        );
    }

    #[test]
    fn type_errors_are_reported_with_their_path() {
        assert_eq!(
            paths("cache: {ttl_seconds: abc}\n"),
            vec!["cache.ttl_seconds"]
        );
        assert_eq!(
            paths("cache: {ttl_seconds: -1}\n"),
            vec!["cache.ttl_seconds"]
        );
        assert_eq!(
            paths("tokens: {creation_limit: 5000000000}\n"),
            vec!["tokens.creation_limit"]
        );
        assert_eq!(paths("store: {backend: mongo}\n"), vec!["store.backend"]);
        assert_eq!(paths("routes: {a: 1}\n"), vec!["routes"]);
        assert_eq!(
            paths("routes:\n  - {name: a, upstream: http://h, methods: GET}\n"),
            vec!["routes[0].methods"]
        );
        assert_eq!(
            paths("forward_authorization: maybe\n"),
            vec!["forward_authorization"]
        );
        assert_eq!(paths("logging: {format: xml}\n"), vec!["logging.format"]);
        assert_eq!(paths("- 1\n"), vec!["<root>"]);
    }

    #[test]
    fn semantic_errors_carry_their_field_path() {
        let cases: &[(&str, &str)] = &[
            ("listen: localhost:80\n", "listen"),
            (
                "logging: {access_log_sample_rate: 1.5}\n",
                "logging.access_log_sample_rate",
            ),
            ("admin: {listen: nope}\n", "admin.listen"),
            (
                "listen: 127.0.0.1:1\nadmin: {listen: 127.0.0.1:1}\n",
                "admin.listen",
            ),
            (
                "admin: {api_keys: [{name: a, sha256: abc}]}\n",
                "admin.api_keys[0].sha256",
            ),
            (
                "admin: {api_keys: [{sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}]}\n",
                "admin.api_keys[0].name",
            ),
            ("admin: {api_keys_env: 1BAD}\n", "admin.api_keys_env"),
            ("tls: {cert: a.pem}\n", "tls.key"),
            ("store: {redis: {url: http://x}}\n", "store.redis.url"),
            (
                "store: {redis: {urls: [redis://a, redis://b]}}\n",
                "store.redis.urls",
            ),
            (
                "store: {redis: {url: redis://a, urls: [redis://b]}}\n",
                "store.redis.urls",
            ),
            (
                "store: {redis: {key_prefix: \"{x}\"}}\n",
                "store.redis.key_prefix",
            ),
            (
                "store: {redis: {command_timeout_ms: 0}}\n",
                "store.redis.command_timeout_ms",
            ),
            (
                "store: {redis: {sentinel: {urls: [redis://s:26379]}}}\n",
                "store.redis.sentinel.master_name",
            ),
            (
                "store: {redis: {sentinel: {master_name: m}}}\n",
                "store.redis.sentinel.urls",
            ),
            (
                "store: {redis: {sentinel: {master_name: m, urls: [http://s]}}}\n",
                "store.redis.sentinel.urls[0]",
            ),
            (
                "store: {redis: {url: redis://a, sentinel: {master_name: m, urls: [redis://s]}}}\n",
                "store.redis.sentinel",
            ),
            (
                "store: {redis: {cluster: true, sentinel: {master_name: m, urls: [redis://s]}}}\n",
                "store.redis.sentinel",
            ),
            ("store: {embedded: {path: \"\"}}\n", "store.embedded.path"),
            ("cache: {ttl_seconds: 0}\n", "cache.ttl_seconds"),
            ("cache: {max_entries: 0}\n", "cache.max_entries"),
            (
                "rate_limit: {quota: {period: day}}\n",
                "rate_limit.quota.requests",
            ),
            (
                "rate_limit: {quota: {requests: 5, period: week}}\n",
                "rate_limit.quota.period",
            ),
            (
                "rate_limit: {quota: {requests: 5, per: org}}\n",
                "rate_limit.quota.per",
            ),
            (
                "identity_headers: {assertion: {keys: []}}\n",
                "identity_headers.assertion.keys",
            ),
            (
                "identity_headers: {assertion: {ttl_seconds: 7200, keys: [{id: a, file: /k}]}}\n",
                "identity_headers.assertion.ttl_seconds",
            ),
            (
                "identity_headers: {assertion: {keys: [{id: a, file: /k}, {id: a, file: /j}]}}\n",
                "identity_headers.assertion.keys[1].id",
            ),
            (
                "identity_headers: {assertion: {keys: [{id: a}]}}\n",
                "identity_headers.assertion.keys[0].file",
            ),
            (
                "identity_headers: {assertion: {header: Assertion, keys: [{id: a, file: /k}]}}\n",
                "identity_headers.assertion.header",
            ),
            ("tokens: {prefix: Pat_}\n", "tokens.prefix"),
            ("tokens: {prefix: pat}\n", "tokens.prefix"),
            (
                "tokens: {foreign_prefixes: [pat_]}\n",
                "tokens.foreign_prefixes[0]",
            ),
            (
                "tokens: {foreign_prefixes: [ghp_, ghp_]}\n",
                "tokens.foreign_prefixes[1]",
            ),
            ("tokens: {default_expiry: 1y}\n", "tokens.default_expiry"),
            ("tokens: {max_expiry: soon}\n", "tokens.max_expiry"),
            (
                "tokens: {default_expiry: 365d, max_expiry: 90d}\n",
                "tokens.default_expiry",
            ),
            (
                "tokens: {default_expiry: never, max_expiry: 90d}\n",
                "tokens.default_expiry",
            ),
            (
                "rate_limit: {default: {requests: 0}}\n",
                "rate_limit.default.requests",
            ),
            (
                "rate_limit: {default: {per_seconds: 1}}\n",
                "rate_limit.default.requests",
            ),
            (
                "rate_limit: {default: {requests: 1, per_seconds: 0}}\n",
                "rate_limit.default.per_seconds",
            ),
            (
                "rate_limit: {default: {requests: 1, burst: 0}}\n",
                "rate_limit.default.burst",
            ),
            ("rate_limit: {replicas: 0}\n", "rate_limit.replicas"),
            (
                "store: {backend: embedded}\nrate_limit: {mode: redis}\n",
                "rate_limit.mode",
            ),
            (
                "client_ip: {trusted_proxies: [10.0.0.0/33]}\n",
                "client_ip.trusted_proxies[0]",
            ),
            (
                "client_ip: {trusted_proxies: [10.0.0.1, nope]}\n",
                "client_ip.trusted_proxies[1]",
            ),
            (
                "client_ip: {signals: {ipv4_prefix: 33}}\n",
                "client_ip.signals.ipv4_prefix",
            ),
            (
                "client_ip: {signals: {ipv4_prefix: 0}}\n",
                "client_ip.signals.ipv4_prefix",
            ),
            (
                "client_ip: {signals: {ipv6_prefix: 129}}\n",
                "client_ip.signals.ipv6_prefix",
            ),
            (
                "client_ip: {signals: {max_per_token: 0}}\n",
                "client_ip.signals.max_per_token",
            ),
            (
                "client_ip: {signals: {max_per_token: 1001}}\n",
                "client_ip.signals.max_per_token",
            ),
            (
                "client_ip: {signals: {retention_days: 0}}\n",
                "client_ip.signals.retention_days",
            ),
            (
                "client_ip: {signals: {retention_days: 91}}\n",
                "client_ip.signals.retention_days",
            ),
            (
                "client_ip: {signals: {warn_above: 0}}\n",
                "client_ip.signals.warn_above",
            ),
            (
                "client_ip: {signals: {max_per_token: 4, warn_above: 4}}\n",
                "client_ip.signals.warn_above",
            ),
            (
                "identity_headers: {prefix: \"\"}\n",
                "identity_headers.prefix",
            ),
            ("identity_headers: {prefix: a}\n", "identity_headers.prefix"),
            (
                "identity_headers: {user_id: X-User}\n",
                "identity_headers.user_id",
            ),
            (
                "identity_headers: {org_id: \"X-Auth-Bad Name\"}\n",
                "identity_headers.org_id",
            ),
            (
                "identity_headers: {scopes: X-Auth-Token-Id}\n",
                "identity_headers.scopes",
            ),
            ("whoami_path: whoami\n", "whoami_path"),
            (
                "timeouts: {header_read_seconds: 0}\n",
                "timeouts.header_read_seconds",
            ),
            ("timeouts: {idle_seconds: 0}\n", "timeouts.idle_seconds"),
            (
                "timeouts: {idle_seconds: 99999999999}\n",
                "timeouts.idle_seconds",
            ),
            (
                "cache: {max_staleness_seconds: 99999999999}\n",
                "cache.max_staleness_seconds",
            ),
            (
                "tokens: {max_grace_period_seconds: 99999999999}\n",
                "tokens.max_grace_period_seconds",
            ),
            (
                "store: {redis: {connect_timeout_ms: 99999999999999}}\n",
                "store.redis.connect_timeout_ms",
            ),
            (
                "limits: {max_header_bytes: 100}\n",
                "limits.max_header_bytes",
            ),
            ("limits: {max_body_bytes: 0}\n", "limits.max_body_bytes"),
            ("limits: {max_connections: 0}\n", "limits.max_connections"),
            ("logging: {level: \"info,[\"}\n", "logging.level"),
            ("upstreams: {b: {}}\n", "upstreams.b.url"),
            ("upstreams: {b: null}\n", "upstreams.b"),
            ("upstreams: {b: {url: ftp://h}}\n", "upstreams.b.url"),
            (
                "upstreams: {b: {url: \"http://h/?q=1\"}}\n",
                "upstreams.b.url",
            ),
            (
                "upstreams: {b: {urls: [http://h, \"http://h#x\"]}}\n",
                "upstreams.b.urls[1]",
            ),
            ("upstreams: {b: {urls: []}}\n", "upstreams.b.urls"),
            ("upstreams: {\"b c\": {url: http://h}}\n", "upstreams.b c"),
            (
                "upstreams: {b: {url: http://h, response_timeout_ms: 0}}\n",
                "upstreams.b.response_timeout_ms",
            ),
            ("upstreams: [1]\n", "upstreams"),
        ];
        for (yaml, path) in cases {
            assert_eq!(
                paths(yaml),
                vec![path.to_string()],
                "for {yaml:?}: {:?}",
                errs(yaml)
            );
        }
    }

    #[test]
    fn route_errors_carry_their_index() {
        let base = "upstreams: {b: {url: http://h}}\nroutes:\n  - {name: ok, upstream: b}\n";
        let cases: &[(&str, &str)] = &[
            ("  - {upstream: b}\n", "routes[1].name"),
            ("  - {name: ok, upstream: b}\n", "routes[1].name"),
            ("  - {name: \"a b\", upstream: b}\n", "routes[1].name"),
            ("  - {name: x}\n", "routes[1].upstream"),
            ("  - {name: x, upstream: billing}\n", "routes[1].upstream"),
            (
                "  - {name: x, upstream: \"http://\"}\n",
                "routes[1].upstream",
            ),
            ("  - {name: b, upstream: http://h}\n", "routes[1].upstream"),
            (
                "  - {name: x, upstream: b, path_prefix: api}\n",
                "routes[1].path_prefix",
            ),
            (
                "  - {name: x, upstream: b, methods: [GET, GTE]}\n",
                "routes[1].methods[1]",
            ),
            (
                "  - {name: x, upstream: b, host: \"a.com:443\"}\n",
                "routes[1].host",
            ),
            (
                "  - {name: x, upstream: b, auth: maybe}\n",
                "routes[1].auth",
            ),
            (
                "  - {name: x, upstream: b, require: {scopes: [\"a,b\"]}}\n",
                "routes[1].require.scopes[0]",
            ),
            (
                "  - {name: x, upstream: b, require: {permissions: [\"\"]}}\n",
                "routes[1].require.permissions[0]",
            ),
            (
                "  - {name: x, upstream: b, project_param: \"/v1/{a}/{b}\"}\n",
                "routes[1].project_param",
            ),
            (
                "  - {name: x, upstream: b, org_param: \"a/b\"}\n",
                "routes[1].org_param",
            ),
            (
                "  - {name: x, upstream: b, auth: none, require: {scopes: [a]}}\n",
                "routes[1].require.scopes",
            ),
            (
                "  - {name: x, upstream: b, auth: none, project_param: p}\n",
                "routes[1].project_param",
            ),
            (
                "  - {name: x, upstream: b, max_body_bytes: 0}\n",
                "routes[1].max_body_bytes",
            ),
            (
                "  - {name: x, upstream: b, strip_prefix: 1}\n",
                "routes[1].strip_prefix",
            ),
        ];
        for (route, path) in cases {
            let yaml = format!("{base}{route}");
            assert_eq!(
                paths(&yaml),
                vec![path.to_string()],
                "for {route:?}: {:?}",
                errs(&yaml)
            );
        }
    }

    #[test]
    fn ip_signals_are_read_and_checked() {
        let s = ok(r#"
client_ip:
  trusted_proxies: [127.0.0.1]
  signals:
    enabled: "false"
    ipv4_prefix: 32
    ipv6_prefix: 128
    max_per_token: 8
    retention_days: 30
    warn_above: 5
"#);
        assert_eq!(
            s.client_ip.signals,
            IpSignals {
                enabled: false,
                ipv4_prefix: 32,
                ipv6_prefix: 128,
                max_per_token: 8,
                retention_days: 30,
                warn_above: 5,
            }
        );
        assert_eq!(
            s.client_ip.signals.retention(),
            Duration::from_secs(30 * 86_400)
        );
        // An unset warn_above stays below a small max_per_token.
        let s = ok("client_ip: {signals: {max_per_token: 2}}\n");
        assert_eq!(s.client_ip.signals.warn_above, 1);
        // Unknown keys and wrong types name their field; every problem at once.
        assert_eq!(
            paths("client_ip: {signals: {ipv4: 24}}\n"),
            vec!["client_ip.signals.ipv4"]
        );
        assert_eq!(
            paths("client_ip: {signals: {enabled: maybe}}\n"),
            vec!["client_ip.signals.enabled"]
        );
        assert_eq!(
            paths("client_ip: {signals: {ipv6_prefix: 300}}\n"),
            vec!["client_ip.signals.ipv6_prefix"]
        );
        assert_eq!(
            paths(
                "client_ip: {trusted_proxies: [nope], signals: {ipv4_prefix: 40, retention_days: 0}}\n"
            ),
            vec![
                "client_ip.trusted_proxies[0]",
                "client_ip.signals.ipv4_prefix",
                "client_ip.signals.retention_days",
            ]
        );
        let e = errs("client_ip: {signals: {ipv4_prefix: 33}}\n");
        assert_eq!(e, vec!["client_ip.signals.ipv4_prefix: must be at most 32"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = paths(
            r#"
listen: nowhere
tokens: {prefix: BAD, prefx: 1}
cache: {ttl_seconds: 0}
routes:
  - {name: a, upstream: missing, path_prefix: x}
  - {name: a, upstream: "http://h", methds: [GET]}
  - {name: a, upstream: "http://h"}
logging: {level: "info,["}
"#,
        );
        assert_eq!(
            e,
            vec![
                "tokens.prefx",
                "routes[1].methds",
                "listen",
                "cache.ttl_seconds",
                "routes[0].path_prefix",
                "routes[0].upstream",
                "routes[2].name",
                "logging.level",
            ]
        );
    }

    #[test]
    fn a_broken_upstream_does_not_also_report_unknown_upstream() {
        let e =
            paths("upstreams: {b: {url: \"http://h\", x: 2}}\nroutes: [{name: a, upstream: b}]\n");
        assert_eq!(e, vec!["upstreams.b.x"]);
    }

    #[test]
    fn redis_url_errors_never_echo_the_url() {
        let e = errs("store: {redis: {url: \"http://user:hunter2@h\"}}\n");
        assert!(!e[0].contains("hunter2"), "{e:?}");
    }

    #[test]
    fn error_lines_use_the_documented_format() {
        let Err(e) = settings_from_yaml("whoami_path: x\n", &no_env) else {
            panic!()
        };
        assert_eq!(
            e.to_string(),
            "config error: whoami_path: whoami_path must start with `/`"
        );
    }
}
