//! Webhooks on the real binary with a real HTTP receiver: every event, the
//! `Patgate-Signature` HMAC, retries with backoff against a receiver that fails and
//! then recovers, `failed` after the last attempt, the outbox surviving a restart,
//! deduplication across two replicas (`token.rate_limited`, quota crossings,
//! `token.expiring` from the shared scan), and `GET /v1/webhooks/deliveries`.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const SECRET: &str = "whsec_test_0123456789abcdef";
const OTHER_SECRET: &str = "whsec_other_0123456789abcdef";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    json: Value,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    fn event(&self) -> &str {
        self.json["type"].as_str().unwrap_or("")
    }
}

/// A webhook receiver on port 0: records every request, answers `fail_first`
/// requests with `fail_status`, then 204.
struct Receiver {
    addr: std::net::SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Requests still to be refused (set to 0 to make the receiver recover).
    fail_first: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(fail_first: usize, fail_status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicUsize::new(fail_first));
        let (h, f) = (hits.clone(), fail.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, f) = (h.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (h, f) = (h.clone(), f.clone());
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            h.lock().unwrap().push(Hit {
                                at: Instant::now(),
                                headers,
                                body: body.to_vec(),
                                json,
                            });
                            let failing = f
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let status = if failing { fail_status } else { 204 };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            hits,
            fail_first: fail,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the hits so far (or fails after `within`).
    async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Hit]) -> bool,
    ) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if pred(&hits) {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                hits.iter().map(|h| h.json.clone()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn of<'a>(hits: &'a [Hit], event: &str) -> Vec<&'a Hit> {
    hits.iter().filter(|h| h.event() == event).collect()
}

/// Checks `Patgate-Signature: t=<secs>,v1=<hex>` against `secret` as a receiver
/// would: recompute HMAC-SHA256 over "<t>.<raw body>", constant-time compare, and
/// a timestamp within five minutes.
fn verify_signature(hit: &Hit, secret: &str) {
    let sig = hit.header("patgate-signature");
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_string()),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (t, v1) = (t.expect("t="), v1.expect("v1="));
    let secs: i64 = t.parse().unwrap();
    assert!(
        (jiff::Timestamp::now().as_second() - secs).abs() < 300,
        "fresh timestamp"
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(&hit.body);
    ring::hmac::verify(&key, &msg, &hex::decode(v1).unwrap())
        .unwrap_or_else(|_| panic!("signature does not verify: {sig}"));
}

fn store_yaml(redis: Option<&RedisServer>, dir: &std::path::Path) -> String {
    match redis {
        Some(r) => format!(
            "store:\n  backend: redis\n  redis:\n    url: \"{}\"\n",
            r.url()
        ),
        None => format!(
            "store:\n  backend: embedded\n  embedded:\n    path: \"{}\"\n",
            dir.join("w.redb").display()
        ),
    }
}

