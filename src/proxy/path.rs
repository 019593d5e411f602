//! Request-path normalisation before routing.
//!
//! `/api/../admin` must not match the `/api/` route and then reach `/admin` upstream.
//! The *normalised* path is both matched and forwarded, so the gateway and the
//! upstream agree on what was asked for:
//! - percent-encoded unreserved characters (`%61` for `a`, `%2E` for `.`, …) are
//!   decoded (RFC 3986 §6.2.2.2), so `/%61dmin` is `/admin` for the router just as
//!   it is for every upstream that decodes paths;
//! - dot segments (also percent-encoded: `%2e`, `%2E`) are resolved per RFC 3986
//!   §5.2.4; a path that climbs above the root is rejected;
//! - runs of `/` are merged (`//admin` is `/admin`, as nginx's `merge_slashes` and
//!   most frameworks read it), so a catch-all public route cannot carry `//admin`
//!   to an upstream that merges slashes itself.
//!
//! Rejected outright (`None` → `400 Invalid request path`), because some upstream
//! would read them as a different path than the router did:
//! - a backslash, raw or `%5C` (IIS, Windows file servers and some routers treat it
//!   as `/`);
//! - an encoded slash `%2F` that, decoded, would make a dot segment or an empty
//!   segment (`/api%2F..%2Fadmin`, `/pub%2F%2Fadmin`). Other `%2F` uses, such as
//!   `/projects/group%2Fname` (GitLab-style ids), pass through unchanged;
//! - a dot segment followed by path parameters (`/api/..;x=1/admin`): Tomcat and
//!   Spring drop the `;…` part and then resolve the `..`.

use std::borrow::Cow;

fn is_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(seg: &str) -> bool {
    matches!(seg.len(), 2 | 4 | 6) && seg.to_ascii_lowercase().replace("%2e", ".").eq("..")
}

/// Whether `seg` contains `needle` (ASCII, case-insensitive).
fn contains_ci(seg: &str, needle: &str) -> bool {
    seg.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether a segment, split again at its encoded slashes, hides a dot segment or an
/// empty segment. Only called for segments that contain `%2f`.
fn hides_a_separator_trick(seg: &str) -> bool {
    let lower = seg.to_ascii_lowercase();
    lower
        .split("%2f")
        .any(|part| part.is_empty() || is_dot(part) || is_dot_dot(part))
}

/// An unreserved character (RFC 3986 §2.3) written as `%XX`, if `hex` is one.
fn unreserved(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    let b = u8::try_from(digit(*hex.first()?)? * 16 + digit(*hex.get(1)?)?).ok()?;
    (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')).then_some(b)
}

/// `path` with every percent-encoded unreserved character decoded.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes.get(i + 1..i + 3).and_then(unreserved)
        {
            out.push(b as char);
            i += 3;
            continue;
        }
        // Copy up to the next '%' (char boundaries are kept: '%' is ASCII).
        let next = bytes[i + 1..]
            .iter()
            .position(|&b| b == b'%')
            .map_or(bytes.len(), |p| i + 1 + p);
        out.push_str(&path[i..next]);
        i = next;
    }
    out
}

/// The normalised path; borrowed (no allocation) when nothing needs resolving.
/// `None` when the path does not start with `/`, climbs above the root, or holds a
/// backslash or an encoded-slash trick (see the module docs).
///
/// Cost: one scan of the path in the common case; allocates only when there is
/// something to decode or resolve.
pub fn normalize(path: &str) -> Option<Cow<'_, str>> {
    if !has_unreserved_escape(path) {
        return resolve(path);
    }
    // Decode to a fixed point: `/%6%61in` decodes to `/%6ain`, which an upstream
    // decodes once more to `/jin`. The forwarded path must hold no escape an upstream
    // would decode into an unreserved character, or the router and the upstream
    // would read different paths. Layers beyond a few are refused.
    let mut decoded = decode_unreserved(path);
    for _ in 0..3 {
        if !has_unreserved_escape(&decoded) {
            return resolve(&decoded).map(|c| Cow::Owned(c.into_owned()));
        }
        decoded = decode_unreserved(&decoded);
    }
    None
}

fn has_unreserved_escape(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && unreserved(&w[1..]).is_some())
}

