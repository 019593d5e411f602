//! Faults under load, bounded to a few seconds each: the real `patgate` binary keeps
//! its promises while Redis dies and returns, while an upstream dies, and while the
//! admin API takes a burst of concurrent writes to one token.
//!
//! `tests/gateway.rs` already covers one request at a time through a frozen and a
//! killed Redis, and a route whose upstream never existed. Here the same faults
//! happen *while traffic flows*. Everything that blocks (stopping and starting
//! redis-server, waiting for a child) runs off the test runtime, which also serves
//! the in-process upstream.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use serde_json::{Value, json};

fn config(redis_url: &str, routes: &str) -> String {
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
    requests: 100000
    per_seconds: 1
    burst: 100000
routes:
{routes}
"#
    )
}

/// Sends `GET url` with `token` in a loop until `stop`; returns every status (0 for a
/// transport error) with the time it was received.
fn traffic(
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, u16)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mut req = http.get(&url).timeout(Duration::from_secs(5));
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let status = match req.send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let _ = r.bytes().await;
                    s
                }
                Err(_) => 0,
            };
            out.push((Instant::now(), status));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out
    })
}

async fn status(http: &reqwest::Client, url: &str, token: &str) -> u16 {
    http.get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dies_and_returns_under_traffic_cached_tokens_never_get_401() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let routes = format!(
        "  - name: api\n    path_prefix: /api/\n    upstream: \"{}\"\n",
        upstream.url()
    );
    let gw = GatewayProcess::start(&config(&redis.url(), &routes));
    let admin = AdminApi::new(&gw.admin_url);
    let http = reqwest::Client::new();
    let url = format!("{}/api/x", gw.url);

    let mut cached = Vec::new();
    let mut cached_ids = Vec::new();
    for i in 0..3 {
        let (t, rec) = admin
            .create(json!({"name": format!("c{i}"), "ownerId": "u1"}))
            .await;
        assert_eq!(status(&http, &url, &t).await, 200);
        cached.push(t);
        cached_ids.push(rec["id"].as_str().unwrap().to_string());
    }
    let (uncached, _) = admin.create(json!({"name": "u", "ownerId": "u1"})).await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = cached
        .iter()
        .map(|t| traffic(http.clone(), url.clone(), Some(t.clone()), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Kill Redis (after a SAVE, as a persistent production Redis would have its data).
    redis.cli(&["SAVE"]);
    let saved_at = Instant::now();
    let mut redis = tokio::task::spawn_blocking(move || {
        let mut r = redis;
        r.stop();
        r
    })
    .await
    .unwrap();
    let down_at = Instant::now();
    let mut during = Vec::new();
    while down_at.elapsed() < Duration::from_millis(1500) {
        during.push(status(&http, &url, &uncached).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A management write now is refused, not acknowledged and then lost.
    let (s, body) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tokens/{}", cached_ids[0]),
            Some(json!({"name": "during-outage"})),
        )
        .await;
    assert_eq!(s, 503, "{body}");

    // Bring it back and time the recovery of an uncached token.
    redis = tokio::task::spawn_blocking(move || {
        let mut r = redis;
        r.restart();
        r
    })
    .await
    .unwrap();
    let back_at = Instant::now();
    let recovered = loop {
        let s = status(&http, &url, &uncached).await;
        if s == 200 {
            break back_at.elapsed();
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(5),
            "no recovery 5 s after Redis returned (last {s})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut cached_statuses = Vec::new();
    for w in workers {
        cached_statuses.extend(w.await.unwrap());
    }

    let not_ok: Vec<u16> = cached_statuses
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| *s != 200)
        .collect();
    assert!(
        cached_statuses.len() > 30,
        "too little traffic to mean anything: {}",
        cached_statuses.len()
    );
    assert!(
        not_ok.is_empty(),
        "cached tokens must keep working through the outage: {} of {} failed: {:?}",
        not_ok.len(),
        cached_statuses.len(),
        &not_ok[..not_ok.len().min(20)]
    );
    assert!(!during.is_empty());
    assert!(
        during.iter().all(|s| *s == 503),
        "an uncached token must get 503 (fail closed, never 401) while Redis is down: {during:?}"
    );
    assert!(
        recovered < Duration::from_secs(1),
        "uncached token recovered {recovered:?} after Redis returned (want < 1 s)"
    );

    // Usage: counts held while Redis was down are written after it returned; what
    // can be lost is what was flushed between the SAVE and the kill (Redis's own
    // durability), at most one flush interval (500 ms) of traffic.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut recorded = 0;
    for id in &cached_ids {
        let (s, rec) = admin
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
            .await;
        assert_eq!(s, 200, "acknowledged creations survive: {rec}");
        assert_ne!(rec["name"], "during-outage");
        recorded += rec["usageCount"].as_u64().unwrap();
    }
    let served = cached_statuses.iter().filter(|(_, s)| *s == 200).count() as u64 + 3;
    let around_save = cached_statuses
        .iter()
        .filter(|(at, s)| {
            *s == 200
                && at.saturating_duration_since(saved_at) < Duration::from_secs(1)
                && *at <= saved_at + Duration::from_secs(1)
        })
        .count() as u64;
    eprintln!("usage: served {served}, recorded {recorded}, second after the SAVE {around_save}");
    assert!(
        recorded <= served,
        "counted {recorded} of {served} served: double counting"
    );
    assert!(
        served - recorded <= around_save,
        "usage lost: {} of {served} (at most the second after the SAVE, {around_save}, may go)",
        served - recorded
    );
    // And a management write after the recovery is acknowledged and kept.
    let (s, _) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tokens/{}", cached_ids[0]),
            Some(json!({"name": "after"})),
        )
        .await;
    assert_eq!(s, 200);
    drop(redis);
}

/// A real upstream in its own process (killable, connections and all).
struct ChildUpstream {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ChildUpstream {
    async fn start() -> ChildUpstream {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "ok").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 -m http.server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "python upstream did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ChildUpstream {
            child,
            port,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_gets_502_on_its_route_and_the_other_route_is_unaffected() {
    let redis = RedisServer::start();
    let mut doomed = ChildUpstream::start().await;
    let healthy = Upstream::start().await;
    let routes = format!(
        "  - name: doomed\n    path_prefix: /doomed/\n    upstream: \"http://127.0.0.1:{}\"\n    strip_prefix: true\n    auth: none\n  - name: healthy\n    path_prefix: /healthy/\n    upstream: \"{}\"\n    auth: none\n",
        doomed.port,
        healthy.url()
    );
    let gw = GatewayProcess::start(&config(&redis.url(), &routes));
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let doomed_w = traffic(
        http.clone(),
        format!("{}/doomed/index.html", gw.url),
        None,
        stop.clone(),
    );
    let healthy_w = traffic(
        http.clone(),
        format!("{}/healthy/x", gw.url),
        None,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let kill_started = Instant::now();
    doomed.child.kill().await.expect("kill the upstream");
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let doomed_s = doomed_w.await.unwrap();
    let healthy_s = healthy_w.await.unwrap();

    let before: Vec<u16> = doomed_s
        .iter()
        .filter(|(t, _)| *t < kill_started)
        .map(|(_, s)| *s)
        .collect();
    // Anything sent after the kill settled (the kill is a signal; give it 100 ms).
    let after: Vec<u16> = doomed_s
        .iter()
        .filter(|(t, _)| *t > killed_at + Duration::from_millis(100))
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !before.is_empty() && before.iter().all(|s| *s == 200),
        "{before:?}"
    );
    assert!(after.len() > 10, "too little traffic after the kill");
    assert!(
        after.iter().all(|s| *s == 502),
        "a dead upstream must be 502 Upstream unavailable: {:?}",
        &after[..after.len().min(30)]
    );
    let bad: Vec<_> = healthy_s.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        healthy_s.len() > 30 && bad.is_empty(),
        "the other route must be unaffected: {} of {} failed",
        bad.len(),
        healthy_s.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_and_a_revoke_on_one_token_stay_consistent() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let routes = format!(
        "  - name: api\n    path_prefix: /api/\n    upstream: \"{}\"\n",
        upstream.url()
    );
    let gw = GatewayProcess::start(&config(&redis.url(), &routes));
    let admin = AdminApi::new(&gw.admin_url);
    let http = reqwest::Client::new();
    // Several rounds: losing the revoke to the PATCHes is a race, so one round alone
    // would catch a regression only some of the time.
    for _ in 0..5 {
        patch_burst_with_a_revoke(&admin, &http, &gw.url).await;
    }
}

/// One token, 39 concurrent PATCHes and one revoke in the middle of them.
async fn patch_burst_with_a_revoke(admin: &AdminApi, http: &reqwest::Client, gw_url: &str) {
    let (token, record) = admin.create(json!({"name": "w0", "ownerId": "u1"})).await;
    let id = record["id"].as_str().unwrap().to_string();
    assert_eq!(status(http, &format!("{gw_url}/api/x"), &token).await, 200);

    let writers = 40;
    let mut tasks = Vec::new();
    for i in 1..=writers {
        let admin = admin.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            if i == writers / 2 {
                let (s, r) = admin.post(&format!("/v1/tokens/{id}/revoke")).await;
                return ("revoke".to_string(), s, r);
            }
            let name = format!("w{i}");
            let (s, r) = admin
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/tokens/{id}"),
                    Some(json!({"name": name, "scopes": [format!("s{i}")], "metadata": {"writer": name}})),
                )
                .await;
            (name, s, r)
        }));
    }
    let mut acked = Vec::new();
    let mut revoked = false;
    for t in tasks {
        let (what, s, r) = t.await.unwrap();
        match (what.as_str(), s) {
            ("revoke", 200) => revoked = true,
            (_, 200) => {
                // Each acknowledged write returns a self-consistent record.
                assert_eq!(r["name"], what.as_str(), "{r}");
                assert_eq!(r["metadata"]["writer"], what.as_str(), "{r}");
                assert_eq!(r["scopes"], json!([format!("s{}", &what[1..])]), "{r}");
                acked.push(what);
            }
            (_, 409) | (_, 503) => {} // refused writes are allowed, but must not apply
            other => panic!("unexpected answer {other:?}: {r}"),
        }
    }
    assert!(revoked, "the revoke must be acknowledged");
    assert!(!acked.is_empty(), "no PATCH was acknowledged");

    let (s, fin) = admin
        .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, 200);
    let name = fin["name"].as_str().unwrap().to_string();
    assert!(
        acked.contains(&name),
        "final name {name} was never acknowledged"
    );
    // No torn record: every field comes from the same write.
    assert_eq!(fin["metadata"]["writer"], name.as_str(), "{fin}");
    assert_eq!(fin["scopes"], json!([format!("s{}", &name[1..])]), "{fin}");
    assert!(fin["revokedAt"].is_string(), "revocation lost: {fin}");
    assert_eq!(fin["isActive"], false);

    // One audit event per acknowledged write, no more, no less.
    let (_, audit) = admin
        .call(
            reqwest::Method::GET,
            &format!("/v1/audit?tokenId={id}&limit=1000"),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    let count = |a: &str| actions.iter().filter(|x| **x == a).count();
    assert_eq!(count("token.update"), acked.len(), "{actions:?}");
    assert_eq!(count("token.revoke"), 1, "{actions:?}");
    assert_eq!(count("token.create"), 1, "{actions:?}");

    // And the data plane agrees.
    let started = Instant::now();
    loop {
        let resp = http
            .get(format!("{gw_url}/api/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if resp.status() == 401 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "PAT has been revoked");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