async fn deliveries(admin: &AdminApi, query: &str) -> Vec<Value> {
    let (s, body) = admin
        .call(
            reqwest::Method::GET,
            &format!("/v1/webhooks/deliveries{query}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

async fn lifecycle_events_are_signed_delivered_and_listed(redis: Option<&RedisServer>) {
    let dir = tempfile::tempdir().unwrap();
    let all = Receiver::start(0, 500).await;
    let revocations = Receiver::start(0, 500).await;
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        r#"{store}
tokens: {{creation_limit: 0}}
webhooks:
  endpoints:
    - name: all
      url: "{all}"
      secret: {SECRET}
    - name: security
      url: "{rev}"
      secret: {OTHER_SECRET}
      events: [token.revoked]
routes:
  - name: api
    path_prefix: /api/
    upstream: "{up}"
"#,
        store = store_yaml(redis, dir.path()),
        all = all.url(),
        rev = revocations.url(),
        up = upstream.url(),
    ));
    let admin = AdminApi::new(&gw.admin_url);
    let (raw, rec) = admin
        .create(json!({"name": "ci", "ownerId": "u1", "scopes": ["documents"]}))
        .await;
    let id = rec["id"].as_str().unwrap().to_string();
    let (s, _) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/tokens/{id}"),
            Some(json!({"name": "ci-2"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, regen) = admin
        .call(
            reqwest::Method::POST,
            &format!("/v1/tokens/{id}/regenerate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{regen}");
    let raw2 = regen["token"].as_str().unwrap().to_string();
    assert_eq!(admin.post(&format!("/v1/tokens/{id}/revoke")).await.0, 200);
    assert_eq!(admin.post("/v1/owners/u1/disable").await.0, 200);
    let (s, _) = admin
        .call(reqwest::Method::DELETE, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, 204);

    let order = [
        "token.created",
        "token.updated",
        "token.regenerated",
        "token.revoked",
        "owner.disabled",
        "token.deleted",
    ];
    let hits = all
        .wait_for("six lifecycle events", Duration::from_secs(10), |h| {
            h.len() >= 6
        })
        .await;
    let mut seen: Vec<&str> = hits.iter().map(Hit::event).collect();
    seen.sort_by_key(|e| order.iter().position(|o| o == e));
    assert_eq!(seen, order, "each change once");
    for h in &hits {
        verify_signature(h, SECRET);
        assert_eq!(h.header("content-type"), "application/json");
        assert_eq!(h.header("patgate-event"), h.event());
        assert_eq!(h.header("patgate-event-id"), h.json["id"].as_str().unwrap());
        assert!(h.json["id"].as_str().unwrap().starts_with("evt_"));
        assert!(!h.header("patgate-delivery").is_empty());
        let text = String::from_utf8_lossy(&h.body);
        assert!(
            !text.contains(&raw) && !text.contains(&raw2),
            "no secret in a payload"
        );
        if h.event() == "owner.disabled" {
            assert_eq!(h.json["data"]["ownerId"], "u1");
        } else {
            assert_eq!(h.json["data"]["tokenId"], id.as_str(), "{}", h.json);
            assert_eq!(h.json["data"]["actor"], "admin:test");
        }
    }
    let updated = of(&hits, "token.updated")[0];
    assert_eq!(updated.json["data"]["token"]["name"], "ci-2");
    let regenerated = of(&hits, "token.regenerated")[0];
    assert_eq!(
        regenerated.json["data"]["token"]["prefix"]
            .as_str()
            .unwrap(),
        &raw2[..12],
        "the new display prefix, never the secret"
    );

    // The second endpoint only subscribed to revocations: the same event, its own
    // signature.
    let rev = revocations
        .wait_for("the revocation", Duration::from_secs(10), |h| !h.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(revocations.hits().len(), 1, "only token.revoked");
    assert_eq!(rev[0].event(), "token.revoked");
    verify_signature(&rev[0], OTHER_SECRET);
    assert_eq!(
        rev[0].json["id"],
        of(&hits, "token.revoked")[0].json["id"],
        "one event id for every endpoint (receivers dedup on it)"
    );

    // The outbox lists all seven, delivered on the first attempt.
    let listed = deliveries(&admin, "").await;
    assert_eq!(listed.len(), 7, "{listed:#?}");
    for d in &listed {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["lastStatusCode"], 204);
        assert!(d["deliveredAt"].is_string());
    }
    let ids: Vec<&str> = listed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    let revoked = deliveries(&admin, "?event=token.revoked").await;
    assert_eq!(revoked.len(), 2);
    let mut endpoints: Vec<&str> = revoked
        .iter()
        .map(|d| d["endpoint"].as_str().unwrap())
        .collect();
    endpoints.sort_unstable();
    assert_eq!(endpoints, ["all", "security"]);
    assert_eq!(
        deliveries(&admin, "?endpoint=security&status=delivered")
            .await
            .len(),
        1
    );
    assert_eq!(deliveries(&admin, &format!("?tokenId={id}")).await.len(), 6);
    assert_eq!(deliveries(&admin, "?status=pending").await.len(), 0);
    let page = deliveries(&admin, "?limit=3").await;
    assert_eq!(page.len(), 3);
    let rest = deliveries(
        &admin,
        &format!("?cursor={}", page[2]["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(rest.len(), 4, "the cursor continues after the page");
    let (s, body) = admin
        .call(
            reqwest::Method::GET,
            "/v1/webhooks/deliveries?status=lost",
            None,
        )
        .await;
    assert_eq!((s, body["error"].is_string()), (400, true), "{body}");
    let metrics = reqwest::get(format!("{}/metrics", gw.admin_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("patgate_webhook_attempts_total{result=\"delivered\"} 7"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lifecycle_events_are_signed_delivered_and_listed() {
    let redis = RedisServer::start();
    lifecycle_events_are_signed_delivered_and_listed(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lifecycle_events_are_signed_delivered_and_listed() {
    lifecycle_events_are_signed_delivered_and_listed(None).await;
}

/// A receiver that fails twice gets the same delivery three times, 1 s then 2 s
/// apart; one that always fails ends `failed` after `max_attempts`; and a PAT
/// caller cannot read the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receivers_are_retried_with_backoff_then_marked_failed() {
    let redis = RedisServer::start();
    let flaky = Receiver::start(2, 500).await;
    let dead = Receiver::start(usize::MAX, 503).await;
    // A port nobody listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = GatewayProcess::start(&format!(
        r#"store:
  backend: redis
  redis: {{url: "{redis}"}}
tokens: {{creation_limit: 0}}
webhooks:
  endpoints:
    - {{name: flaky, url: "{flaky}", secret: {SECRET}, events: [token.created]}}
    - {{name: dead, url: "{dead}", secret: {SECRET}, events: [token.created]}}
    - {{url: "http://{closed}/hooks/secret-path", secret: {SECRET}, events: [token.created]}}
  retry_initial_seconds: 1
  retry_max_seconds: 60
  max_attempts: 3
"#,
        redis = redis.url(),
        flaky = flaky.url(),
        dead = dead.url(),
    ));
    let gone = format!("http://{closed}");
    let admin = AdminApi::new(&gw.admin_url);
    let (pat, rec) = admin
        .create(json!({"name": "ci", "ownerId": "u1", "permissions": ["tokens:admin"]}))
        .await;
    let hits = flaky
        .wait_for("three attempts", Duration::from_secs(15), |h| h.len() >= 3)
        .await;
    assert_eq!(hits.len(), 3);
    for h in &hits {
        verify_signature(h, SECRET);
        assert_eq!(h.json["data"]["tokenId"], rec["id"]);
    }
    let one = |f: fn(&Hit) -> String| {
        hits.iter()
            .map(f)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(
        one(|h| h.header("patgate-delivery").to_string()),
        1,
        "same delivery"
    );
    assert_eq!(one(|h| h.json["id"].to_string()), 1, "same event id");
    assert_eq!(
        one(|h| String::from_utf8_lossy(&h.body).into_owned()),
        1,
        "same body"
    );
    let gap1 = hits[1].at - hits[0].at;
    let gap2 = hits[2].at - hits[1].at;
    assert!(
        gap1 >= Duration::from_millis(850) && gap1 < Duration::from_millis(2600),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(1700) && gap2 < Duration::from_millis(3800),
        "{gap2:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let (flaky_d, dead_d) = loop {
        let list = deliveries(&admin, "").await;
        let get = |n: &str| list.iter().find(|d| d["endpoint"] == n).cloned().unwrap();
        let (f, d) = (get("flaky"), get("dead"));
        if f["status"] == "delivered" && d["status"] == "failed" {
            break (f, d);
        }
        assert!(Instant::now() < deadline, "{f}\n{d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(flaky_d["attempts"], 3);
    assert_eq!(flaky_d["lastStatusCode"], 204);
    assert!(flaky_d["lastError"].is_null());
    assert_eq!(dead_d["attempts"], 3);
    assert_eq!(dead_d["lastStatusCode"], 503);
    assert!(
        dead_d["lastError"].as_str().unwrap().contains("503"),
        "{dead_d}"
    );
    assert!(dead_d["nextAttemptAt"].is_null());
    assert_eq!(dead.hits().len(), 3, "no attempt after the last");
    // The unnamed endpoint is named by its origin (its path may be a credential),
    // and a connection error is recorded without a status code.
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let list = deliveries(&admin, &format!("?endpoint={gone}")).await;
        if list.first().is_some_and(|d| d["status"] == "failed") {
            break list[0].clone();
        }
        assert!(Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["attempts"], 3);
    assert!(refused["lastStatusCode"].is_null());
    let err = refused["lastError"].as_str().unwrap();
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!refused.to_string().contains("secret-path"), "{refused}");
    assert_eq!(deliveries(&admin, "?status=failed").await.len(), 2);

    // The dead receiver recovers; an operator redelivers its failed delivery: due at
    // once, a fresh schedule, the same event.
    dead.fail_first.store(0, Ordering::SeqCst);
    let (s, again) = admin
        .post(&format!(
            "/v1/webhooks/deliveries/{}/redeliver",
            dead_d["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        (again["status"].clone(), again["attempts"].clone()),
        (json!("pending"), json!(0))
    );
    let hits = dead
        .wait_for("the redelivery", Duration::from_secs(10), |h| h.len() >= 4)
        .await;
    assert_eq!(hits[3].json["id"], hits[0].json["id"], "the same event id");
    verify_signature(&hits[3], SECRET);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = deliveries(&admin, "?endpoint=dead").await;
        if list[0]["status"] == "delivered" {
            assert_eq!(list[0]["attempts"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A delivered one can be sent again too; an unknown id is 404.
    let (s, _) = admin
        .post(&format!(
            "/v1/webhooks/deliveries/{}/redeliver",
            flaky_d["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200);
    let (s, body) = admin
        .post("/v1/webhooks/deliveries/01NOSUCHDELIVERY/redeliver")
        .await;
    assert_eq!(
        (s, body["error"].clone()),
        (404, json!("Delivery not found"))
    );
    let (s, audit) = admin
        .call(reqwest::Method::GET, "/v1/audit?actor=admin:test", None)
        .await;
    assert_eq!(s, 200);
    let redeliveries = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "webhook.redeliver")
        .count();
    assert_eq!(redeliveries, 2, "audited");

    // The outbox is for admin keys only, even for a PAT with tokens:admin.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/webhooks/deliveries", gw.admin_url))
        .bearer_auth(&pat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Deliveries pending when patgate stops are sent by the next process: the outbox
/// is in the store, not in memory, and the retry schedule is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver refuses the first attempt; the retry is due 3 s later.
    let receiver = Receiver::start(1, 503).await;
    let config = format!(
        r#"{store}
tokens: {{creation_limit: 0}}
webhooks:
  endpoints:
    - {{name: ops, url: "{url}", secret: {SECRET}}}
  retry_initial_seconds: 3
"#,
        store = store_yaml(None, dir.path()),
        url = receiver.url(),
    );
    let mut first = GatewayProcess::start(&config);
    let admin = AdminApi::new(&first.admin_url);
    let (_, rec) = admin.create(json!({"name": "a", "ownerId": "u1"})).await;
    receiver
        .wait_for("the first attempt", Duration::from_secs(10), |h| {
            !h.is_empty()
        })
        .await;
    // Give the worker a moment to write the outcome, then read it back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = deliveries(&admin, "").await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["status"], "pending");
    assert_eq!(before[0]["attempts"], 1);
    assert_eq!(before[0]["lastStatusCode"], 503);
    assert!(
        first
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let stopped = Instant::now();
    assert_eq!(
        receiver.hits().len(),
        1,
        "the first process made one attempt"
    );

    let second = GatewayProcess::start(&config);
    let admin = AdminApi::new(&second.admin_url);
    let hits = receiver
        .wait_for(
            "the retry from the new process",
            Duration::from_secs(15),
            |h| h.len() >= 2,
        )
        .await;
    assert!(hits[1].at > stopped, "sent after the first process exited");
    assert_eq!(hits[1].json["data"]["tokenId"], rec["id"]);
    assert_eq!(hits[1].json["id"], hits[0].json["id"], "the same event");
    let retry_gap = hits[1].at - hits[0].at;
    assert!(
        retry_gap >= Duration::from_millis(2500),
        "its schedule was kept: {retry_gap:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = deliveries(&admin, "").await;
    assert_eq!(after[0]["id"], before[0]["id"]);
    assert_eq!(after[0]["status"], "delivered");
    assert_eq!(after[0]["attempts"], 2);
}

/// Two replicas on one Redis: one `token.rate_limited` per token per interval, one
/// quota warning and one exhaustion per period, one `token.expiring` per token,
/// however many requests, scans and replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_events_are_deduplicated_across_replicas() {
    let redis = RedisServer::start();
    let receiver = Receiver::start(0, 500).await;
    let upstream = Upstream::start().await;
    let config = format!(
        r#"store:
  backend: redis
  redis: {{url: "{redis}"}}
tokens: {{creation_limit: 0}}
rate_limit:
  default: {{requests: 1, per_seconds: 60, burst: 2}}
  quota: {{requests: 5, period: day, per: token}}
webhooks:
  endpoints:
    - name: ops
      url: "{url}"
      secret: {SECRET}
      events: [token.rate_limited, token.quota_warning, token.quota_exhausted, token.expiring]
  expiring_days: 7
  expiring_scan_interval_seconds: 1
routes:
  - name: api
    path_prefix: /api/
    upstream: "{up}"
"#,
        redis = redis.url(),
        url = receiver.url(),
        up = upstream.url(),
    );
    let a = GatewayProcess::start(&config);
    let b = GatewayProcess::start(&config);
    let admin = AdminApi::new(&a.admin_url);
    let http = reqwest::Client::new();
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(72)).to_string();
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 30)).to_string();
    let (limited, lrec) = admin
        .create(json!({"name": "l", "ownerId": "u1", "expiresAt": later}))
        .await;
    let (quota, qrec) = admin
        .create(json!({"name": "q", "ownerId": "u2", "expiresAt": later,
                       "rateLimit": {"requests": 1000, "perSeconds": 1, "burst": 1000}}))
        .await;
    let (_, erec) = admin
        .create(json!({"name": "e", "ownerId": "u3", "expiresAt": soon}))
        .await;

    let mut statuses = Vec::new();
    for gw in [&a, &b, &a, &b, &a, &b] {
        let r = http
            .get(format!("{}/api/x", gw.url))
            .bearer_auth(&limited)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    // Burst 2 (per replica with `mode: local`): two pass on each, the rest are 429.
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    let mut qs = Vec::new();
    for (i, gw) in [&a, &b, &a, &b, &a, &b, &a].into_iter().enumerate() {
        let r = http
            .get(format!("{}/api/{i}", gw.url))
            .bearer_auth(&quota)
            .send()
            .await
            .unwrap();
        qs.push(r.status().as_u16());
    }
    assert_eq!(qs, [200, 200, 200, 200, 200, 429, 429]);

    receiver
        .wait_for(
            "rate-limit, quota and expiry events",
            Duration::from_secs(10),
            |h| {
                [
                    "token.rate_limited",
                    "token.quota_warning",
                    "token.quota_exhausted",
                    "token.expiring",
                ]
                .iter()
                .all(|e| !of(h, e).is_empty())
            },
        )
        .await;
    // Let more scans (every second, on both replicas) and any duplicate arrive.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let hits = receiver.hits();
    let count = |e: &str| of(&hits, e).len();
    assert_eq!(
        count("token.rate_limited"),
        1,
        "one per token per interval, across replicas"
    );
    // Both tokens passed 80 % of their 5 (the limited one with its 4 accepted
    // requests): one warning each.
    let mut warned: Vec<String> = of(&hits, "token.quota_warning")
        .iter()
        .map(|h| h.json["data"]["tokenId"].as_str().unwrap().to_string())
        .collect();
    warned.sort();
    let mut want = vec![
        lrec["id"].as_str().unwrap().to_string(),
        qrec["id"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(warned, want);
    assert_eq!(
        count("token.quota_exhausted"),
        1,
        "reaching 5/5 and two refusals: once"
    );
    assert_eq!(
        count("token.expiring"),
        1,
        "only the token expiring within 7 days, once"
    );
    assert_eq!(hits.len(), 5, "nothing else");

    let rl = &of(&hits, "token.rate_limited")[0].json["data"];
    assert_eq!(rl["tokenId"], lrec["id"]);
    assert_eq!(rl["route"], "api");
    let warn = &of(&hits, "token.quota_warning")
        .into_iter()
        .find(|h| h.json["data"]["tokenId"] == qrec["id"])
        .unwrap()
        .json["data"];
    assert_eq!(
        (
            warn["tokenId"].clone(),
            warn["used"].clone(),
            warn["limit"].clone()
        ),
        (qrec["id"].clone(), json!(4), json!(5))
    );
    assert_eq!(warn["period"], "day");
    let gone = &of(&hits, "token.quota_exhausted")[0].json["data"];
    assert_eq!(
        (gone["used"].clone(), gone["remaining"].clone()),
        (json!(5), json!(0))
    );
    let exp = &of(&hits, "token.expiring")[0].json["data"];
    assert_eq!(exp["tokenId"], erec["id"]);
    assert_eq!(exp["daysLeft"], 2, "72 h minus a moment: two whole days");
    for h in &hits {
        verify_signature(h, SECRET);
    }
}

/// `token.new_ip`: once per client-IP prefix a token had not been used from (here
/// /24s behind a trusted proxy), never again for a prefix it already has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_client_ip_prefixes_become_events() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0, 500).await;
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        r#"{store}
tokens: {{creation_limit: 0}}
client_ip:
  trusted_proxies: [127.0.0.1/32]
webhooks:
  endpoints:
    - {{name: ops, url: "{url}", secret: {SECRET}, events: [token.new_ip]}}
routes:
  - name: api
    path_prefix: /api/
    upstream: "{up}"
"#,
        store = store_yaml(None, dir.path()),
        url = receiver.url(),
        up = upstream.url(),
    ));
    let admin = AdminApi::new(&gw.admin_url);
    let http = reqwest::Client::new();
    let (token, rec) = admin.create(json!({"name": "a", "ownerId": "u1"})).await;
    let from = |ip: &'static str| {
        http.get(format!("{}/api/x", gw.url))
            .bearer_auth(&token)
            .header("x-forwarded-for", ip)
            .send()
    };
    for ip in ["203.0.113.5", "203.0.113.9", "198.51.100.7"] {
        assert_eq!(from(ip).await.unwrap().status(), 200);
    }
    let hits = receiver
        .wait_for("two new prefixes", Duration::from_secs(10), |h| {
            h.len() >= 2
        })
        .await;
    // Another flush interval: a known prefix again is not news.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(from("203.0.113.77").await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hits().len(), 2, "{hits:#?}");
    let mut prefixes: Vec<String> = hits
        .iter()
        .map(|h| {
            assert_eq!(h.event(), "token.new_ip");
            assert_eq!(h.json["data"]["tokenId"], rec["id"]);
            verify_signature(h, SECRET);
            h.json["data"]["prefix"].as_str().unwrap().to_string()
        })
        .collect();
    prefixes.sort();
    assert_eq!(prefixes, ["198.51.100.0/24", "203.0.113.0/24"]);
    let counts: u64 = hits
        .iter()
        .map(|h| h.json["data"]["count"].as_u64().unwrap())
        .sum();
    // Each event counts its prefix's requests in the flush batch that found it (the
    // second /24 request may fall into the next batch).
    assert!((2..=3).contains(&counts), "{counts}");
}

/// Endpoints come and go with a reload (`POST /v1/reload`, like SIGHUP): events are
/// recorded only while someone subscribes, and a delivery whose endpoint was removed
/// ends `failed` instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_reloaded_and_removed_ones_fail_their_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(usize::MAX, 503).await;
    let base = format!(
        "{store}tokens: {{creation_limit: 0}}\n",
        store = store_yaml(None, dir.path())
    );
    let gw = GatewayProcess::start(&base);
    let admin = AdminApi::new(&gw.admin_url);
    admin
        .create(json!({"name": "before", "ownerId": "u1"}))
        .await;
    assert!(
        deliveries(&admin, "").await.is_empty(),
        "no endpoint, no event"
    );

    let with_hook = format!(
        "{base}webhooks:\n  endpoints:\n    - {{name: ops, url: \"{}\", secret: {SECRET}}}\n  retry_initial_seconds: 2\n",
        receiver.url()
    );
    let full = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, full.replace(&base, &with_hook)).unwrap();
    let (s, body) = admin.post("/v1/reload").await;
    assert_eq!(s, 200, "{body}");
    let (_, rec) = admin
        .create(json!({"name": "after", "ownerId": "u1"}))
        .await;
    receiver
        .wait_for("the first attempt", Duration::from_secs(10), |h| {
            !h.is_empty()
        })
        .await;
    assert_eq!(receiver.hits()[0].json["data"]["tokenId"], rec["id"]);

    // The receiver refused it; the retry is 2 s away. Rename the endpoint: the
    // delivery's next attempt finds no endpoint `ops` and fails it.
    std::fs::write(
        &gw.config_path,
        full.replace(&base, &with_hook.replace("name: ops", "name: other")),
    )
    .unwrap();
    let (s, body) = admin.post("/v1/reload").await;
    assert_eq!(s, 200, "{body}");
    let sent = receiver.hits().len();
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let list = deliveries(&admin, "?endpoint=ops").await;
        if list[0]["status"] == "failed" {
            break list[0].clone();
        }
        assert!(Instant::now() < deadline, "{list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        failed["lastError"]
            .as_str()
            .unwrap()
            .contains("no longer configured"),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 2);
    assert_eq!(
        receiver.hits().len(),
        sent,
        "nothing sent after the endpoint went"
    );
}
