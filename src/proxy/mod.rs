//! The data plane: one request's life cycle, as named phases (pingora style).
//!
//! 1. `request_filter` — strip client identity headers (every route), normalise the
//!    path, resolve the client IP.
//! 2. whoami — `GET <whoami_path>` is answered by patgate for a valid token.
//! 3. `route` — host / longest prefix / method; none → 404 `No route`.
//! 4. `authenticate` — the [`crate::auth`] pipeline for `auth: required` routes.
//! 5. `upstream_request_filter` — hop-by-hop removal, `Authorization` removal,
//!    `X-Forwarded-*`, identity injection, body limit.
//! 6. `forward` — stream to the upstream via its pooled client.
//! 7. `response_filter` — hop-by-hop removal, `RateLimit-*` headers.
//! 8. `logging` — one access-log line (never a secret), usage counting.
//!
//! Any failure in 2-6 is a [`GatewayError`] turned into a response in one place.

pub mod headers;
pub mod path;
pub mod router;
pub mod upstream;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::auth::{self, Identity, RequestFacts};
use crate::body::{self, Body};
use crate::cache::TokenCache;
use crate::client_ip;
use crate::config::RateLimitMode;
use crate::config::{AuthMode, ConfigErrors, Settings, WebhookEvent};
use crate::error::{GatewayError, json_response};
use crate::metrics::{RequestLabels, RouteLabels, metrics};
use crate::ratelimit::{GcraBackend, GlobalLimiter, RateLimiter};
use crate::usage::UsageRecorder;
use crate::webhooks::Webhooks;
use router::{RouteEntry, Router};
use upstream::UpstreamPool;

/// Everything derived from one config generation (swapped whole on reload).
pub struct Runtime {
    /// The settings.
    pub settings: Arc<Settings>,
    /// The routing table.
    pub router: Router,
    /// Rate limiter (per replica, or global in Redis).
    pub limiters: RateLimiter,
    /// Signs `identity_headers.assertion`, when configured.
    pub assertion: Option<crate::assertion::Signer>,
    /// The route label of requests no route matched (`""`).
    unrouted: Arc<str>,
    /// The route label of whoami requests.
    whoami: Arc<str>,
    /// The route label of JWKS requests.
    jwks: Arc<str>,
}

impl Runtime {
    /// Builds routes, pools and the rate limiter from `settings`; `gcra` is where
    /// `rate_limit.mode: redis` keeps its buckets (the Redis store). Reads the
    /// upstreams' TLS files (blocking); fails with every unusable one.
    pub fn new(
        settings: Arc<Settings>,
        gcra: Option<&Arc<dyn GcraBackend>>,
    ) -> Result<Self, ConfigErrors> {
        let mut pools: BTreeMap<String, Arc<UpstreamPool>> = BTreeMap::new();
        let mut errors = Vec::new();
        let mut entries = Vec::with_capacity(settings.routes.len());
        for route in &settings.routes {
            let name = &route.upstream.name;
            let pool = match pools.get(name) {
                Some(p) => p.clone(),
                None => {
                    match UpstreamPool::new((*route.upstream).clone(), settings.timeouts.idle) {
                        Ok(p) => {
                            let p = Arc::new(p);
                            pools.insert(name.clone(), p.clone());
                            p
                        }
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
            };
            entries.push(RouteEntry {
                route: route.clone(),
                name: Arc::from(route.name.as_str()),
                pool,
            });
        }
        let assertion = match &settings.identity_headers.assertion {
            Some(a) => match crate::assertion::Signer::new(a) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Runtime {
            assertion,
            router: Router::new(entries),
            unrouted: Arc::from(""),
            whoami: Arc::from("whoami"),
            jwks: Arc::from("jwks"),
            limiters: rate_limiter(&settings, gcra),
            settings,
        })
    }
}

/// The limiter `settings` ask for. Global limits need a backend; without one (a
/// gateway built on a store without Redis) limits stay local, with a warning.
fn rate_limiter(settings: &Settings, gcra: Option<&Arc<dyn GcraBackend>>) -> RateLimiter {
    let rl = &settings.rate_limit;
    match (rl.mode, gcra) {
        (RateLimitMode::Local, _) => RateLimiter::local(rl.default),
        (RateLimitMode::Redis, Some(backend)) => {
            RateLimiter::Global(GlobalLimiter::new(backend.clone(), rl.default, rl.replicas))
        }
        (RateLimitMode::Redis, None) => {
            tracing::warn!("rate_limit.mode: redis without a Redis store; limiting per replica");
            RateLimiter::local(rl.default)
        }
    }
}

/// Facts about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Socket peer.
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// The data-plane service shared by every connection.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// Global rate-limit buckets, kept across reloads.
    gcra: Option<Arc<dyn GcraBackend>>,
    cache: TokenCache,
    usage: Arc<UsageRecorder>,
    webhooks: Arc<Webhooks>,
}

/// What the access log needs to know about a request.
struct Outcome<'a> {
    route: &'a str,
    status: StatusCode,
    identity: Option<&'a Identity>,
    /// Display prefix of the presented token, when there was one.
    presented: Option<&'a str>,
    deny: Option<&'static str>,
}

