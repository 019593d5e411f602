//! The admin API (SPEC §4) on its own listener: JSON under `/v1`, plus `/healthz`
//! and `/readyz`.
//!
//! What the listener answers is the table [`routes::ROUTES`]; the OpenAPI document
//! served at `GET /v1/openapi.json` describes exactly that table (a unit test keeps
//! the two equal).
//!
//! Caller authentication ([`caller`]): `Authorization: Bearer <admin key>`, compared
//! by SHA-256 in constant time against every configured key. Handlers are thin: they
//! parse input ([`input`]), call [`crate::lifecycle::Lifecycle`], and render JSON; the
//! mapping of a [`LifecycleError`] to a status is one exhaustive `match`.
//!
//! The web console ([`ui`]) is served beside the API under `/ui/`: static assets, no
//! authentication (the page's API calls carry the operator's credential).

pub mod authorize;
pub mod caller;
pub mod input;
pub mod routes;
pub mod ui;

#[cfg(test)]
mod openapi_doc_tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::AdminKey;
use crate::error::{json_error, json_response};
use crate::lifecycle::{Caller, Lifecycle, LifecycleError, TokenPatch};
use crate::proxy::ConnInfo;
use crate::store::{AuditQuery, DeliveryQuery, DeliveryStatus, ListQuery, StoreError, TokenRecord};
use authorize::Principal;
use input::Fields;
use routes::{ApiOp, Match, Op, Params, PublicOp};

/// The admin API's OpenAPI 3.1 document (`openapi/patgate-admin.json`), served at
/// `GET /v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi/patgate-admin.json");

/// Hours answered by `GET /v1/tokens/{id}/usage`: 7 days.
const USAGE_HOURS: usize = 7 * 24;

/// Largest admin request body.
const MAX_BODY: usize = 1 << 20;

/// The admin API service.
pub struct Admin {
    lifecycle: Lifecycle,
    keys: Vec<AdminKey>,
    /// Applies the config file again (`POST /v1/reload`).
    reloader: Arc<crate::app::Reloader>,
    /// Whether the store has answered a readiness check since start.
    store_seen: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("keys", &self.keys.len())
            .finish()
    }
}

type Reply = Result<Response<Body>, LifecycleError>;

fn ok_json(status: StatusCode, v: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(json_response(status, Bytes::from(body)))
}

/// `200 {"items", "nextCursor"}` for a newest-first page of `limit`: a full page
/// continues after its last item's id.
fn page_json<T: serde::Serialize>(items: &[T], limit: usize, id: impl Fn(&T) -> &str) -> Reply {
    let next = (items.len() == limit)
        .then(|| items.last().map(id))
        .flatten();
    ok_json(
        StatusCode::OK,
        &serde_json::json!({"items": items, "nextCursor": next}),
    )
}

/// Status and message for a failed operation (one exhaustive match).
fn error_response(e: &LifecycleError) -> Response<Body> {
    match e {
        LifecycleError::Invalid { field, reason } => {
            let body = serde_json::json!({
                "error": format!("{field}: {reason}"),
                "field": field,
            });
            json_response(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()))
        }
        LifecycleError::NotFound => json_error(StatusCode::NOT_FOUND, "Token not found"),
        LifecycleError::NoSuchDelivery => json_error(StatusCode::NOT_FOUND, "Delivery not found"),
        LifecycleError::Forbidden(m) => json_error(StatusCode::FORBIDDEN, m),
        LifecycleError::Conflict(m) => json_error(StatusCode::CONFLICT, m),
        LifecycleError::TooManyCreations { retry_after } => {
            let mut r = json_error(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
            let secs = retry_after.as_secs().max(1);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        LifecycleError::Store(StoreError::Unavailable(_)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "Token store unavailable")
        }
        LifecycleError::Store(StoreError::Conflict(m)) => json_error(StatusCode::CONFLICT, m),
        LifecycleError::Store(StoreError::Rejected(m)) => json_error(StatusCode::CONFLICT, m),
        LifecycleError::Store(StoreError::Corrupt(_)) | LifecycleError::Rng => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
        }
    }
}

fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn bad(field: &str, reason: &str) -> LifecycleError {
    crate::lifecycle::invalid(field, reason)
}

fn list_query(pairs: &[(String, String)]) -> Result<ListQuery, LifecycleError> {
    let mut q = ListQuery {
        limit: 50,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "ownerId" => q.owner_id = Some(v.clone()),
            "orgId" => q.org_id = Some(v.clone()),
            "projectId" => q.project_id = Some(v.clone()),
            "type" => {
                q.kind = Some(match v.as_str() {
                    "user" => crate::store::TokenType::User,
                    "organization" => crate::store::TokenType::Organization,
                    "project" => crate::store::TokenType::Project,
                    _ => return Err(bad("type", "must be user, organization or project")),
                })
            }
            "active" => {
                q.active = Some(match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("active", "must be true or false")),
                })
            }
            "q" => q.q = Some(v.clone()),
            "expiringWithinDays" => {
                q.expiring_within_days = Some(
                    v.parse()
                        .map_err(|_| bad("expiringWithinDays", "must be a non-negative integer"))?,
                )
            }
            "limit" => q.limit = page_limit(v)?,
            "cursor" => q.cursor = Some(v.clone()),
            other => return Err(bad(other, "unknown query parameter")),
        }
    }
    Ok(q)
}

/// A `limit` query parameter: 1-1000.
fn page_limit(v: &str) -> Result<usize, LifecycleError> {
    match v.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(bad("limit", "must be 1-1000")),
    }
}

fn audit_query(pairs: &[(String, String)]) -> Result<AuditQuery, LifecycleError> {
    let mut q = AuditQuery {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "tokenId" => q.token_id = Some(v.clone()),
            "actor" => q.actor = Some(v.clone()),
            "since" => {
                q.since = Some(
                    v.parse()
                        .map_err(|_| bad("since", "must be an RFC 3339 timestamp"))?,
                )
            }
            "limit" => q.limit = page_limit(v)?,
            "cursor" => q.cursor = Some(v.clone()),
            other => return Err(bad(other, "unknown query parameter")),
        }
    }
    Ok(q)
}

fn delivery_query(pairs: &[(String, String)]) -> Result<DeliveryQuery, LifecycleError> {
    let mut q = DeliveryQuery {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "status" => {
                q.status = Some(
                    DeliveryStatus::parse(v)
                        .ok_or_else(|| bad("status", "must be pending, delivered or failed"))?,
                )
            }
            "event" => {
                if crate::config::WebhookEvent::parse(v).is_none() {
                    return Err(bad("event", "unknown event"));
                }
                q.event = Some(v.clone());
            }
            "endpoint" => q.endpoint = Some(v.clone()),
            "tokenId" => q.token_id = Some(v.clone()),
            "limit" => q.limit = page_limit(v)?,
            "cursor" => q.cursor = Some(v.clone()),
            other => return Err(bad(other, "unknown query parameter")),
        }
    }
    Ok(q)
}

