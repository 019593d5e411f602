//! Adversarial end-to-end tests: the real `patgate` binary, a real `redis-server`
//! and a raw recording upstream (`common::recorder`) that keeps exactly the bytes it
//! received. Requests are written on raw TCP wherever an HTTP client would normalise
//! the attack away (framing headers, header spelling, paths).
//!
//! The question every test asks: does the upstream ever receive something the
//! gateway did not authorise — a smuggled request, a forged identity, a split
//! header, a path that an upstream would read as an authenticated route?
//!
//! Already covered in `tests/gateway.rs` (not repeated here): plain dot segments on
//! an `auth: none` route, the basic `X-Auth-*` spoof through reqwest, spoofed
//! `X-Forwarded-For` from an untrusted peer, malformed/checksum-failing tokens; and in
//! `tests/serving.rs`: an oversized request head (431) and slowloris.

mod common;

use std::time::Duration;

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::recorder::{Recorder, Seen, exchange, statuses};
use common::redis::RedisServer;
use serde_json::{Value, json};

/// Routes: a catch-all public site (`/`), a public API (`/api/`), and two
/// authenticated routes (`/admin`, `/private/`), all on the recording upstream.
fn config(redis_url: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"
store:
  backend: redis
  redis:
    url: "{redis_url}"
tokens:
  prefix: pat_
  default_expiry: 30d
  creation_limit: 0
rate_limit:
  mode: local
  default:
    requests: 1000
    per_seconds: 1
    burst: 1000
upstreams:
  app:
    url: "{upstream}"
routes:
  - name: site
    path_prefix: /
    upstream: app
    auth: none
  - name: public
    path_prefix: /api/
    upstream: app
    auth: none
  - name: admin
    path_prefix: /admin
    upstream: app
  - name: private
    path_prefix: /private/
    upstream: app
{extra}
"#
    )
}

struct Env {
    redis: RedisServer,
    upstream: Recorder,
    gw: GatewayProcess,
    admin: AdminApi,
}

async fn env_with(extra: &str) -> Env {
    let redis = RedisServer::start();
    let upstream = Recorder::start().await;
    let gw = GatewayProcess::start(&config(&redis.url(), &upstream.url(), extra));
    let admin = AdminApi::new(&gw.admin_url);
    Env {
        redis,
        upstream,
        gw,
        admin,
    }
}

async fn env() -> Env {
    env_with("").await
}

/// How a naive upstream could read `target`: percent-decode letters, `.`, `/`, `\`,
/// treat `\` as `/`, drop `;params`, merge `//`, resolve dot segments, lower-case.
/// If *this* reading reaches `/admin` or `/private`, an upstream could be tricked.
fn naive_upstream_path(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
    let decoded = path
        .replace("%61", "a")
        .replace("%64", "d")
        .replace("%70", "p")
        .replace("%2e", ".")
        .replace("%2E", ".")
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%5c", "/")
        .replace("%5C", "/")
        .replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/")).to_ascii_lowercase()
}

fn reaches_protected(target: &str) -> bool {
    let p = naive_upstream_path(target);
    p.starts_with("/admin") || p.starts_with("/private")
}

/// The upstream saw nothing but well-formed, unambiguous requests, none of them for
/// an authenticated route.
fn assert_clean(seen: &[Seen], case: &str) {
    for s in seen {
        assert!(!s.garbage, "{case}: upstream got unparsable bytes: {s:?}");
        assert!(
            !s.ambiguous_framing,
            "{case}: upstream got ambiguous framing: {:?}",
            String::from_utf8_lossy(&s.raw)
        );
        assert!(
            !reaches_protected(&s.target),
            "{case}: upstream got a request for a protected path without a token: {:?}",
            s.target
        );
    }
}

