//! End-to-end serving behaviour of the real `patgate` binary: connection limits and
//! timeouts (raw TCP), `POST /v1/reload`, upstream passive health with safe
//! retries, and HTTP/2 without TLS (h2c with prior knowledge) on both sides.

mod common;

use std::time::{Duration, Instant};

use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway on `redis` with one `auth: none` route `/health` to `upstream`.
fn config(redis_url: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"
store:
  backend: redis
  redis:
    url: "{redis_url}"
routes:
  - name: health
    path_prefix: /health
    upstream: "{upstream}"
    auth: none
{extra}
"#
    )
}

struct Env {
    _redis: RedisServer,
    upstream: Upstream,
    gw: GatewayProcess,
}

async fn env_with(extra: &str) -> Env {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&config(&redis.url(), &upstream.url(), extra));
    Env {
        _redis: redis,
        upstream,
        gw,
    }
}

impl Env {
    /// `host:port` of the data plane.
    fn data_addr(&self) -> String {
        self.gw.url.trim_start_matches("http://").to_string()
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.data_addr()).await.expect("connect")
    }
}

/// A keep-alive `GET path`.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// Reads one response (head, then a `Content-Length` body); `None` when nothing
/// complete arrived within `within` or the connection closed first.
async fn read_response(s: &mut TcpStream, within: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(within, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some((
            status,
            String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        ))
    })
    .await
    .ok()
    .flatten()
}

/// Reads until the peer closes (EOF or reset); returns what arrived and when the
/// close was seen. Panics if the connection is still open after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let r = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "connection still open after {within:?}");
    (out, Instant::now())
}

