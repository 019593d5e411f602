//! Stage 1: the Bearer credential and the offline format check.
//!
//! Nothing here allocates or does I/O: a malformed token costs a header scan and at
//! most one CRC32, and never reaches the cache or the store.

use http::{HeaderMap, header};

use super::Deny;
use crate::config::TokenSettings;
use crate::token::{self, MAX_TOKEN_LEN};

/// The token from `Authorization: Bearer <token>`.
///
/// The scheme is case-insensitive (RFC 7235); exactly one header is accepted; the
/// token may not contain whitespace or non-ASCII bytes (no zero-width tricks).
pub fn bearer(headers: &HeaderMap) -> Result<&str, Deny> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Deny::Missing)?;
    if values.next().is_some() {
        return Err(Deny::Malformed(token::FormatError::WrongLength));
    }
    let bytes = value.as_bytes();
    let scheme = bytes.get(..7).ok_or(Deny::Missing)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Err(Deny::Missing);
    }
    let start = bytes[7..]
        .iter()
        .position(|&b| b != b' ')
        .map_or(bytes.len(), |i| 7 + i);
    let tok = &bytes[start..];
    if tok.is_empty() || tok.len() > MAX_TOKEN_LEN {
        return Err(Deny::Malformed(token::FormatError::WrongLength));
    }
    // Visible ASCII only (no space, tab, DEL or non-ASCII: no zero-width tricks), in
    // one branch-free pass the compiler vectorises.
    let visible = tok
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e));
    if !visible {
        return Err(Deny::Malformed(token::FormatError::InvalidCharacter));
    }
    // All ASCII, so this cannot fail; the check is a fast word-at-a-time scan.
    let tok = std::str::from_utf8(tok)
        .map_err(|_| Deny::Malformed(token::FormatError::InvalidCharacter))?;
    Ok(tok)
}

/// patgate's format for the configured prefix; with `accept_foreign`, any token that
/// starts with a known prefix (the configured one or `foreign_prefixes`) passes on to
/// the lookup, so imported hashes of another system's tokens keep working.
pub fn check_format(tok: &str, settings: &TokenSettings) -> Result<(), Deny> {
    match token::parse(tok, &settings.prefix) {
        Ok(()) => Ok(()),
        Err(e) => {
            if settings.accept_foreign
                && (tok.starts_with(settings.prefix.as_str())
                    || settings
                        .foreign_prefixes
                        .iter()
                        .any(|p| tok.starts_with(p.as_str())))
            {
                Ok(())
            } else {
                Err(Deny::Malformed(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for b in v {
            h.append(header::AUTHORIZATION, HeaderValue::from_bytes(b).unwrap());
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer(&HeaderMap::new()), Err(Deny::Missing));
        assert_eq!(bearer(&headers(&[b"Basic abc"])), Err(Deny::Missing));
        assert_eq!(bearer(&headers(&[b"Bearer"])), Err(Deny::Missing));
        assert_eq!(bearer(&headers(&[b"bearer pat_x"])), Ok("pat_x"));
        assert_eq!(bearer(&headers(&[b"BEARER   pat_x"])), Ok("pat_x"));
        assert!(matches!(
            bearer(&headers(&[b"Bearer pat_x", b"Bearer pat_y"])),
            Err(Deny::Malformed(_))
        ));
        assert!(matches!(
            bearer(&headers(&[b"Bearer pat_x\xe2\x80\x8b"])),
            Err(Deny::Malformed(_))
        ));
        assert!(matches!(
            bearer(&headers(&[b"Bearer pat x"])),
            Err(Deny::Malformed(_))
        ));
        for bad in [&b"Bearer pat_x\t"[..], b"Bearer pat_\xffx"] {
            assert_eq!(
                bearer(&headers(&[bad])),
                Err(Deny::Malformed(token::FormatError::InvalidCharacter)),
                "{bad:?}"
            );
        }
        assert_eq!(
            bearer(&headers(&[b"Bearer    "])),
            Err(Deny::Malformed(token::FormatError::WrongLength))
        );
        assert_eq!(bearer(&headers(&[b"Bearer !~"])), Ok("!~"));
        let long = format!("Bearer {}", "a".repeat(600));
        assert!(matches!(
            bearer(&headers(&[long.as_bytes()])),
            Err(Deny::Malformed(_))
        ));
    }

    fn settings(accept_foreign: bool) -> TokenSettings {
        TokenSettings {
            prefix: "pat_".into(),
            foreign_prefixes: vec!["ghp_".into()],
            default_expiry: None,
            max_expiry: None,
            accept_foreign,
            creation_limit: 5,
            max_grace_period: std::time::Duration::from_secs(86400),
        }
    }

    #[test]
    fn foreign_tokens_need_accept_foreign_and_a_known_prefix() {
        let good = token::generate("pat_").unwrap();
        assert_eq!(check_format(&good, &settings(false)), Ok(()));
        assert!(check_format("ghp_legacy123", &settings(false)).is_err());
        assert_eq!(check_format("ghp_legacy123", &settings(true)), Ok(()));
        assert_eq!(check_format("pat_legacy", &settings(true)), Ok(()));
        assert!(check_format("xyz_legacy", &settings(true)).is_err());
    }
}