fn resolve(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return if path == "*" {
            Some(Cow::Borrowed(path))
        } else {
            None
        };
    }
    if path.contains('\\') {
        return None;
    }
    let mut suspicious = false;
    for seg in path.split('/') {
        if seg.contains('%') {
            if contains_ci(seg, "%5c") {
                return None;
            }
            if contains_ci(seg, "%2f") && hides_a_separator_trick(seg) {
                return None;
            }
        }
        if let Some((head, _params)) = seg.split_once(';')
            && (is_dot(head) || is_dot_dot(head))
        {
            return None;
        }
        suspicious |= is_dot(seg) || is_dot_dot(seg);
    }
    if !suspicious && !path.contains("//") {
        return Some(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        if seg.is_empty() {
            // `//` merged; a trailing `/` is kept.
            trailing_slash = trailing_slash || i == last;
        } else if is_dot(seg) {
            trailing_slash = i == last;
        } else if is_dot_dot(seg) {
            out.pop()?;
            trailing_slash = i == last;
        } else {
            out.push(seg);
            trailing_slash = false;
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Some(Cow::Owned(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_that_decoding_creates_are_decoded_too() {
        // `%6%61` → `%6a` → `j`: the router sees what an upstream sees.
        assert_eq!(normalize("/%6%61in").as_deref(), Some("/jin"));
        // `%%36%31dmin` → `%61dmin` → `admin`: no route-prefix bypass.
        assert_eq!(normalize("/%%36%31dmin").as_deref(), Some("/admin"));
        // Reserved escapes stay as they are.
        assert_eq!(normalize("/a%2561").as_deref(), Some("/a%2561"));
        // Three layers still decode; four are refused.
        assert_eq!(normalize("/%%%33%36%%33%31dmin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/%%%%33%33%%33%36%%%33%33%%33%31dmin"), None);
    }

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/x"),
            Some(Cow::Borrowed("/api/v1/x"))
        ));
        assert!(matches!(normalize("/a..b/.c"), Some(Cow::Borrowed(_))));
        assert!(matches!(normalize("/api/"), Some(Cow::Borrowed("/api/"))));
        assert!(matches!(normalize("/"), Some(Cow::Borrowed("/"))));
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalize("/api/../admin").unwrap(), "/admin");
        assert_eq!(normalize("/api/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(normalize("/api/./x").unwrap(), "/api/x");
        assert_eq!(normalize("/api/x/..").unwrap(), "/api/");
        assert_eq!(normalize("/api/.").unwrap(), "/api/");
        assert_eq!(normalize("/..").map(|c| c.into_owned()), None);
        assert_eq!(normalize("/a/../..").map(|c| c.into_owned()), None);
        assert_eq!(normalize("relative"), None);
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded() {
        assert_eq!(normalize("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalize("/%41%44MIN/x").unwrap(), "/ADMIN/x");
        assert_eq!(normalize("/a%2Db%5F%7e").unwrap(), "/a-b_~");
        assert_eq!(normalize("/api/%2e%2e/%61dmin").unwrap(), "/admin");
        // Reserved and other escapes stay encoded.
        assert!(matches!(
            normalize("/a%20b%25c%3F%ff"),
            Some(Cow::Borrowed("/a%20b%25c%3F%ff"))
        ));
        assert_eq!(normalize("/%2561").unwrap(), "/%2561");
        assert_eq!(normalize("/x%6").unwrap(), "/x%6");
        assert_eq!(normalize("/é%61").unwrap(), "/éa");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(normalize("//admin").unwrap(), "/admin");
        assert_eq!(normalize("/api//x///y").unwrap(), "/api/x/y");
        assert_eq!(normalize("/api/x//").unwrap(), "/api/x/");
        assert_eq!(normalize("//").unwrap(), "/");
        assert_eq!(normalize("/api//../admin").unwrap(), "/admin");
    }

    #[test]
    fn backslashes_and_encoded_slash_tricks_are_rejected() {
        for bad in [
            "/api\\..\\admin",
            "/\\admin",
            "/api/..%5cadmin",
            "/api/%5C",
            "/api%2f..%2fadmin",
            "/api%2F%2e%2e%2Fadmin",
            "/pub%2F%2Fadmin",
            "/api/%2f",
            "/api/x%2f.",
            "/api/..;/admin",
            "/api/%2e%2e;jsessionid=1/admin",
            "/api/.;x/admin",
        ] {
            assert_eq!(normalize(bad).map(|c| c.into_owned()), None, "{bad}");
        }
        // Encoded slashes inside an id are data, not structure.
        assert!(matches!(
            normalize("/projects/group%2Fname/issues"),
            Some(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/a%2fb%2F..c"), Some(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a;v=1/b..;c"), Some(Cow::Borrowed(_))));
    }
}
