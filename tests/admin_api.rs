//! The admin API against the real binary, on both stores — a real Redis and the
//! embedded redb file: caller authentication, validation (400 naming the field), CRUD,
//! listing, import, regenerate, audit, PAT callers, metrics. Every scenario is one
//! `async fn` taking the [`Backend`]; `both!` turns it into a test per store.

mod common;

use std::time::Duration;

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use reqwest::Method;
use serde_json::{Value, json};

/// Which store a scenario runs against.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Redis,
    Embedded,
}

fn config(store: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"
{store}
tokens:
  prefix: pat_
  default_expiry: 30d
  max_expiry: 400d
  accept_foreign: true
  foreign_prefixes: [ghp_]
  creation_limit: 3
routes:
  - name: all
    path_prefix: /
    upstream: "{upstream}"
{extra}
"#
    )
}

struct Env {
    _redis: Option<RedisServer>,
    _dir: tempfile::TempDir,
    _upstream: Upstream,
    gw: GatewayProcess,
    admin: AdminApi,
}

async fn env(backend: Backend) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (redis, store) = match backend {
        Backend::Redis => {
            let redis = RedisServer::start();
            let store = format!(
                "store:\n  backend: redis\n  redis:\n    url: \"{}\"",
                redis.url()
            );
            (Some(redis), store)
        }
        Backend::Embedded => {
            let path = dir.path().join("patgate.redb");
            (
                None,
                format!(
                    "store:\n  backend: embedded\n  embedded:\n    path: \"{}\"",
                    path.display()
                ),
            )
        }
    };
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&config(&store, &upstream.url(), ""));
    let admin = AdminApi::new(&gw.admin_url);
    Env {
        _redis: redis,
        _dir: dir,
        _upstream: upstream,
        gw,
        admin,
    }
}

