//! Key-sharing signals (`client_ip.signals`) on the real binary, for both stores:
//! requests from different clients — simulated through a trusted proxy's
//! `X-Forwarded-For` — show up per prefix (IPv4 /24, IPv6 /64, or exact addresses)
//! in `GET /v1/tokens/{id}/ips` with their counts and first/last seen, most recently
//! seen first; the route has the usage route's authorization.

mod common;

use std::time::Duration;

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use jiff::Timestamp;
use serde_json::{Value, json};

fn config(store: &str, upstream: &str, signals: &str) -> String {
    format!(
        r#"
{store}
tokens:
  creation_limit: 0
client_ip:
  trusted_proxies: [127.0.0.1]
{signals}
routes:
  - name: api
    path_prefix: /
    upstream: "{upstream}"
"#
    )
}

/// A request through the gateway as if from `client` (forwarded by 127.0.0.1).
async fn from(http: &reqwest::Client, gw: &GatewayProcess, token: &str, client: &str) {
    let status = http
        .get(format!("{}/x", gw.url))
        .bearer_auth(token)
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "request as {client}");
}

/// `GET /v1/tokens/{id}/ips` once it lists `n` prefixes totalling `requests` (the
/// flusher writes every 500 ms).
async fn ips_when(admin: &AdminApi, id: &str, n: usize, requests: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = admin
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}/ips"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap();
        let total: u64 = items.iter().map(|i| i["count"].as_u64().unwrap()).sum();
        if items.len() == n && total == requests {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wanted {n} prefixes and {requests} requests: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (prefix, count) of each item, in the answer's order.
fn prefixes(body: &Value) -> Vec<(String, u64)> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["prefix"].as_str().unwrap().to_string(),
                i["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn clients_show_up_per_prefix_with_counts(store_yaml: &str) {
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&config(store_yaml, &upstream.url(), ""));
    let admin = AdminApi::new(&gw.admin_url);
    let http = reqwest::Client::new();
    let (token, record) = admin.create(json!({"name": "a", "ownerId": "u1"})).await;
    let id = record["id"].as_str().unwrap();
    let (_, unused) = admin.create(json!({"name": "b", "ownerId": "u2"})).await;
    let started = Timestamp::now();

    // Two addresses of one /24 count as one client network; then an IPv6 client.
    for _ in 0..3 {
        from(&http, &gw, &token, "203.0.113.10").await;
    }
    from(&http, &gw, &token, "203.0.113.200").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..2 {
        from(&http, &gw, &token, "2001:db8:1:2::5").await;
    }
    let body = ips_when(&admin, id, 2, 6).await;
    assert_eq!(
        prefixes(&body),
        vec![
            ("2001:db8:1:2::/64".to_string(), 2),
            ("203.0.113.0/24".to_string(), 4),
        ],
        "most recently seen first: {body}"
    );
    assert_eq!(body["tokenId"], id);
    assert_eq!(body["distinct"], 2);
    assert_eq!(body["windowDays"], 7);
    assert_eq!(body["warnAbove"], 3);
    assert_eq!(body["enabled"], true);
    assert_eq!(
        (body["ipv4Prefix"].as_u64(), body["ipv6Prefix"].as_u64()),
        (Some(24), Some(64))
    );
    let now = Timestamp::now();
    for item in body["items"].as_array().unwrap() {
        let first: Timestamp = item["firstSeenAt"].as_str().unwrap().parse().unwrap();
        let last: Timestamp = item["lastSeenAt"].as_str().unwrap().parse().unwrap();
        assert!(
            started - jiff::SignedDuration::from_millis(50) <= first
                && first <= last
                && last <= now,
            "{item}"
        );
    }

    // The direct peer (no X-Forwarded-For) is a client too; the counts keep adding.
    let status = http
        .get(format!("{}/x", gw.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    from(&http, &gw, &token, "203.0.113.77").await;
    let body = ips_when(&admin, id, 3, 8).await;
    assert_eq!(
        prefixes(&body),
        vec![
            ("203.0.113.0/24".to_string(), 5),
            ("127.0.0.0/24".to_string(), 1),
            ("2001:db8:1:2::/64".to_string(), 2),
        ]
    );

    // A token nobody used has none; an unknown id is 404; a tokens:self PAT of another
    // owner may not look (as for /usage), one of the same owner may.
    let (status, body) = admin
        .call(
            reqwest::Method::GET,
            &format!("/v1/tokens/{}/ips", unused["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (status, body["distinct"].as_u64()),
        (200, Some(0)),
        "{body}"
    );
    assert_eq!(body["items"], json!([]));
    let (status, _) = admin
        .call(reqwest::Method::GET, "/v1/tokens/01NOSUCHTOKEN/ips", None)
        .await;
    assert_eq!(status, 404);
    for (owner, want) in [("u2", 403), ("u1", 200)] {
        let (pat, _) = admin
            .create(json!({"name": "self", "ownerId": owner, "permissions": ["tokens:self"]}))
            .await;
        let status = http
            .get(format!("{}/v1/tokens/{id}/ips", gw.admin_url))
            .bearer_auth(&pat)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, want, "tokens:self PAT of {owner}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_client_ips() {
    let redis = RedisServer::start();
    clients_show_up_per_prefix_with_counts(&format!(
        "store:\n  backend: redis\n  redis:\n    url: \"{}\"",
        redis.url()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_client_ips() {
    let dir = tempfile::tempdir().unwrap();
    clients_show_up_per_prefix_with_counts(&format!(
        "store:\n  backend: embedded\n  embedded:\n    path: \"{}\"",
        dir.path().join("ips.redb").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_addresses_with_prefix_lengths_32_and_128_and_a_small_bound() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let store = format!(
        "store:\n  backend: embedded\n  embedded:\n    path: \"{}\"",
        dir.path().join("exact.redb").display()
    );
    let signals = "  signals: {ipv4_prefix: 32, ipv6_prefix: 128, max_per_token: 3, warn_above: 2}";
    let gw = GatewayProcess::start(&config(&store, &upstream.url(), signals));
    let admin = AdminApi::new(&gw.admin_url);
    let http = reqwest::Client::new();
    let (token, record) = admin.create(json!({"name": "a", "ownerId": "u1"})).await;
    let id = record["id"].as_str().unwrap();
    for client in ["203.0.113.10", "203.0.113.11", "2001:db8::5"] {
        from(&http, &gw, &token, client).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = ips_when(&admin, id, 3, 3).await;
    assert_eq!(
        prefixes(&body),
        vec![
            ("2001:db8::5/128".to_string(), 1),
            ("203.0.113.11/32".to_string(), 1),
            ("203.0.113.10/32".to_string(), 1),
        ]
    );
    assert_eq!(body["warnAbove"], 2);
    // A fourth address: the least recently seen goes (max_per_token: 3). Wait for the
    // first three to be flushed apart from it, so its batch is a later one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    from(&http, &gw, &token, "198.51.100.1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = admin
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}/ips"), None)
            .await;
        let got = prefixes(&body);
        if got.first().map(|p| p.0.as_str()) == Some("198.51.100.1/32") {
            assert_eq!(
                got.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
                vec!["198.51.100.1/32", "2001:db8::5/128", "203.0.113.11/32"]
            );
            assert_eq!(body["distinct"], 3);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
