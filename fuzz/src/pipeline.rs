//! The whole request pipeline through in-memory IO: the fuzzer's bytes are one client
//! connection's raw input to a real [`patgate::proxy::Gateway`] (embedded store, one
//! valid token, an in-process upstream on loopback), served by the same connection
//! code as a TCP client (`patgate::server::serve_io`).
//!
//! Before each run, `@T` in the input becomes the valid token and `@U` a well-formed
//! unknown one, so the fuzzer can reach the authenticated paths. Properties checked
//! besides "no panic": every request the upstream saw on the authenticated route
//! carried exactly the valid token's identity (`x-auth-token-id`), and no request
//! reached the upstream with an identity header the gateway did not set.
//!
//! Shared by the libFuzzer binary `pipeline` and by `tests/fuzz_corpus.rs` (no
//! libFuzzer), so everything here builds against patgate's own dependencies.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the upstream saw of one request: its target and headers.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    headers: Vec<(String, String)>,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    gateway: Arc<patgate::proxy::Gateway>,
    options: patgate::server::ServeOptions,
    token: String,
    unknown: String,
    token_id: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A minimal HTTP/1.1 upstream that records what it receives and answers 200.
async fn upstream(seen: Arc<Mutex<Vec<Seen>>>) -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let target = req.uri().to_string();
                            let _ = req.into_body().collect().await;
                            seen.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Seen { target, headers });
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

impl Harness {
    fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (gateway, options, token, token_id) = rt.block_on(async {
            let up = upstream(seen.clone()).await;
            let yaml = format!(
                r#"
store:
  backend: embedded
  embedded: {{path: "{db}"}}
tokens: {{prefix: pat_, creation_limit: 0}}
rate_limit:
  default: {{requests: 1000000, per_seconds: 1, burst: 1000000}}
timeouts: {{header_read_seconds: 2}}
limits: {{max_header_bytes: 16384, max_body_bytes: 65536}}
logging: {{access_log: false, level: error}}
routes:
  - name: api
    path_prefix: /api/
    upstream: "http://{up}"
    require: {{scopes: [documents]}}
  - name: public
    path_prefix: /public/
    upstream: "http://{up}"
    auth: none
"#,
                db = dir.path().join("fuzz.redb").display(),
            );
            let settings = patgate::config::from_yaml(&yaml).expect("harness config");
            patgate::clock::start();
            let app = patgate::app::App::build(settings, None)
                .await
                .expect("harness app");
            // The harness lives in a `static` (never dropped), so remove its directory
            // now: redb keeps the unlinked file open and working, and nothing is left
            // behind in the temp dir when the process ends.
            drop(dir);
            let new = patgate::lifecycle::NewToken {
                name: "fuzz".into(),
                owner_id: "fuzzer".into(),
                scopes: vec!["documents".into()],
                ..Default::default()
            };
            let by = patgate::lifecycle::Caller::new(patgate::lifecycle::Actor::System);
            let (token, record) = app.lifecycle.create(new, &by).await.expect("token");
            let options = app.serve_options();
            (app.gateway.clone(), options, token, record.id)
        });
        let unknown = patgate::token::generate("pat_").expect("rng");
        Harness {
            rt,
            gateway,
            options,
            token,
            unknown,
            token_id,
            seen,
        }
    }
}

fn substitute(data: &[u8], token: &str, unknown: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut i = 0;
    while i < data.len() {
        match data.get(i..i + 2) {
            Some(b"@T") => {
                out.extend_from_slice(token.as_bytes());
                i += 2;
            }
            Some(b"@U") => {
                out.extend_from_slice(unknown.as_bytes());
                i += 2;
            }
            _ => {
                out.push(data[i]);
                i += 1;
            }
        }
    }
    out
}

/// One client connection carrying `data` (after substitution), then EOF. Returns how
/// many requests reached the upstream.
pub fn pipeline(data: &[u8]) -> usize {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    let h = HARNESS.get_or_init(Harness::new);
    let input = substitute(data, &h.token, &h.unknown);
    h.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let info = patgate::proxy::ConnInfo {
            peer: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 40000)),
            scheme: "http",
        };
        let gateway = h.gateway.clone();
        let options = h.options.clone();
        let conn = tokio::spawn(async move {
            patgate::server::serve_io(server, gateway, info, &options).await;
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
        })
        .await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    });
    let seen = std::mem::take(&mut *h.seen.lock().unwrap_or_else(|p| p.into_inner()));
    for s in &seen {
        let ids: Vec<&str> = s
            .headers
            .iter()
            .filter(|(k, _)| k == "x-auth-token-id")
            .map(|(_, v)| v.as_str())
            .collect();
        let identity = s.headers.iter().any(|(k, _)| k.starts_with("x-auth-"));
        if s.target.starts_with("/api/") {
            assert_eq!(
                ids,
                [h.token_id.as_str()],
                "an /api/ request reached the upstream without the token's identity: {s:?}"
            );
        } else {
            assert!(
                s.target.starts_with("/public/"),
                "unrouted request upstream: {s:?}"
            );
            assert!(!identity, "identity header on an auth: none route: {s:?}");
        }
        for (k, v) in &s.headers {
            assert!(
                !v.contains('\r') && !v.contains('\n') && !k.contains(['\r', '\n']),
                "CR/LF forwarded: {s:?}"
            );
        }
    }
    seen.len()
}
