//! The admin API's route table: one [`RouteDef`] per (method, path template), and the
//! matcher that turns a request's method and path into an [`Op`] and its captures.
//!
//! The table is the single source of truth for what the admin listener answers; the
//! OpenAPI document (`openapi/patgate-admin.json`, served at `GET /v1/openapi.json`)
//! is checked against it by a unit test, path by path and method by method.
//!
//! Templates use OpenAPI syntax: literal segments must match exactly; `{name}` captures
//! one non-empty segment, percent-decoded (so `/v1/owners/user%3A42/disable` names
//! owner `user:42`, and `%2F` can carry a `/` inside one capture).
//!
//! When a path matches some template but not with the request's method, the answer is
//! `405 Method Not Allowed` with an `Allow` header listing the methods that would match
//! (after caller authentication for `/v1` paths, so unauthenticated callers learn no
//! more than a 401). A path that matches no template is `404`.
//!
//! Cost: matching walks the table (22 entries) comparing segments; it allocates only
//! for the segment list and the decoded captures.

/// What a route does, split by whether the caller must authenticate: the type system
/// then guarantees that every [`ApiOp`] handler runs with an authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Answered without caller authentication.
    Public(PublicOp),
    /// Requires `Authorization: Bearer <admin key>`.
    Api(ApiOp),
}

/// Unauthenticated operations: probes and the API description (no secrets in any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicOp {
    /// `GET /healthz`: liveness.
    Healthz,
    /// `GET /readyz`: readiness (store reachable).
    Readyz,
    /// `GET /v1/openapi.json`: this API's OpenAPI 3.1 document.
    OpenApi,
    /// `GET /metrics`: Prometheus metrics.
    Metrics,
}

/// Authenticated management operations (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiOp {
    /// `GET /v1/caller`: who the caller is and what it may do (the console's whoami).
    GetCaller,
    /// `POST /v1/tokens`.
    CreateToken,
    /// `GET /v1/tokens`.
    ListTokens,
    /// `POST /v1/tokens/import`.
    ImportToken,
    /// `GET /v1/tokens/{id}`.
    GetToken,
    /// `PATCH /v1/tokens/{id}`.
    UpdateToken,
    /// `DELETE /v1/tokens/{id}`.
    DeleteToken,
    /// `GET /v1/tokens/{id}/usage`: requests per hour, last 7 days.
    TokenUsage,
    /// `GET /v1/tokens/{id}/ips`: the client-IP prefixes it was used from.
    TokenIps,
    /// `GET /v1/tokens/{id}/quota`: its request quota, used and remaining.
    TokenQuota,
    /// `POST /v1/tokens/{id}/revoke`.
    RevokeToken,
    /// `POST /v1/tokens/{id}/deactivate`.
    DeactivateToken,
    /// `POST /v1/tokens/{id}/activate`.
    ActivateToken,
    /// `POST /v1/tokens/{id}/regenerate`.
    RegenerateToken,
    /// `POST /v1/owners/{ownerId}/disable`.
    DisableOwner,
    /// `POST /v1/owners/{ownerId}/enable`.
    EnableOwner,
    /// `GET /v1/audit`.
    ListAudit,
    /// `POST /v1/reload`: re-read and apply the config file (admin key only).
    ReloadConfig,
    /// `GET /v1/webhooks/deliveries`: the webhook outbox, newest first (admin key only).
    ListWebhookDeliveries,
    /// `POST /v1/webhooks/deliveries/{id}/redeliver`: send a delivered or failed
    /// delivery again, with a fresh retry schedule (admin key only).
    RedeliverWebhook,
}