impl Admin {
    /// The admin API over `lifecycle`, accepting `keys`; `reloader` serves
    /// `POST /v1/reload`.
    pub fn new(
        lifecycle: Lifecycle,
        keys: Vec<AdminKey>,
        reloader: Arc<crate::app::Reloader>,
    ) -> Self {
        Admin {
            lifecycle,
            keys,
            reloader,
            store_seen: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Handles one admin request: match the route table, authenticate the caller
    /// unless the route is public, dispatch (one exhaustive `match` per kind of op).
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if ui::is_ui_path(&path) {
            return ui::serve(&method, &path);
        }
        let op = match routes::match_route(method.as_str(), &path) {
            Match::Found(op, params) => (op, params),
            Match::MethodNotAllowed {
                allow,
                requires_auth,
            } => {
                if requires_auth && let Err(resp) = self.caller(&req, &conn).await {
                    return *resp;
                }
                return method_not_allowed(&allow);
            }
            Match::NotFound => {
                // Unknown /v1 paths answer 401 to strangers, as every /v1 route does.
                if path.starts_with("/v1/")
                    && let Err(resp) = self.caller(&req, &conn).await
                {
                    return *resp;
                }
                return json_error(StatusCode::NOT_FOUND, "Not found");
            }
        };
        match op {
            (Op::Public(op), _) => self.public(op).await,
            (Op::Api(op), params) => {
                let (principal, by) = match self.caller(&req, &conn).await {
                    Ok(x) => x,
                    Err(resp) => return *resp,
                };
                match self.api(op, &params, req, &principal, &by).await {
                    Ok(r) => r,
                    Err(e) => {
                        if matches!(e, LifecycleError::Store(_) | LifecycleError::Rng) {
                            tracing::error!(error = %e, %method, path, "admin request failed");
                        }
                        if let LifecycleError::Forbidden(reason) = &e {
                            let token_id = params.try_get("id");
                            self.lifecycle
                                .audit(
                                    &by,
                                    Op::Api(op).operation_id(),
                                    token_id,
                                    None,
                                    "denied",
                                    serde_json::json!({ "reason": reason }),
                                )
                                .await;
                        }
                        error_response(&e)
                    }
                }
            }
        }
    }

    /// The authenticated caller (and its audit identity), or the response to send.
    async fn caller(
        &self,
        req: &Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<(Principal, Caller), Box<Response<Body>>> {
        let ip = crate::client_ip::canonical(conn.peer.ip());
        let principal = caller::resolve(
            req.headers(),
            &self.keys,
            self.lifecycle.token_settings(),
            self.lifecycle.cache(),
            ip,
        )
        .await?;
        let by = Caller {
            actor: principal.actor(),
            ip: Some(ip),
        };
        Ok((principal, by))
    }

    /// The record `id`, if `who` may manage it (else 404 / 403).
    async fn managed(&self, who: &Principal, id: &str) -> Result<TokenRecord, LifecycleError> {
        let r = self
            .lifecycle
            .store()
            .get(id)
            .await?
            .ok_or(LifecycleError::NotFound)?;
        who.may_manage(&r).map_err(forbidden)?;
        Ok(r)
    }

    /// Unauthenticated routes.
    async fn public(&self, op: PublicOp) -> Response<Body> {
        match op {
            PublicOp::Healthz => {
                json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
            }
            PublicOp::Readyz => self.readyz().await,
            // Served without authentication: the document describes the API's shape
            // and holds no secret, key or token.
            PublicOp::OpenApi => {
                json_response(StatusCode::OK, Bytes::from_static(OPENAPI_JSON.as_bytes()))
            }
            // Served without authentication, as Prometheus scrapes it: counts and
            // latencies only, labels bounded and free of token ids.
            PublicOp::Metrics => {
                self.lifecycle.cache().len();
                let mut r = Response::new(crate::body::full(crate::metrics::metrics().encode()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
        }
    }

    /// Readiness. The store is checked with a 2 s bound. A replica is *not ready* only
    /// while its store has never answered since start: with a cold cache every request
    /// would get 503. Once the store has answered, a later outage keeps the replica
    /// ready (reported as `degraded`): cached tokens keep working, and failing every
    /// replica's readiness at once would turn a Redis outage into a full outage.
    async fn readyz(&self) -> Response<Body> {
        let store =
            match tokio::time::timeout(Duration::from_secs(2), self.lifecycle.store().ping()).await
            {
                Ok(Ok(())) => {
                    self.store_seen
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
        let seen = self.store_seen.load(std::sync::atomic::Ordering::Relaxed);
        let (status, state, store_check) = match &store {
            Ok(()) => (StatusCode::OK, "ready", "ok".to_string()),
            Err(e) if seen => (
                StatusCode::OK,
                "degraded",
                format!("unreachable, serving cached tokens: {e}"),
            ),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready",
                format!("failed: {e}"),
            ),
        };
        let body = serde_json::json!({
            "status": state,
            "checks": {"store": store_check, "config": "ok", "listeners": "ok"},
        });
        json_response(status, Bytes::from(body.to_string()))
    }

    /// Authenticated routes; `by` is the authenticated caller.
    async fn api(
        &self,
        op: ApiOp,
        p: &Params,
        req: Request<Incoming>,
        who: &Principal,
        by: &Caller,
    ) -> Reply {
        let lc = &self.lifecycle;
        match op {
            ApiOp::GetCaller => ok_json(StatusCode::OK, &caller_info(who)),
            ApiOp::CreateToken => {
                let mut f = Fields::parse(&read_body(req).await?)?;
                let mut new = input::new_token(&mut f)?;
                f.finish()?;
                who.check_create(&mut new).map_err(forbidden)?;
                let (token, record) = lc.create(new, by).await?;
                ok_json(
                    StatusCode::CREATED,
                    &serde_json::json!({"token": token, "record": record}),
                )
            }
            ApiOp::ListTokens => {
                let mut q = list_query(&query_pairs(&req))?;
                who.scope_list(&mut q).map_err(forbidden)?;
                let page = lc.store().list(&q).await?;
                ok_json(StatusCode::OK, &page)
            }
            ApiOp::ImportToken => {
                who.require_admin_key("Importing tokens")
                    .map_err(forbidden)?;
                let mut f = Fields::parse(&read_body(req).await?)?;
                let sha = f
                    .string("sha256")?
                    .ok_or_else(|| bad("sha256", "is required"))?;
                let prefix = f.string("prefix")?;
                let new = input::new_token(&mut f)?;
                f.finish()?;
                let record = lc.import(&sha, prefix, new, by).await?;
                ok_json(StatusCode::CREATED, &serde_json::json!({"record": record}))
            }
            ApiOp::GetToken => {
                let r = self.managed(who, p.get("id")).await?;
                ok_json(StatusCode::OK, &r)
            }
            ApiOp::TokenUsage => {
                let r = self.managed(who, p.get("id")).await?;
                let body = self.hourly_usage(&r.id).await?;
                ok_json(StatusCode::OK, &body)
            }
            ApiOp::TokenIps => {
                let r = self.managed(who, p.get("id")).await?;
                let body = self.client_ips(&r.id).await?;
                ok_json(StatusCode::OK, &body)
            }
            ApiOp::TokenQuota => {
                let r = self.managed(who, p.get("id")).await?;
                let body = self.quota(&r).await?;
                ok_json(StatusCode::OK, &body)
            }
            ApiOp::UpdateToken => {
                let mut f = Fields::parse(&read_body(req).await?)?;
                let patch = input::patch(&mut f)?;
                f.finish()?;
                self.managed(who, p.get("id")).await?;
                who.check_patch(&patch).map_err(forbidden)?;
                let r = lc.update(p.get("id"), patch, by, "token.update").await?;
                ok_json(StatusCode::OK, &r)
            }
            ApiOp::DeleteToken => {
                self.managed(who, p.get("id")).await?;
                lc.delete(p.get("id"), by).await?;
                Ok(Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(crate::body::empty())
                    .unwrap_or_default())
            }
            ApiOp::RevokeToken => {
                self.managed(who, p.get("id")).await?;
                let r = lc.revoke(p.get("id"), by).await?;
                ok_json(StatusCode::OK, &r)
            }
            ApiOp::DeactivateToken => {
                self.managed(who, p.get("id")).await?;
                self.set_active(p.get("id"), false, by).await
            }
            ApiOp::ActivateToken => {
                self.managed(who, p.get("id")).await?;
                self.set_active(p.get("id"), true, by).await
            }
            ApiOp::RegenerateToken => {
                let mut f = Fields::parse(&read_body(req).await?)?;
                let grace = f.uint("gracePeriodSeconds")?.unwrap_or(0);
                f.finish()?;
                self.managed(who, p.get("id")).await?;
                let (token, record) = lc
                    .regenerate(p.get("id"), Duration::from_secs(grace), by)
                    .await?;
                ok_json(
                    StatusCode::OK,
                    &serde_json::json!({"token": token, "record": record}),
                )
            }
            ApiOp::DisableOwner => {
                who.require_admin_key("Disabling an owner")
                    .map_err(forbidden)?;
                self.set_owner_disabled(p.get("ownerId"), true, by).await
            }
            ApiOp::EnableOwner => {
                who.require_admin_key("Enabling an owner")
                    .map_err(forbidden)?;
                self.set_owner_disabled(p.get("ownerId"), false, by).await
            }
            ApiOp::ReloadConfig => {
                who.require_admin_key("Reloading the configuration")
                    .map_err(forbidden)?;
                self.reload(by).await
            }
            ApiOp::ListWebhookDeliveries => {
                who.require_admin_key("Webhook deliveries")
                    .map_err(forbidden)?;
                let q = delivery_query(&query_pairs(&req))?;
                let limit = q.limit;
                let items = lc.store().list_deliveries(&q).await?;
                page_json(&items, limit, |d| &d.id)
            }
            ApiOp::RedeliverWebhook => {
                who.require_admin_key("Redelivering webhooks")
                    .map_err(forbidden)?;
                let id = p.get("id");
                let mut d = lc
                    .store()
                    .get_delivery(id)
                    .await?
                    .ok_or(LifecycleError::NoSuchDelivery)?;
                if d.status == DeliveryStatus::Pending {
                    return Err(LifecycleError::Conflict(
                        "The delivery is still pending: it will be retried".into(),
                    ));
                }
                // A fresh schedule: attempts count again from zero.
                let now = jiff::Timestamp::now();
                d.status = DeliveryStatus::Pending;
                d.attempts = 0;
                d.next_attempt_at = Some(now);
                d.delivered_at = None;
                lc.store().save_delivery(&d).await?;
                lc.audit(
                    by,
                    "webhook.redeliver",
                    crate::store::outbox_token(&d.payload),
                    None,
                    "success",
                    serde_json::json!({"delivery": d.id, "event": d.event, "endpoint": d.endpoint}),
                )
                .await;
                ok_json(StatusCode::OK, &d)
            }
            ApiOp::ListAudit => {
                who.require_admin_key("The audit trail")
                    .map_err(forbidden)?;
                let q = audit_query(&query_pairs(&req))?;
                let limit = q.limit;
                let items = lc.store().list_audit(&q).await?;
                page_json(&items, limit, |e| &e.id)
            }
        }
    }

    /// `POST /v1/reload`: the same reload as SIGHUP, answered and audited.
    async fn reload(&self, by: &Caller) -> Reply {
        use crate::app::ReloadError;
        let reloader = self.reloader.clone();
        // Reading and parsing the files is blocking I/O: keep it off the reactor.
        let result = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|e| StoreError::Corrupt(format!("reload task failed: {e}")))?;
        let (status, body, outcome) = match result {
            Ok(warnings) => (
                StatusCode::OK,
                serde_json::json!({"reloaded": true, "warnings": warnings}),
                "ok",
            ),
            Err(e @ ReloadError::NoConfigFile) => (
                StatusCode::CONFLICT,
                serde_json::json!({"error": e.to_string()}),
                "rejected",
            ),
            Err(ReloadError::Rejected(problems)) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "config rejected", "problems": problems}),
                "rejected",
            ),
        };
        self.lifecycle
            .audit(by, "config.reload", None, None, outcome, body.clone())
            .await;
        ok_json(status, &body)
    }

    /// `GET /v1/tokens/{id}/usage`: the last [`USAGE_HOURS`] hours, the current one
    /// last, zeros filled.
    async fn hourly_usage(&self, id: &str) -> Result<serde_json::Value, LifecycleError> {
        let now = crate::store::hour_of(jiff::Timestamp::now());
        let from = now - (USAGE_HOURS as i64 - 1);
        let counts = self
            .lifecycle
            .store()
            .hourly_usage(id, from, USAGE_HOURS)
            .await?;
        let hours: Vec<serde_json::Value> = (from..)
            .zip(counts)
            .map(|(h, n)| {
                let start = jiff::Timestamp::from_second(h * 3600).unwrap_or_default();
                serde_json::json!({"hour": start.to_string(), "requests": n})
            })
            .collect();
        Ok(serde_json::json!({"tokenId": id, "hours": hours}))
    }

    /// `GET /v1/tokens/{id}/ips`: the client-IP prefixes seen within the retention
    /// (`client_ip.signals.retention_days`), most recently seen first, with what the
    /// console needs to judge them.
    async fn client_ips(&self, id: &str) -> Result<serde_json::Value, LifecycleError> {
        let signals = self.reloader.settings().client_ip.signals;
        let since = crate::store::retention_cutoff(
            jiff::Timestamp::now(),
            crate::store::IpRetention {
                max_per_token: signals.max_per_token,
                retention: signals.retention(),
            },
        );
        let items = self.lifecycle.store().client_ips(id, since).await?;
        Ok(serde_json::json!({
            "tokenId": id,
            "items": items,
            "distinct": items.len(),
            "windowDays": signals.retention_days,
            "warnAbove": signals.warn_above,
            "enabled": signals.enabled,
            "ipv4Prefix": signals.ipv4_prefix,
            "ipv6Prefix": signals.ipv6_prefix,
        }))
    }

    /// `GET /v1/tokens/{id}/quota`: `{"tokenId", "quota"}`, `quota` being `null` when
    /// `rate_limit.quota` is not configured. Reads the store; charges nothing.
    async fn quota(&self, r: &TokenRecord) -> Result<serde_json::Value, LifecycleError> {
        let settings = self.reloader.settings();
        let quota = match &settings.rate_limit.quota {
            None => serde_json::Value::Null,
            Some(q) => {
                let now = jiff::Timestamp::now();
                let store = self.lifecycle.store().as_ref();
                let state = crate::quota::read(store, q, &r.id, &r.owner_id, now).await?;
                crate::quota::admin_json(&state, q, now)
            }
        };
        Ok(serde_json::json!({"tokenId": r.id, "quota": quota}))
    }

    async fn set_active(&self, id: &str, active: bool, by: &Caller) -> Reply {
        let patch = TokenPatch {
            is_active: Some(active),
            ..Default::default()
        };
        let action = if active {
            "token.activate"
        } else {
            "token.deactivate"
        };
        let r = self.lifecycle.update(id, patch, by, action).await?;
        ok_json(StatusCode::OK, &r)
    }

    async fn set_owner_disabled(&self, owner: &str, disabled: bool, by: &Caller) -> Reply {
        self.lifecycle
            .set_owner_disabled(owner, disabled, by)
            .await?;
        ok_json(
            StatusCode::OK,
            &serde_json::json!({"ownerId": owner, "disabled": disabled}),
        )
    }
}

/// `GET /v1/caller`: the caller and what it may do; never a secret (a PAT caller
/// sees its own record's display prefix only).
fn caller_info(who: &Principal) -> serde_json::Value {
    match who {
        Principal::AdminKey(name) => serde_json::json!({
            "kind": "adminKey",
            "name": name,
            "canAudit": true,
            "canImport": true,
            "canManageOwners": true,
        }),
        Principal::Pat { token, org_admin } => {
            let role = if *org_admin {
                authorize::TOKENS_ADMIN
            } else {
                authorize::TOKENS_SELF
            };
            serde_json::json!({
                "kind": "pat",
                "name": token.name(),
                "tokenId": token.id(),
                "prefix": token.prefix(),
                "ownerId": token.owner_id(),
                "orgId": token.org_id(),
                "projectId": token.project_id(),
                "role": role,
                "permissions": token.permissions(),
                "scopes": token.scopes(),
                "canAudit": false,
                "canImport": false,
                "canManageOwners": false,
            })
        }
    }
}

fn forbidden(f: authorize::Forbidden) -> LifecycleError {
    LifecycleError::Forbidden(f.0)
}

/// `405` with the `Allow` header listing the methods the path accepts.
fn method_not_allowed(allow: &[&'static str]) -> Response<Body> {
    let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    // Methods come from the route table: upper-case ASCII tokens, always valid.
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, LifecycleError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(bad("body", "unreadable or larger than 1 MiB")),
    }
}

impl crate::server::Handler for Admin {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.handle(req, conn)
    }
}

/// Shared handle used by `serve`.
pub type SharedAdmin = Arc<Admin>;
