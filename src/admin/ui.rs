//! The web console: three static files (`ui/index.html`, `ui/console.js`,
//! `ui/console.css`) embedded in the binary and served under `/ui/` on the admin
//! listener.
//!
//! The assets are public (no secret in them); every API call the page makes carries
//! the operator's credential as `Authorization: Bearer`, kept in `sessionStorage`
//! only. The paths are not in [`super::routes::ROUTES`]: they are not part of the API
//! and the OpenAPI document does not describe them.
//!
//! Every response carries a strict Content-Security-Policy (same-origin scripts,
//! styles and `fetch` only; no inline code; no framing), `nosniff` and
//! `Referrer-Policy: no-referrer`. Cost: no allocation beyond the response headers.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::body::Body;
use crate::error::json_error;

/// The policy sent with every console response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("ui/index.html");
const CONSOLE_JS: &str = include_str!("ui/console.js");
const CONSOLE_CSS: &str = include_str!("ui/console.css");

/// Whether `path` belongs to the console (`/ui` or anything under `/ui/`).
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Answers a console request: `GET`/`HEAD` of an asset, `/ui` → `/ui/`, else 404/405.
pub fn serve(method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return harden(r);
    }
    let (content_type, body) = match path {
        "/ui" => {
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            return harden(r);
        }
        "/ui/" | "/ui/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/ui/console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS),
        "/ui/console.css" => ("text/css; charset=utf-8", CONSOLE_CSS),
        _ => return harden(json_error(StatusCode::NOT_FOUND, "Not found")),
    };
    let body = if method == Method::HEAD {
        crate::body::empty()
    } else {
        crate::body::full(Bytes::from_static(body.as_bytes()))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary; revalidate rather than serve a stale console.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    harden(r)
}

/// Adds the security headers every console response carries.
fn harden(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_their_content_types_and_the_security_headers() {
        for (path, ct) in [
            ("/ui/", "text/html; charset=utf-8"),
            ("/ui/console.js", "text/javascript; charset=utf-8"),
            ("/ui/console.css", "text/css; charset=utf-8"),
        ] {
            let r = serve(&Method::GET, path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], ct);
            assert_eq!(
                r.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
        }
        let r = serve(&Method::GET, "/ui");
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.headers()[header::LOCATION], "/ui/");
        assert_eq!(
            serve(&Method::GET, "/ui/nope.js").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&Method::POST, "/ui/").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_page_has_no_inline_code_and_loads_nothing_from_elsewhere() {
        let html = INDEX_HTML.to_ascii_lowercase();
        // Only `<script src=...>`; no inline script, handler attribute or style.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap_or(0)];
            assert!(
                tag.contains("src=\"/ui/"),
                "inline or foreign script: {tag}"
            );
        }
        for bad in [
            " style=",
            "<style",
            " onclick=",
            " onload=",
            "javascript:",
            "http://",
            "https://",
        ] {
            assert!(!html.contains(bad), "index.html contains {bad}");
        }
        for asset in [CONSOLE_JS, CONSOLE_CSS] {
            // The SVG namespace is a name, not a request.
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        // The secret never reaches storage: the only thing stored is the credential.
        assert!(!CONSOLE_JS.contains("localStorage"));
        assert_eq!(CONSOLE_JS.matches("sessionStorage.setItem").count(), 1);
    }
}