impl Op {
    /// The OpenAPI `operationId` documenting this operation.
    pub fn operation_id(self) -> &'static str {
        match self {
            Op::Public(PublicOp::Healthz) => "healthz",
            Op::Public(PublicOp::Readyz) => "readyz",
            Op::Public(PublicOp::OpenApi) => "getOpenApi",
            Op::Public(PublicOp::Metrics) => "metrics",
            Op::Api(ApiOp::GetCaller) => "getCaller",
            Op::Api(ApiOp::CreateToken) => "createToken",
            Op::Api(ApiOp::ListTokens) => "listTokens",
            Op::Api(ApiOp::ImportToken) => "importToken",
            Op::Api(ApiOp::GetToken) => "getToken",
            Op::Api(ApiOp::UpdateToken) => "updateToken",
            Op::Api(ApiOp::DeleteToken) => "deleteToken",
            Op::Api(ApiOp::TokenUsage) => "getTokenUsage",
            Op::Api(ApiOp::TokenIps) => "getTokenIps",
            Op::Api(ApiOp::TokenQuota) => "getTokenQuota",
            Op::Api(ApiOp::RevokeToken) => "revokeToken",
            Op::Api(ApiOp::DeactivateToken) => "deactivateToken",
            Op::Api(ApiOp::ActivateToken) => "activateToken",
            Op::Api(ApiOp::RegenerateToken) => "regenerateToken",
            Op::Api(ApiOp::DisableOwner) => "disableOwner",
            Op::Api(ApiOp::EnableOwner) => "enableOwner",
            Op::Api(ApiOp::ListAudit) => "listAudit",
            Op::Api(ApiOp::ReloadConfig) => "reloadConfig",
            Op::Api(ApiOp::ListWebhookDeliveries) => "listWebhookDeliveries",
            Op::Api(ApiOp::RedeliverWebhook) => "redeliverWebhook",
        }
    }

    /// Whether the caller must authenticate.
    pub fn requires_auth(self) -> bool {
        matches!(self, Op::Api(_))
    }
}

/// One route: an HTTP method, an OpenAPI path template and the operation it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDef {
    /// Upper-case HTTP method, e.g. `POST`.
    pub method: &'static str,
    /// OpenAPI path template, e.g. `/v1/tokens/{id}/revoke`.
    pub path: &'static str,
    /// What the route does.
    pub op: Op,
}

const fn route(method: &'static str, path: &'static str, op: Op) -> RouteDef {
    RouteDef { method, path, op }
}

/// Every admin route. Earlier entries win when two templates match the same request
/// (none do today: `POST /v1/tokens/import` has no `{id}` twin with that method).
pub const ROUTES: &[RouteDef] = &[
    route("GET", "/healthz", Op::Public(PublicOp::Healthz)),
    route("GET", "/readyz", Op::Public(PublicOp::Readyz)),
    route("GET", "/v1/openapi.json", Op::Public(PublicOp::OpenApi)),
    route("GET", "/metrics", Op::Public(PublicOp::Metrics)),
    route("GET", "/v1/caller", Op::Api(ApiOp::GetCaller)),
    route("POST", "/v1/tokens", Op::Api(ApiOp::CreateToken)),
    route("GET", "/v1/tokens", Op::Api(ApiOp::ListTokens)),
    route("POST", "/v1/tokens/import", Op::Api(ApiOp::ImportToken)),
    route("GET", "/v1/tokens/{id}", Op::Api(ApiOp::GetToken)),
    route("PATCH", "/v1/tokens/{id}", Op::Api(ApiOp::UpdateToken)),
    route("DELETE", "/v1/tokens/{id}", Op::Api(ApiOp::DeleteToken)),
    route("GET", "/v1/tokens/{id}/usage", Op::Api(ApiOp::TokenUsage)),
    route("GET", "/v1/tokens/{id}/ips", Op::Api(ApiOp::TokenIps)),
    route("GET", "/v1/tokens/{id}/quota", Op::Api(ApiOp::TokenQuota)),
    route(
        "POST",
        "/v1/tokens/{id}/revoke",
        Op::Api(ApiOp::RevokeToken),
    ),
    route(
        "POST",
        "/v1/tokens/{id}/deactivate",
        Op::Api(ApiOp::DeactivateToken),
    ),
    route(
        "POST",
        "/v1/tokens/{id}/activate",
        Op::Api(ApiOp::ActivateToken),
    ),
    route(
        "POST",
        "/v1/tokens/{id}/regenerate",
        Op::Api(ApiOp::RegenerateToken),
    ),
    route(
        "POST",
        "/v1/owners/{ownerId}/disable",
        Op::Api(ApiOp::DisableOwner),
    ),
    route(
        "POST",
        "/v1/owners/{ownerId}/enable",
        Op::Api(ApiOp::EnableOwner),
    ),
    route("GET", "/v1/audit", Op::Api(ApiOp::ListAudit)),
    route(
        "GET",
        "/v1/webhooks/deliveries",
        Op::Api(ApiOp::ListWebhookDeliveries),
    ),
    route(
        "POST",
        "/v1/webhooks/deliveries/{id}/redeliver",
        Op::Api(ApiOp::RedeliverWebhook),
    ),
    route("POST", "/v1/reload", Op::Api(ApiOp::ReloadConfig)),
];

