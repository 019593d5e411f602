//! Who is calling the admin API.
//!
//! An admin key is accepted when its SHA-256 equals one of `admin.api_keys`; the
//! comparison runs in constant time over *every* configured key (no early exit), so
//! timing reveals neither which key matched nor how many bytes did. Otherwise a PAT
//! is accepted when it passes the data plane's checks (format, lookup, state, owner,
//! IP allowlist) and holds `tokens:admin` or `tokens:self` ([`resolve`]).

use http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::body::Body;
use crate::config::AdminKey;
use crate::error::json_error;
use crate::lifecycle::Actor;
use crate::token::TokenHash;

fn unauthorized(message: &str) -> Box<http::Response<Body>> {
    let mut r = json_error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(r#"Bearer realm="patgate-admin""#),
    );
    Box::new(r)
}

/// The matching admin key's name, if any.
pub fn match_admin_key<'k>(presented: &str, keys: &'k [AdminKey]) -> Option<&'k AdminKey> {
    let digest = TokenHash::of(presented).0;
    let mut found: Option<&AdminKey> = None;
    for k in keys {
        let eq: bool = k.sha256.ct_eq(&digest).into();
        if eq && found.is_none() {
            found = Some(k);
        }
    }
    found
}

/// Authenticates the caller from `Authorization: Bearer <admin key>`.
pub fn authenticate(
    headers: &HeaderMap,
    keys: &[AdminKey],
) -> Result<Actor, Box<http::Response<Body>>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "Missing credentials. Expected Authorization: Bearer <admin key>",
        ));
    };
    let Ok(value) = value.to_str() else {
        return Err(unauthorized("Invalid admin credentials"));
    };
    let Some(presented) = value
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| value[7..].trim())
    else {
        return Err(unauthorized(
            "Missing credentials. Expected Authorization: Bearer <admin key>",
        ));
    };
    match match_admin_key(presented, keys) {
        Some(k) => Ok(Actor::Admin(k.name.clone())),
        None => Err(unauthorized("Invalid admin credentials")),
    }
}

/// Resolves the caller: an admin key, or a PAT holding `tokens:admin`/`tokens:self`.
/// Failures are complete responses (401/403/503 with the SPEC's messages).
pub async fn resolve(
    headers: &HeaderMap,
    keys: &[AdminKey],
    tokens: &crate::config::TokenSettings,
    cache: &crate::cache::TokenCache,
    client_ip: std::net::IpAddr,
) -> Result<crate::admin::authorize::Principal, Box<http::Response<Body>>> {
    use crate::admin::authorize::{Principal, TOKENS_ADMIN, TOKENS_SELF};
    use crate::auth::{Deny, credentials, ip_allowlist, state};
    use crate::error::GatewayError;

    let deny = |d: Deny| Box::new(GatewayError::Denied(d).into_response(&tokens.prefix));
    let presented = match credentials::bearer(headers) {
        Ok(t) => t,
        Err(_) => {
            return Err(unauthorized(
                "Missing credentials. Expected Authorization: Bearer <admin key>",
            ));
        }
    };
    if let Some(k) = match_admin_key(presented, keys) {
        return Ok(Principal::AdminKey(k.name.clone()));
    }
    if credentials::check_format(presented, tokens).is_err() {
        return Err(unauthorized("Invalid admin credentials"));
    }
    let token = match cache.lookup(TokenHash::of(presented)).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(deny(Deny::Unknown)),
        Err(_) => return Err(deny(Deny::BackendUnavailable)),
    };
    state::check(&token, jiff::Timestamp::now).map_err(deny)?;
    match cache.owner_disabled(token.owner_id()).await {
        Ok(false) => {}
        Ok(true) => return Err(deny(Deny::OwnerDisabled)),
        Err(_) => return Err(deny(Deny::BackendUnavailable)),
    }
    ip_allowlist::check(&token, client_ip).map_err(deny)?;
    let org_admin = token.has_permission(TOKENS_ADMIN);
    if !org_admin && !token.has_permission(TOKENS_SELF) {
        return Err(deny(Deny::MissingPermission(format!(
            "{TOKENS_ADMIN} or {TOKENS_SELF}"
        ))));
    }
    Ok(Principal::Pat { token, org_admin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_key_matches_by_sha256() {
        let keys = vec![
            AdminKey {
                name: "a".into(),
                sha256: TokenHash::of("key-a").0,
            },
            AdminKey {
                name: "b".into(),
                sha256: TokenHash::of("key-b").0,
            },
        ];
        assert_eq!(
            match_admin_key("key-b", &keys).map(|k| k.name.as_str()),
            Some("b")
        );
        assert!(match_admin_key("key-c", &keys).is_none());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer key-a".parse().unwrap());
        assert_eq!(authenticate(&h, &keys).unwrap(), Actor::Admin("a".into()));
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert_eq!(
            authenticate(&h, &keys).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            authenticate(&HeaderMap::new(), &keys).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
