//! TLS termination on the data plane: HTTP/1.1 and HTTP/2 (ALPN) through `curl`,
//! `X-Forwarded-Proto: https`, and certificate reload on SIGHUP (a bad new
//! certificate keeps the old one).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use serde_json::{Value, json};

fn write_cert(dir: &Path, name: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

/// `curl` over TLS; returns (exit code, "<http_version> <status>", body).
async fn curl(url: &str, ca: &str, token: &str, version: &str) -> (i32, String, String) {
    // Async: the upstream runs on this test's runtime and must keep serving.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", version, "--cacert", ca])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-w", "\n%{http_version} %{http_code}", url])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        out.status.code().unwrap_or(-1),
        meta.to_string(),
        body.to_string(),
    )
}

#[tokio::test]
async fn tls_serves_http1_and_h2_and_reloads_certificates_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let live_cert = dir.path().join("live.crt");
    let live_key = dir.path().join("live.key");
    let (c1, k1) = write_cert(dir.path(), "one");
    std::fs::copy(&c1, &live_cert).unwrap();
    std::fs::copy(&k1, &live_key).unwrap();
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        "tls:\n  cert: {}\n  key: {}\nstore:\n  backend: redis\n  redis:\n    url: \"{}\"\ntokens:\n  creation_limit: 0\nroutes:\n  - name: all\n    path_prefix: /\n    upstream: \"{}\"\n",
        live_cert.display(),
        live_key.display(),
        redis.url(),
        upstream.url()
    ));
    let admin = AdminApi::new(&gw.admin_url);
    let (token, _) = admin.create(json!({"name": "t", "ownerId": "u"})).await;
    let port = gw.url.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}/x");

    let (code, meta, body) = curl(&url, &c1, &token, "--http1.1").await;
    assert_eq!((code, meta.as_str()), (0, "1.1 200"), "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echoed["headers"]["x-auth-user-id"], "u");
    let (code, meta, _) = curl(&url, &c1, &token, "--http2").await;
    assert_eq!((code, meta.as_str()), (0, "2 200"));
    // Plain HTTP on the TLS port is refused.
    let plain = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            &format!("http://127.0.0.1:{port}/x"),
        ])
        .output()
        .await
        .unwrap();
    assert!(!plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("\"uri\""));

    // A new certificate is served after SIGHUP.
    let (c2, k2) = write_cert(dir.path(), "two");
    std::fs::copy(&c2, &live_cert).unwrap();
    std::fs::copy(&k2, &live_key).unwrap();
    assert_ne!(
        curl(&url, &c2, &token, "--http1.1").await.0,
        0,
        "not reloaded yet"
    );
    Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    while curl(&url, &c2, &token, "--http1.1").await.0 != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "certificate not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken certificate file is refused; the running one stays.
    std::fs::write(&live_cert, "not a certificate").unwrap();
    Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, meta, _) = curl(&url, &c2, &token, "--http1.1").await;
    assert_eq!((code, meta.as_str()), (0, "1.1 200"));
    assert!(
        gw.log_lines()
            .iter()
            .any(|l| l.contains("keeping the running certificate")),
        "the failed reload is logged"
    );
}
