//! Scale-out (SPEC §6): several real `patgate` processes against one Redis deployment —
//! standalone, a 3-master Redis Cluster, and Sentinel with a failover — with global
//! rate limits (`rate_limit.mode: redis`) shared by every replica.
//!
//! Helpers that block (process start-up, `redis-cli`) run before the in-process
//! upstream starts or on `spawn_blocking`, so the test's runtime keeps serving it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::{RedisCluster, RedisServer, SentinelSet};
use common::upstream::Upstream;
use patgate::config::RedisSettings;
use patgate::ratelimit::{GcraBackend, GcraParams};
use patgate::store::redis::RedisStore;
use serde_json::json;

fn redis_settings(url: String) -> RedisSettings {
    RedisSettings {
        urls: vec![url],
        cluster: false,
        sentinel: None,
        command_timeout: Duration::from_millis(250),
        connect_timeout: Duration::from_millis(500),
        key_prefix: "patgate:".to_string(),
        audit_max_events: 1000,
    }
}

/// Gateway YAML over `store` (the `store:` section body, indented by 2), every
/// path routed to `upstream`, global rate limits with the given replica hint.
fn gateway_yaml(store: &str, upstream: &str, replicas: u32) -> String {
    format!(
        "store:\n  backend: redis\n{store}tokens:\n  creation_limit: 0\nrate_limit:\n  mode: redis\n  replicas: {replicas}\n  default: null\nroutes:\n  - name: all\n    path_prefix: /\n    upstream: \"{upstream}\"\n"
    )
}

/// Result of driving traffic: statuses seen.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicUsize,
    limited: AtomicUsize,
    other: AtomicUsize,
}

