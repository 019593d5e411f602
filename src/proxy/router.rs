//! Route matching: host (optional), longest path prefix, methods.
//!
//! Routes are pre-sorted once per config (longest prefix first, host-bound before
//! host-less at equal length), so matching is a linear scan that stops at the first
//! hit — no allocation.

use std::sync::Arc;

use http::Method;

use crate::config::Route;
use crate::proxy::upstream::UpstreamPool;

/// A route with its upstream pool resolved.
#[derive(Debug)]
pub struct RouteEntry {
    /// The configured route.
    pub route: Route,
    /// Its name, shared: requests carry it to metrics and logs without a copy.
    pub name: Arc<str>,
    /// Where it forwards.
    pub pool: Arc<UpstreamPool>,
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    entries: Vec<RouteEntry>,
}

impl Router {
    /// Builds the table.
    pub fn new(mut entries: Vec<RouteEntry>) -> Self {
        entries.sort_by(|a, b| {
            b.route
                .path_prefix
                .len()
                .cmp(&a.route.path_prefix.len())
                .then(b.route.host.is_some().cmp(&a.route.host.is_some()))
        });
        Router { entries }
    }

    /// The route for `host` (lower-case, no port), `path` (normalised) and `method`.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<&RouteEntry> {
        self.entries.iter().find(|e| {
            let r = &e.route;
            path.starts_with(r.path_prefix.as_str())
                && r.host.as_deref().is_none_or(|h| host == Some(h))
                && (r.methods.is_empty() || r.methods.contains(method))
        })
    }

    /// All routes, in match order.
    pub fn entries(&self) -> &[RouteEntry] {
        &self.entries
    }
}

/// The request's host without port, lower-cased only when needed.
pub fn request_host<'a>(
    uri_host: Option<&'a str>,
    host_header: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    let raw = uri_host.or(host_header)?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split_once(']').map_or(raw, |(h, _)| h)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parsing() {
        assert_eq!(
            request_host(None, Some("API.example.com:8080")).unwrap(),
            "api.example.com"
        );
        assert_eq!(request_host(Some("h"), Some("other")).unwrap(), "h");
        assert_eq!(request_host(None, Some("[::1]:80")).unwrap(), "::1");
        assert!(request_host(None, None).is_none());
    }
}
