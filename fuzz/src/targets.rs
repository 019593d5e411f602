//! The fuzz targets' bodies: each takes arbitrary bytes and drives one parser of
//! patgate's attack surface. A panic is a finding. Shared by the libFuzzer binaries in
//! `fuzz_targets/` and by `tests/fuzz_corpus.rs`, which replays the saved corpora
//! without the fuzzer on every CI run.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderValue, header};

/// Token format and checksum: never panics; whatever parses re-parses, and a
/// generated-looking token with one byte changed does not.
pub fn token_parse(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for prefix in ["pat_", "dcp_", "x_"] {
        if patgate::token::parse(s, prefix).is_ok() {
            assert!(s.starts_with(prefix));
            assert_eq!(patgate::token::parse(s, prefix), Ok(()));
        }
    }
    let _ = patgate::token::display_prefix(s);
    let _ = patgate::token::TokenHash::of(s);
}

/// `Authorization` and `X-Forwarded-For`/`Forwarded` handling: the Bearer extraction,
/// the offline format check and the client-IP resolution behind a trusted proxy.
pub fn headers(data: &[u8]) {
    let mut h = HeaderMap::new();
    // Split the input into a few header values at newlines.
    let mut parts = data.split(|b| *b == b'\n');
    let names = [
        header::AUTHORIZATION,
        http::HeaderName::from_static("x-forwarded-for"),
        header::FORWARDED,
        header::AUTHORIZATION,
    ];
    for name in names {
        if let Some(p) = parts.next()
            && let Ok(v) = HeaderValue::from_bytes(p)
        {
            h.append(name, v);
        }
    }
    static TOKENS: std::sync::OnceLock<Option<patgate::config::TokenSettings>> =
        std::sync::OnceLock::new();
    let tokens = TOKENS.get_or_init(|| {
        patgate::config::from_yaml(
            "tokens: {accept_foreign: true, foreign_prefixes: [ghp_]}\nroutes: []\n",
        )
        .map(|s| s.tokens)
        .ok()
    });
    if let Ok(t) = patgate::auth::credentials::bearer(&h) {
        assert!(!t.is_empty() && !t.contains(' '));
        if let Some(tokens) = tokens {
            let _ = patgate::auth::credentials::check_format(t, tokens);
        }
    }
    let trusted = [
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.1/32".parse().unwrap(),
    ];
    let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let ip = patgate::client_ip::resolve(peer, &h, &trusted);
    let _ = patgate::client_ip::canonical(ip);
}

/// Request paths: normalisation never panics, never yields a path with `..`
/// segments or without a leading `/`, and is idempotent.
pub fn path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(n) = patgate::proxy::path::normalize(s) {
        // A path, or the asterisk-form of `OPTIONS *`.
        assert!(n.starts_with('/') || n == "*", "{n:?}");
        assert!(!n.split('/').any(|seg| seg == ".."), "{n:?}");
        let again = patgate::proxy::path::normalize(&n).map(|c| c.into_owned());
        assert_eq!(again.as_deref(), Some(&*n), "normalise twice");
    }
}

/// The config loader: any YAML either loads or is rejected with field-path errors.
pub fn config(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = patgate::config::from_yaml(s) {
        assert!(!errors.0.is_empty());
    }
}

/// Admin API JSON bodies: create and patch field parsing.
pub fn admin_json(data: &[u8]) {
    if let Ok(mut f) = patgate::admin::input::Fields::parse(data) {
        let _ = patgate::admin::input::new_token(&mut f);
    }
    if let Ok(mut f) = patgate::admin::input::Fields::parse(data) {
        let _ = patgate::admin::input::patch(&mut f);
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name.
pub const TARGETS: [(&str, Target); 5] = [
    ("token_parse", token_parse),
    ("headers", headers),
    ("path", path),
    ("config", config),
    ("admin_json", admin_json),
];
