//! The `patgate` command line: check-config, admin-key new, the token subcommands
//! against a running gateway, and `patgate dev` on a machine without Redis.

mod common;

use std::process::Command;

use common::gateway::{ADMIN_KEY, GatewayProcess, binary};
use common::redis::RedisServer;
use common::upstream::Upstream;
use serde_json::Value;

fn patgate(args: &[&str], admin_url: &str) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .args(["--admin-url", admin_url])
        .env("PATGATE_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("run patgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_exits_0_for_valid_and_2_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "store:\n  backend: embedded\n  embedded:\n    path: /tmp/x.redb\nroutes:\n  - name: a\n    path_prefix: /\n    upstream: http://127.0.0.1:3000\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: nowhere\ntokens:\n  prefix: BAD\nclient_ip:\n  signals:\n    ipv4_prefix: 40\n    retention_days: 0\nroutes:\n  - name: a\n    path_prefix: api\n    upstream: billing\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 6, "{err}");
    assert!(
        lines.iter().all(|l| l.starts_with("config error: ")),
        "{err}"
    );
    for path in [
        "listen",
        "tokens.prefix",
        "routes[0].path_prefix",
        "routes[0].upstream",
        "client_ip.signals.ipv4_prefix",
        "client_ip.signals.retention_days",
    ] {
        assert!(
            err.contains(&format!("config error: {path}: ")),
            "missing {path}: {err}"
        );
    }
    // Missing file.
    let out = Command::new(binary())
        .args(["check-config", "--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn admin_key_new_prints_a_key_and_its_sha256_line() {
    let out = Command::new(binary())
        .args(["admin-key", "new", "--name", "ops"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("pgadm_"))
        .expect("a key")
        .to_string();
    let sha = patgate::token::TokenHash::of(&key).to_hex();
    assert!(text.contains(&format!("sha256: \"{sha}\"")), "{text}");
    assert!(text.contains("- name: ops"));
}

#[tokio::test]
async fn token_subcommands_drive_the_admin_api() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        "store:\n  backend: redis\n  redis:\n    url: \"{}\"\ntokens:\n  creation_limit: 0\nroutes:\n  - name: a\n    path_prefix: /\n    upstream: \"{}\"\n",
        redis.url(),
        upstream.url()
    ));
    let admin = gw.admin_url.clone();
    let (code, out, err) = patgate(
        &[
            "token",
            "create",
            "--json",
            "--name",
            "cli",
            "--owner",
            "u9",
            "--org",
            "o1",
            "--scope",
            "documents",
            "--scope",
            "billing",
            "--permission",
            "read",
            "--expires-in-days",
            "10",
            "--allow-ip",
            "127.0.0.1",
            "--rate-limit",
            "50/1",
        ],
        &admin,
    );
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    common::secrets::register(&token);
    let record = &created["record"];
    let id = record["id"].as_str().unwrap().to_string();
    assert_eq!(
        record["scopes"],
        serde_json::json!(["documents", "billing"])
    );
    assert_eq!(record["rateLimit"]["requests"], 50);
    assert_eq!(record["ipAllowlist"], serde_json::json!(["127.0.0.1/32"]));
    let status = |t: String| {
        let url = format!("{}/x", gw.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(token.clone()).await, 200);

    let (code, out, _) = patgate(&["token", "list"], &admin);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("active"), "{out}");
    assert!(!out.contains(&token[12..]));

    let (code, out, _) = patgate(&["token", "show", &id], &admin);
    assert_eq!(code, 0);
    assert!(out.contains("cli") && out.contains("u9"), "{out}");

    let (code, _, err) = patgate(&["token", "update", &id, "--name", "renamed"], &admin);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = patgate(&["token", "show", &id, "--json"], &admin);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["name"],
        "renamed"
    );

    assert_eq!(patgate(&["token", "deactivate", &id], &admin).0, 0);
    assert_eq!(status(token.clone()).await, 401);
    assert_eq!(patgate(&["token", "activate", &id], &admin).0, 0);
    assert_eq!(status(token.clone()).await, 200);

    let (code, out, _) = patgate(
        &["token", "regenerate", &id, "--grace-seconds", "0", "--json"],
        &admin,
    );
    assert_eq!(code, 0);
    let new_token = serde_json::from_str::<Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    common::secrets::register(&new_token);
    assert_eq!(status(token.clone()).await, 401);
    assert_eq!(status(new_token.clone()).await, 200);

    let legacy = "pat_legacy-imported";
    common::secrets::register(legacy);
    let sha = patgate::token::TokenHash::of(legacy).to_hex();
    let (code, _, err) = patgate(
        &[
            "token", "import", "--sha256", &sha, "--name", "imp", "--owner", "u9",
        ],
        &admin,
    );
    assert_eq!(code, 0, "{err}");

    assert_eq!(patgate(&["token", "revoke", &id], &admin).0, 0);
    assert_eq!(status(new_token.clone()).await, 401);
    assert_eq!(patgate(&["token", "delete", &id], &admin).0, 0);
    let (code, _, err) = patgate(&["token", "show", &id], &admin);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    // A validation error is reported with its field, exit 1.
    let (code, _, err) = patgate(&["token", "create", "--name", "", "--owner", "u"], &admin);
    assert_eq!(code, 1);
    assert!(err.contains("name:"), "{err}");
    // No admin key: a clear message, exit 2.
    let out = Command::new(binary())
        .args(["token", "list", "--admin-url", &admin])
        .env_remove("PATGATE_ADMIN_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PATGATE_ADMIN_KEY"));
}

#[tokio::test]
async fn dev_mode_needs_no_redis_and_prints_a_working_token() {
    // PATH emptied: no redis-server is reachable, on purpose.
    let dev = common::dev::DevProcess::start(true);
    let word_after = |marker: &str| dev.word_after(marker);
    let token = word_after("export PAT=");
    let admin_key = word_after("export PATGATE_ADMIN_KEY=");
    let data = word_after("data plane:");
    let admin = word_after("admin API:");
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{data}/hello"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-auth-user-id"], "dev-user");
    assert_eq!(
        http.get(format!("{data}/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let resp = http
        .get(format!("{admin}/v1/tokens"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
