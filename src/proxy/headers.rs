//! Header hygiene on the way in and out: identity-header stripping, hop-by-hop
//! removal, `X-Forwarded-*`, and identity injection.
//!
//! Invariant: after [`strip_identity`] no client header starting with the identity
//! prefix survives, whatever its case or spelling — it runs first on every request,
//! on every route, authenticated or not. "Spelling" includes `_` for `-`: CGI-style
//! upstreams (WSGI, PHP, Rack, nginx with `underscores_in_headers`) read
//! `X_Auth_User_Id` and `X-Auth-User-Id` as the same `HTTP_X_AUTH_USER_ID`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::IdentityHeaders;
use crate::store::TokenView;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies also drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Client-IP claims other proxies set and some upstreams believe; from an untrusted
/// peer they are removed with `Forwarded` (only `X-Forwarded-For` is set by us).
static CLIENT_IP_CLAIMS: [HeaderName; 3] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
];

/// Whether header `name` starts with the identity `prefix`, reading `_` and `-` as
/// the same character (both are lower-case: `http` stores names lower-case, the
/// config lower-cases the prefix, so this is case-insensitive).
fn has_identity_prefix(name: &str, prefix: &str) -> bool {
    let fold = |b: u8| if b == b'_' { b'-' } else { b };
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(n, p)| fold(n) == fold(p))
}

/// Removes every header whose name starts with `prefix` in any case, with `_` or
/// `-`. Cost: one prefix compare per header; no allocation unless such a header is
/// present.
pub fn strip_identity(headers: &mut HeaderMap, prefix: &str) {
    if !headers
        .keys()
        .any(|k| has_identity_prefix(k.as_str(), prefix))
    {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| has_identity_prefix(k.as_str(), prefix))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || *name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers, including those named in `Connection`.
///
/// Usually none is present: one scan over the names finds that out, instead of nine
/// hashed removals per message.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(&name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(&PROXY_CONNECTION);
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (`Connection: upgrade` and
/// an `Upgrade` header), e.g. `websocket`.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Forwarding headers as CGI-style upstreams fold them (`X_Forwarded_For` reads as
/// `HTTP_X_FORWARDED_FOR`): an underscore spelling is never ours, so it is removed.
const FORWARDING_NAMES: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
];

fn strip_underscore_spellings(headers: &mut HeaderMap) {
    let spoof = |k: &HeaderName| {
        let n = k.as_str();
        n.contains('_')
            && FORWARDING_NAMES
                .iter()
                .any(|f| n.len() == f.len() && has_identity_prefix(n, f))
    };
    if !headers.keys().any(spoof) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|k| spoof(k)).cloned().collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Sets `X-Forwarded-For` / `-Proto` / `-Host`. A trusted peer's chain is extended;
/// an untrusted peer's claims (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
/// `True-Client-IP`, `X-Client-IP`) are replaced or removed. Underscore spellings
/// of these (`X_Forwarded_For`) are removed from every peer.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    scheme: &'static str,
    host: Option<&HeaderValue>,
) {
    strip_underscore_spellings(headers);
    let peer_s = peer.to_string();
    let xff = if peer_trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            peer_s
        } else {
            format!("{}, {peer_s}", prior.join(", "))
        }
    } else {
        headers.remove(&FORWARDED);
        for name in &CLIENT_IP_CLAIMS {
            headers.remove(name);
        }
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        peer_s
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = host
    {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
}

/// Sets `name: value`; `false` (and nothing set) when `value` is not a legal header
/// value (CR, LF, NUL or another control byte): it is never split or forwarded.
fn put(headers: &mut HeaderMap, name: &HeaderName, value: &str) -> bool {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name.clone(), v);
            true
        }
        Err(_) => false,
    }
}

/// Injects the identity of `token` under the configured names. Returns `false`
/// when some value could not be represented as a header value — the admin API never
/// stores such values, so the record did not come from it (a corrupted or hostile
/// store) and the caller must not forward the request with a partial identity.
#[must_use]
pub fn inject_identity(
    headers: &mut HeaderMap,
    names: &IdentityHeaders,
    token: &TokenView,
) -> bool {
    let mut ok = put(headers, &names.user_id, token.owner_id());
    ok &= put(headers, &names.token_id, token.id());
    ok &= put(headers, &names.token_prefix, token.prefix());
    ok &= put(headers, &names.token_type, token.kind().as_str());
    if let Some(org) = token.org_id() {
        ok &= put(headers, &names.org_id, org);
    }
    if let Some(project) = token.project_id() {
        ok &= put(headers, &names.project_id, project);
    }
    ok &= put(headers, &names.scopes, &token.scopes().join(","));
    ok &= put(headers, &names.permissions, &token.permissions().join(","));
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_identity_headers_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert("X-Auth-User-Id", HeaderValue::from_static("evil"));
        h.insert("x-AUTH-anything", HeaderValue::from_static("evil"));
        h.append("x-auth-user-id", HeaderValue::from_static("evil2"));
        h.insert("x-authority", HeaderValue::from_static("kept"));
        h.insert("accept", HeaderValue::from_static("kept"));
        strip_identity(&mut h, "x-auth-");
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-authority"));
    }

    #[test]
    fn strips_identity_headers_spelled_with_underscores() {
        let mut h = HeaderMap::new();
        for name in [
            "X_Auth_User_Id",
            "x-auth_scopes",
            "x_auth-org-id",
            "X_AUTH_",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert("x_authority", HeaderValue::from_static("kept"));
        h.insert("x-auth", HeaderValue::from_static("kept"));
        strip_identity(&mut h, "x-auth-");
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(h.contains_key("x_authority") && h.contains_key("x-auth"));
        // A prefix configured with `_` covers `-` spellings as well.
        let mut h = HeaderMap::new();
        h.insert("x-gw-user", HeaderValue::from_static("evil"));
        strip_identity(&mut h, "x_gw_");
        assert!(h.is_empty());
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);

        // Each one alone is found by the scan; a message without any is untouched.
        for name in [
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "trailer",
        ] {
            let mut h = HeaderMap::new();
            h.insert("accept", HeaderValue::from_static("*/*"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} survived");
            assert!(h.contains_key("accept"));
        }
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn forwarded_headers_from_untrusted_peer_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        h.insert("x-real-ip", HeaderValue::from_static("1.1.1.1"));
        h.insert("true-client-ip", HeaderValue::from_static("1.1.1.1"));
        h.insert("x_forwarded_for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x_real_ip", HeaderValue::from_static("1.1.1.1"));
        h.insert("x_custom", HeaderValue::from_static("kept"));
        let host = HeaderValue::from_static("api.example.com");
        set_forwarded(
            &mut h,
            "203.0.113.5".parse().unwrap(),
            false,
            "http",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.5");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-real-ip") && !h.contains_key("true-client-ip"));
        assert!(!h.contains_key("x_forwarded_for") && !h.contains_key("x_real_ip"));
        assert_eq!(h["x_custom"], "kept");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        set_forwarded(&mut h, "10.0.0.1".parse().unwrap(), true, "http", None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.1");
    }
}
