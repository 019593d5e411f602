//! Signed identity for zero-trust upstreams: a short-lived compact JWS (EdDSA,
//! Ed25519) in one identity header, and the public keys as a JWKS.
//!
//! The identity headers assert who called, but only to an upstream that can trust
//! the network between it and patgate. The assertion lets an upstream verify that the
//! identity came from patgate: it checks the signature against
//! `/_patgate/jwks.json`, `exp`, and that `aud` is its route's name.
//!
//! Claims: `iss` (config, default `patgate`), `sub` (ownerId), `tid` (token id), `org`,
//! `project`, `scopes`, `permissions`, `iat`, `exp` (`iat` + `ttl`), `aud` (route
//! name). Header: `alg: EdDSA`, `typ: JWT`, `kid`: the signing key's id. The first
//! configured key signs; every configured key is published, so a key can be rotated by
//! adding the new one second, publishing, then moving it first.
//!
//! Cost: signing is ~20 µs, so an assertion is reused for the same token, route and
//! cached record for up to half its lifetime (a changed record, e.g. new scopes,
//! has a new cache entry and gets a fresh assertion at once).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{AssertionSettings, ConfigError};
use crate::store::TokenView;

/// Where the public keys are served on the data plane.
pub const JWKS_PATH: &str = "/_patgate/jwks.json";

struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
}

#[derive(Clone)]
struct Issued {
    /// The cached token it was issued for (compared by pointer: a refetched record
    /// is a new view).
    token: Arc<TokenView>,
    value: HeaderValue,
}

/// Signs assertions with the configured keys (one per config generation).
pub struct Signer {
    /// The header the assertion goes in.
    pub header: HeaderName,
    ttl: Duration,
    issuer: String,
    keys: Vec<SigningKey>,
    jwks: Bytes,
    issued: moka::sync::Cache<(Arc<str>, String), Issued>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("header", &self.header)
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn load_key(path: &std::path::Path) -> Result<Ed25519KeyPair, String> {
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "cannot read an Ed25519 PKCS#8 PEM key from {}: {e}",
            path.display()
        )
    })?;
    let PrivateKeyDer::Pkcs8(pkcs8) = der else {
        return Err(format!(
            "{}: not a PKCS#8 key (create one with `openssl genpkey -algorithm ed25519`)",
            path.display()
        ));
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.secret_pkcs8_der())
        .map_err(|e| format!("{}: not an Ed25519 key: {e}", path.display()))
}

impl Signer {
    /// Loads every key (blocking file reads); each unusable one is an error with its
    /// field path.
    pub fn new(settings: &AssertionSettings) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        for (i, k) in settings.keys.iter().enumerate() {
            match load_key(&k.file) {
                Ok(pair) => keys.push(SigningKey {
                    kid: k.id.clone(),
                    pair,
                }),
                Err(reason) => errors.push(ConfigError {
                    path: format!("identity_headers.assertion.keys[{i}].file"),
                    reason,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let jwks = serde_json::json!({
            "keys": keys.iter().map(|k| serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": k.kid,
                "x": B64.encode(k.pair.public_key().as_ref()),
            })).collect::<Vec<_>>()
        });
        Ok(Signer {
            header: settings.header.clone(),
            ttl: settings.ttl,
            issuer: settings.issuer.clone(),
            keys,
            jwks: Bytes::from(jwks.to_string()),
            issued: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.ttl / 2)
                .build(),
        })
    }

    /// The JWKS document (`{"keys":[...]}`).
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The assertion for `token` on `route`: reused while it has more than half its
    /// lifetime left and the record has not changed, else freshly signed.
    pub fn assertion(&self, route: &Arc<str>, token: &Arc<TokenView>) -> Option<HeaderValue> {
        let key = (route.clone(), token.id().to_string());
        if let Some(hit) = self.issued.get(&key)
            && Arc::ptr_eq(&hit.token, token)
        {
            return Some(hit.value);
        }
        let value = self.sign(route, token, jiff::Timestamp::now())?;
        self.issued.insert(
            key,
            Issued {
                token: token.clone(),
                value: value.clone(),
            },
        );
        Some(value)
    }

