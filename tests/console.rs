//! The web console (`/ui/` on the admin listener) against the real binary and a real
//! Redis: the served assets and their security headers, then the whole console in a
//! real browser — `tests/console/e2e.py` drives headless Chromium with Selenium
//! (sign-in, create with the one-time secret, list/filter/sort, edit, regenerate,
//! deactivate, revoke → 401, the quota and the client-IP table with its key-sharing
//! warning, owners, audit, delete, a `tokens:self` PAT, 390 px and 1280 px widths) and saves a screenshot of each page under
//! `target/console-screenshots/`.
//!
//! The browser test needs `/usr/bin/chromium`, `/usr/bin/chromedriver` and
//! python3-selenium (`scripts/test` installs them when missing and run as root). If
//! they are missing it fails, naming them, unless `PATGATE_SKIP_BROWSER_TESTS=1`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::gateway::{ADMIN_KEY, GatewayProcess};
use common::redis::RedisServer;
use common::upstream::Upstream;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Env {
    _redis: RedisServer,
    _upstream: Upstream,
    gw: GatewayProcess,
}

async fn env() -> Env {
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
  default_expiry: 365d
rate_limit:
  quota:
    requests: 1000
    period: month
client_ip:
  trusted_proxies: [127.0.0.1]
routes:
  - name: all
    path_prefix: /
    upstream: "{}"
"#,
        redis.url(),
        upstream.url()
    );
    let gw = GatewayProcess::start(&yaml);
    Env {
        _redis: redis,
        _upstream: upstream,
        gw,
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn console_assets_are_public_typed_and_locked_down_by_csp() {
    let e = env().await;
    let http = no_redirects();
    let r = http
        .get(format!("{}/ui", e.gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/ui/");
    for (path, ct, needle) in [
        (
            "/ui/",
            "text/html; charset=utf-8",
            "<script src=\"/ui/console.js\"",
        ),
        (
            "/ui/console.js",
            "text/javascript; charset=utf-8",
            "sessionStorage",
        ),
        (
            "/ui/console.css",
            "text/css; charset=utf-8",
            ":focus-visible",
        ),
    ] {
        // No credential: the assets are public; the API calls carry the credential.
        let r = http
            .get(format!("{}{path}", e.gw.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], ct, "{path}");
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(h.get("set-cookie").is_none(), "{path}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    let r = http
        .get(format!("{}/ui/missing.js", e.gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-security-policy"], CSP);
    // The API behind the console still wants a credential.
    let r = http
        .get(format!("{}/v1/caller", e.gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The python3 that has Selenium, and whether chromium + chromedriver are installed.
fn browser_tools() -> Result<PathBuf, String> {
    let mut missing = Vec::new();
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(bin).exists() {
            missing.push(bin.to_string());
        }
    }
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import selenium"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if python.is_none() {
        missing.push("python3-selenium".into());
    }
    match python {
        Some(py) if missing.is_empty() => Ok(PathBuf::from(py)),
        _ => Err(missing.join(", ")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_end_to_end_in_headless_chromium() {
    let python = match browser_tools() {
        Ok(p) => p,
        Err(missing) if std::env::var("PATGATE_SKIP_BROWSER_TESTS").as_deref() == Ok("1") => {
            eprintln!("skipping the browser test: missing {missing}");
            return;
        }
        Err(missing) => panic!(
            "the console browser test needs {missing}: apt-get install -y chromium \
             chromium-driver python3-selenium (scripts/test does it as root), or set \
             PATGATE_SKIP_BROWSER_TESTS=1"
        ),
    };
    let e = env().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let secrets_out = scratch.path().join("secrets.txt");
    common::secrets::register(ADMIN_KEY);

    // A child process awaited with tokio: the in-process upstream keeps running on
    // this runtime while the browser drives the gateway.
    let mut child = tokio::process::Command::new(python);
    child
        .arg(root.join("tests/console/e2e.py"))
        .env("PATGATE_ADMIN_URL", &e.gw.admin_url)
        .env("PATGATE_DATA_URL", &e.gw.url)
        .env("PATGATE_ADMIN_KEY", ADMIN_KEY)
        .env("PATGATE_SCREENSHOTS", &shots)
        .env("PATGATE_SECRETS_OUT", &secrets_out)
        .env("HOME", scratch.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), child.output())
        .await
        .expect("the browser test finished within 4 minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every secret the browser saw must be absent from the gateway's logs (checked
    // when `e.gw` drops).
    for s in std::fs::read_to_string(&secrets_out)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
    {
        common::secrets::register(s);
        assert!(
            !stdout.contains(s) && !stderr.contains(s),
            "the test printed a secret"
        );
    }
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "console e2e failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for name in [
        "01-signin",
        "03-secret-once",
        "04-token-list",
        "05-token-page",
        "07-audit",
        "09-key-sharing",
    ] {
        let png = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&png)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{} was saved",
            png.display()
        );
    }
}