impl Gateway {
    /// A gateway over `cache` with the given settings; `gcra` holds global rate-limit
    /// buckets (`None` without a Redis store). Fails when an upstream's TLS files are
    /// unusable.
    pub fn new(
        settings: Arc<Settings>,
        cache: TokenCache,
        usage: Arc<UsageRecorder>,
        gcra: Option<Arc<dyn GcraBackend>>,
        webhooks: Arc<Webhooks>,
    ) -> Result<Self, ConfigErrors> {
        usage.set_signals(settings.client_ip.signals);
        Ok(Gateway {
            runtime: ArcSwap::from_pointee(Runtime::new(settings, gcra.as_ref())?),
            gcra,
            cache,
            usage,
            webhooks,
        })
    }

    /// Where events of the data plane go.
    pub fn webhooks(&self) -> &Arc<Webhooks> {
        &self.webhooks
    }

    /// `token.rate_limited` for the token presented in `headers` (it was just
    /// authenticated, so its lookup is cached): at most one per token per
    /// `webhooks.rate_limited_interval_seconds`, across replicas.
    async fn rate_limited_event(&self, headers: &http::HeaderMap, route: &str) {
        let event = WebhookEvent::TokenRateLimited;
        if !self.webhooks.wants(event) {
            return;
        }
        let Ok(token) = auth::credentials::bearer(headers) else {
            return;
        };
        let Ok(Some(t)) = self.cache.lookup(crate::token::TokenHash::of(token)).await else {
            return;
        };
        let every = self.webhooks.settings().rate_limited_interval;
        self.webhooks
            .emit_once(event, format!("{}:{}", event.name(), t.id()), every, || {
                serde_json::json!({
                    "tokenId": t.id(),
                    "ownerId": t.owner_id(),
                    "prefix": t.prefix(),
                    "route": route,
                })
            });
    }

    /// The current runtime (config generation).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Builds a config generation for this gateway (see [`Runtime::new`]).
    pub fn runtime_for(&self, settings: Arc<Settings>) -> Result<Runtime, ConfigErrors> {
        Runtime::new(settings, self.gcra.as_ref())
    }

    /// Installs a new config generation (built with [`Gateway::runtime_for`]);
    /// in-flight requests finish on the old one. Its `client_ip.signals` apply to
    /// usage recorded from now on.
    pub fn install(&self, runtime: Runtime) {
        self.usage.set_signals(runtime.settings.client_ip.signals);
        self.runtime.store(Arc::new(runtime));
    }

    /// The token cache.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The usage recorder.
    pub fn usage(&self) -> &Arc<UsageRecorder> {
        &self.usage
    }

    /// Handles one request end to end. Never fails: every error is a response.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let rt = self.runtime.load_full();
        let settings = &rt.settings;