#[tokio::test]
async fn oversized_request_head_gets_431_and_the_connection_closes() {
    let e = env_with("limits:\n  max_header_bytes: 8192\n").await;
    // A head well under the limit is served.
    let mut s = e.connect().await;
    let ok = format!(
        "GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(4000)
    );
    s.write_all(ok.as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("response");
    assert_eq!(status, 200);

    // Over the limit: 431, then the connection is closed.
    let mut s = e.connect().await;
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: test\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let (bytes, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 431"), "got: {text:?}");
}

#[tokio::test]
async fn slowloris_partial_head_is_cut_off_after_header_read_timeout() {
    let e = env_with("timeouts:\n  header_read_seconds: 1\n  idle_seconds: 30\n").await;
    let mut s = e.connect().await;
    let started = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let took = closed - started;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_idle_seconds() {
    let e = env_with("timeouts:\n  header_read_seconds: 30\n  idle_seconds: 1\n").await;

    // After a served request, an idle keep-alive connection is closed.
    let mut s = e.connect().await;
    s.write_all(get("/health").as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("response");
    assert_eq!(status, 200);
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let took = closed - idle_from;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    // A connection that never sends anything is closed too.
    let mut s = e.connect().await;
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed - started < Duration::from_secs(3));

    // A connection in steady use is not.
    let mut s = e.connect().await;
    for _ in 0..5 {
        s.write_all(get("/health").as_bytes()).await.unwrap();
        let (status, _) = read_response(&mut s, Duration::from_secs(5))
            .await
            .expect("the connection is kept while in use");
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn extra_connection_waits_in_the_backlog_while_max_connections_are_open() {
    let e = env_with("limits:\n  max_connections: 2\n").await;
    let mut a = e.connect().await;
    let mut b = e.connect().await;
    for s in [&mut a, &mut b] {
        s.write_all(get("/health").as_bytes()).await.unwrap();
        let (status, _) = read_response(s, Duration::from_secs(5))
            .await
            .expect("response");
        assert_eq!(status, 200);
    }
    // The third connection is established by the kernel but not served.
    let mut c = e.connect().await;
    c.write_all(get("/health").as_bytes()).await.unwrap();
    assert!(
        read_response(&mut c, Duration::from_millis(800))
            .await
            .is_none(),
        "a connection over the limit was served"
    );
    // Existing connections keep working.
    a.write_all(get("/health").as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut a, Duration::from_secs(5))
        .await
        .expect("response on an existing connection");
    assert_eq!(status, 200);
    // Once one closes, the waiting one is served.
    drop(b);
    let (status, _) = read_response(&mut c, Duration::from_secs(5))
        .await
        .expect("the waiting connection is served once a slot frees");
    assert_eq!(status, 200);
}

// ---- POST /v1/reload ----

/// The config file with `from` replaced by `to` (panics if `from` is absent).
fn edit_config(gw: &GatewayProcess, from: &str, to: &str) {
    let text = std::fs::read_to_string(&gw.config_path).expect("read config");
    assert!(text.contains(from), "{from:?} not in the config");
    std::fs::write(&gw.config_path, text.replacen(from, to, 1)).expect("write config");
}

async fn status_of(http: &reqwest::Client, url: &str) -> u16 {
    http.get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn reload(admin: &common::admin::AdminApi) -> (u16, serde_json::Value) {
    admin.post("/v1/reload").await
}

#[tokio::test]
async fn reload_applies_a_changed_file_and_keeps_the_old_config_when_it_is_invalid() {
    let e = env_with(
        "  - name: moved\n    path_prefix: /moved\n    upstream: http://127.0.0.1:9\n    auth: none\n",
    )
    .await;
    let admin = common::admin::AdminApi::new(&e.gw.admin_url);
    let http = reqwest::Client::new();
    let live = e.upstream.url();
    assert_eq!(status_of(&http, &format!("{}/moved", e.gw.url)).await, 502);
    assert_eq!(status_of(&http, &format!("{}/added", e.gw.url)).await, 404);

    // Callers without the admin key are turned away.
    let anon = http
        .post(format!("{}/v1/reload", e.gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    // A route's upstream changes and a route is added.
    edit_config(
        &e.gw,
        "upstream: http://127.0.0.1:9\n    auth: none\n",
        &format!(
            "upstream: \"{live}\"\n    auth: none\n  - name: added\n    path_prefix: /added\n    upstream: \"{live}\"\n    auth: none\n"
        ),
    );
    let (status, body) = reload(&admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["warnings"], serde_json::json!([]));
    assert_eq!(status_of(&http, &format!("{}/moved", e.gw.url)).await, 200);
    assert_eq!(status_of(&http, &format!("{}/added", e.gw.url)).await, 200);

    // An invalid file is rejected with every problem; the running routes stay.
    edit_config(
        &e.gw,
        "path_prefix: /added",
        "path_prefix: added\n    bogus_key: 1",
    );
    let (status, body) = reload(&admin).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "config rejected");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(!problems.is_empty());
    assert!(
        problems
            .iter()
            .all(|p| p.starts_with("config error: routes[")),
        "{problems:?}"
    );
    assert_eq!(status_of(&http, &format!("{}/added", e.gw.url)).await, 200);
    assert_eq!(status_of(&http, &format!("{}/moved", e.gw.url)).await, 200);

    let metrics = http
        .get(format!("{}/metrics", e.gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"patgate_config_reloads_total{result="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"patgate_config_reloads_total{result="rejected"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn reloading_under_load_fails_no_request() {
    let e = env_with("").await;
    let admin = common::admin::AdminApi::new(&e.gw.admin_url);
    let url = format!("{}/health", e.gw.url);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(err) => failed.push(err.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let started = Instant::now();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        // Alternate between two valid files.
        let (from, to) = if i % 2 == 0 {
            ("auth: none\n", "auth: none\n    strip_prefix: false\n")
        } else {
            ("auth: none\n    strip_prefix: false\n", "auth: none\n")
        };
        edit_config(&e.gw, from, to);
        let (status, body) = reload(&admin).await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for l in loops {
        let (ok, failed) = l.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} requests");
}

#[tokio::test]
async fn dev_mode_has_no_config_file_to_reload() {
    let dev = common::dev::DevProcess::start(false);
    let word_after = |marker: &str| dev.word_after(marker);
    let admin_key = word_after("export PATGATE_ADMIN_KEY=");
    let admin = word_after("admin API:");
    let resp = reqwest::Client::new()
        .post(format!("{admin}/v1/reload"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    drop(dev);
    assert_eq!(status, 409);
    assert_eq!(
        body,
        serde_json::json!({"error": "No config file to reload"})
    );
}

// ---- upstream passive health and safe retry ----

const DEAD: &str = "http://127.0.0.1:9";

#[tokio::test]
async fn a_dead_address_is_retried_around_for_idempotent_requests_and_then_skipped() {
    let redis = RedisServer::start();
    let live = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        r#"
store:
  backend: redis
  redis:
    url: "{redis}"
upstreams:
  pair:
    urls: ["{DEAD}", "{live}"]
routes:
  - name: pair
    path_prefix: /pair
    upstream: pair
    auth: none
"#,
        redis = redis.url(),
        live = live.url(),
    ));
    let http = reqwest::Client::new();
    let url = format!("{}/pair", gw.url);
    // Round-robin sends every other GET to the dead address first: each is retried
    // on the live one, and after 3 connect failures the dead one is skipped.
    for i in 0..10 {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET #{i}");
    }
    // Not retryable (a body), but the dead address is no longer tried.
    for i in 0..10 {
        let r = http.post(&url).body("payload").send().await.unwrap();
        assert_eq!(r.status(), 200, "POST #{i}");
    }
    // The log is read by another thread: give it a moment on a loaded machine.
    let skipped = || {
        gw.log_lines()
            .iter()
            .filter(|l| l.contains("upstream address failing; skipping it"))
            .count()
    };
    let start = Instant::now();
    while skipped() == 0 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(skipped(), 1, "{:?}", gw.log_lines());
}

#[tokio::test]
async fn a_request_with_a_body_is_not_retried_and_fails_at_most_once() {
    let redis = RedisServer::start();
    let live = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        r#"
store:
  backend: redis
  redis:
    url: "{redis}"
upstreams:
  pair:
    urls: ["{DEAD}", "{live}"]
    max_fails: 1
    fail_timeout_seconds: 60
routes:
  - name: pair
    path_prefix: /pair
    upstream: pair
    auth: none
"#,
        redis = redis.url(),
        live = live.url(),
    ));
    let http = reqwest::Client::new();
    let url = format!("{}/pair", gw.url);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = http.post(&url).body("payload").send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses[0], 502,
        "the first POST hits the dead address: {statuses:?}"
    );
    assert!(statuses[1..].iter().all(|&s| s == 200), "{statuses:?}");
}

/// `curl` with an HTTP-version flag; returns ("<http_version> <status>", body).
async fn curl_version(url: &str, version: &str) -> (String, serde_json::Value) {
    // Async: the upstream runs on this test's runtime and must keep serving.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", version])
        .args(["-w", "\n%{http_version} %{http_code}", url])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        meta.to_string(),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn h2c_with_prior_knowledge_works_from_clients_and_to_upstreams_that_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        r#"
store: {{backend: embedded, embedded: {{path: {}}}}}
upstreams:
  h2c: {{url: "{url}", http2: true}}
  h1: {{url: "{url}"}}
routes:
  - {{name: h2c, path_prefix: /h2c, upstream: h2c, auth: none}}
  - {{name: h1, path_prefix: /h1, upstream: h1, auth: none}}
"#,
        dir.path().join("s.redb").display(),
        url = upstream.url()
    ));
    // Client → patgate: h2c with prior knowledge, and HTTP/1.1.
    let (meta, echo) = curl_version(&format!("{}/h2c/x", gw.url), "--http2-prior-knowledge").await;
    assert_eq!(meta, "2 200", "{echo}");
    // patgate → upstream: HTTP/2 only where the upstream opted in.
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    let (meta, echo) = curl_version(&format!("{}/h1/x", gw.url), "--http2-prior-knowledge").await;
    assert_eq!(meta, "2 200", "{echo}");
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
    let (meta, echo) = curl_version(&format!("{}/h2c/y", gw.url), "--http1.1").await;
    assert_eq!(meta, "1.1 200", "{echo}");
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
}

// ---- runtime flavours ----

/// `PATGATE_RUNTIME=current_thread` (what a one-CPU pod or a pinned process gets by
/// default) serves the whole path: admin API, authenticated proxying, the usage
/// flusher, and a clean SIGTERM exit, on both stores.
async fn current_thread_runtime_serves_everything(store: &str) {
    let upstream = common::upstream::Upstream::start().await;
    let yaml = format!(
        "{store}tokens: {{creation_limit: 0}}\nroutes:\n  - name: api\n    path_prefix: /api/\n    upstream: \"{}\"\n",
        upstream.url()
    );
    let mut gw = GatewayProcess::start_with(&yaml, "", &[("PATGATE_RUNTIME", "current_thread")]);
    let admin = common::admin::AdminApi::new(&gw.admin_url);
    let (token, rec) = admin
        .create(serde_json::json!({"name": "ct", "ownerId": "u1"}))
        .await;
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let r = http
            .get(format!("{}/api/x", gw.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let id = rec["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, r) = admin
            .call(reqwest::Method::GET, &format!("/v1/tokens/{id}"), None)
            .await;
        if r["usageCount"] == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage not flushed: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = tokio::task::spawn_blocking(move || gw.terminate(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_thread_runtime_on_redis() {
    let redis = common::redis::RedisServer::start();
    current_thread_runtime_serves_everything(&format!(
        "store:\n  backend: redis\n  redis:\n    url: \"{}\"\n",
        redis.url()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_thread_runtime_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    current_thread_runtime_serves_everything(&format!(
        "store:\n  backend: embedded\n  embedded:\n    path: \"{}\"\n",
        dir.path().join("ct.redb").display()
    ))
    .await;
}
