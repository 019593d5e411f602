//! The token format: generation, offline validation, hashing, display prefix.
//!
//! Pure code — no I/O, no async. A token is `<prefix><body>` where the body is
//! [`BODY_LEN`] base62 characters: [`RANDOM_LEN`] random characters drawn from the OS
//! CSPRNG (37 × log2(62) ≈ 220 bits) followed by a [`CHECKSUM_LEN`]-character, zero
//! padded base62 encoding of CRC32(prefix + random part).
//!
//! Invariants:
//! - [`parse`] allocates nothing and touches no I/O: it runs before any cache or store
//!   lookup, so garbage and typos cost a few hundred nanoseconds and never reach Redis.
//! - Only [`TokenHash`] (SHA-256 of the full token) is ever stored; [`display_prefix`]
//!   (the first 12 characters) is the only part of a token that may be logged or shown.

use std::fmt;

use sha2::{Digest, Sha256};

/// Number of random base62 characters in a token body.
pub const RANDOM_LEN: usize = 37;
/// Number of base62 characters of the CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Length of the body that follows the prefix.
pub const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
/// Length of the display prefix (safe to log and show).
pub const DISPLAY_PREFIX_LEN: usize = 12;
/// Longest token we ever look at; anything longer is rejected before hashing.
pub const MAX_TOKEN_LEN: usize = 512;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented token was rejected offline. Every variant maps to the same client
/// message (SPEC §3 row 1); the variant only feeds logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The token does not start with the configured prefix.
    #[error("wrong prefix")]
    WrongPrefix,
    /// The body is not exactly [`BODY_LEN`] characters.
    #[error("wrong length")]
    WrongLength,
    /// The body holds a character outside `[0-9A-Za-z]`.
    #[error("invalid character")]
    InvalidCharacter,
    /// The checksum does not match the random part.
    #[error("checksum mismatch")]
    ChecksumMismatch,
}

/// SHA-256 of a full token: the only form in which a token is stored or cached.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl std::hash::Hash for TokenHash {
    /// Feeds the first 8 bytes as one `u64`: the value is already a uniform SHA-256
    /// output that no client can steer (that would need a preimage), so hash maps keyed
    /// by it can use [`HashKeyHasher`] and skip a second hash function.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// A `Hasher` for maps keyed by [`TokenHash`]: passes its `u64` through.
///
/// Any other input (not expected) is folded with FNV-1a so the hasher stays correct.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashKeyHasher(u64);

impl std::hash::Hasher for HashKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `BuildHasher` for [`HashKeyHasher`].
pub type HashKeyState = std::hash::BuildHasherDefault<HashKeyHasher>;

impl TokenHash {
    /// Hashes a full token. Cost: one SHA-256 over ≤ 60 bytes, no allocation.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Lower-case hex, as stored.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form keeps logs readable; a hash is not a secret, but it is noise.
        write!(f, "TokenHash({}…)", &self.to_hex()[..12])
    }
}

/// Checks a prefix against SPEC §1: 2-16 chars of `[a-z0-9]`, ending in `_`.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    let b = prefix.as_bytes();
    if !(2..=16).contains(&b.len()) {
        return Err("must be 2-16 characters".into());
    }
    if b[b.len() - 1] != b'_' {
        return Err("must end with '_'".into());
    }
    if !b[..b.len() - 1]
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err("may only contain [a-z0-9] before the final '_'".into());
    }
    Ok(())
}

/// CRC32 over `prefix` then `random`, without concatenating.
fn checksum(prefix: &[u8], random: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(prefix);
    h.update(random);
    h.finalize()
}

/// Zero-padded base62 of a CRC32 (62^6 > 2^32, so six digits always suffice).
fn encode_checksum(crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    let mut n = crc;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Generates a fresh token with `prefix` from the OS CSPRNG.
///
/// Rejection sampling keeps every base62 character uniform (bytes ≥ 248 are
/// redrawn), so the random part carries the full 37 × 5.954 bits.
pub fn generate(prefix: &str) -> Result<String, getrandom::Error> {
    let mut random = [0u8; RANDOM_LEN];
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < RANDOM_LEN {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            if b < 248 && filled < RANDOM_LEN {
                random[filled] = ALPHABET[(b % 62) as usize];
                filled += 1;
            }
        }
    }
    let crc = encode_checksum(checksum(prefix.as_bytes(), &random));
    let mut token = String::with_capacity(prefix.len() + BODY_LEN);
    token.push_str(prefix);
    // Both arrays hold only ASCII alphabet bytes.
    token.extend(random.iter().map(|&b| b as char));
    token.extend(crc.iter().map(|&b| b as char));
    Ok(token)
}