        // request_filter
        headers::strip_identity(req.headers_mut(), &settings.identity_headers.prefix);
        let trusted = &settings.client_ip.trusted_proxies;
        let client_ip = client_ip::resolve(conn.peer.ip(), req.headers(), trusted);
        let method = req.method().clone();
        // For the access log of denied requests: the presented token's display prefix
        // (the first 12 characters, safe to log), never more.
        let presented = settings
            .logging
            .access_log
            .then(|| auth::credentials::bearer(req.headers()).ok())
            .flatten()
            // Short credentials would be mostly shown by a 12-character prefix: log
            // only the prefix of something token-sized.
            .filter(|t| t.len() >= 2 * crate::token::DISPLAY_PREFIX_LEN)
            .map(|t| crate::token::display_prefix(t).to_string());

        let result = self.route_and_forward(&rt, req, conn, client_ip).await;
        let (resp, route_name, identity, deny) = match result {
            Ok((resp, route, identity)) => (resp, route, identity, None),
            Err((err, route, identity)) => {
                let parts = err.parts(&settings.tokens.prefix);
                let reason = parts.reason;
                if let GatewayError::UpstreamUnavailable(detail) = &err {
                    tracing::warn!(route = %route, error = %detail, "upstream request failed");
                }
                let mut resp = parts.into_response();
                if let Some(rate) = identity.as_ref().and_then(|i| i.rate) {
                    rate.apply(resp.headers_mut());
                }
                (resp, route, identity, Some(reason))
            }
        };
        if let Some(id) = &identity {
            self.usage
                .record(id.token.id(), crate::clock::wall(), client_ip);
        }
        let outcome = match (deny, &identity) {
            (Some(reason), _) => reason,
            (None, Some(_)) => "allowed",
            (None, None) => "none",
        };
        if outcome == "rate_limited" {
            metrics().rate_limited.inc();
        }
        metrics()
            .requests
            .get_or_create(&RequestLabels {
                route: route_name.clone(),
                status: resp.status().as_u16(),
                outcome,
            })
            .inc();
        if settings.logging.access_log
            && sampled(deny.is_none(), settings.logging.access_log_sample_rate)
        {
            access_log(
                &method,
                client_ip,
                started,
                Outcome {
                    route: &route_name,
                    status: resp.status(),
                    identity: identity.as_ref(),
                    presented: presented.as_deref(),
                    deny,
                },
            );
        }
        resp
    }

    #[allow(clippy::type_complexity)]
    async fn route_and_forward(
        &self,
        rt: &Runtime,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        client_ip: IpAddr,
    ) -> Result<
        (Response<Body>, Arc<str>, Option<Identity>),
        (GatewayError, Arc<str>, Option<Identity>),
    > {
        let settings = &rt.settings;
        let Some(norm) = path::normalize(req.uri().path()) else {
            return Err((
                GatewayError::BadRequest("Invalid request path"),
                rt.unrouted.clone(),
                None,
            ));
        };
        let norm = norm.into_owned();

        // The assertion keys (public, when assertions are configured).
        if norm == crate::assertion::JWKS_PATH
            && matches!(*req.method(), Method::GET | Method::HEAD)
            && let Some(signer) = &rt.assertion
        {
            let mut resp = json_response(StatusCode::OK, signer.jwks());
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            return Ok((resp, rt.jwks.clone(), None));
        }

        // whoami (GET/HEAD only; other methods fall through to routing)
        if norm == settings.whoami_path && matches!(*req.method(), Method::GET | Method::HEAD) {
            let facts = RequestFacts {
                headers: req.headers(),
                method: req.method(),
                path: &norm,
                client_ip,
            };
            return match auth::authenticate(
                facts,
                None,
                &settings.tokens,
                &self.cache,
                &rt.limiters,
            )
            .await
            {
                Ok(identity) => {
                    let quota = match &settings.rate_limit.quota {
                        Some(q) => {
                            crate::quota::state(self.cache.store().as_ref(), q, &identity.token)
                                .await
                        }
                        None => None,
                    };
                    let resp = whoami(&identity, quota);
                    Ok((resp, rt.whoami.clone(), Some(identity)))
                }
                Err(d) => Err((GatewayError::Denied(d), rt.whoami.clone(), None)),
            };
        }

        // route
        let host_header = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        let host = router::request_host(req.uri().host(), host_header);
        let Some(entry) = rt.router.find(host.as_deref(), &norm, req.method()) else {
            return Err((GatewayError::NoRoute, rt.unrouted.clone(), None));
        };
        let route = &entry.route;
        let route_name = entry.name.clone();

        // authenticate
        let identity = match route.auth {
            AuthMode::None => None,
            AuthMode::Required => {
                let facts = RequestFacts {
                    headers: req.headers(),
                    method: req.method(),
                    path: &norm,
                    client_ip,
                };
                let started = Instant::now();
                let decision = auth::authenticate(
                    facts,
                    Some(route),
                    &settings.tokens,
                    &self.cache,
                    &rt.limiters,
                )
                .await;
                metrics()
                    .auth_seconds
                    .observe(started.elapsed().as_secs_f64());
                let identity = match decision {
                    Ok(i) => i,
                    Err(d) => {
                        if matches!(d, auth::Deny::RateLimited(_)) {
                            self.rate_limited_event(req.headers(), &route_name).await;
                        }
                        return Err((GatewayError::Denied(d), route_name, None));
                    }
                };
                // Charged last: a request refused by any other check costs nothing.
                if let Some(q) = &settings.rate_limit.quota
                    && let Err(d) = crate::quota::charge(
                        self.cache.store().as_ref(),
                        q,
                        &identity.token,
                        route.quota_cost,
                        &self.webhooks,
                    )
                    .await
                {
                    metrics().quota_exceeded.inc();
                    return Err((GatewayError::Denied(d), route_name, None));
                }
                Some(identity)
            }
        };

        // upstream_request_filter
        // An HTTP/1.1 `Upgrade` (e.g. WebSocket) keeps its upgrade headers, and the
        // client side of the upgrade is claimed before the request is taken apart.
        let upgrade = headers::upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, incoming) = req.into_parts();
        let peer_trusted = client_ip::contains(&settings.client_ip.trusted_proxies, conn.peer.ip());
        // The host that routed the request is the host forwarded: the target's
        // authority (absolute form, HTTP/2 `:authority`) before the Host header, as
        // `router::request_host` reads them (RFC 9112 §3.2.2). Otherwise
        // `GET http://public/…` with `Host: internal` would be routed as `public`
        // and served by the upstream as `internal`.
        let original_host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(header::HOST).cloned());
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        if !settings.forward_authorization {
            parts.headers.remove(header::AUTHORIZATION);
        }
        headers::set_forwarded(
            &mut parts.headers,
            client_ip::canonical(conn.peer.ip()),
            peer_trusted,
            conn.scheme,
            original_host.as_ref(),
        );
        if let Some(id) = &identity {
            if !headers::inject_identity(&mut parts.headers, &settings.identity_headers, &id.token)
            {
                // Fail closed: an upstream must never see a partial identity (e.g. an
                // org-bound token without its org header).
                tracing::warn!(
                    token.id = %id.token.id(),
                    "token record holds a value that cannot be a header; not forwarding"
                );
                return Err((
                    GatewayError::Denied(auth::Deny::BackendUnavailable),
                    route_name,
                    identity,
                ));
            }
            if let Some(signer) = &rt.assertion
                && let Some(v) = signer.assertion(&route_name, &id.token)
            {
                parts.headers.insert(signer.header.clone(), v);
            }
        }
        if let Some(h) = original_host {
            parts.headers.insert(header::HOST, h);
        }
        let fwd_path = if route.strip_prefix {
            let rest = &norm[route.path_prefix.len().min(norm.len())..];
            if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            }
        } else {
            norm.clone()
        };
        // Cheap (reference-counted) copy: the query is re-read for each attempt.
        let client_uri = parts.uri.clone();
        let limit = route.max_body_bytes;
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > limit
        {
            return Err((GatewayError::BodyTooLarge, route_name, identity));
        }
        // No body (Content-Length 0 or absent, not chunked): safe to send twice.
        let bodiless = hyper::body::Body::is_end_stream(&incoming);
        let tripped = Arc::new(AtomicBool::new(false));
        let body = body::boxed(body::Limited::new(incoming, limit, tripped.clone()));
        parts.version = http::Version::HTTP_11;

        // forward
        let sent = Instant::now();
        let result = entry
            .pool
            .forward(&fwd_path, client_uri.query(), parts, body, bodiless)
            .await;
        metrics()
            .upstream_seconds
            .get_or_create(&RouteLabels {
                route: route_name.clone(),
            })
            .observe(sent.elapsed().as_secs_f64());
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                let e = if tripped.load(Ordering::Relaxed) {
                    GatewayError::BodyTooLarge
                } else {
                    e
                };
                return Err((e, route_name, identity));
            }
        };

        // response_filter
        let mut resp = resp;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, route_name.clone()));
            let (mut rparts, _) = resp.into_parts();
            let proto = rparts.headers.get(header::UPGRADE).cloned();
            headers::strip_hop_by_hop(&mut rparts.headers);
            if let Some(proto) = proto {
                rparts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                rparts.headers.insert(header::UPGRADE, proto);
            }
            if let Some(rate) = identity.as_ref().and_then(|i| i.rate) {
                rate.apply(&mut rparts.headers);
            }
            return Ok((
                Response::from_parts(rparts, body::empty()),
                route_name,
                identity,
            ));
        }
        let (mut rparts, rbody) = resp.into_parts();
        headers::strip_hop_by_hop(&mut rparts.headers);
        if let Some(rate) = identity.as_ref().and_then(|i| i.rate) {
            rate.apply(&mut rparts.headers);
        }
        Ok((
            Response::from_parts(rparts, body::boxed(rbody)),
            route_name,
            identity,
        ))
    }
}