/// Sends requests with `token` round-robin over `urls` from `workers` concurrent
/// loops for `dur` (one request every `pace` per loop). Returns the tally and the
/// time from the first request's start to the last one's end.
async fn drive(
    urls: &[String],
    token: &str,
    dur: Duration,
    workers: usize,
    pace: Duration,
) -> (Tally, Duration) {
    let http = reqwest::Client::new();
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let tasks = (0..workers).map(|w| {
        let http = http.clone();
        let tally = tally.clone();
        let urls = urls.to_vec();
        let token = token.to_string();
        async move {
            let mut i = w;
            while start.elapsed() < dur {
                let url = format!("{}/x", urls[i % urls.len()]);
                i += 1;
                let resp = http.get(&url).bearer_auth(&token).send().await;
                match resp.map(|r| r.status().as_u16()) {
                    Ok(200) => tally.ok.fetch_add(1, Ordering::Relaxed),
                    Ok(429) => tally.limited.fetch_add(1, Ordering::Relaxed),
                    _ => tally.other.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(pace).await;
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    let elapsed = start.elapsed();
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    (tally, elapsed)
}

async fn metric(admin_url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{admin_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Asserts the admitted count is within 10 % of `rate × t + burst`.
fn assert_global(admitted: usize, rate: f64, burst: f64, elapsed: Duration) {
    let expected = rate * elapsed.as_secs_f64() + burst;
    let off = (admitted as f64 - expected).abs() / expected;
    println!(
        "admitted {admitted} in {:.2} s, expected {expected:.1} ({:.1} % off)",
        elapsed.as_secs_f64(),
        off * 100.0
    );
    assert!(
        off <= 0.10,
        "admitted {admitted}, expected {expected:.1} ± 10 %"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gcra_script_matches_the_reference_step() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis_settings(redis.url()))
        .await
        .unwrap();
    // 10 per second, burst 3.
    let p = GcraParams {
        interval_us: 100_000,
        burst: 3,
    };
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let o = store.gcra("tok-a", p).await.unwrap();
        assert!(o.allowed);
        remaining.push(o.remaining);
    }
    assert_eq!(remaining, vec![2, 1, 0]);
    let denied = store.gcra("tok-a", p).await.unwrap();
    assert!(!denied.allowed);
    assert!(
        denied.retry_after > Duration::from_millis(50)
            && denied.retry_after <= Duration::from_millis(100),
        "{denied:?}"
    );
    assert!(
        denied.reset > Duration::from_millis(250) && denied.reset <= Duration::from_millis(300)
    );
    // One key per token, hash-tagged, expiring when the bucket is full again.
    let pttl: i64 = redis
        .cli(&["PTTL", "patgate:rl:{tok-a}"])
        .trim()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&pttl), "{pttl}");
    // Another token has its own bucket.
    assert!(store.gcra("tok-b", p).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert!(store.gcra("tok-a", p).await.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limit_is_shared_by_three_replicas_and_falls_back_locally_without_redis() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let yaml = gateway_yaml(
        &format!("  redis:\n    url: \"{}\"\n", redis.url()),
        &upstream.url(),
        3,
    );
    let replicas: Vec<GatewayProcess> =
        tokio::task::spawn_blocking(move || (0..3).map(|_| GatewayProcess::start(&yaml)).collect())
            .await
            .unwrap();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let admin = AdminApi::new(&replicas[0].admin_url);
    let (rate, burst) = (20.0, 10.0);
    let (token, _) = admin
        .create(json!({"name": "global", "ownerId": "u",
            "rateLimit": {"requests": 20, "perSeconds": 1, "burst": 10}}))
        .await;

    // Headers on an allowed request come from the shared bucket.
    let r = reqwest::Client::new()
        .get(format!("{}/x", urls[1]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-limit"], "10");
    assert_eq!(r.headers()["ratelimit-remaining"], "9");

    // ~600 requests/s offered across the three replicas for 3 s.
    let (tally, elapsed) = drive(
        &urls,
        &token,
        Duration::from_secs(3),
        6,
        Duration::from_millis(10),
    )
    .await;
    println!("global: {tally:?}");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    // The probe request above used one token of the bucket too.
    assert_global(tally.ok.load(Ordering::Relaxed) + 1, rate, burst, elapsed);
    assert!(tally.limited.load(Ordering::Relaxed) > 100);

    // A 429 looks like local mode's: body, Retry-After, RateLimit-*.
    let r = reqwest::Client::new()
        .get(format!("{}/x", urls[2]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    if r.status() == 429 {
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(r.headers()["ratelimit-remaining"], "0");
        assert_eq!(
            r.text().await.unwrap(),
            r#"{"error":"Rate limit exceeded"}"#
        );
    }

    // Redis gone: the cached token is still limited, locally, with each replica's
    // share (20/3 → 7 per second, burst 4): some allowed, some limited, none 503.
    tokio::task::block_in_place(|| redis.stop());
    let (tally, elapsed) = drive(
        &urls,
        &token,
        Duration::from_secs(2),
        6,
        Duration::from_millis(10),
    )
    .await;
    println!("fallback: {tally:?} in {elapsed:?}");
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok > 0, "fallback must not reject everything");
    assert!(
        tally.limited.load(Ordering::Relaxed) > 0,
        "fallback must still limit"
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    // Three shares of 7/s + 4 over ~2 s, never the unlimited ~1200.
    assert!(ok <= 3 * (7 * 3 + 4), "{ok}");
    for r in &replicas {
        assert!(metric(&r.admin_url, "patgate_rate_limit_fallback_total").await > 0.0);
        assert_eq!(
            metric(&r.admin_url, "patgate_rate_limit_fallback_active").await,
            1.0
        );
    }

    // Redis back (empty): a new token is limited by the shared bucket again.
    tokio::task::block_in_place(|| redis.restart());
    let deadline = Instant::now() + Duration::from_secs(5);
    let token = loop {
        let (s, json) = admin
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(json!({"name": "after", "ownerId": "u",
                    "rateLimit": {"requests": 20, "perSeconds": 1, "burst": 10}})),
            )
            .await;
        if s == 201 {
            break json["token"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "store did not come back: {s} {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (tally, _) = drive(
        &urls,
        &token,
        Duration::from_millis(1500),
        3,
        Duration::from_millis(10),
    )
    .await;
    assert!(tally.ok.load(Ordering::Relaxed) > 0);
    for r in &replicas {
        assert_eq!(
            metric(&r.admin_url, "patgate_rate_limit_fallback_active").await,
            0.0
        );
    }
}

async fn status(http: &reqwest::Client, base: &str, token: &str) -> u16 {
    http.get(format!("{base}/x"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls until `base` answers `want` for `token`; returns how long it took.
async fn until_status(base: &str, token: &str, want: u16, within: Duration) -> Duration {
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let s = status(&http, base, token).await;
        if s == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{base} still answers {s}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn yaml_list(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_master_cluster_shares_tokens_revocations_and_global_limits() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let upstream = Upstream::start().await;
    let seeds = cluster.urls();
    // Each replica lists the seeds in another order, so their pub/sub connections
    // sit on different nodes: invalidations must cross the cluster bus.
    let yamls: Vec<String> = (0..3)
        .map(|i| {
            let mut urls = seeds.clone();
            urls.rotate_left(i);
            gateway_yaml(
                &format!(
                    "  redis:\n    cluster: true\n    urls: {}\n",
                    yaml_list(&urls)
                ),
                &upstream.url(),
                3,
            )
        })
        .collect();
    let replicas: Vec<GatewayProcess> = tokio::task::spawn_blocking(move || {
        yamls.iter().map(|y| GatewayProcess::start(y)).collect()
    })
    .await
    .unwrap();
    for node in &cluster.nodes {
        let subs = node.cli(&["PUBSUB", "NUMSUB", "patgate:invalidate"]);
        assert!(
            subs.lines().nth(1).is_some_and(|n| n.trim() == "1"),
            "one replica subscribed on each node: {subs}"
        );
    }
    let admin_a = AdminApi::new(&replicas[0].admin_url);
    let http = reqwest::Client::new();

    // Tokens created through A work on B and C; their keys spread over the masters.
    let mut tokens = Vec::new();
    for i in 0..12 {
        let (token, record) = admin_a
            .create(json!({"name": format!("c{i}"), "ownerId": format!("owner-{i}")}))
            .await;
        for r in &replicas[1..] {
            assert_eq!(status(&http, &r.url, &token).await, 200);
        }
        tokens.push((token, record["id"].as_str().unwrap().to_string()));
    }
    let sizes: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).trim().parse().unwrap_or(0))
        .collect();
    assert!(
        sizes.iter().all(|n| *n > 0),
        "keys on every master: {sizes:?}"
    );

    // Revocations through A reach every replica within a second.
    for (token, id) in tokens.iter().take(4) {
        let (s, _) = admin_a.post(&format!("/v1/tokens/{id}/revoke")).await;
        assert_eq!(s, 200);
        for r in &replicas {
            let took = until_status(&r.url, token, 401, Duration::from_secs(1)).await;
            println!("revocation reached {} in {took:?}", r.url);
        }
    }

    // Updates through B (another node's pub/sub) reach A and C as well.
    let admin_b = AdminApi::new(&replicas[1].admin_url);
    let (token, id) = &tokens[5];
    let (s, _) = admin_b
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"isActive": false})),
        )
        .await;
    assert_eq!(s, 200);
    for r in &replicas {
        until_status(&r.url, token, 401, Duration::from_secs(1)).await;
    }

    // One global limit across the three replicas on the cluster.
    let (token, _) = admin_a
        .create(json!({"name": "limited", "ownerId": "u",
            "rateLimit": {"requests": 20, "perSeconds": 1, "burst": 10}}))
        .await;
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let (tally, elapsed) = drive(
        &urls,
        &token,
        Duration::from_secs(2),
        6,
        Duration::from_millis(10),
    )
    .await;
    println!("cluster global: {tally:?}");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    assert_global(tally.ok.load(Ordering::Relaxed), 20.0, 10.0, elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_acknowledged_writes_and_auth_working() {
    let set = Arc::new(
        tokio::task::spawn_blocking(SentinelSet::start)
            .await
            .unwrap(),
    );
    let upstream = Upstream::start().await;
    let yaml = gateway_yaml(
        &format!(
            "  redis:\n    sentinel:\n      master_name: {}\n      urls: {}\n",
            SentinelSet::MASTER_NAME,
            yaml_list(&set.urls())
        ),
        &upstream.url(),
        2,
    );
    let replicas: Vec<GatewayProcess> =
        tokio::task::spawn_blocking(move || (0..2).map(|_| GatewayProcess::start(&yaml)).collect())
            .await
            .unwrap();
    let admin = AdminApi::new(&replicas[0].admin_url);
    let http = reqwest::Client::new();

    let mut before = Vec::new();
    for i in 0..5 {
        let (token, record) = admin
            .create(json!({"name": format!("s{i}"), "ownerId": "u"}))
            .await;
        assert_eq!(status(&http, &replicas[1].url, &token).await, 200);
        before.push((token, record["id"].as_str().unwrap().to_string()));
    }
    // Acknowledged by the replica before the failover (replication is asynchronous:
    // without `WAIT` the last writes before a failover may be lost).
    let acked = set.master.cli(&["WAIT", "1", "2000"]);
    assert_eq!(acked.trim(), "1", "WAIT: {acked}");

    let old_master = set.master.port();
    let started = Instant::now();
    {
        let set = set.clone();
        tokio::task::spawn_blocking(move || set.failover())
            .await
            .unwrap();
    }
    println!("failover took {:?}", started.elapsed());
    assert_ne!(set.master_port(), Some(old_master));

    // New writes succeed within a few seconds of the failover.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (new_token, new_id) = loop {
        let (s, json) = admin
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(json!({"name": "after", "ownerId": "u"})),
            )
            .await;
        if s == 201 {
            break (
                json["token"].as_str().unwrap().to_string(),
                json["record"]["id"].as_str().unwrap().to_string(),
            );
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = replicas[0]
                .log_lines()
                .into_iter()
                .filter(|l| l.contains("master") || l.contains("WARN") || l.contains("ERROR"))
                .collect();
            panic!(
                "no write after failover: {s} {json}\nnew master: {}\nold master: {}\nlogs:\n{}",
                set.replica.cli(&["INFO", "replication"]),
                set.master.cli(&["INFO", "replication"]),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "first write after failover {:?} after it started",
        started.elapsed()
    );
    assert!(
        set.replica
            .cli(&["EXISTS", &format!("patgate:id:{{{new_id}}}")])
            .trim()
            == "1"
    );

    // Writes acknowledged before the failover are on the new master.
    for (token, id) in &before {
        let (s, _) = admin
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
            .await;
        assert_eq!(s, 200, "token {id} lost in the failover");
        for r in &replicas {
            assert_eq!(status(&http, &r.url, token).await, 200);
        }
    }
    for r in &replicas {
        assert_eq!(status(&http, &r.url, &new_token).await, 200);
    }

    // Invalidations follow the master: a revoke through one replica reaches the other.
    let (token, id) = &before[0];
    let (s, _) = admin.post(&format!("/v1/tokens/{id}/revoke")).await;
    assert_eq!(s, 200);
    let took = until_status(&replicas[1].url, token, 401, Duration::from_secs(1)).await;
    println!("revocation after failover reached the other replica in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_redis_costs_one_timeout_then_limits_locally() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let yaml = gateway_yaml(
        &format!("  redis:\n    url: \"{}\"\n", redis.url()),
        &upstream.url(),
        2,
    );
    let gw = tokio::task::spawn_blocking(move || GatewayProcess::start(&yaml))
        .await
        .unwrap();
    let admin = AdminApi::new(&gw.admin_url);
    let (token, _) = admin
        .create(json!({"name": "h", "ownerId": "u",
            "rateLimit": {"requests": 10, "perSeconds": 1, "burst": 10}}))
        .await;
    let http = reqwest::Client::new();
    assert_eq!(status(&http, &gw.url, &token).await, 200);
    // The creation's invalidation travels through pub/sub and may drop the entry the
    // first request just cached: let it arrive, then cache the token again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&http, &gw.url, &token).await, 200);

    // Frozen Redis: connections stay open, nothing answers.
    redis.freeze(true);
    let started = Instant::now();
    let first = status(&http, &gw.url, &token).await;
    let first_took = started.elapsed();
    let mut statuses = vec![first];
    let quick = Instant::now();
    for _ in 0..20 {
        statuses.push(status(&http, &gw.url, &token).await);
    }
    let rest_took = quick.elapsed();
    redis.freeze(false);
    println!("hanging redis: first {first_took:?}, next 20 in {rest_took:?}: {statuses:?}");
    for line in gw.logs.lock().unwrap().iter().rev().take(6) {
        println!("gateway: {line}");
    }
    // The first request waits for the command timeout (250 ms), the next ones don't
    // ask Redis again within the probe interval.
    assert!(first_took < Duration::from_millis(1000), "{first_took:?}");
    assert!(rest_took < Duration::from_millis(500), "{rest_took:?}");
    // Share of 10/s burst 10 over 2 replicas: 5 admitted, then limited.
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, statuses.len(), "{statuses:?}");
    assert!((5..=7).contains(&ok), "{statuses:?}");
    assert_eq!(
        metric(&gw.admin_url, "patgate_rate_limit_fallback_active").await,
        1.0
    );
}