/// Path captures of a matched route, by template name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The decoded capture `name`; empty when the template has none (a table bug that
    /// fails safe: no token or owner has an empty id).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The decoded capture `name`, if the template has it.
    pub fn try_get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The matcher's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// A route matched method and path.
    Found(Op, Params),
    /// The path matches, the method doesn't.
    MethodNotAllowed {
        /// Methods that would match, in table order, without duplicates.
        allow: Vec<&'static str>,
        /// Whether any route on this path requires caller authentication.
        requires_auth: bool,
    },
    /// No template matches the path.
    NotFound,
}

/// Matches one template against the path's segments; `None` when it does not fit.
fn match_template(template: &'static str, segs: &[&str]) -> Option<Params> {
    let mut tsegs = template.trim_start_matches('/').split('/');
    let mut params = Vec::new();
    for seg in segs {
        let t = tsegs.next()?;
        match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) => {
                if seg.is_empty() {
                    return None;
                }
                // Invalid UTF-8 after decoding names nothing we store: no match.
                let v = percent_encoding::percent_decode_str(seg)
                    .decode_utf8()
                    .ok()?;
                params.push((name, v.into_owned()));
            }
            None if t == *seg => {}
            None => return None,
        }
    }
    match tsegs.next() {
        Some(_) => None, // the path is shorter than the template
        None => Some(Params(params)),
    }
}

