//! End-to-end: the real `patgate` binary against a real `redis-server` and a real
//! upstream. Covers every row of SPEC §3, header hygiene, client IP handling,
//! cross-replica revocation, Redis outages and streaming.

mod common;

use std::time::{Duration, Instant};

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use reqwest::StatusCode;
use serde_json::{Value, json};

const MISSING: &str = "Missing or invalid PAT. Expected Authorization: Bearer pat_...";

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
  - name: api
    path_prefix: /api/
    upstream: app
    require:
      scopes: [documents]
      permissions: [read]
  - name: writes
    path_prefix: /rw/
    upstream: app
    permissions_by_method: true
  - name: projects
    path_prefix: /v1/projects/
    upstream: app
    project_param: "/v1/projects/{{project}}"
  - name: health
    path_prefix: /health
    upstream: app
    auth: none
  - name: slow
    path_prefix: /delay/
    upstream: app
  - name: dead
    path_prefix: /dead/
    upstream: http://127.0.0.1:9
{extra}
"#
    )
}

struct Env {
    redis: RedisServer,
    _upstream: Upstream,
    gw: GatewayProcess,
    admin: AdminApi,
    http: reqwest::Client,
}

async fn env_with(extra: &str) -> Env {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&config(&redis.url(), &upstream.url(), extra));
    let admin = AdminApi::new(&gw.admin_url);
    Env {
        redis,
        _upstream: upstream,
        gw,
        admin,
        http: reqwest::Client::new(),
    }
}

async fn env() -> Env {
    env_with("").await
}

fn reader() -> Value {
    json!({"name": "reader", "ownerId": "user-42", "scopes": ["documents"], "permissions": ["read"]})
}

impl Env {
    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.get(format!("{}{}", self.gw.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, json)
    }