    /// Signs a fresh assertion issued at `now`.
    fn sign(&self, route: &str, t: &TokenView, now: jiff::Timestamp) -> Option<HeaderValue> {
        let key = self.keys.first()?;
        let iat = now.as_second();
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid});
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": t.owner_id(),
            "tid": t.id(),
            "org": t.org_id(),
            "project": t.project_id(),
            "scopes": t.scopes(),
            "permissions": t.permissions(),
            "aud": route,
            "iat": iat,
            "exp": iat + i64::try_from(self.ttl.as_secs()).unwrap_or(60),
        });
        let mut jws = B64.encode(header.to_string());
        jws.push('.');
        jws.push_str(&B64.encode(claims.to_string()));
        let sig = key.pair.sign(jws.as_bytes());
        jws.push('.');
        jws.push_str(&B64.encode(sig.as_ref()));
        // base64url and dots only: always a valid header value.
        HeaderValue::from_str(&jws).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AssertionKey;
    use crate::store::{Lookup, TokenRecord, TokenType};

    fn record() -> TokenRecord {
        TokenRecord {
            id: "01TEST".into(),
            name: "t".into(),
            description: String::new(),
            prefix: "pat_abcdefgh".into(),
            kind: TokenType::User,
            owner_id: "u1".into(),
            org_id: Some("o1".into()),
            project_id: None,
            permissions: vec!["read".into()],
            scopes: vec!["documents".into()],
            created_at: jiff::Timestamp::now(),
            created_by: "test".into(),
            expires_at: None,
            is_active: true,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            ip_allowlist: vec![],
            rate_limit: None,
            metadata: Default::default(),
        }
    }

    fn signer(dir: &std::path::Path) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let file = dir.join("k1.pem");
        std::fs::write(&file, pem).unwrap();
        Signer::new(&AssertionSettings {
            header: HeaderName::from_static("x-auth-assertion"),
            ttl: Duration::from_secs(60),
            issuer: "patgate".into(),
            keys: vec![AssertionKey {
                id: "k1".into(),
                file,
            }],
        })
        .unwrap()
    }

    #[test]
    fn signs_a_verifiable_compact_jws_and_reuses_it_for_the_same_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path());
        let token = Arc::new(TokenView::new(Lookup {
            record: record(),
            grace_until: None,
        }));
        let route: Arc<str> = Arc::from("api");
        let v = s.assertion(&route, &token).unwrap();
        let jws = v.to_str().unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "u1");
        assert_eq!(claims["tid"], "01TEST");
        assert_eq!(claims["aud"], "api");
        assert_eq!(claims["scopes"], serde_json::json!(["documents"]));
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            60
        );
        // The signature verifies with the published key.
        let jwks: serde_json::Value = serde_json::from_slice(&s.jwks()).unwrap();
        let x = B64.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x);
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &B64.decode(parts[2]).unwrap())
            .expect("signature verifies");
        // A tampered payload does not.
        let mut bad = claims.clone();
        bad["sub"] = "admin".into();
        let forged = format!("{}.{}", parts[0], B64.encode(bad.to_string()));
        assert!(
            public
                .verify(forged.as_bytes(), &B64.decode(parts[2]).unwrap())
                .is_err()
        );
        // Same record: the same assertion; a refetched record: a fresh one.
        assert_eq!(s.assertion(&route, &token).unwrap(), v);
        let changed = Arc::new(TokenView::new(Lookup {
            record: TokenRecord {
                scopes: vec!["billing".into()],
                ..record()
            },
            grace_until: None,
        }));
        let v2 = s.assertion(&route, &changed).unwrap();
        assert_ne!(v2, v);
    }

    #[test]
    fn an_unusable_key_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.pem");
        std::fs::write(&file, "not a key").unwrap();
        let err = Signer::new(&AssertionSettings {
            header: HeaderName::from_static("x-auth-assertion"),
            ttl: Duration::from_secs(60),
            issuer: "patgate".into(),
            keys: vec![AssertionKey {
                id: "k1".into(),
                file,
            }],
        })
        .unwrap_err();
        assert_eq!(err[0].path, "identity_headers.assertion.keys[0].file");
    }
}