/// Maps `(method, path)` to the route's operation and captures.
pub fn match_route(method: &str, path: &str) -> Match {
    let Some(rest) = path.strip_prefix('/') else {
        return Match::NotFound;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let mut allow: Vec<&'static str> = Vec::new();
    let mut requires_auth = false;
    for r in ROUTES {
        let Some(params) = match_template(r.path, &segs) else {
            continue;
        };
        if r.method == method {
            return Match::Found(r.op, params);
        }
        if !allow.contains(&r.method) {
            allow.push(r.method);
        }
        requires_auth |= r.op.requires_auth();
    }
    if allow.is_empty() {
        Match::NotFound
    } else {
        Match::MethodNotAllowed {
            allow,
            requires_auth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: &str, path: &str) -> (Op, Params) {
        match match_route(method, path) {
            Match::Found(op, p) => (op, p),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn literal_routes_match_exactly() {
        assert_eq!(found("GET", "/healthz").0, Op::Public(PublicOp::Healthz));
        assert_eq!(
            found("GET", "/v1/openapi.json").0,
            Op::Public(PublicOp::OpenApi)
        );
        assert_eq!(found("POST", "/v1/tokens").0, Op::Api(ApiOp::CreateToken));
        assert_eq!(found("GET", "/v1/tokens").0, Op::Api(ApiOp::ListTokens));
        assert_eq!(
            found("POST", "/v1/tokens/import").0,
            Op::Api(ApiOp::ImportToken)
        );
        assert_eq!(found("GET", "/v1/audit").0, Op::Api(ApiOp::ListAudit));
    }

    #[test]
    fn captures_are_named_and_percent_decoded() {
        let (op, p) = found("POST", "/v1/tokens/01HXYZ/revoke");
        assert_eq!(op, Op::Api(ApiOp::RevokeToken));
        assert_eq!(p.get("id"), "01HXYZ");
        let (op, p) = found("POST", "/v1/owners/user%3A42/disable");
        assert_eq!(op, Op::Api(ApiOp::DisableOwner));
        assert_eq!(p.get("ownerId"), "user:42");
        // An encoded slash stays inside its capture.
        let (_, p) = found("POST", "/v1/owners/a%2Fb%20c/enable");
        assert_eq!(p.get("ownerId"), "a/b c");
        let (op, p) = found("PATCH", "/v1/tokens/abc");
        assert_eq!(op, Op::Api(ApiOp::UpdateToken));
        assert_eq!(p.get("id"), "abc");
        assert_eq!(p.get("nope"), "");
        // GET on the import path is a lookup of a token named "import" (404 later),
        // exactly as before the table existed.
        let (op, p) = found("GET", "/v1/tokens/import");
        assert_eq!(op, Op::Api(ApiOp::GetToken));
        assert_eq!(p.get("id"), "import");
    }

    #[test]
    fn extra_missing_or_empty_segments_do_not_match() {
        for path in [
            "/v1/tokens/abc/revoke/now",
            "/v1/tokens/abc/unknown",
            "/v1/owners/u",
            "/v1/owners/u/disable/x",
            "/v1/tokens//revoke",
            "/v1/owners//enable",
            "/v1/tokens/",
            "/v1/audit/",
            "/v1",
            "/",
            "",
            "healthz",
            "/healthz/x",
            "/v1/tokens/%FF",
        ] {
            assert_eq!(match_route("GET", path), Match::NotFound, "GET {path}");
            assert_eq!(match_route("POST", path), Match::NotFound, "POST {path}");
        }
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones() {
        assert_eq!(
            match_route("PUT", "/v1/tokens/abc"),
            Match::MethodNotAllowed {
                allow: vec!["GET", "PATCH", "DELETE"],
                requires_auth: true
            }
        );
        assert_eq!(
            match_route("DELETE", "/v1/tokens"),
            Match::MethodNotAllowed {
                allow: vec!["POST", "GET"],
                requires_auth: true
            }
        );
        assert_eq!(
            match_route("POST", "/healthz"),
            Match::MethodNotAllowed {
                allow: vec!["GET"],
                requires_auth: false
            }
        );
    }

    #[test]
    fn every_capture_dispatch_reads_is_in_its_template() {
        for r in ROUTES {
            let wanted = match r.op {
                Op::Public(_)
                | Op::Api(
                    ApiOp::GetCaller | ApiOp::CreateToken | ApiOp::ListTokens | ApiOp::ImportToken,
                )
                | Op::Api(ApiOp::ListAudit | ApiOp::ReloadConfig | ApiOp::ListWebhookDeliveries) => {
                    None
                }
                Op::Api(
                    ApiOp::GetToken
                    | ApiOp::UpdateToken
                    | ApiOp::DeleteToken
                    | ApiOp::TokenUsage
                    | ApiOp::TokenIps
                    | ApiOp::TokenQuota
                    | ApiOp::RevokeToken
                    | ApiOp::DeactivateToken
                    | ApiOp::ActivateToken
                    | ApiOp::RegenerateToken
                    | ApiOp::RedeliverWebhook,
                ) => Some("{id}"),
                Op::Api(ApiOp::DisableOwner | ApiOp::EnableOwner) => Some("{ownerId}"),
            };
            match wanted {
                Some(w) => assert!(r.path.contains(w), "{} {}", r.method, r.path),
                None => assert!(!r.path.contains('{'), "{} {}", r.method, r.path),
            }
        }
    }

    #[test]
    fn routes_are_unique_and_operation_ids_distinct() {
        let mut seen = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {}", r.method, r.path);
            assert!(ids.insert(r.op.operation_id()), "{:?}", r.op);
            assert!(r.path.starts_with('/'));
            // Everything under /v1 except the API description needs a caller.
            let public = matches!(r.op, Op::Public(_));
            assert_eq!(
                public,
                !r.path.starts_with("/v1/") || r.path == "/v1/openapi.json",
                "{}",
                r.path
            );
        }
    }
}