async fn status_with(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn callers_without_a_valid_admin_key_get_401(backend: Backend) {
    let e = env(backend).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tokens", e.gw.admin_url);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let r = http
        .get(&url)
        .bearer_auth("pgadm_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "Invalid admin credentials"
    );
    // Health endpoints need no key.
    assert_eq!(
        http.get(format!("{}/healthz", e.gw.admin_url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .get(format!("{}/readyz", e.gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["checks"]["store"], "ok");
}

async fn create_returns_the_secret_once_and_records_never_hold_it(backend: Backend) {
    let e = env(backend).await;
    let (token, record) = e
        .admin
        .create(json!({
            "name": "ci", "description": "deploys", "ownerId": "u1", "orgId": "o1",
            "scopes": ["documents"], "permissions": ["read"], "ipAllowlist": ["10.0.0.0/8", "192.0.2.1"],
            "rateLimit": {"requests": 5, "perSeconds": 1, "burst": 10}, "metadata": {"team": "infra"}
        }))
        .await;
    assert!(token.starts_with("pat_") && token.len() == 47);
    patgate::token::parse(&token, "pat_").unwrap();
    for field in [
        "id",
        "name",
        "description",
        "prefix",
        "type",
        "ownerId",
        "orgId",
        "projectId",
        "permissions",
        "scopes",
        "createdAt",
        "createdBy",
        "expiresAt",
        "isActive",
        "revokedAt",
        "lastUsedAt",
        "usageCount",
        "ipAllowlist",
        "rateLimit",
        "metadata",
    ] {
        assert!(
            record.get(field).is_some(),
            "record lacks {field}: {record}"
        );
    }
    assert_eq!(record["createdBy"], "admin:test");
    assert_eq!(record["ipAllowlist"], json!(["10.0.0.0/8", "192.0.2.1/32"]));
    assert_eq!(
        record["rateLimit"],
        json!({"requests": 5, "perSeconds": 1, "burst": 10})
    );
    // Default expiry 30 d.
    let exp: jiff::Timestamp = record["expiresAt"].as_str().unwrap().parse().unwrap();
    let days = (exp - jiff::Timestamp::now()).as_secs() / 86400;
    assert!((29..=30).contains(&days), "{days}");
    let id = record["id"].as_str().unwrap();
    let (s, got) = e
        .admin
        .call(Method::GET, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(got, record);
    let (_, list) = e.admin.call(Method::GET, "/v1/tokens", None).await;
    let text = list.to_string();
    assert!(
        !text.contains(&token[12..]),
        "a listing must never contain a secret"
    );
    assert!(!got.to_string().contains(&token[12..]));
    let (s, _) = e.admin.call(Method::GET, "/v1/tokens/nope", None).await;
    assert_eq!(s, 404);
}

async fn validation_errors_are_400_naming_the_field(backend: Backend) {
    let e = env(backend).await;
    let far = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 500)).to_string();
    let past = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)).to_string();
    let cases = [
        (json!({"ownerId": "u"}), "name"),
        (json!({"name": "", "ownerId": "u"}), "name"),
        (json!({"name": "x".repeat(101), "ownerId": "u"}), "name"),
        (
            json!({"name": "n", "ownerId": "u", "description": "d".repeat(501)}),
            "description",
        ),
        (json!({"name": "n"}), "ownerId"),
        (
            json!({"name": "n", "ownerId": "u", "ipAllowlist": ["999.1.1.1"]}),
            "ipAllowlist",
        ),
        (
            json!({"name": "n", "ownerId": "u", "expiresAt": far}),
            "expiresAt",
        ),
        (
            json!({"name": "n", "ownerId": "u", "expiresAt": past}),
            "expiresAt",
        ),
        (
            json!({"name": "n", "ownerId": "u", "expiresAt": null}),
            "expiresAt",
        ),
        (
            json!({"name": "n", "ownerId": "u", "type": "project"}),
            "projectId",
        ),
        (
            json!({"name": "n", "ownerId": "u", "rateLimit": {"requests": 0, "perSeconds": 1}}),
            "rateLimit",
        ),
        (json!({"name": "n", "ownerId": "u", "bogus": 1}), "bogus"),
    ];
    for (body, field) in cases {
        let (s, resp) = e
            .admin
            .call(Method::POST, "/v1/tokens", Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body}: {resp}");
        assert_eq!(resp["field"], field, "{body}: {resp}");
        assert!(
            resp["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{resp}"
        );
    }
    // Not JSON at all.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/tokens", e.gw.admin_url))
        .bearer_auth(common::gateway::ADMIN_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "body");
}

async fn creation_limit_per_owner_is_429_with_retry_after(backend: Backend) {
    let e = env(backend).await;
    for _ in 0..3 {
        e.admin
            .create(json!({"name": "n", "ownerId": "limited"}))
            .await;
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/tokens", e.gw.admin_url))
        .bearer_auth(common::gateway::ADMIN_KEY)
        .json(&json!({"name": "n", "ownerId": "limited"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "Too many tokens created recently. Try again in an hour."
    );
    // Another owner is not affected.
    e.admin
        .create(json!({"name": "n", "ownerId": "other"}))
        .await;
}

async fn list_filters_and_cursor_paging(backend: Backend) {
    let e = env(backend).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let owner = format!("owner-{}", i % 3);
        let kind = if i == 6 {
            json!({"type": "project", "projectId": "p9"})
        } else {
            json!({})
        };
        let mut body = json!({"name": format!("token {i}"), "ownerId": owner, "description": if i == 3 { "the needle" } else { "hay" }});
        body.as_object_mut()
            .unwrap()
            .extend(kind.as_object().unwrap().clone());
        let (_, r) = e.admin.create(body).await;
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    // Pages of 3 walk every token once, in creation order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tokens?limit=3&cursor={c}"),
            None => "/v1/tokens?limit=3".into(),
        };
        let (s, page) = e.admin.call(Method::GET, &path, None).await;
        assert_eq!(s, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let (_, p) = e
        .admin
        .call(Method::GET, "/v1/tokens?ownerId=owner-1", None)
        .await;
    assert_eq!(count(&p), 2);
    let (_, p) = e
        .admin
        .call(Method::GET, "/v1/tokens?type=project", None)
        .await;
    assert_eq!(count(&p), 1);
    let (_, p) = e
        .admin
        .call(Method::GET, "/v1/tokens?projectId=p9", None)
        .await;
    assert_eq!(count(&p), 1);
    let (_, p) = e.admin.call(Method::GET, "/v1/tokens?q=NEEDLE", None).await;
    assert_eq!(count(&p), 1);
    e.admin
        .post(&format!("/v1/tokens/{}/deactivate", ids[0]))
        .await;
    let (_, p) = e
        .admin
        .call(Method::GET, "/v1/tokens?active=false", None)
        .await;
    assert_eq!(count(&p), 1);
    let (_, p) = e
        .admin
        .call(Method::GET, "/v1/tokens?active=true", None)
        .await;
    assert_eq!(count(&p), 6);
    let (_, p) = e
        .admin
        .call(Method::GET, "/v1/tokens?expiringWithinDays=31", None)
        .await;
    assert_eq!(count(&p), 7);
    let (_, p) = e
        .admin
        .call(Method::GET, "/v1/tokens?expiringWithinDays=7", None)
        .await;
    assert_eq!(count(&p), 0);
    let (s, p) = e.admin.call(Method::GET, "/v1/tokens?limit=0", None).await;
    assert_eq!((s, p["field"].as_str()), (400, Some("limit")));
}

async fn update_changes_fields_without_rotating_the_secret(backend: Backend) {
    let e = env(backend).await;
    let (token, record) = e
        .admin
        .create(json!({"name": "n", "ownerId": "u", "scopes": ["a"]}))
        .await;
    let id = record["id"].as_str().unwrap();
    let url = format!("{}/whatever", e.gw.url);
    assert_eq!(status_with(&url, &token).await, 200);
    let (s, updated) = e
        .admin
        .call(
            Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"name": "renamed", "ipWhitelist": ["10.0.0.0/8"], "metadata": {"k": "v"}})),
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["prefix"], record["prefix"]);
    assert_eq!(updated["metadata"], json!({"k": "v"}));
    // The allowlist now excludes 127.0.0.1: enforced at once.
    assert_eq!(status_with(&url, &token).await, 403);
    let (s, resp) = e
        .admin
        .call(
            Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!((s, resp["field"].as_str()), (400, Some("name")));
}

async fn regenerate_with_and_without_grace_and_import_of_foreign_hashes(backend: Backend) {
    let e = env(backend).await;
    let (old, record) = e.admin.create(json!({"name": "n", "ownerId": "u"})).await;
    let id = record["id"].as_str().unwrap();
    let url = format!("{}/x", e.gw.url);
    assert_eq!(status_with(&url, &old).await, 200);
    let (s, resp) = e
        .admin
        .call(
            Method::POST,
            &format!("/v1/tokens/{id}/regenerate"),
            Some(json!({"gracePeriodSeconds": 2})),
        )
        .await;
    assert_eq!(s, 200, "{resp}");
    let new = resp["token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(resp["record"]["id"], record["id"]);
    assert_eq!(resp["record"]["prefix"], &new[..12]);
    assert_eq!(status_with(&url, &new).await, 200);
    assert_eq!(
        status_with(&url, &old).await,
        200,
        "old secret valid during grace"
    );
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(
        status_with(&url, &old).await,
        401,
        "old secret invalid after grace"
    );
    assert_eq!(status_with(&url, &new).await, 200);
    // Zero grace: invalid at once.
    let (_, resp) = e
        .admin
        .call(
            Method::POST,
            &format!("/v1/tokens/{id}/regenerate"),
            Some(json!({"gracePeriodSeconds": 0})),
        )
        .await;
    let newer = resp["token"].as_str().unwrap().to_string();
    assert_eq!(status_with(&url, &new).await, 401);
    assert_eq!(status_with(&url, &newer).await, 200);
    let (s, resp) = e
        .admin
        .call(
            Method::POST,
            &format!("/v1/tokens/{id}/regenerate"),
            Some(json!({"gracePeriodSeconds": 999999})),
        )
        .await;
    assert_eq!(
        (s, resp["field"].as_str()),
        (400, Some("gracePeriodSeconds"))
    );

    // Import: a legacy token keeps working through its SHA-256.
    let legacy = "ghp_legacyToken0123456789";
    common::secrets::register(legacy);
    let sha = patgate::token::TokenHash::of(legacy).to_hex();
    let (s, resp) = e
        .admin
        .call(
            Method::POST,
            "/v1/tokens/import",
            Some(
                json!({"sha256": sha, "name": "legacy", "ownerId": "u", "prefix": "ghp_legacyTo"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{resp}");
    assert_eq!(resp["record"]["prefix"], "ghp_legacyTo");
    assert_eq!(status_with(&url, legacy).await, 200);
    let (s, _) = e
        .admin
        .call(
            Method::POST,
            "/v1/tokens/import",
            Some(json!({"sha256": sha, "name": "again", "ownerId": "u"})),
        )
        .await;
    assert_eq!(s, 409);
    let (s, resp) = e
        .admin
        .call(
            Method::POST,
            "/v1/tokens/import",
            Some(json!({"sha256": "abc", "name": "x", "ownerId": "u"})),
        )
        .await;
    assert_eq!((s, resp["field"].as_str()), (400, Some("sha256")));
}

async fn audit_trail_records_every_action_without_secrets(backend: Backend) {
    let e = env(backend).await;
    let (token, record) = e.admin.create(json!({"name": "n", "ownerId": "u"})).await;
    let id = record["id"].as_str().unwrap();
    e.admin.post(&format!("/v1/tokens/{id}/deactivate")).await;
    e.admin
        .call(
            Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"name": "m"})),
        )
        .await;
    e.admin.post(&format!("/v1/tokens/{id}/revoke")).await;
    e.admin.post("/v1/owners/u/disable").await;
    let (s, audit) = e
        .admin
        .call(Method::GET, &format!("/v1/audit?tokenId={id}"), None)
        .await;
    assert_eq!(s, 200);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ev| ev["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.revoke",
            "token.update",
            "token.deactivate",
            "token.create"
        ]
    );
    let update = &audit["items"][1];
    assert_eq!(update["details"]["fields"], json!(["name"]));
    assert_eq!(update["actor"], "admin:test");
    assert_eq!(update["sourceIp"], "127.0.0.1");
    let (_, all) = e
        .admin
        .call(Method::GET, "/v1/audit?actor=admin:test&limit=1", None)
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    assert_eq!(all["items"][0]["action"], "owner.disable");
    assert!(all["nextCursor"].is_string());
    assert!(!audit.to_string().contains(&token[12..]));
}

async fn openapi_document_is_served_without_a_key_and_wrong_methods_get_405(backend: Backend) {
    let e = env(backend).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/v1/openapi.json", e.gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/tokens/{id}/revoke"]["post"].is_object());

    // A known path with another method: 401 without a key (nothing learnt), then 405
    // with Allow; unknown /v1 paths stay 404 once authenticated.
    let url = format!("{}/v1/tokens/some-id", e.gw.admin_url);
    assert_eq!(http.put(&url).send().await.unwrap().status(), 401);
    let r = http
        .put(&url)
        .bearer_auth(common::gateway::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, PATCH, DELETE");
    let r = http
        .post(format!("{}/healthz", e.gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    let (s, _) = e.admin.call(Method::GET, "/v1/nothing/here", None).await;
    assert_eq!(s, 404);

    // Path captures are percent-decoded: the owner is `user:42`.
    let (s, body) = e.admin.post("/v1/owners/user%3A42/disable").await;
    assert_eq!(s, 200);
    assert_eq!(body, json!({"ownerId": "user:42", "disabled": true}));
}

/// Calls the admin API with a PAT as the credential.
async fn as_pat(
    e: &Env,
    pat: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{}", e.gw.admin_url, path))
        .bearer_auth(pat);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        if let Some(t) = v.get("token").and_then(Value::as_str) {
            common::secrets::register(t);
        }
        (status, v)
    } else {
        (status, Value::String(text))
    }
}

async fn a_tokens_admin_pat_manages_its_organization_only(backend: Backend) {
    let e = env(backend).await;
    let (org_admin, _) = e
        .admin
        .create(json!({"name": "oa", "ownerId": "alice", "orgId": "o1", "permissions": ["tokens:admin"]}))
        .await;
    let (_, mine) = e
        .admin
        .create(json!({"name": "a", "ownerId": "bob", "orgId": "o1"}))
        .await;
    let (_, theirs) = e
        .admin
        .create(json!({"name": "b", "ownerId": "carol", "orgId": "o2"}))
        .await;
    let mine_id = mine["id"].as_str().unwrap();
    let theirs_id = theirs["id"].as_str().unwrap();

    let (s, page) = as_pat(&e, &org_admin, Method::GET, "/v1/tokens", None).await;
    assert_eq!(s, 200, "{page}");
    let orgs: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["orgId"].as_str().unwrap())
        .collect();
    assert!(
        orgs.iter().all(|o| *o == "o1") && orgs.len() == 2,
        "{orgs:?}"
    );
    assert_eq!(
        as_pat(
            &e,
            &org_admin,
            Method::GET,
            &format!("/v1/tokens/{mine_id}"),
            None
        )
        .await
        .0,
        200
    );
    let (s, body) = as_pat(
        &e,
        &org_admin,
        Method::GET,
        &format!("/v1/tokens/{theirs_id}"),
        None,
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"], "This token belongs to another organization");
    assert_eq!(
        as_pat(
            &e,
            &org_admin,
            Method::POST,
            &format!("/v1/tokens/{theirs_id}/revoke"),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        as_pat(
            &e,
            &org_admin,
            Method::POST,
            &format!("/v1/tokens/{mine_id}/revoke"),
            None
        )
        .await
        .0,
        200
    );
    let (s, created) = as_pat(
        &e,
        &org_admin,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "n", "ownerId": "dave"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["record"]["orgId"], "o1");
    let (s, _) = as_pat(
        &e,
        &org_admin,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "n", "ownerId": "x", "orgId": "o2"})),
    )
    .await;
    assert_eq!(s, 403);
    // Admin-key-only operations.
    assert_eq!(
        as_pat(&e, &org_admin, Method::GET, "/v1/audit", None)
            .await
            .0,
        403
    );
    assert_eq!(
        as_pat(&e, &org_admin, Method::POST, "/v1/owners/bob/disable", None)
            .await
            .0,
        403
    );
    // The denial is in the audit trail, attributed to the PAT.
    let (_, audit) = e
        .admin
        .call(Method::GET, &format!("/v1/audit?tokenId={theirs_id}"), None)
        .await;
    let denied = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ev| ev["outcome"] == "denied")
        .expect("denial audited");
    assert!(denied["actor"].as_str().unwrap().starts_with("token:"));
}

async fn a_tokens_self_pat_manages_only_its_own_tokens_without_escalation(backend: Backend) {
    let e = env(backend).await;
    let (me, _) = e
        .admin
        .create(json!({"name": "self", "ownerId": "me", "permissions": ["tokens:self", "read"], "scopes": ["docs"]}))
        .await;
    let (_, other) = e
        .admin
        .create(json!({"name": "o", "ownerId": "someone-else"}))
        .await;
    let (s, created) = as_pat(
        &e,
        &me,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "ci", "permissions": ["read"], "scopes": ["docs"]})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["record"]["ownerId"], "me");
    let (s, body) = as_pat(
        &e,
        &me,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "x", "permissions": ["write"]})),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        body["error"],
        "Cannot grant permission write: the calling PAT does not hold it"
    );
    assert_eq!(
        as_pat(
            &e,
            &me,
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "x", "scopes": ["billing"]}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        as_pat(
            &e,
            &me,
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "x", "ownerId": "someone-else"}))
        )
        .await
        .0,
        403
    );
    let (_, page) = as_pat(&e, &me, Method::GET, "/v1/tokens", None).await;
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["ownerId"] == "me")
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let other_id = other["id"].as_str().unwrap();
    assert_eq!(
        as_pat(
            &e,
            &me,
            Method::DELETE,
            &format!("/v1/tokens/{other_id}"),
            None
        )
        .await
        .0,
        403
    );
    let created_id = created["record"]["id"].as_str().unwrap();
    let (s, _) = as_pat(
        &e,
        &me,
        Method::PATCH,
        &format!("/v1/tokens/{created_id}"),
        Some(json!({"permissions": ["tokens:admin"]})),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(
        as_pat(
            &e,
            &me,
            Method::POST,
            &format!("/v1/tokens/{created_id}/revoke"),
            None
        )
        .await
        .0,
        200
    );
}