/// Copies bytes both ways between an upgraded client connection and the upgraded
/// upstream connection until either side closes; then shuts both down.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: Arc<str>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(route = %route, error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(route = %route, bytes.up = up, bytes.down = down, "upgraded connection closed")
        }
        Err(e) => {
            tracing::debug!(route = %route, error = %e, "upgraded connection ended with error")
        }
    }
}

/// The whoami document.
fn whoami(identity: &Identity, quota: Option<crate::quota::QuotaState>) -> Response<Body> {
    let t = &identity.token;
    let doc = serde_json::json!({
        "userId": t.owner_id(),
        "orgId": t.org_id(),
        "projectId": t.project_id(),
        "tokenId": t.id(),
        "prefix": t.prefix(),
        "name": t.name(),
        "type": t.kind(),
        "scopes": t.scopes(),
        "permissions": t.permissions(),
        "authMethod": "pat",
        "expiresAt": t.expires_at(),
        "rateLimit": identity.rate.map(|h| h.to_json()),
        "quota": quota.map(|q| q.to_json()),
    });
    let mut resp = json_response(StatusCode::OK, Bytes::from(doc.to_string()));
    if let Some(rate) = identity.rate {
        rate.apply(resp.headers_mut());
    }
    resp
}

/// Whether this request gets an access-log line: always for denials and errors,
/// one in `round(1 / rate)` of the allowed ones (a shared counter, no randomness).
fn sampled(allowed: bool, rate: f64) -> bool {
    use std::sync::atomic::AtomicU64;
    static SEEN: AtomicU64 = AtomicU64::new(0);
    if !allowed || rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let every = (1.0 / rate).round().max(1.0) as u64;
    SEEN.fetch_add(1, Ordering::Relaxed).is_multiple_of(every)
}

fn access_log(method: &Method, client_ip: IpAddr, started: Instant, o: Outcome<'_>) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (token_id, token_prefix) = o
        .identity
        .map(|i| (i.token.id(), i.token.prefix()))
        .unwrap_or(("", o.presented.unwrap_or("")));
    tracing::info!(
        target: "patgate::access",
        method = %method,
        route = o.route,
        status = o.status.as_u16(),
        duration_ms = ms,
        client.ip = %client_ip,
        token.id = token_id,
        token.prefix = token_prefix,
        deny.reason = o.deny.unwrap_or(""),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::sampled;

    #[test]
    fn sampling_keeps_every_denial_and_one_in_n_allowed() {
        assert!(sampled(false, 0.0), "denials are always logged");
        assert!(!sampled(true, 0.0));
        assert!(sampled(true, 1.0));
        let kept = (0..1000).filter(|_| sampled(true, 0.1)).count();
        assert_eq!(kept, 100);
    }
}
