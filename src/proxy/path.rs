//! Request-path normalisation before routing.
//!
//! `/api/../admin` must not match the `/api/` route and then reach `/admin` upstream.
//! Dot segments (also percent-encoded: `%2e`, `%2E`) are resolved per RFC 3986 §5.2.4
//! and the *normalised* path is both matched and forwarded. A path that climbs above
//! the root is rejected.

use std::borrow::Cow;

fn is_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(seg: &str) -> bool {
    matches!(seg.len(), 2 | 4 | 6) && seg.to_ascii_lowercase().replace("%2e", ".").eq("..")
}

/// The normalised path; borrowed (no allocation) when nothing needs resolving.
/// `None` when the path does not start with `/` or climbs above the root.
pub fn normalize(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return if path == "*" {
            Some(Cow::Borrowed(path))
        } else {
            None
        };
    }
    let suspicious = path.split('/').any(|s| is_dot(s) || is_dot_dot(s));
    if !suspicious {
        return Some(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        if is_dot(seg) {
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
    fn plain_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/x"),
            Some(Cow::Borrowed("/api/v1/x"))
        ));
        assert!(matches!(normalize("/a..b/.c"), Some(Cow::Borrowed(_))));
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
}