async fn other_pats_and_bad_credentials_are_refused_with_clear_messages(backend: Backend) {
    let e = env(backend).await;
    let (plain, _) = e
        .admin
        .create(json!({"name": "p", "ownerId": "u", "permissions": ["read"]}))
        .await;
    let (s, body) = as_pat(&e, &plain, Method::GET, "/v1/tokens", None).await;
    assert_eq!(s, 403);
    assert_eq!(
        body["error"],
        "PAT lacks required permission: tokens:admin or tokens:self"
    );
    let (revoked, r) = e
        .admin
        .create(json!({"name": "r", "ownerId": "u", "permissions": ["tokens:self"]}))
        .await;
    e.admin
        .post(&format!("/v1/tokens/{}/revoke", r["id"].as_str().unwrap()))
        .await;
    let (s, body) = as_pat(&e, &revoked, Method::GET, "/v1/tokens", None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("PAT has been revoked"))
    );
    let unknown = patgate::token::generate("pat_").unwrap();
    assert_eq!(
        as_pat(&e, &unknown, Method::GET, "/v1/tokens", None)
            .await
            .0,
        401
    );
    let (s, body) = as_pat(&e, "garbage", Method::GET, "/v1/tokens", None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("Invalid admin credentials"))
    );
}

async fn metrics_are_served_in_prometheus_text(backend: Backend) {
    let e = env(backend).await;
    let (token, _) = e.admin.create(json!({"name": "m", "ownerId": "u"})).await;
    status_with(&format!("{}/x", e.gw.url), &token).await;
    status_with(&format!("{}/x", e.gw.url), "xyz_bad").await;
    let r = reqwest::get(format!("{}/metrics", e.gw.admin_url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"patgate_requests_total{route="all",status="200",outcome="allowed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"patgate_requests_total{route="all",status="401",outcome="malformed"} 1"#),
        "{text}"
    );
    assert!(text.contains("patgate_auth_decision_seconds_count 2"));
    assert!(text.contains("patgate_upstream_seconds_bucket"));
    assert!(text.contains("patgate_cache_misses_total 1"));
    assert!(!text.contains(&token[4..]), "no secret in metrics");
}

async fn hourly_usage_counts_real_traffic_with_the_token_authorization(backend: Backend) {
    let e = env(backend).await;
    let (token, record) = e
        .admin
        .create(json!({"name": "busy", "ownerId": "u1", "permissions": ["tokens:self"]}))
        .await;
    let id = record["id"].as_str().unwrap();
    for _ in 0..5 {
        assert_eq!(status_with(&format!("{}/x", e.gw.url), &token).await, 200);
    }
    // The flusher writes at least once a second; wait for all five to land.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let (status, usage) = e
            .admin
            .call(Method::GET, &format!("/v1/tokens/{id}/usage"), None)
            .await;
        assert_eq!(status, 200, "{usage}");
        let total: u64 = usage["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["requests"].as_u64().unwrap())
            .sum();
        if total >= 5 || std::time::Instant::now() > deadline {
            assert_eq!(total, 5, "{usage}");
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(usage["tokenId"], id);
    let hours = usage["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 168, "7 days of hours, zeros filled");
    // Oldest first, one hour apart, the current hour last and holding the traffic.
    let at = |i: usize| {
        hours[i]["hour"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    assert_eq!(at(1).as_second() - at(0).as_second(), 3600);
    assert_eq!(at(167).as_second() % 3600, 0);
    let now = jiff::Timestamp::now().as_second();
    assert!(now - at(167).as_second() < 3600 + 5, "{}", at(167));
    // All in the current hour (or the one before, if the clock just turned).
    let n = |i: usize| hours[i]["requests"].as_u64().unwrap();
    assert_eq!(n(166) + n(167), 5, "{usage}");
    assert!(hours[..166].iter().all(|h| h["requests"] == 0));

    // Same authorization as GET /v1/tokens/{id}: the token itself (tokens:self) may
    // read its own usage; another owner's PAT may not; strangers get 401.
    let (status, _) = as_pat(
        &e,
        &token,
        Method::GET,
        &format!("/v1/tokens/{id}/usage"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (other, _) = e
        .admin
        .create(json!({"name": "other", "ownerId": "u2", "permissions": ["tokens:self"]}))
        .await;
    let (status, _) = as_pat(
        &e,
        &other,
        Method::GET,
        &format!("/v1/tokens/{id}/usage"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let r = reqwest::get(format!("{}/v1/tokens/{id}/usage", e.gw.admin_url))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, _) = e
        .admin
        .call(Method::GET, "/v1/tokens/nope/usage", None)
        .await;
    assert_eq!(status, 404);
}

async fn caller_says_who_is_asking_and_what_it_may_do(backend: Backend) {
    let e = env(backend).await;
    let (status, me) = e.admin.call(Method::GET, "/v1/caller", None).await;
    assert_eq!(status, 200);
    assert_eq!(me["kind"], "adminKey");
    assert_eq!(me["name"], "test");
    assert_eq!(me["canAudit"], true);
    let (token, record) = e
        .admin
        .create(
            json!({"name": "me", "ownerId": "u1", "orgId": "o1", "permissions": ["tokens:admin"]}),
        )
        .await;
    let (status, me) = as_pat(&e, &token, Method::GET, "/v1/caller", None).await;
    assert_eq!(status, 200);
    assert_eq!(me["kind"], "pat");
    assert_eq!(me["role"], "tokens:admin");
    assert_eq!(me["tokenId"], record["id"]);
    assert_eq!(me["orgId"], "o1");
    assert_eq!(me["canAudit"], false);
    assert_eq!(me["canManageOwners"], false);
    assert!(!me.to_string().contains(&token[12..]), "no secret in {me}");
}

/// One `#[tokio::test]` per store for each scenario.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod redis_store {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::Redis).await } )*
        }
        mod embedded_store {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::Embedded).await } )*
        }
    };
}

both!(
    callers_without_a_valid_admin_key_get_401,
    create_returns_the_secret_once_and_records_never_hold_it,
    validation_errors_are_400_naming_the_field,
    creation_limit_per_owner_is_429_with_retry_after,
    list_filters_and_cursor_paging,
    update_changes_fields_without_rotating_the_secret,
    regenerate_with_and_without_grace_and_import_of_foreign_hashes,
    audit_trail_records_every_action_without_secrets,
    openapi_document_is_served_without_a_key_and_wrong_methods_get_405,
    a_tokens_admin_pat_manages_its_organization_only,
    a_tokens_self_pat_manages_only_its_own_tokens_without_escalation,
    other_pats_and_bad_credentials_are_refused_with_clear_messages,
    metrics_are_served_in_prometheus_text,
    hourly_usage_counts_real_traffic_with_the_token_authorization,
    caller_says_who_is_asking_and_what_it_may_do,
);
