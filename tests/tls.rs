//! TLS, end to end through the real binary: termination on the data plane
//! (HTTP/1.1 and HTTP/2 by ALPN through `curl`, `X-Forwarded-Proto: https`),
//! certificate reload on SIGHUP and when the files change (a bad new certificate
//! keeps the old one), the admin API over https (and the CLI with `--ca-cert`), and
//! https upstreams with a configured CA, client certificates and HTTP/2.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::AdminApi;
use common::gateway::{ADMIN_KEY, GatewayProcess, binary};
use common::pki::{self, Ca};
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

    // SIGHUP applies the certificate paths of the reloaded file. (New paths, so the
    // file watcher, which watches the running paths, cannot be what applied it.)
    let (c2, k2) = write_cert(dir.path(), "two");
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        assert!(text.contains(from));
        std::fs::write(&gw.config_path, text.replace(from, to)).unwrap();
    };
    edit(&live_cert.display().to_string(), &c2);
    edit(&live_key.display().to_string(), &k2);
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
    let broken = dir.path().join("broken.crt");
    std::fs::write(&broken, "not a certificate").unwrap();
    edit(&c2, &broken.display().to_string());
    Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, meta, _) = curl(&url, &c2, &token, "--http1.1").await;
    assert_eq!((code, meta.as_str()), (0, "1.1 200"));
    wait_for_log(&gw, "TLS reload failed; keeping the running certificate").await;
}