const HIDDEN: &str = "GET /private/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn smuggling_attempts_reach_the_upstream_as_at_most_one_well_formed_request() {
    let e = env().await;
    let chunk = format!("{:x}\r\n{HIDDEN}\r\n0\r\n\r\n", HIDDEN.len());
    // (name, raw request, whether hyper must refuse it outright)
    let cases: Vec<(&str, String, bool)> = vec![
        (
            "CL.TE: Content-Length first, then chunked",
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{HIDDEN}",
                5 + HIDDEN.len()
            ),
            false,
        ),
        (
            "TE.CL: chunked first, then a short Content-Length",
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunk}"
            ),
            false,
        ),
        (
            "conflicting duplicate Content-Length",
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{HIDDEN}",
                HIDDEN.len()
            ),
            true,
        ),
        (
            "Content-Length list with different values",
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, {}\r\n\r\n{HIDDEN}",
                HIDDEN.len()
            ),
            true,
        ),
        (
            "signed Content-Length",
            format!("POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n{HIDDEN}"),
            true,
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunk}"
            ),
            true,
        ),
        (
            "Transfer-Encoding: identity",
            format!("POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n{HIDDEN}"),
            true,
        ),
        (
            "two Transfer-Encoding lines, the last not chunked",
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n{chunk}"
            ),
            true,
        ),
        (
            "space before the colon",
            format!("POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n{chunk}"),
            true,
        ),
        (
            "obs-fold continuation of Transfer-Encoding",
            format!(
                "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n{chunk}"
            ),
            true,
        ),
        (
            "obs-fold continuation of an ordinary header",
            format!("GET /api/a HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n {HIDDEN}"),
            true,
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            format!("POST /api/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"),
            true,
        ),
        (
            "bare CR inside a header value",
            "GET /api/a HTTP/1.1\r\nHost: x\r\nX-Note: a\rGET /private/x\r\n\r\n".to_string(),
            true,
        ),
        (
            "NUL inside a header value",
            "GET /api/a HTTP/1.1\r\nHost: x\r\nX-Note: a\0b\r\n\r\n".to_string(),
            true,
        ),
        (
            "chunk size overflow",
            "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nx\r\n0\r\n\r\n"
                .to_string(),
            false,
        ),
    ];
    for (name, request, refused) in &cases {
        let answer = exchange(&e.gw.url, request.as_bytes(), Duration::from_secs(2)).await;
        let codes = statuses(&answer);
        let seen = e.upstream.settle_and_take().await;
        let text = String::from_utf8_lossy(&answer);
        assert!(!codes.is_empty(), "{name}: no answer at all");
        assert_clean(&seen, name);
        assert!(
            seen.len() <= 1,
            "{name}: upstream saw {} requests: {seen:?}",
            seen.len()
        );
        if *refused {
            assert_eq!(codes, vec![400], "{name}: {text}");
            assert!(
                seen.is_empty(),
                "{name}: a refused request reached the upstream"
            );
        } else {
            // Either refused, or forwarded as one request whose body is what the
            // gateway decoded — never a second request taken from the body.
            assert!(
                codes.iter().all(|c| [200, 400, 502].contains(c)),
                "{name}: {text}"
            );
            assert!(
                !codes.contains(&200) || seen.len() == 1,
                "{name}: 200 without exactly one upstream request"
            );
            if let Some(s) = seen.first().filter(|s| !s.truncated) {
                assert_eq!(s.target, "/api/a", "{name}");
            }
        }
    }

    // The TE.CL body reached the upstream as data (chunked framing wins, the stale
    // Content-Length is dropped): the hidden request is inside the body, not beside it.
    let request = format!(
        "POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{chunk}"
    );
    let answer = exchange(&e.gw.url, request.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(statuses(&answer), vec![200]);
    let seen = e.upstream.settle_and_take().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, HIDDEN.as_bytes());
    assert!(seen[0].header_values("content-length").len() <= 1);

    // No desync left behind in the gateway's upstream pool: a later, ordinary
    // request on a new client connection is answered for exactly itself.
    let answer = exchange(
        &e.gw.url,
        b"GET /api/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![200]);
    assert!(String::from_utf8_lossy(&answer).contains(r#"{"target":"/api/after"}"#));
    let seen = e.upstream.settle_and_take().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/api/after");
}

#[tokio::test]
async fn a_chunked_body_on_a_get_is_not_left_for_the_upstream_to_parse() {
    let e = env().await;
    let chunk = format!("{:x}\r\n{HIDDEN}\r\n0\r\n\r\n", HIDDEN.len());
    let request = format!(
        "GET /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}"
    );
    let answer = exchange(&e.gw.url, request.as_bytes(), Duration::from_secs(2)).await;
    let seen = e.upstream.settle_and_take().await;
    assert_clean(&seen, "GET with chunked body");
    assert!(seen.len() <= 1, "{seen:?}");
    assert!(
        statuses(&answer).iter().all(|c| [200, 400].contains(c)),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn very_many_headers_get_431_and_never_reach_the_upstream() {
    let e = env().await;
    let mut request = String::from("GET /api/a HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        request.push_str(&format!("X-H-{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let answer = exchange(&e.gw.url, request.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(
        statuses(&answer),
        vec![431],
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(e.upstream.settle_and_take().await.is_empty());
    // A normal request still works.
    let answer = exchange(
        &e.gw.url,
        b"GET /api/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![200]);
}

#[tokio::test]
async fn path_tricks_never_carry_a_public_route_to_an_authenticated_one() {
    let e = env().await;
    let tricks: &[&[u8]] = &[
        b"/api/../admin",
        b"/api/%2e%2e/admin",
        b"/api/.%2E/admin/x",
        b"/api%2f..%2fadmin",
        b"/api/..%2fadmin",
        b"/api/..%2Fprivate/x",
        b"/api/x/..%2f..%2fadmin",
        b"//admin",
        b"///admin/x",
        b"/.//admin",
        b"/api/..\\admin",
        b"/api\\..\\admin",
        b"/\\admin",
        b"/api/..%5cadmin",
        b"/api/..%5Cprivate/x",
        b"/api/..;/admin",
        b"/api/%2e%2e;x=1/private/x",
        b"/./admin",
        b"/%61dmin",
        b"/api/%2e%2e/%61%64min/x",
        b"/%70rivate/x",
        b"/api/\xff/../../admin",
        b"/api/\xc0\xae\xc0\xae/admin",
        b"/api/%ff/../../admin",
    ];
    for path in tricks {
        let shown = String::from_utf8_lossy(path);
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(path);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = exchange(&e.gw.url, &request, Duration::from_secs(2)).await;
        let codes = statuses(&answer);
        let seen = e.upstream.settle_and_take().await;
        assert_clean(&seen, &shown);
        assert!(
            codes == vec![400] || codes == vec![401] || codes == vec![200],
            "{shown}: {}",
            String::from_utf8_lossy(&answer)
        );
        if codes == vec![200] {
            // Only allowed when what was forwarded is harmless to any reading.
            assert_eq!(seen.len(), 1, "{shown}");
        } else {
            assert!(seen.is_empty(), "{shown}: a refused request was forwarded");
        }
    }
    // The tricks that resolve to /admin are authenticated there (401), not refused
    // for being odd.
    for path in [
        "/api/../admin",
        "//admin",
        "/./admin",
        "/api/%2e%2e/admin",
        "/%61dmin",
    ] {
        let answer = exchange(
            &e.gw.url,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(statuses(&answer), vec![401], "{path}");
    }
    // Controls: ordinary public paths, and an encoded slash used as data, pass
    // through byte for byte.
    for path in ["/api/ok", "/projects/group%2Fname/issues", "/api/a..b/.c"] {
        let answer = exchange(
            &e.gw.url,
            format!("GET {path}?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(statuses(&answer), vec![200], "{path}");
        let seen = e.upstream.settle_and_take().await;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].target, format!("{path}?q=1"));
    }
    // The authenticated route itself is authenticated.
    let answer = exchange(
        &e.gw.url,
        b"GET /admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![401]);
    assert!(e.upstream.settle_and_take().await.is_empty());
}

/// A raw request with `headers` (each a full `Name: value` line).
fn raw_get(path: &str, headers: &[String]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Header names as a CGI-style upstream reads them (`HTTP_X_AUTH_USER_ID`).
fn cgi_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

#[tokio::test]
async fn spoofed_identity_headers_in_every_spelling_are_stripped() {
    let e = env().await;
    let (token, record) = e
        .admin
        .create(json!({"name": "n", "ownerId": "user-42", "scopes": ["s"]}))
        .await;
    let spoofs: Vec<String> = [
        "x-auth-user-id: forged",
        "X-AUTH-USER-ID: forged",
        "X-Auth-User-Id: forged",
        "X-Auth-User-Id: forged-again",
        "X_Auth_User_Id: forged",
        "x_auth_user_id: forged",
        "X-Auth_User-Id: forged",
        "X-Auth-Org-Id: forged",
        "X_AUTH_PROJECT_ID: forged",
        "x-auth-permissions: tokens:admin",
        "X-Auth-Anything-Else: forged",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let auth = format!("Authorization: Bearer {token}");
    for (path, with_token) in [("/api/x", false), ("/", false), ("/private/x", true)] {
        let mut headers = spoofs.clone();
        if with_token {
            headers.push(auth.clone());
        }
        let answer = exchange(&e.gw.url, &raw_get(path, &headers), Duration::from_secs(2)).await;
        assert_eq!(statuses(&answer), vec![200], "{path}");
        let seen = e.upstream.settle_and_take().await;
        assert_eq!(seen.len(), 1, "{path}");
        let s = &seen[0];
        for (name, value) in &s.headers {
            let v = String::from_utf8_lossy(value);
            assert!(
                !v.contains("forged") && v != "tokens:admin",
                "{path}: spoofed {name}: {v} reached the upstream"
            );
            let identity = cgi_name(name).starts_with("X_AUTH_");
            assert!(
                !identity || with_token,
                "{path}: identity header {name} on an auth: none route"
            );
        }
        if with_token {
            // Exactly one user id, the token's, however CGI folds the names.
            let user: Vec<_> = s
                .headers
                .iter()
                .filter(|(n, _)| cgi_name(n) == "X_AUTH_USER_ID")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect();
            assert_eq!(user, vec!["user-42".to_string()], "{path}");
            assert_eq!(
                s.header_values("x-auth-token-id"),
                vec![record["id"].as_str().unwrap().to_string()]
            );
            // The token has no org or project: none may appear.
            assert!(s.header_values("x-auth-org-id").is_empty());
            assert!(s.header_values("x-auth-project-id").is_empty());
            assert_eq!(s.header_values("x-auth-permissions"), vec![String::new()]);
        }
    }
}

#[tokio::test]
async fn cr_lf_in_identity_fields_is_refused_by_the_admin_api() {
    let e = env().await;
    let base = || json!({"name": "n", "ownerId": "u1"});
    let injections = [
        "a\r\nX-Injected: 1",
        "a\nX-Injected: 1",
        "a\rb",
        "a\u{0}b",
        "a\u{85}b",
    ];
    for bad in injections {
        for (field, value) in [
            ("name", json!(bad)),
            ("ownerId", json!(bad)),
            ("orgId", json!(bad)),
            ("projectId", json!(bad)),
            ("scopes", json!([bad])),
            ("permissions", json!([bad])),
        ] {
            let mut body = base();
            body[field] = value;
            let (status, resp) = e
                .admin
                .call(reqwest::Method::POST, "/v1/tokens", Some(body))
                .await;
            assert_eq!(status, 400, "{field}={bad:?}: {resp}");
            assert!(
                resp["error"].as_str().unwrap_or("").contains(field),
                "{field}: the 400 must name the field: {resp}"
            );
        }
    }
    // Updates go through the same checks.
    let (_, record) = e.admin.create(base()).await;
    let id = record["id"].as_str().unwrap();
    for (field, value) in [
        ("name", json!("x\r\nX-Injected: 1")),
        ("scopes", json!(["x\r\nX-Injected: 1"])),
        ("permissions", json!(["x\nX-Injected: 1"])),
    ] {
        let (status, resp) = e
            .admin
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/tokens/{id}"),
                Some(json!({ field: value })),
            )
            .await;
        assert_eq!(status, 400, "PATCH {field}: {resp}");
    }
    // Import as well.
    let (status, resp) = e
        .admin
        .call(
            reqwest::Method::POST,
            "/v1/tokens/import",
            Some(json!({"sha256": "ab".repeat(32), "name": "n", "ownerId": "u\r\nX-Injected: 1"})),
        )
        .await;
    assert_eq!(status, 400, "import: {resp}");
}

#[tokio::test]
async fn non_ascii_identity_values_are_forwarded_as_one_header() {
    let e = env().await;
    let owner = "üser\u{2028}x";
    let (token, _) = e.admin.create(json!({"name": "n", "ownerId": owner})).await;
    let answer = exchange(
        &e.gw.url,
        &raw_get("/private/x", &[format!("Authorization: Bearer {token}")]),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![200]);
    let seen = e.upstream.settle_and_take().await;
    assert_eq!(seen.len(), 1);
    let user: Vec<&Vec<u8>> = seen[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-auth-user-id"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(user, vec![&owner.as_bytes().to_vec()]);
}

#[tokio::test]
async fn a_compromised_store_cannot_split_forwarded_headers() {
    let e = env().await;
    let (token, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "orgId": "o1"}))
        .await;
    // Rewrite the stored record behind the gateway's back, before its first use (so
    // it is not cached): CR/LF in the identity values, as a hostile Redis writer would.
    let key = format!(
        "patgate:tok:{}",
        patgate::token::TokenHash::of(&token).to_hex()
    );
    let stored = e.redis.cli(&["GET", &key]);
    let mut doc: Value = serde_json::from_str(stored.trim()).expect("stored record JSON");
    doc["record"]["ownerId"] = json!("u1\r\nX-Injected: owner");
    doc["record"]["orgId"] = json!("o1\nX-Injected: org");
    doc["record"]["scopes"] = json!(["s\r\nX-Injected: scope"]);
    let set = e.redis.cli(&["SET", &key, &doc.to_string(), "KEEPTTL"]);
    assert!(set.contains("OK"), "SET: {set}");

    let answer = exchange(
        &e.gw.url,
        &raw_get("/private/x", &[format!("Authorization: Bearer {token}")]),
        Duration::from_secs(2),
    )
    .await;
    let codes = statuses(&answer);
    let seen = e.upstream.settle_and_take().await;
    // Fail closed: not forwarded with a partial identity.
    assert_eq!(codes, vec![503], "{}", String::from_utf8_lossy(&answer));
    assert!(
        String::from_utf8_lossy(&answer).contains("Authentication backend unavailable"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(seen.is_empty(), "forwarded: {seen:?}");
    for s in &seen {
        assert!(!s.garbage && !s.ambiguous_framing, "{s:?}");
        for (name, value) in &s.headers {
            assert!(
                !name.eq_ignore_ascii_case("x-injected"),
                "a header was split into the upstream request: {:?}",
                String::from_utf8_lossy(&s.raw)
            );
            assert!(!value.contains(&b'\r') && !value.contains(&b'\n'));
        }
    }
}

#[tokio::test]
async fn spoofed_client_ip_headers_from_an_untrusted_peer_change_nothing() {
    let e = env().await;
    let (token, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "ipAllowlist": ["10.0.0.0/8"]}))
        .await;
    let claims = [
        "X-Forwarded-For: 10.1.2.3",
        "X-Forwarded-For: 10.1.2.3, 10.0.0.1",
        "Forwarded: for=10.1.2.3",
        "Forwarded: for=\"[::ffff:10.1.2.3]\";proto=https",
        "X-Real-IP: 10.1.2.3",
        "True-Client-IP: 10.1.2.3",
        "X-Client-IP: 10.1.2.3",
        "X_Forwarded_For: 10.1.2.3",
    ];
    let auth = format!("Authorization: Bearer {token}");
    for claim in claims {
        let answer = exchange(
            &e.gw.url,
            &raw_get("/private/x", &[auth.clone(), claim.to_string()]),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(statuses(&answer), vec![403], "{claim}");
        assert!(String::from_utf8_lossy(&answer).contains("IP address not allowed for this PAT"));
    }
    // All at once, on a token that allows the real peer: forwarded, with the claims
    // replaced by what the gateway saw.
    let (ok, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "ipAllowlist": ["127.0.0.1"]}))
        .await;
    let mut headers: Vec<String> = claims.iter().map(|c| c.to_string()).collect();
    headers.push(format!("Authorization: Bearer {ok}"));
    let answer = exchange(
        &e.gw.url,
        &raw_get("/private/x", &headers),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![200]);
    let seen = e.upstream.settle_and_take().await;
    let s = &seen[seen.len() - 1];
    assert_eq!(s.header_values("x-forwarded-for"), vec!["127.0.0.1"]);
    for gone in ["forwarded", "x-real-ip", "true-client-ip", "x-client-ip"] {
        assert!(
            s.header_values(gone).is_empty(),
            "{gone} reached the upstream"
        );
    }
    // However a CGI-style upstream folds names, it finds one client IP: ours.
    let xff: Vec<String> = s
        .headers
        .iter()
        .filter(|(n, _)| cgi_name(n) == "X_FORWARDED_FOR")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(xff, vec!["127.0.0.1".to_string()]);
}

#[tokio::test]
async fn tokens_with_invisible_or_control_characters_are_malformed() {
    let e = env().await;
    let (token, _) = e.admin.create(json!({"name": "n", "ownerId": "u1"})).await;
    let malformed = r#"{"error":"Missing or invalid PAT. Expected Authorization: Bearer pat_..."}"#;
    let gets_before = redis_calls(&e.redis, "get");
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("tab inside", format!("{token}\tx").into_bytes()),
        ("space inside", format!("{token} x").into_bytes()),
        (
            "zero-width space after",
            format!("{token}\u{200b}").into_bytes(),
        ),
        ("zero-width joiner inside", {
            let mut t = token[..10].to_string();
            t.push('\u{200d}');
            t.push_str(&token[10..]);
            t.into_bytes()
        }),
        ("BOM before", format!("\u{feff}{token}").into_bytes()),
        (
            "non-breaking space after",
            format!("{token}\u{a0}").into_bytes(),
        ),
        ("Latin-1 byte after", {
            let mut t = token.clone().into_bytes();
            t.push(0xe9);
            t
        }),
        (
            "fullwidth lookalike",
            token.replacen("pat_", "ｐat_", 1).into_bytes(),
        ),
    ];
    for (name, value) in &variants {
        let mut request =
            b"GET /private/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
                .to_vec();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(&e.gw.url, &request, Duration::from_secs(2)).await;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(statuses(&answer), vec![401], "{name}: {text}");
        assert!(text.contains(malformed), "{name}: {text}");
        assert!(text.contains(r#"error="invalid_token""#), "{name}: {text}");
    }
    // NUL, CR, LF and DEL cannot even be carried in a header value: the HTTP layer
    // refuses the request (400) before authentication.
    for (name, value) in [
        ("NUL after", "\0"),
        ("CR after", "\r"),
        ("DEL after", "\u{7f}"),
    ] {
        let request = format!(
            "GET /private/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}{value}\r\n\r\n"
        );
        let answer = exchange(&e.gw.url, request.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(statuses(&answer), vec![400], "{name}");
    }
    assert!(e.upstream.settle_and_take().await.is_empty());
    assert_eq!(
        redis_calls(&e.redis, "get"),
        gets_before,
        "malformed tokens must be refused before any store lookup"
    );
    // Trailing spaces and tabs are optional whitespace around a header value (RFC 9110
    // §5.5), removed by the HTTP parser: the credential is the same, valid token.
    for ows in [" ", "\t", " \t "] {
        let request = format!(
            "GET /private/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}{ows}\r\n\r\n"
        );
        let answer = exchange(&e.gw.url, request.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(statuses(&answer), vec![200], "{ows:?}");
    }
}

fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.cli(&["INFO", "commandstats"]);
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_naive_reading_used_by_these_tests_catches_the_known_tricks() {
    assert!(reaches_protected("/api/..%2fadmin"));
    assert!(reaches_protected("/api\\..\\ADMIN"));
    assert!(reaches_protected("/api/..;/private/x"));
    assert!(reaches_protected("//admin"));
    assert!(reaches_protected("/%61dmin"));
    assert!(!reaches_protected("/api/admin"));
    assert!(!reaches_protected("/projects/group%2Fname"));
}

#[tokio::test]
async fn the_host_that_routed_a_request_is_the_host_the_upstream_sees() {
    let e = env_with(
        "  - name: internal\n    host: internal.example\n    path_prefix: /\n    upstream: app\n",
    )
    .await;
    // Absolute-form target: the target's host is the request's host (RFC 9112
    // §3.2.2), whatever the Host header says. It must both route and be forwarded.
    let answer = exchange(
        &e.gw.url,
        b"GET http://public.example/x HTTP/1.1\r\nHost: internal.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![200]);
    let seen = e.upstream.settle_and_take().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header_values("host"),
        vec!["public.example"],
        "routed as public.example (auth: none) but forwarded for another virtual host"
    );
    assert!(
        seen[0]
            .header_values("x-forwarded-host")
            .iter()
            .all(|h| h == "public.example")
    );
    // The other way round is authenticated.
    let answer = exchange(
        &e.gw.url,
        b"GET http://internal.example/x HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![401]);
    // And the Host header routes when the target is in origin form.
    let answer = exchange(
        &e.gw.url,
        b"GET /x HTTP/1.1\r\nHost: Internal.Example:8080\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&answer), vec![401]);
    assert!(e.upstream.settle_and_take().await.is_empty());
}

/// Sends one HTTP/2 (h2c, prior knowledge) request; `Err` when the gateway refused
/// it at the protocol level (stream or connection error).
async fn h2_request(
    addr: &str,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    match tokio::time::timeout(Duration::from_secs(3), send.send_request(req)).await {
        Ok(Ok(resp)) => Ok(resp.status().as_u16()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test]
async fn http2_requests_get_the_same_hygiene_and_cannot_desync_the_upstream() {
    use http_body_util::Full;
    let e = env().await;
    // Identity headers in every spelling, and client-IP claims, over h2c.
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("{}/api/h2", e.gw.url))
        .header("x-auth-user-id", "forged")
        .header("x_auth_user_id", "forged")
        .header("x-auth_scopes", "forged")
        .header("x-real-ip", "10.1.2.3")
        .header("x_forwarded_for", "10.1.2.3")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(h2_request(&e.gw.url, req).await, Ok(200));
    let seen = e.upstream.settle_and_take().await;
    assert_eq!(seen.len(), 1);
    assert_clean(&seen, "h2 spoof");
    for (name, value) in &seen[0].headers {
        let folded = cgi_name(name);
        assert!(
            !folded.starts_with("X_AUTH_") && folded != "X_REAL_IP",
            "{name} reached the upstream over HTTP/2"
        );
        assert_ne!(String::from_utf8_lossy(value), "forged");
    }
    assert_eq!(seen[0].header_values("x-forwarded-for"), vec!["127.0.0.1"]);

    // A body longer than its content-length, and HTTP/1 framing headers, which are
    // illegal in HTTP/2: refused, never passed on as an ambiguous HTTP/1 request.
    let too_long = http::Request::builder()
        .method("POST")
        .uri(format!("{}/api/h2", e.gw.url))
        .header("content-length", "5")
        .body(Full::new(bytes::Bytes::from_static(HIDDEN.as_bytes())))
        .unwrap();
    let chunked = http::Request::builder()
        .method("POST")
        .uri(format!("{}/api/h2", e.gw.url))
        .header("transfer-encoding", "chunked")
        .body(Full::new(bytes::Bytes::from_static(b"0\r\n\r\n")))
        .unwrap();
    for (name, req) in [
        ("content-length too short", too_long),
        ("transfer-encoding", chunked),
    ] {
        let result = h2_request(&e.gw.url, req).await;
        let seen = e.upstream.settle_and_take().await;
        assert_clean(&seen, name);
        for s in seen.iter().filter(|s| !s.truncated) {
            assert!(
                s.body.len() <= 5 && !s.target.contains("private"),
                "{name}: upstream got {:?}",
                String::from_utf8_lossy(&s.raw)
            );
        }
        assert!(
            !matches!(result, Ok(200)) || seen.iter().all(|s| s.body.len() <= 5),
            "{name}: {result:?}"
        );
    }
}