/// Validates `token` against patgate's format for `prefix`, offline.
///
/// Cost: one pass over ≤ 59 bytes plus a CRC32; no allocation, no I/O.
pub fn parse(token: &str, prefix: &str) -> Result<(), FormatError> {
    let body = token
        .strip_prefix(prefix)
        .ok_or(FormatError::WrongPrefix)?
        .as_bytes();
    if body.len() != BODY_LEN {
        return Err(FormatError::WrongLength);
    }
    if !all_base62(body) {
        return Err(FormatError::InvalidCharacter);
    }
    let (random, sum) = body.split_at(RANDOM_LEN);
    let expected = encode_checksum(checksum(prefix.as_bytes(), random));
    if sum != expected {
        return Err(FormatError::ChecksumMismatch);
    }
    Ok(())
}

/// Whether every byte is `[0-9A-Za-z]`. Branch-free (no early exit), so the compiler
/// vectorises it: a per-byte `is_ascii_alphanumeric` loop was a tenth of a cached auth
/// decision.
fn all_base62(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(b'0') < 10)
            | (b.wrapping_sub(b'A') < 26)
            | (b.wrapping_sub(b'a') < 26))
    })
}

/// The first [`DISPLAY_PREFIX_LEN`] characters of a token: safe to log and show.
///
/// Works on any string (foreign tokens included) and never splits a UTF-8 character.
pub fn display_prefix(token: &str) -> &str {
    let mut end = token.len().min(DISPLAY_PREFIX_LEN);
    while !token.is_char_boundary(end) {
        end -= 1;
    }
    &token[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn all_base62_matches_is_ascii_alphanumeric_for_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(all_base62(&[b]), b.is_ascii_alphanumeric(), "byte {b}");
            assert_eq!(
                all_base62(&[b'a', b, b'Z']),
                b.is_ascii_alphanumeric(),
                "byte {b}"
            );
        }
        assert!(all_base62(b""));
    }

    #[test]
    fn generated_token_has_prefix_body_and_checksum() {
        let t = generate("pat_").unwrap();
        assert_eq!(t.len(), 4 + BODY_LEN);
        assert!(t.starts_with("pat_"));
        assert_eq!(parse(&t, "pat_"), Ok(()));
        assert_eq!(display_prefix(&t), &t[..12]);
    }

    #[test]
    fn rejects_each_malformation_with_its_reason() {
        let t = generate("dcp_").unwrap();
        assert_eq!(parse(&t, "pat_"), Err(FormatError::WrongPrefix));
        assert_eq!(
            parse(&t[..t.len() - 1], "dcp_"),
            Err(FormatError::WrongLength)
        );
        assert_eq!(
            parse(&format!("{t}x"), "dcp_"),
            Err(FormatError::WrongLength)
        );
        let mut bad = t.clone().into_bytes();
        bad[10] = b'-';
        assert_eq!(
            parse(std::str::from_utf8(&bad).unwrap(), "dcp_"),
            Err(FormatError::InvalidCharacter)
        );
        assert_eq!(parse("", "dcp_"), Err(FormatError::WrongPrefix));
    }

    #[test]
    fn checksum_is_bound_to_the_prefix() {
        // Same body, different prefix of the same length: the CRC covers the prefix.
        let t = generate("aaa_").unwrap();
        let moved = format!("bbb_{}", &t[4..]);
        assert_eq!(parse(&moved, "bbb_"), Err(FormatError::ChecksumMismatch));
    }

    #[test]
    fn hash_is_sha256_hex() {
        // echo -n abc | sha256sum
        assert_eq!(
            TokenHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let h = TokenHash::of("x");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
        assert_eq!(h.to_string(), h.to_hex());
    }

    #[test]
    fn prefix_rules() {
        assert!(validate_prefix("pat_").is_ok());
        assert!(validate_prefix("a_").is_ok());
        assert!(validate_prefix("_").is_err());
        assert!(validate_prefix("Pat_").is_err());
        assert!(validate_prefix("pat").is_err());
        assert!(validate_prefix("abcdefghijklmnop_").is_err());
    }

    #[test]
    fn display_prefix_never_splits_a_char() {
        assert_eq!(display_prefix("short"), "short");
        assert_eq!(display_prefix("ééééééééé"), "éééééé");
    }

    fn prefix_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,15}_"
    }

    proptest! {
        #[test]
        fn every_generated_token_parses(prefix in prefix_strategy()) {
            let t = generate(&prefix).unwrap();
            prop_assert_eq!(parse(&t, &prefix), Ok(()));
        }

        #[test]
        fn any_single_character_change_is_rejected(
            prefix in prefix_strategy(),
            pos in 0usize..BODY_LEN,
            replacement in 0usize..62,
        ) {
            let t = generate(&prefix).unwrap();
            let mut bytes = t.clone().into_bytes();
            let i = prefix.len() + pos;
            let new = ALPHABET[replacement];
            prop_assume!(bytes[i] != new);
            bytes[i] = new;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(parse(&changed, &prefix), Err(FormatError::ChecksumMismatch));
        }

        #[test]
        fn arbitrary_input_never_panics(s in ".{0,80}") {
            let _ = parse(&s, "pat_");
            let _ = display_prefix(&s);
        }
    }
}
