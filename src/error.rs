//! The one place where a denial or failure becomes an HTTP response.
//!
//! [`GatewayError`] lists every way the data plane answers instead of the upstream.
//! [`GatewayError::parts`] is a single exhaustive `match` (no `_` arm): a new variant
//! does not compile until someone decides its status and client message. Clients get
//! the SPEC §3 message; the variant's detail goes to logs only.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::auth::Deny;
use crate::body::{self, Body};
use crate::ratelimit::RateHeaders;

/// Every synthetic answer of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The auth pipeline said no.
    #[error("denied: {0:?}")]
    Denied(Deny),
    /// No route matches host, path and method.
    #[error("no route")]
    NoRoute,
    /// The upstream refused, reset or could not be resolved.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The request body is larger than the route allows.
    #[error("request body too large")]
    BodyTooLarge,
    /// The request could not be turned into an upstream request.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

/// What a response is made of before it is built.
#[derive(Debug)]
pub struct ErrorParts {
    /// HTTP status.
    pub status: StatusCode,
    /// The `error` message of the JSON body.
    pub message: String,
    /// `WWW-Authenticate` value for 401s.
    pub www_authenticate: Option<&'static str>,
    /// `Retry-After` seconds for 429s.
    pub retry_after: Option<u64>,
    /// `RateLimit-*` header values.
    pub rate: Option<RateHeaders>,
    /// A short machine name for logs/metrics (`deny.reason`).
    pub reason: &'static str,
}

const REALM_INVALID: &str = r#"Bearer realm="patgate", error="invalid_token""#;
const REALM_MISSING: &str = r#"Bearer realm="patgate""#;

fn secs_ceil(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl GatewayError {
    /// Status, client message and headers. `prefix` is the configured token prefix.
    pub fn parts(&self, prefix: &str) -> ErrorParts {
        let plain = |status: StatusCode, message: &str, reason: &'static str| ErrorParts {
            status,
            message: message.to_string(),
            www_authenticate: None,
            retry_after: None,
            rate: None,
            reason,
        };
        let unauthorized = |message: &str, reason: &'static str| ErrorParts {
            www_authenticate: Some(REALM_INVALID),
            ..plain(StatusCode::UNAUTHORIZED, message, reason)
        };
        let forbidden = |message: String, reason: &'static str| ErrorParts {
            message,
            ..plain(StatusCode::FORBIDDEN, "", reason)
        };
        match self {
            GatewayError::Denied(deny) => match deny {
                Deny::Missing => ErrorParts {
                    www_authenticate: Some(REALM_MISSING),
                    ..plain(
                        StatusCode::UNAUTHORIZED,
                        &missing_message(prefix),
                        "missing",
                    )
                },
                Deny::Malformed(_) => unauthorized(&missing_message(prefix), "malformed"),
                Deny::Unknown => unauthorized("Invalid PAT", "unknown"),
                Deny::Revoked => unauthorized("PAT has been revoked", "revoked"),
                Deny::Expired => unauthorized("PAT has expired", "expired"),
                Deny::Inactive => unauthorized("PAT is inactive", "inactive"),
                Deny::OwnerDisabled => unauthorized("PAT is inactive", "owner_disabled"),
                Deny::IpNotAllowed => forbidden(
                    "IP address not allowed for this PAT".into(),
                    "ip_not_allowed",
                ),
                Deny::MissingScope(s) => {
                    forbidden(format!("PAT lacks required scope: {s}"), "missing_scope")
                }
                Deny::MissingPermission(p) => forbidden(
                    format!("PAT lacks required permission: {p}"),
                    "missing_permission",
                ),
                Deny::WrongProject => {
                    forbidden("PAT is not valid for this project".into(), "wrong_project")
                }
                Deny::RateLimited(rate) => ErrorParts {
                    retry_after: Some(secs_ceil(rate.retry_after)),
                    rate: Some(*rate),
                    ..plain(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Rate limit exceeded",
                        "rate_limited",
                    )
                },
                Deny::QuotaExceeded(reset) => ErrorParts {
                    retry_after: Some(secs_ceil(*reset)),
                    ..plain(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Quota exceeded",
                        "quota_exceeded",
                    )
                },
                Deny::BackendUnavailable => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Authentication backend unavailable",
                    "backend_unavailable",
                ),
            },
            GatewayError::NoRoute => plain(StatusCode::NOT_FOUND, "No route", "no_route"),
            GatewayError::UpstreamUnavailable(_) => plain(
                StatusCode::BAD_GATEWAY,
                "Upstream unavailable",
                "upstream_unavailable",
            ),
            GatewayError::UpstreamTimeout => plain(
                StatusCode::GATEWAY_TIMEOUT,
                "Upstream timed out",
                "upstream_timeout",
            ),
            GatewayError::BodyTooLarge => plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
                "body_too_large",
            ),
            GatewayError::BadRequest(why) => plain(StatusCode::BAD_REQUEST, why, "bad_request"),
        }
    }

    /// Builds the JSON response.
    pub fn into_response(self, prefix: &str) -> Response<Body> {
        self.parts(prefix).into_response()
    }
}

impl ErrorParts {
    /// Builds `{"error": message}` with the headers this answer needs.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = json_error(self.status, &self.message);
        let h = resp.headers_mut();
        if let Some(v) = self.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(rate) = self.rate {
            rate.apply(h);
        }
        resp
    }
}

/// SPEC §3 row 1, for the configured prefix.
pub fn missing_message(prefix: &str) -> String {
    format!("Missing or invalid PAT. Expected Authorization: Bearer {prefix}...")
}

/// `{"error": message}` with `status` and `Content-Type: application/json`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    json_response(status, Bytes::from(body))
}

/// A JSON response with a prepared body.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
