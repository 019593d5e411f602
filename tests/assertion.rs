//! Signed identity (`identity_headers.assertion`): the real binary signs an Ed25519
//! JWS per request and serves its JWKS; an independent JOSE library (Python
//! `jwcrypto`, Debian `python3-jwcrypto`) verifies it against that JWKS. Keys are made
//! with `openssl genpkey -algorithm ed25519`, as the README tells operators to.

mod common;

use std::path::Path;
use std::process::Command;

use common::admin::AdminApi;
use common::gateway::GatewayProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use serde_json::{Value, json};

fn genkey(path: &Path) {
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(path)
        .output()
        .expect("openssl must be installed");
    assert!(out.status.success(), "{out:?}");
}

/// A python3 with `jwcrypto`.
fn python() -> &'static str {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import jwcrypto.jws"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return py;
        }
    }
    panic!(
        "this test verifies assertions with python3-jwcrypto: \
         sudo apt-get install -y python3-jwcrypto (scripts/test installs it as root)"
    );
}

const VERIFY: &str = r#"
import json, sys
from jwcrypto import jwk, jws
jwks = jwk.JWKSet.from_json(sys.argv[1])
token = jws.JWS()
token.deserialize(sys.argv[2])
kid = token.jose_header["kid"]
token.verify(jwks.get_key(kid), alg="EdDSA")
print(json.dumps({"header": token.jose_header, "claims": json.loads(token.payload)}))
"#;

/// Verifies `assertion` against `jwks` with jwcrypto; the header and claims, or the
/// library's error.
async fn verify(jwks: &str, assertion: &str) -> Result<Value, String> {
    let out = tokio::process::Command::new(python())
        .args(["-c", VERIFY, jwks, assertion])
        .output()
        .await
        .expect("run python3");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("verifier output"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_verify_with_an_independent_jose_library_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (dir.path().join("k1.pem"), dir.path().join("k2.pem"));
    genkey(&k1);
    genkey(&k2);
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let config = |first: &Path, second: &Path| {
        format!(
            r#"
store:
  backend: redis
  redis:
    url: "{}"
identity_headers:
  assertion:
    ttl_seconds: 30
    keys:
      - id: k1
        file: "{}"
      - id: k2
        file: "{}"
routes:
  - name: api
    path_prefix: /api/
    upstream: "{}"
  - name: open
    path_prefix: /open/
    upstream: "{}"
    auth: none
"#,
            redis.url(),
            first.display(),
            second.display(),
            upstream.url(),
            upstream.url()
        )
    };
    let gw = GatewayProcess::start(&config(&k1, &k2));
    let admin = AdminApi::new(&gw.admin_url);
    let (token, record) = admin
        .create(json!({"name": "a", "ownerId": "user-7", "orgId": "org-3",
                       "scopes": ["documents"], "permissions": ["read"]}))
        .await;
    let http = reqwest::Client::new();

    let jwks_resp = http
        .get(format!("{}/_patgate/jwks.json", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks_resp.status(), 200);
    let jwks = jwks_resp.text().await.unwrap();
    let jwks_json: Value = serde_json::from_str(&jwks).unwrap();
    let kids: Vec<&str> = jwks_json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["k1", "k2"], "every configured key is published");
    assert!(
        jwks_json["keys"][0].get("d").is_none(),
        "no private part in the JWKS"
    );

    // A client-sent assertion never reaches the upstream; patgate's own does.
    let body: Value = http
        .get(format!("{}/api/x", gw.url))
        .bearer_auth(&token)
        .header("X-Auth-Assertion", "forged.by.client")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let assertion = body["headers"]["x-auth-assertion"]
        .as_str()
        .expect("assertion forwarded")
        .to_string();
    assert_ne!(assertion, "forged.by.client");
    let v = verify(&jwks, &assertion).await.expect("verifies");
    let c = &v["claims"];
    assert_eq!(v["header"]["alg"], "EdDSA");
    assert_eq!(v["header"]["kid"], "k1", "the first key signs");
    assert_eq!(c["sub"], "user-7");
    assert_eq!(c["tid"], record["id"]);
    assert_eq!(c["org"], "org-3");
    assert_eq!(c["aud"], "api");
    assert_eq!(c["iss"], "patgate");
    assert_eq!(c["scopes"], json!(["documents"]));
    assert_eq!(c["permissions"], json!(["read"]));
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 30);
    let now = jiff::Timestamp::now().as_second();
    assert!((iat - now).abs() <= 5, "iat {iat} vs now {now}");

    // Tampering with the claims breaks the signature.
    let parts: Vec<&str> = assertion.split('.').collect();
    let forged_claims = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("admin");
        b64.encode(claims.to_string())
    };
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert!(
        verify(&jwks, &forged).await.is_err(),
        "forged claims verify"
    );

    // No assertion on an `auth: none` route.
    let open: Value = http
        .get(format!("{}/open/x", gw.url))
        .header("X-Auth-Assertion", "forged.by.client")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(open["headers"].get("x-auth-assertion").is_none(), "{open}");

    // Rotation: k2 first, reloaded; new assertions are signed by k2, and k1 stays
    // published for assertions still in flight.
    std::fs::write(&gw.config_path, {
        let text = std::fs::read_to_string(&gw.config_path).unwrap();
        let k1s = format!("id: k1\n        file: \"{}\"", k1.display());
        let k2s = format!("id: k2\n        file: \"{}\"", k2.display());
        text.replacen(&k1s, "@@", 1)
            .replacen(&k2s, &k1s, 1)
            .replacen("@@", &k2s, 1)
    })
    .unwrap();
    let (status, _) = admin.post("/v1/reload").await;
    assert_eq!(status, 200);
    let body: Value = http
        .get(format!("{}/api/y", gw.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rotated = body["headers"]["x-auth-assertion"].as_str().unwrap();
    let jwks2 = http
        .get(format!("{}/_patgate/jwks.json", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v2 = verify(&jwks2, rotated)
        .await
        .expect("verifies after rotation");
    assert_eq!(v2["header"]["kid"], "k2");
    assert!(
        verify(&jwks2, &assertion).await.is_ok(),
        "an assertion signed by k1 before the rotation still verifies"
    );
}

#[test]
fn an_unreadable_assertion_key_stops_serve_with_its_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\nstore: {{backend: embedded, embedded: {{path: \"{}\"}}}}\nidentity_headers:\n  assertion:\n    keys: [{{id: k1, file: \"{}\"}}]\nroutes:\n  - {{name: api, path_prefix: /, upstream: \"http://127.0.0.1:9\"}}\n",
            dir.path().join("db.redb").display(),
            bad.display()
        ),
    )
    .unwrap();
    let out = Command::new(common::gateway::binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("identity_headers.assertion.keys[0].file"),
        "{text}"
    );
}