    async fn expect_error(&self, path: &str, token: Option<&str>, status: u16, message: &str) {
        let (s, h, body) = self.get(path, token).await;
        assert_eq!(s.as_u16(), status, "{path}: {body}");
        assert_eq!(body["error"], message, "{path}");
        assert_eq!(h["content-type"], "application/json");
        if status == 401 {
            let www = h["www-authenticate"].to_str().unwrap();
            if token.is_some() {
                assert_eq!(www, r#"Bearer realm="patgate", error="invalid_token""#);
            } else {
                assert_eq!(www, r#"Bearer realm="patgate""#);
            }
        }
    }
}

#[tokio::test]
async fn valid_token_reaches_upstream_with_identity_headers() {
    let e = env().await;
    let (token, record) = e
        .admin
        .create(json!({
            "name": "full", "ownerId": "user-42", "orgId": "org-1", "projectId": "p-1",
            "scopes": ["documents", "billing"], "permissions": ["read", "write"]
        }))
        .await;
    let (s, h, body) = e.get("/api/docs?x=1", Some(&token)).await;
    assert_eq!(s, 200, "{body}");
    let up = &body["headers"];
    assert_eq!(body["uri"], "/api/docs?x=1");
    assert_eq!(up["x-auth-user-id"], "user-42");
    assert_eq!(up["x-auth-token-id"], record["id"]);
    assert_eq!(up["x-auth-token-prefix"], &token[..12]);
    assert_eq!(up["x-auth-token-type"], "user");
    assert_eq!(up["x-auth-org-id"], "org-1");
    assert_eq!(up["x-auth-project-id"], "p-1");
    assert_eq!(up["x-auth-scopes"], "documents,billing");
    assert_eq!(up["x-auth-permissions"], "read,write");
    assert!(
        up.get("authorization").is_none(),
        "Authorization must not be forwarded"
    );
    assert_eq!(up["x-forwarded-for"], "127.0.0.1");
    assert_eq!(up["x-forwarded-proto"], "http");
    assert!(
        up["x-forwarded-host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // Rate-limit headers on allowed responses; hop-by-hop headers of the upstream dropped.
    assert_eq!(h["ratelimit-limit"], "1000");
    assert!(h.contains_key("ratelimit-remaining"));
    assert!(h.contains_key("ratelimit-reset"));
    assert!(!h.contains_key("x-upstream-hop"));
    assert_eq!(record["prefix"], &token[..12]);
}

#[tokio::test]
async fn every_malformed_credential_is_rejected_before_lookup() {
    let e = env().await;
    let (token, _) = e.admin.create(reader()).await;
    e.expect_error("/api/x", None, 401, MISSING).await;
    let (s, h, b) = e
        .http
        .get(format!("{}/api/x", e.gw.url))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .map(|r| (r.status(), r.headers().clone(), r))
        .unwrap();
    assert_eq!(s, 401);
    assert_eq!(h["www-authenticate"], r#"Bearer realm="patgate""#);
    assert_eq!(b.json::<Value>().await.unwrap()["error"], MISSING);
    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [
        format!("ghp_{}", &token[4..]),
        token[..token.len() - 1].to_string(),
        flipped,
        "pat_short".to_string(),
    ] {
        e.expect_error("/api/x", Some(&bad), 401, MISSING).await;
    }
    // A well-formed token that does not exist.
    let unknown = patgate::token::generate("pat_").unwrap();
    e.expect_error("/api/x", Some(&unknown), 401, "Invalid PAT")
        .await;
    // Checksum failures never reached Redis: its command stats show one GET per
    // unknown well-formed token at most, and none for the malformed ones.
    let info = e.redis.cli(&["INFO", "commandstats"]);
    let gets = info
        .lines()
        .find(|l| l.starts_with("cmdstat_get:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        gets <= 2,
        "malformed tokens must not reach the store (GET calls: {gets})"
    );
}

#[tokio::test]
async fn token_states_revoked_expired_inactive_owner_disabled() {
    let e = env().await;
    // revoked
    let (t1, r1) = e.admin.create(reader()).await;
    assert_eq!(e.get("/api/x", Some(&t1)).await.0, 200);
    let (s, _) = e
        .admin
        .post(&format!("/v1/tokens/{}/revoke", r1["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    e.expect_error("/api/x", Some(&t1), 401, "PAT has been revoked")
        .await;

    // inactive, then active again
    let (t2, r2) = e.admin.create(reader()).await;
    let id2 = r2["id"].as_str().unwrap();
    assert_eq!(e.get("/api/x", Some(&t2)).await.0, 200);
    assert_eq!(
        e.admin
            .post(&format!("/v1/tokens/{id2}/deactivate"))
            .await
            .0,
        200
    );
    e.expect_error("/api/x", Some(&t2), 401, "PAT is inactive")
        .await;
    assert_eq!(
        e.admin.post(&format!("/v1/tokens/{id2}/activate")).await.0,
        200
    );
    assert_eq!(e.get("/api/x", Some(&t2)).await.0, 200);

    // owner disabled, then enabled
    assert_eq!(e.admin.post("/v1/owners/user-42/disable").await.0, 200);
    e.expect_error("/api/x", Some(&t2), 401, "PAT is inactive")
        .await;
    assert_eq!(e.admin.post("/v1/owners/user-42/enable").await.0, 200);
    assert_eq!(e.get("/api/x", Some(&t2)).await.0, 200);

    // expired: cached first, then the clock passes expiresAt
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500)).to_string();
    let mut body = reader();
    body["expiresAt"] = json!(soon);
    let (t3, _) = e.admin.create(body).await;
    assert_eq!(e.get("/api/x", Some(&t3)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    e.expect_error("/api/x", Some(&t3), 401, "PAT has expired")
        .await;

    // deleted
    let (t4, r4) = e.admin.create(reader()).await;
    assert_eq!(e.get("/api/x", Some(&t4)).await.0, 200);
    let (s, _) = e
        .admin
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{}", r4["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    e.expect_error("/api/x", Some(&t4), 401, "Invalid PAT")
        .await;
}

#[tokio::test]
async fn route_policy_scopes_permissions_methods_and_project_binding() {
    let e = env().await;
    let (no_scope, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "permissions": ["read"]}))
        .await;
    e.expect_error(
        "/api/x",
        Some(&no_scope),
        403,
        "PAT lacks required scope: documents",
    )
    .await;
    let (no_perm, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "scopes": ["documents"]}))
        .await;
    e.expect_error(
        "/api/x",
        Some(&no_perm),
        403,
        "PAT lacks required permission: read",
    )
    .await;

    // permissions_by_method: GET needs read, POST needs write.
    let (read_only, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "permissions": ["read"]}))
        .await;
    assert_eq!(e.get("/rw/thing", Some(&read_only)).await.0, 200);
    let resp = e
        .http
        .post(format!("{}/rw/thing", e.gw.url))
        .bearer_auth(&read_only)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "PAT lacks required permission: write"
    );

    // project binding
    let (proj, _) = e
        .admin
        .create(json!({"name": "p", "ownerId": "u1", "type": "project", "projectId": "p-1"}))
        .await;
    assert_eq!(e.get("/v1/projects/p-1/docs", Some(&proj)).await.0, 200);
    e.expect_error(
        "/v1/projects/p-2/docs",
        Some(&proj),
        403,
        "PAT is not valid for this project",
    )
    .await;
}

#[tokio::test]
async fn ip_allowlist_and_spoofed_forwarded_for_from_untrusted_peer() {
    let e = env().await;
    let (other_net, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "ipAllowlist": ["10.0.0.0/8"]}))
        .await;
    // The peer (127.0.0.1) is not a trusted proxy: its X-Forwarded-For is ignored.
    let resp = e
        .http
        .get(format!("{}/delay/0", e.gw.url))
        .bearer_auth(&other_net)
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "IP address not allowed for this PAT"
    );
    let (loopback, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "ipWhitelist": ["127.0.0.1"]}))
        .await;
    let resp = e
        .http
        .get(format!("{}/delay/0", e.gw.url))
        .bearer_auth(&loopback)
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["headers"]["x-forwarded-for"], "127.0.0.1",
        "spoofed XFF must be replaced"
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let e = env_with("client_ip:\n  trusted_proxies: [127.0.0.0/8]\n").await;
    let (token, _) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u1", "ipAllowlist": ["203.0.113.0/24"]}))
        .await;
    let send = |xff: &'static str| {
        e.http
            .get(format!("{}/delay/0", e.gw.url))
            .bearer_auth(&token)
            .header("x-forwarded-for", xff)
            .send()
    };
    assert_eq!(send("203.0.113.7").await.unwrap().status(), 200);
    // Right-most untrusted entry wins: a client cannot prepend its way in.
    assert_eq!(
        send("203.0.113.7, 198.51.100.1").await.unwrap().status(),
        403
    );
    let resp = send("198.51.100.1, 203.0.113.7, 127.0.0.5").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["headers"]["x-forwarded-for"],
        "198.51.100.1, 203.0.113.7, 127.0.0.5, 127.0.0.1"
    );
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_on_every_route() {
    let e = env().await;
    let (token, record) = e.admin.create(reader()).await;
    for (path, tok) in [("/api/x", Some(token.as_str())), ("/health", None)] {
        let mut req = e.http.get(format!("{}{path}", e.gw.url));
        if let Some(t) = tok {
            req = req.bearer_auth(t);
        }
        let resp = req
            .header("X-Auth-User-Id", "admin")
            .header("x-auth-token-id", "forged")
            .header("X-AUTH-SCOPES", "everything")
            .header("X-Auth-Custom", "forged")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body: Value = resp.json().await.unwrap();
        let h = body["headers"].as_object().unwrap();
        let forged: Vec<_> = h
            .iter()
            .filter(|(_, v)| ["admin", "forged", "everything"].contains(&v.as_str().unwrap_or("")))
            .collect();
        assert!(
            forged.is_empty(),
            "{path}: forged headers reached upstream: {forged:?}"
        );
        if tok.is_some() {
            assert_eq!(h["x-auth-user-id"], "user-42");
            assert_eq!(h["x-auth-token-id"], record["id"]);
        } else {
            assert!(!h.keys().any(|k| k.starts_with("x-auth-")), "{path}: {h:?}");
        }
    }
}

