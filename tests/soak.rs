//! A short soak (about 25 s) of the real `patgate` binary: mixed traffic (valid,
//! malformed, unknown, revoked and rate-limited tokens, unauthenticated routes,
//! connection churn, slowloris heads and abandoned requests), while the gateway's
//! open file descriptors and RSS are sampled from `/proc`.
//!
//! The assertions are about leaks, not speed: after the load stops and its clients
//! are gone, the gateway holds no more descriptors than after the warm-up, and its
//! RSS grew by a bounded amount. `scripts/soak` is the long (default 10 min) version.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// Starts the mixed traffic; every client it creates is dropped by `finish`.
fn start_load(base: &str, tokens: &[String]) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Keep-alive clients cycling through every kind of token.
    for w in 0..3 {
        let (stop, sent, base, tokens) = (
            stop.clone(),
            sent.clone(),
            base.to_string(),
            tokens.to_vec(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let tok = &tokens[i % tokens.len()];
                let path = if i % 7 == 0 { "/health" } else { "/api/x" };
                if let Ok(r) = http
                    .get(format!("{base}{path}"))
                    .bearer_auth(tok)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    let _ = r.bytes().await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // Connection churn: a new connection for every request.
    {
        let (stop, sent, base, tok) = (
            stop.clone(),
            sent.clone(),
            base.to_string(),
            tokens[0].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = http
                    .get(format!("{base}/api/x"))
                    .bearer_auth(&tok)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    let _ = r.bytes().await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Slow clients: half a head trickled in then abandoned, or a request whose
    // response is never read and whose connection is dropped.
    for kind in 0..2 {
        let (stop, base, tok) = (stop.clone(), base.to_string(), tokens[0].clone());
        tasks.push(tokio::spawn(async move {
            let addr = base.trim_start_matches("http://").to_string();
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                    continue;
                };
                if kind == 0 {
                    let _ = s.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n").await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = s.write_all(b"X-Slow: 1\r\n").await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                } else {
                    let req = format!(
                        "GET /api/stream/1048576 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n"
                    );
                    let _ = s.write_all(req.as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                drop(s);
            }
        }));
    }
    Load { stop, sent, tasks }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_leaks_no_descriptors_and_keeps_rss_bounded() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
store:
  backend: redis
  redis:
    url: "{}"
tokens:
  prefix: pat_
  creation_limit: 0
rate_limit:
  mode: local
  default:
    requests: 100000
    per_seconds: 1
    burst: 100000
timeouts:
  header_read_seconds: 1
routes:
  - name: api
    path_prefix: /api/
    upstream: "{}"
  - name: health
    path_prefix: /health
    upstream: "{}"
    auth: none
"#,
        redis.url(),
        upstream.url(),
        upstream.url()
    );
    let gw = GatewayProcess::start(&yaml);
    let admin = AdminApi::new(&gw.admin_url);
    let (valid, _) = admin.create(json!({"name": "v", "ownerId": "u1"})).await;
    let (revoked, rec) = admin.create(json!({"name": "r", "ownerId": "u1"})).await;
    admin
        .post(&format!(
            "/v1/tokens/{}/revoke",
            rec["id"].as_str().unwrap()
        ))
        .await;
    let (limited, _) = admin
        .create(
            json!({"name": "l", "ownerId": "u1", "rateLimit": {"requests": 1, "perSeconds": 60}}),
        )
        .await;
    let mut broken = valid.clone().into_bytes();
    let last = broken.len() - 1;
    broken[last] = if broken[last] == b'a' { b'b' } else { b'a' };
    let tokens = vec![
        valid.clone(),
        String::from_utf8(broken).unwrap(),
        patgate::token::generate("pat_").unwrap(),
        revoked,
        limited,
        "not-a-token".to_string(),
    ];
    let pid = gw.pid();

    // Warm-up: pools, caches and allocator arenas reach their working size.
    let warm = start_load(&gw.url, &tokens);
    tokio::time::sleep(Duration::from_secs(5)).await;
    warm.finish().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fds_before = open_fds(pid);
    let rss_before = gw.rss_kib();

    let load = start_load(&gw.url, &tokens);
    let mut samples = Vec::new();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((open_fds(pid), gw.rss_kib()));
    }
    let sent = load.finish().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fds_after = open_fds(pid);
    let rss_after = gw.rss_kib();
    eprintln!(
        "soak: {sent} requests; fds {fds_before} -> {fds_after}; RSS {rss_before} -> {rss_after} KiB; samples {samples:?}"
    );

    assert!(sent > 1000, "too little traffic to mean anything: {sent}");
    assert!(fds_before > 0 && rss_before > 0, "cannot read /proc/{pid}");
    // The upstream pool may keep a different number of idle connections; a leak of
    // one descriptor per request (or per slow client) would be thousands.
    assert!(
        fds_after <= fds_before + 8,
        "descriptors leaked: {fds_before} after warm-up, {fds_after} after the load"
    );
    assert!(
        rss_after <= rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over {sent} requests"
    );
    // No upward trend while loaded: the last third is not well above the first.
    let third = samples.len() / 3;
    let avg = |s: &[(usize, u64)]| s.iter().map(|x| x.1).sum::<u64>() / s.len() as u64;
    let (early, late) = (
        avg(&samples[..third]),
        avg(&samples[samples.len() - third..]),
    );
    assert!(
        late <= early + early / 5 + 8 * 1024,
        "RSS kept growing under load: {early} KiB early, {late} KiB late"
    );
    // Still healthy afterwards.
    let http = reqwest::Client::new();
    let s = http
        .get(format!("{}/api/x", gw.url))
        .bearer_auth(&valid)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 200);
}