/// The first log line containing `needle`, waiting up to 5 s for it (the log is
/// read by another thread).
async fn wait_for_log(gw: &GatewayProcess, needle: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(l) = gw.log_lines().into_iter().find(|l| l.contains(needle)) {
            return l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no log line with {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `host:port` of a `scheme://host:port` URL.
fn addr_of(url: &str) -> String {
    url.split("://").nth(1).unwrap_or(url).to_string()
}

/// Waits (up to 5 s) until a handshake with `addr` presents `want`.
async fn wait_for_cert(addr: &str, ca: &str, want: &[u8]) {
    let start = Instant::now();
    loop {
        if pki::presented_cert(addr, "localhost", ca).await.as_deref() == Ok(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn changed_certificate_files_are_served_without_sighup_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("patgate test CA");
    let one = ca.server("one", &["localhost"]);
    let two = ca.server("two", &["localhost"]);
    // Kubernetes-style: the watched paths are symlinks into a directory that is
    // swapped as a whole.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    one.write(&a, "tls");
    two.write(&b, "tls");
    let data = dir.path().join("..data");
    std::os::unix::fs::symlink(&a, &data).unwrap();
    let live_cert = dir.path().join("tls.crt");
    let live_key = dir.path().join("tls.key");
    std::os::unix::fs::symlink(data.join("tls.crt"), &live_cert).unwrap();
    std::os::unix::fs::symlink(data.join("tls.key"), &live_key).unwrap();
    let store = dir.path().join("store.redb");
    let gw = GatewayProcess::start_with_admin(
        &format!(
            "tls: {{cert: {}, key: {}}}\nstore: {{backend: embedded, embedded: {{path: {}}}}}\n",
            live_cert.display(),
            live_key.display(),
            store.display()
        ),
        &format!(
            "  tls: {{cert: {}, key: {}}}\n",
            live_cert.display(),
            live_key.display()
        ),
    );
    let data_addr = addr_of(&gw.url);
    let admin_addr = addr_of(&gw.admin_url);
    for addr in [&data_addr, &admin_addr] {
        assert_eq!(
            pki::presented_cert(addr, "localhost", &ca.pem).await,
            Ok(one.der.clone())
        );
    }

    // Swap the directory the symlink points at (atomically, as the kubelet does).
    let next = dir.path().join("..data_next");
    std::os::unix::fs::symlink(&b, &next).unwrap();
    std::fs::rename(&next, &data).unwrap();
    wait_for_cert(&data_addr, &ca.pem, &two.der).await;
    wait_for_cert(&admin_addr, &ca.pem, &two.der).await;
    wait_for_log(&gw, "TLS certificate files changed; new certificate loaded").await;

    // A broken certificate: the running one stays, and the log says why.
    std::fs::write(b.join("tls.crt"), "not a certificate").unwrap();
    let why = wait_for_log(&gw, "are unusable").await;
    assert!(why.contains("keeping the running certificate"), "{why}");
    assert!(why.contains("no PEM certificate"), "{why}");
    assert!(!why.contains("PRIVATE KEY"), "{why}");
    for addr in [&data_addr, &admin_addr] {
        assert_eq!(
            pki::presented_cert(addr, "localhost", &ca.pem).await,
            Ok(two.der.clone())
        );
    }
    // A key that does not match the certificate is refused the same way.
    std::fs::write(b.join("tls.crt"), &one.cert_pem).unwrap();
    wait_for_log(&gw, "do not form a usable pair").await;
    for addr in [&data_addr, &admin_addr] {
        assert_eq!(
            pki::presented_cert(addr, "localhost", &ca.pem).await,
            Ok(two.der.clone())
        );
    }
}

/// `curl` against the admin API with the test admin key; returns (exit code, status).
async fn admin_curl(url: &str, ca: Option<&Path>) -> (i32, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .args(["-H", &format!("Authorization: Bearer {ADMIN_KEY}")]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.arg(url).output().await.expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn the_admin_api_speaks_https_and_the_cli_trusts_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("admin CA");
    let ca_path = ca.write(dir.path(), "ca");
    let (cert, key) = ca
        .server("admin", &["localhost"])
        .write(dir.path(), "admin");
    let store = dir.path().join("store.redb");
    let gw = GatewayProcess::start_with_admin(
        &format!(
            "store: {{backend: embedded, embedded: {{path: {}}}}}\n",
            store.display()
        ),
        &format!(
            "  tls: {{cert: {}, key: {}}}\n",
            cert.display(),
            key.display()
        ),
    );
    let port = gw.admin_url.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");

    assert_eq!(
        admin_curl(&format!("{https}/v1/tokens"), Some(&ca_path)).await,
        (0, "200".to_string())
    );
    let (code, status) = admin_curl(&format!("http://127.0.0.1:{port}/v1/tokens"), None).await;
    assert!(
        code != 0 || status != "200",
        "plain HTTP must not reach the admin API"
    );
    // The data plane stays plain HTTP.
    let (_, status) = admin_curl(&format!("{}/x", gw.url), None).await;
    assert_eq!(status, "404");

    let cli_env = |args: Vec<String>, ca_env: Option<String>| async move {
        let mut cmd = tokio::process::Command::new(binary());
        cmd.args(args)
            .env("PATGATE_ADMIN_KEY", ADMIN_KEY)
            .env_remove("PATGATE_ADMIN_CA");
        if let Some(ca) = ca_env {
            cmd.env("PATGATE_ADMIN_CA", ca);
        }
        let out = cmd.output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let create = |extra: &[&str]| {
        let mut a: Vec<String> = ["token", "create", "--admin-url", &https, "--name", "ci"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--owner".to_string(), "u1".to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cli = |args| cli_env(args, None);
    let ca_arg = ca_path.display().to_string();
    let (code, out, err) = cli(create(&["--ca-cert", &ca_arg])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pat_"), "{out}");
    let (code, out, err) = cli_env(create(&[]), Some(ca_arg.clone())).await;
    assert_eq!(code, 0, "$PATGATE_ADMIN_CA works too: {out}{err}");
    // Without the CA, the private certificate is not trusted.
    let (code, _, err) = cli(create(&[])).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");
    // An unreadable CA file is a usage error naming the flag.
    let (code, _, err) = cli(create(&["--ca-cert", "/nonexistent/ca.pem"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ca-cert: cannot read"), "{err}");
}

/// GET `url` through the gateway; returns (status, the upstream's echo if any).
async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn https_upstreams_use_the_configured_ca_and_client_certificate_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("upstream server CA");
    let client_ca = Ca::new("upstream client CA");
    let other_ca = Ca::new("someone else's CA");
    let leaf = server_ca.server("upstream", &["upstream.test"]);
    let upstream = Upstream::start_tls(pki::server_config(&leaf, Some(&client_ca))).await;
    let ca = server_ca.write(dir.path(), "server-ca");
    let other = other_ca.write(dir.path(), "other-ca");
    let (cert, key) = client_ca.client("patgate").write(dir.path(), "client");
    let url = upstream.https_url();
    let (ca, other, cert, key) = (ca.display(), other.display(), cert.display(), key.display());
    let store = dir.path().join("store.redb");
    let gw = GatewayProcess::start(&format!(
        r#"
store: {{backend: embedded, embedded: {{path: {store}}}}}
upstreams:
  mtls:
    url: {url}
    tls: {{ca: {ca}, cert: {cert}, key: {key}, server_name: upstream.test}}
  mtls_h2:
    url: {url}
    http2: true
    tls: {{ca: {ca}, cert: {cert}, key: {key}, server_name: upstream.test}}
  no_client_cert:
    url: {url}
    tls: {{ca: {ca}, server_name: upstream.test}}
  unknown_ca:
    url: {url}
    tls: {{ca: {other}, cert: {cert}, key: {key}, server_name: upstream.test}}
routes:
  - {{name: mtls, path_prefix: /mtls, upstream: mtls, auth: none}}
  - {{name: mtls_h2, path_prefix: /h2, upstream: mtls_h2, auth: none}}
  - {{name: no_client_cert, path_prefix: /nocert, upstream: no_client_cert, auth: none}}
  - {{name: unknown_ca, path_prefix: /unknownca, upstream: unknown_ca, auth: none}}
"#,
        store = store.display(),
    ));
    let (status, echo) = get_json(&format!("{}/mtls/x", gw.url)).await;
    assert_eq!(status, 200, "{echo}");
    // ALPN picked h2 (the upstream offers it), so the upstream saw HTTP/2.
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    let (status, echo) = get_json(&format!("{}/h2/x", gw.url)).await;
    assert_eq!((status, &echo["version"]), (200, &json!("HTTP/2.0")));
    assert_eq!(get_json(&format!("{}/nocert/x", gw.url)).await.0, 502);
    assert_eq!(get_json(&format!("{}/unknownca/x", gw.url)).await.0, 502);
    // The gateway still serves the good one afterwards.
    assert_eq!(get_json(&format!("{}/mtls/y", gw.url)).await.0, 200);

    // A reload naming an unreadable CA is rejected with the field path; the
    // running upstreams stay.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let missing = dir.path().join("missing-ca.pem").display().to_string();
    let edited = text.replacen(&format!("ca: {ca}"), &format!("ca: {missing}"), 1);
    assert_ne!(text, edited);
    std::fs::write(&gw.config_path, edited).unwrap();
    let (status, body) = AdminApi::new(&gw.admin_url).post("/v1/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("config error: upstreams.mtls.tls.ca: cannot read"),
        "{body}"
    );
    assert_eq!(get_json(&format!("{}/mtls/z", gw.url)).await.0, 200);
}

#[tokio::test]
async fn unusable_upstream_tls_files_stop_serve_with_the_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("patgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nstore: {{backend: embedded, embedded: {{path: {}}}}}\nupstreams:\n  billing:\n    url: https://127.0.0.1:1\n    tls: {{ca: {}}}\nroutes:\n  - {{name: b, upstream: billing}}\n",
            dir.path().join("s.redb").display(),
            dir.path().join("missing-ca.pem").display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("config error: upstreams.billing.tls.ca: cannot read"),
        "{err}"
    );
}