#[tokio::test]
async fn rate_limit_returns_429_with_headers() {
    let e = env().await;
    let mut body = reader();
    body["rateLimit"] = json!({"requests": 2, "perSeconds": 60});
    let (token, _) = e.admin.create(body).await;
    let (s1, h1, _) = e.get("/api/x", Some(&token)).await;
    assert_eq!(s1, 200);
    assert_eq!(h1["ratelimit-limit"], "2");
    assert_eq!(h1["ratelimit-remaining"], "1");
    assert_eq!(e.get("/api/x", Some(&token)).await.0, 200);
    let (s, h, b) = e.get("/api/x", Some(&token)).await;
    assert_eq!(s, 429);
    assert_eq!(b["error"], "Rate limit exceeded");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-limit"], "2");
    assert!(h.contains_key("ratelimit-reset"));
}

#[tokio::test]
async fn upstream_failures_and_missing_routes() {
    let e = env_with("timeouts:\n  upstream_response_seconds: 1\n").await;
    let (token, _) = e.admin.create(reader()).await;
    e.expect_error("/nowhere", Some(&token), 404, "No route")
        .await;
    e.expect_error("/dead/x", Some(&token), 502, "Upstream unavailable")
        .await;
    e.expect_error("/delay/3000", Some(&token), 504, "Upstream timed out")
        .await;
}

