//! Request quotas (`rate_limit.quota`, SPEC §3 `429 Quota exceeded`) on the real
//! binary, for both stores: per-owner sharing, route costs, free routes, `Retry-After`
//! to the end of the UTC day, whoami's and the admin API's view
//! (`GET /v1/tokens/{id}/quota`), and atomic charging under concurrency.

mod common;

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use serde_json::{Value, json};

fn config(store: &str, upstream: &str, per: &str) -> String {
    format!(
        r#"
{store}
tokens:
  creation_limit: 0
rate_limit:
  quota:
    requests: 5
    period: day
    per: {per}
routes:
  - name: api
    path_prefix: /api/
    upstream: "{upstream}"
  - name: heavy
    path_prefix: /heavy/
    upstream: "{upstream}"
    quota_cost: 3
  - name: free
    path_prefix: /free/
    upstream: "{upstream}"
    quota_cost: 0
"#
    )
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// `GET /v1/tokens/{id}/quota`'s `quota` object (200 expected).
async fn admin_quota(admin: &AdminApi, id: &str) -> Value {
    let (status, body) = admin
        .call(
            reqwest::Method::GET,
            &format!("/v1/tokens/{id}/quota"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tokenId"], id);
    body["quota"].clone()
}

async fn quotas_are_shared_by_an_owner_and_charged_atomically(store_yaml: &str) {
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&config(store_yaml, &upstream.url(), "owner"));
    let admin = AdminApi::new(&gw.admin_url);
    let http = reqwest::Client::new();
    let (t1, r1) = admin.create(json!({"name": "a", "ownerId": "u1"})).await;
    let (t2, r2) = admin.create(json!({"name": "b", "ownerId": "u1"})).await;
    let (t3, r3) = admin.create(json!({"name": "c", "ownerId": "u2"})).await;
    let api = format!("{}/api/x", gw.url);

    for _ in 0..2 {
        assert_eq!(get(&http, &api, &t1).await.0, 200);
    }
    let (s, _, who) = get(&http, &format!("{}/_patgate/whoami", gw.url), &t2).await;
    assert_eq!(s, 200);
    assert_eq!(who["quota"]["limit"], 5, "{who}");
    assert_eq!(
        who["quota"]["used"], 2,
        "the owner's tokens share one quota: {who}"
    );
    assert_eq!(who["quota"]["remaining"], 3);
    // The admin API shows the same, for either of the owner's tokens, charging nothing.
    let id1 = r1["id"].as_str().unwrap();
    for _ in 0..2 {
        let q = admin_quota(&admin, id1).await;
        assert_eq!(q["limit"], 5, "{q}");
        assert_eq!(q["used"], 2, "{q}");
        assert_eq!(q["remaining"], 3, "{q}");
        assert_eq!(q["period"], "day");
        assert_eq!(q["per"], "owner");
        let now = jiff::Timestamp::now().as_second();
        let midnight = (now / 86_400 + 1) * 86_400;
        let reset: u64 = q["resetSeconds"].as_u64().unwrap();
        assert!(reset.abs_diff((midnight - now) as u64) <= 2, "{q}");
        let reset_at: jiff::Timestamp = q["resetAt"].as_str().unwrap().parse().unwrap();
        assert_eq!(reset_at.as_second(), midnight, "{q}");
    }
    assert_eq!(
        admin_quota(&admin, r2["id"].as_str().unwrap()).await["used"],
        2
    );

    // A route that costs 3 uses the rest; then the owner's other token is over.
    assert_eq!(get(&http, &format!("{}/heavy/x", gw.url), &t2).await.0, 200);
    let (s, h, body) = get(&http, &api, &t1).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"], "Quota exceeded");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    let to_midnight = 86_400 - now % 86_400;
    assert!(
        retry.abs_diff(to_midnight) <= 2,
        "Retry-After {retry} vs {to_midnight} s to the end of the UTC day"
    );
    // A refused request costs nothing, a free route still works, another owner too.
    let (_, _, who) = get(&http, &format!("{}/_patgate/whoami", gw.url), &t1).await;
    assert_eq!(who["quota"]["used"], 5, "{who}");
    assert_eq!(get(&http, &format!("{}/free/x", gw.url), &t1).await.0, 200);
    assert_eq!(get(&http, &api, &t3).await.0, 200);
    let q = admin_quota(&admin, id1).await;
    assert_eq!(
        (q["used"].as_u64(), q["remaining"].as_u64()),
        (Some(5), Some(0)),
        "{q}"
    );
    let q = admin_quota(&admin, r3["id"].as_str().unwrap()).await;
    assert_eq!(
        (q["used"].as_u64(), q["remaining"].as_u64()),
        (Some(1), Some(4)),
        "{q}"
    );
    // Same authorization as the token's other reads: a tokens:self PAT of another
    // owner may not look, one of the same owner may.
    for (owner, want) in [("u2", 403), ("u1", 200)] {
        let (pat, _) = admin
            .create(json!({"name": "self", "ownerId": owner, "permissions": ["tokens:self"]}))
            .await;
        let r = http
            .get(format!("{}/v1/tokens/{id1}/quota", gw.admin_url))
            .bearer_auth(&pat)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "tokens:self PAT of {owner}");
    }

    // 20 concurrent requests against 4 left: exactly 4 pass.
    let (t4, _) = admin.create(json!({"name": "d", "ownerId": "u4"})).await;
    assert_eq!(get(&http, &api, &t4).await.0, 200);
    let burst = (0..20).map(|_| get(&http, &api, &t4));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        16,
        "{statuses:?}"
    );
    let metrics = http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("patgate_quota_exceeded_total 17"),
        "one 429 before the burst and 16 in it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_quotas() {
    let redis = RedisServer::start();
    quotas_are_shared_by_an_owner_and_charged_atomically(&format!(
        "store:\n  backend: redis\n  redis:\n    url: \"{}\"",
        redis.url()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_quotas() {
    let dir = tempfile::tempdir().unwrap();
    quotas_are_shared_by_an_owner_and_charged_atomically(&format!(
        "store:\n  backend: embedded\n  embedded:\n    path: \"{}\"",
        dir.path().join("q.redb").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quota_the_admin_api_answers_null() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        "store:\n  backend: embedded\n  embedded:\n    path: \"{}\"\nroutes:\n  - {{name: api, path_prefix: /, upstream: \"{}\"}}\n",
        dir.path().join("q.redb").display(),
        upstream.url()
    ));
    let admin = AdminApi::new(&gw.admin_url);
    let (_, record) = admin.create(json!({"name": "a", "ownerId": "u1"})).await;
    let id = record["id"].as_str().unwrap();
    assert_eq!(admin_quota(&admin, id).await, Value::Null);
    let (status, _) = admin
        .call(reqwest::Method::GET, "/v1/tokens/01NOSUCHTOKEN/quota", None)
        .await;
    assert_eq!(status, 404);
}
