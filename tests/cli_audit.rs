//! `patgate audit` against a running gateway: the trail of a token created and
//! revoked through the admin API, as JSON and as human lines.

mod common;

use std::process::Command;

use common::admin::AdminApi;
use common::gateway::{ADMIN_KEY, GatewayProcess, binary};
use common::redis::RedisServer;
use common::upstream::Upstream;
use serde_json::{Value, json};

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

#[tokio::test]
async fn audit_cli_shows_the_create_and_revoke_of_a_token() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = GatewayProcess::start(&format!(
        "store:\n  backend: redis\n  redis:\n    url: \"{}\"\nroutes:\n  - name: a\n    path_prefix: /\n    upstream: \"{}\"\n",
        redis.url(),
        upstream.url()
    ));
    let admin = AdminApi::new(&gw.admin_url);
    let (token, record) = admin
        .create(json!({"name": "audited", "ownerId": "u1"}))
        .await;
    let id = record["id"].as_str().unwrap().to_string();
    let (s, _) = admin.post(&format!("/v1/tokens/{id}/revoke")).await;
    assert_eq!(s, 200);
    // Another token's events must be filtered out.
    admin
        .create(json!({"name": "other", "ownerId": "u2"}))
        .await;

    // Event ids are ULIDs: two events in the same millisecond may list in either
    // order, so actions are compared as a set.
    let (code, out, err) = patgate(&["audit", "--token-id", &id, "--json"], &gw.admin_url);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let mut actions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    assert_eq!(actions, ["token.create", "token.revoke"]);
    for e in page["items"].as_array().unwrap() {
        assert_eq!(e["tokenId"], id.as_str());
        assert_eq!(e["actor"], "admin:test");
        assert_eq!(e["outcome"], "success");
    }
    assert!(page["nextCursor"].is_null());
    assert!(!out.contains(&token[12..]), "audit output holds a secret");

    // Human output: a header, one line per event, a cursor hint when paged; the
    // cursor leads to the rest.
    let (code, out, err) = patgate(&["audit", "--token-id", &id, "--limit", "1"], &gw.admin_url);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{out}");
    assert!(
        lines[1].contains("admin:test") && lines[1].contains(&id),
        "{out}"
    );
    assert!(lines[1].contains("127.0.0.1") && lines[1].ends_with("success"));
    let first = if lines[1].contains("token.create") {
        "token.create"
    } else {
        "token.revoke"
    };
    let cursor = out
        .lines()
        .find_map(|l| l.strip_prefix("more: --cursor "))
        .unwrap_or_else(|| panic!("no cursor hint: {out}"));
    let (code, out, _) = patgate(
        &["audit", "--token-id", &id, "--cursor", cursor, "--json"],
        &gw.admin_url,
    );
    assert_eq!(code, 0);
    let rest: Value = serde_json::from_str(&out).unwrap();
    let rest = rest["items"].as_array().unwrap();
    assert_eq!(rest.len(), 1, "{out}");
    assert_ne!(rest[0]["action"], first);

    // Usage errors exit 2 before any request; API errors exit 1.
    let (code, _, err) = patgate(&["audit", "--since", "yesterday"], &gw.admin_url);
    assert_eq!(code, 2, "{err}");
    let out = Command::new(binary())
        .args(["audit", "--admin-url", &gw.admin_url])
        .env_remove("PATGATE_ADMIN_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(binary())
        .args(["audit", "--admin-url", &gw.admin_url])
        .env("PATGATE_ADMIN_KEY", "pgadm_wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}