#[tokio::test]
async fn whoami_answers_for_a_valid_token() {
    let e = env().await;
    let (token, record) = e
        .admin
        .create(json!({"name": "me", "ownerId": "user-7", "orgId": "o", "scopes": ["a"], "permissions": ["read"]}))
        .await;
    let (s, h, body) = e.get("/_patgate/whoami", Some(&token)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["userId"], "user-7");
    assert_eq!(body["tokenId"], record["id"]);
    assert_eq!(body["orgId"], "o");
    assert_eq!(body["projectId"], Value::Null);
    assert_eq!(body["prefix"], &token[..12]);
    assert_eq!(body["name"], "me");
    assert_eq!(body["type"], "user");
    assert_eq!(body["scopes"], json!(["a"]));
    assert_eq!(body["permissions"], json!(["read"]));
    assert_eq!(body["authMethod"], "pat");
    assert_eq!(body["expiresAt"], record["expiresAt"]);
    assert_eq!(body["rateLimit"]["limit"], 1000);
    assert!(h.contains_key("ratelimit-remaining"));
    e.expect_error("/_patgate/whoami", None, 401, MISSING).await;
}

#[tokio::test]
async fn revocation_reaches_a_second_gateway_within_a_second() {
    let e = env().await;
    let gw2 = GatewayProcess::start(&config(&e.redis.url(), &e._upstream.url(), ""));
    let (token, record) = e.admin.create(reader()).await;
    let url2 = format!("{}/api/x", gw2.url);
    // Warm gw2's cache.
    let r = e.http.get(&url2).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = e
        .admin
        .post(&format!(
            "/v1/tokens/{}/revoke",
            record["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200);
    let revoked_at = Instant::now();
    loop {
        let r = e.http.get(&url2).bearer_auth(&token).send().await.unwrap();
        if r.status() == 401 {
            assert_eq!(
                r.json::<Value>().await.unwrap()["error"],
                "PAT has been revoked"
            );
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "second replica still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn redis_outage_cached_tokens_work_uncached_get_503_then_recovery() {
    let mut e = env().await;
    let (cached, _) = e.admin.create(reader()).await;
    let (uncached, _) = e.admin.create(reader()).await;
    let unknown = patgate::token::generate("pat_").unwrap();
    assert_eq!(e.get("/api/x", Some(&cached)).await.0, 200);

    // 1. Redis hangs (frozen): calls time out instead of failing fast.
    e.redis.freeze(true);
    for _ in 0..3 {
        assert_eq!(
            e.get("/api/x", Some(&cached)).await.0,
            200,
            "cached token must keep working"
        );
    }
    let started = Instant::now();
    e.expect_error(
        "/api/x",
        Some(&uncached),
        503,
        "Authentication backend unavailable",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 must come within the store timeout"
    );
    e.expect_error(
        "/api/x",
        Some(&unknown),
        503,
        "Authentication backend unavailable",
    )
    .await;
    e.redis.freeze(false);

    // 2. Redis killed (after a SAVE, as a persistent production Redis would be).
    e.redis.cli(&["SAVE"]);
    e.redis.stop();
    for _ in 0..3 {
        assert_eq!(
            e.get("/api/x", Some(&cached)).await.0,
            200,
            "cached token must keep working"
        );
    }
    let started = Instant::now();
    e.expect_error(
        "/api/x",
        Some(&uncached),
        503,
        "Authentication backend unavailable",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 must come within the store timeout"
    );
    // A random well-formed token is not answered 401 while the store is down either.
    e.expect_error(
        "/api/x",
        Some(&unknown),
        503,
        "Authentication backend unavailable",
    )
    .await;

    // 3. Redis is back: full recovery without restarting the gateway.
    e.redis.restart();
    let back = Instant::now();
    loop {
        let (s, _, _) = e.get("/api/x", Some(&uncached)).await;
        if s == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "no recovery after Redis returned (last {s})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.expect_error("/api/x", Some(&unknown), 401, "Invalid PAT")
        .await;

    // Usage counted while Redis was down was kept and flushed after it returned: 7
    // accepted requests of `cached` (a flush that timed out against the frozen Redis
    // may have been applied late as well, so at least 7).
    let (_, list) = e.admin.call(reqwest::Method::GET, "/v1/tokens", None).await;
    let cached_id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == cached[..12])
        .map(|r| r["id"].as_str().unwrap().to_string())
        .expect("cached token listed");
    let start = Instant::now();
    loop {
        let (_, r) = e
            .admin
            .call(
                reqwest::Method::GET,
                &format!("/v1/tokens/{cached_id}"),
                None,
            )
            .await;
        if r["usageCount"].as_u64().unwrap_or(0) >= 7 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "usage lost across the outage: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_gib_upload_and_large_download_stream_with_flat_memory() {
    let e = env_with("limits:\n  max_body_bytes: 2147483648\n").await;
    let (token, _) = e.admin.create(reader()).await;
    let before = e.gw.rss_kib();
    const SIZE: u64 = 1024 * 1024 * 1024;
    const DOWN: u64 = 256 * 1024 * 1024;
    let chunk = bytes::Bytes::from(vec![b'z'; 256 * 1024]);
    let n = SIZE / chunk.len() as u64;
    let stream =
        futures_util::stream::iter((0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let resp = e
        .http
        .post(format!("{}/api/upload", e.gw.url))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["bodyBytes"], SIZE);
    let mut resp = e
        .http
        .get(format!("{}/api/stream/{DOWN}", e.gw.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0u64;
    while let Some(c) = resp.chunk().await.unwrap() {
        got += c.len() as u64;
    }
    assert_eq!(got, DOWN);
    let after = e.gw.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB while streaming 1 GiB up and 256 MiB down"
    );
}

#[tokio::test]
async fn body_limit_is_enforced_while_streaming() {
    let e = env_with("limits:\n  max_body_bytes: 1000\n").await;
    let (token, _) = e.admin.create(reader()).await;
    let resp = e
        .http
        .post(format!("{}/api/x", e.gw.url))
        .bearer_auth(&token)
        .body(vec![0u8; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let stream = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 500]))),
    );
    let resp = e
        .http
        .post(format!("{}/api/x", e.gw.url))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

/// Sends raw bytes and returns the status line and body of the answer.
async fn raw(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn dot_segments_cannot_escape_an_unauthenticated_route() {
    let e = env().await;
    for path in [
        "/health/../api/x",
        "/health/%2e%2e/api/x",
        "/health/%2E%2e/api/x",
    ] {
        let answer = raw(
            &e.gw.url,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
    }
    let answer = raw(
        &e.gw.url,
        "GET /../../etc/passwd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let (token, _) = e.admin.create(reader()).await;
    let answer = raw(
        &e.gw.url,
        &format!("GET /api/a/../b HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#""uri":"/api/b""#),
        "upstream must get the normalised path: {answer}"
    );
}

#[tokio::test]
async fn usage_counts_reach_the_record_and_survive_a_graceful_shutdown() {
    let mut e = env().await;
    let (token, record) = e.admin.create(reader()).await;
    let id = record["id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        assert_eq!(e.get("/api/x", Some(&token)).await.0, 200);
    }
    // Flushed in the background within a second.
    let start = Instant::now();
    loop {
        let (_, r) = e
            .admin
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
            .await;
        if r["usageCount"] == 5 {
            assert!(r["lastUsedAt"].is_string(), "{r}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "usage not flushed: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three more, then SIGTERM at once: the final flush on shutdown keeps them.
    for _ in 0..3 {
        assert_eq!(e.get("/api/x", Some(&token)).await.0, 200);
    }
    let status =
        e.gw.terminate(Duration::from_secs(10))
            .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let gw2 = GatewayProcess::start(&config(&e.redis.url(), &e._upstream.url(), ""));
    let admin2 = AdminApi::new(&gw2.admin_url);
    let (_, r) = admin2
        .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(r["usageCount"], 8, "{r}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let mut e = env().await;
    let (token, _) = e.admin.create(reader()).await;
    let url = format!("{}/delay/1500", e.gw.url);
    let http = e.http.clone();
    let t = token.clone();
    let in_flight = tokio::spawn(async move {
        http.get(url)
            .bearer_auth(t)
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = e.gw.pid();
    let killer = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
    });
    killer.await.unwrap().unwrap();
    let status = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(status, 200);
    let exit = tokio::task::spawn_blocking(move || e.gw.terminate(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("exited");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn access_log_names_the_token_prefix_and_deny_reason_but_never_the_token() {
    let e = env().await;
    let (token, record) = e.admin.create(reader()).await;
    assert_eq!(e.get("/api/x", Some(&token)).await.0, 200);
    e.admin
        .post(&format!(
            "/v1/tokens/{}/revoke",
            record["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(e.get("/api/x", Some(&token)).await.0, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = e.gw.log_lines();
    let access: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "patgate::access")
        .collect();
    let allowed = access
        .iter()
        .find(|v| v["status"] == 200)
        .expect("allowed line");
    assert_eq!(allowed["token.id"], record["id"]);
    assert_eq!(allowed["token.prefix"], &token[..12]);
    assert_eq!(allowed["route"], "api");
    assert_eq!(allowed["client.ip"], "127.0.0.1");
    assert!(allowed["duration_ms"].is_number());
    let denied = access
        .iter()
        .find(|v| v["status"] == 401)
        .expect("denied line");
    assert_eq!(denied["deny.reason"], "revoked");
    assert_eq!(denied["token.prefix"], &token[..12]);
    assert!(
        lines.iter().all(|l| !l.contains(&token)),
        "full token logged"
    );
}

#[tokio::test]
async fn readiness_stays_up_once_the_store_answered_and_is_down_before() {
    let mut e = env().await;
    let ready = |url: String| async move {
        let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (s, body) = ready(e.gw.admin_url.clone()).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ready")));
    e.redis.stop();
    let (s, body) = ready(e.gw.admin_url.clone()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "degraded");
    assert!(
        body["checks"]["store"]
            .as_str()
            .unwrap()
            .starts_with("unreachable")
    );
    // A replica whose store never answered is not ready.
    let cold = GatewayProcess::start(&config(&e.redis.url(), &e._upstream.url(), ""));
    let (s, body) = ready(cold.admin_url.clone()).await;
    assert_eq!((s, body["status"].as_str()), (503, Some("not ready")));
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

#[tokio::test]
async fn concurrent_misses_make_one_store_call_and_unknown_tokens_are_cached() {
    let e = env().await;
    let (token, _) = e.admin.create(reader()).await;
    e.redis.cli(&["CONFIG", "RESETSTAT"]);
    let burst = (0..50).map(|_| e.get("/api/x", Some(&token)));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.0.as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        redis_calls(&e.redis, "get"),
        1,
        "50 concurrent misses for one token must make one lookup"
    );

    // A flood of one unknown well-formed token: one lookup, then negative cache hits.
    let unknown = patgate::token::generate("pat_").unwrap();
    e.redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..20 {
        assert_eq!(e.get("/api/x", Some(&unknown)).await.0, 401);
    }
    assert_eq!(
        redis_calls(&e.redis, "get"),
        1,
        "unknown tokens are cached negatively"
    );
}

#[tokio::test]
async fn stale_entries_are_served_while_one_refresh_runs() {
    let e = env_with("cache:\n  ttl_seconds: 1\n").await;
    let (token, _) = e.admin.create(reader()).await;
    assert_eq!(e.get("/api/x", Some(&token)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;

    // Stale now: a burst is answered from the cache and starts exactly one refresh.
    e.redis.cli(&["CONFIG", "RESETSTAT"]);
    let burst = (0..30).map(|_| e.get("/api/x", Some(&token)));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.0.as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis_calls(&e.redis, "get"),
        1,
        "30 hits on a stale entry make one background refresh"
    );

    // The refreshed entry is fresh again: no store call.
    e.redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..5 {
        assert_eq!(e.get("/api/x", Some(&token)).await.0, 200);
    }
    assert_eq!(redis_calls(&e.redis, "get"), 0, "refreshed entry is fresh");
}

#[tokio::test]
async fn a_full_cache_evicts_and_counts_it() {
    let e = env_with("cache:\n  max_entries: 2\n").await;
    let mut tokens = Vec::new();
    for _ in 0..6 {
        tokens.push(e.admin.create(reader()).await.0);
    }
    // Cycle six tokens through a two-entry cache until the metric shows evictions.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = String::new();
    let mut evicted = 0u64;
    while evicted == 0 && Instant::now() < deadline {
        for t in &tokens {
            assert_eq!(e.get("/api/x", Some(t)).await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = e
            .http
            .get(format!("{}/metrics", e.gw.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        evicted = metrics
            .lines()
            .find(|l| l.starts_with("patgate_cache_evictions_total{cause=\"size\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    assert!(
        evicted >= 1,
        "6 tokens through a 2-entry cache evict:\n{metrics}"
    );
}

#[tokio::test]
async fn websocket_upgrade_passes_through_after_authentication() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env().await;
    let (token, _) = e.admin.create(reader()).await;
    let addr = e.gw.url.trim_start_matches("http://").to_string();

    // Without a token: no upgrade, a 401.
    let answer = raw(
        &e.gw.url,
        "GET /api/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "GET /api/ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Auth-User-Id: forged\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "head ended early: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("x-seen-auth-user: user-42"),
        "identity injected, spoof stripped: {head}"
    );
    // Bytes both ways.
    for msg in [&b"hello"[..], b"second frame", &[0u8, 255, 10, 13][..]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }
    // Client closes its side: the upstream's echo ends and the gateway closes ours.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0))), "connection closed cleanly: {n:?}");
}

/// Polls `url` with `token` until it answers `want`, failing after a second.
async fn within_a_second(http: &reqwest::Client, url: &str, token: &str, want: u16) {
    let start = Instant::now();
    loop {
        let s = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if s == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{url}: still {s}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn updates_and_owner_changes_reach_a_second_gateway_within_a_second() {
    let e = env().await;
    let gw2 = GatewayProcess::start(&config(&e.redis.url(), &e._upstream.url(), ""));
    let (token, record) = e.admin.create(reader()).await;
    let id = record["id"].as_str().unwrap();
    let url2 = format!("{}/api/x", gw2.url);
    within_a_second(&e.http, &url2, &token, 200).await;
    // PATCH without rotation: the new allowlist is enforced on the other replica.
    let (s, _) = e
        .admin
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"ipAllowlist": ["10.0.0.0/8"]})),
        )
        .await;
    assert_eq!(s, 200);
    within_a_second(&e.http, &url2, &token, 403).await;
    e.admin
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"ipAllowlist": []})),
        )
        .await;
    within_a_second(&e.http, &url2, &token, 200).await;
    // Owner disabled, then enabled.
    assert_eq!(e.admin.post("/v1/owners/user-42/disable").await.0, 200);
    within_a_second(&e.http, &url2, &token, 401).await;
    assert_eq!(e.admin.post("/v1/owners/user-42/enable").await.0, 200);
    within_a_second(&e.http, &url2, &token, 200).await;
    // Regenerate with zero grace: the old secret stops on the other replica too.
    let (_, resp) = e
        .admin
        .call(
            reqwest::Method::POST,
            &format!("/v1/tokens/{id}/regenerate"),
            Some(json!({"gracePeriodSeconds": 0})),
        )
        .await;
    within_a_second(&e.http, &url2, &token, 401).await;
    within_a_second(&e.http, &url2, resp["token"].as_str().unwrap(), 200).await;
}
