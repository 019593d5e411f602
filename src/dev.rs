//! `patgate dev`: a zero-setup demo in the spirit of `vault server -dev`.
//!
//! Embedded store in a temp dir, a built-in echo upstream (it answers with the
//! request line and headers it received, so the injected identity is visible) when
//! no `--upstream` is given, a fresh admin key, a minted token, and ready-to-paste
//! curl lines. Nothing persists after exit.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::app::App;
use crate::body::{self, Body};
use crate::lifecycle::{Actor, Caller, NewToken};
use crate::server;
use crate::token::TokenHash;

/// Options of `patgate dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Upstream URL; `None` starts the echo upstream.
    pub upstream: Option<String>,
    /// Data-plane address (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Admin address (default `127.0.0.1:9091`).
    pub admin_listen: SocketAddr,
}

/// Answers every request with a JSON echo of what it received.
async fn echo(req: Request<Incoming>) -> Result<Response<Body>, std::convert::Infallible> {
    let (parts, incoming) = req.into_parts();
    let body_len = incoming
        .collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "echo": "patgate dev upstream",
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "bodyBytes": body_len,
    });
    let mut resp = Response::new(body::full(Bytes::from(
        serde_json::to_vec_pretty(&doc).unwrap_or_default(),
    )));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Serves the echo upstream on `listener` forever.
pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}

/// Runs the dev server until Ctrl-C.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("patgate-dev-").tempdir()?;
    let upstream = match &opts.upstream {
        Some(u) => u.clone(),
        None => {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            tokio::spawn(serve_echo(l));
            format!("http://{addr}")
        }
    };
    let admin_key = crate::token::generate("pgadm_").map_err(|e| anyhow::anyhow!("{e}"))?;
    let yaml = format!(
        r#"
listen: "{listen}"
admin:
  listen: "{admin}"
  api_keys:
    - name: dev
      sha256: "{sha}"
store:
  backend: embedded
  embedded:
    path: "{db}"
tokens:
  prefix: pat_
  default_expiry: 30d
  creation_limit: 0
logging:
  format: pretty
routes:
  - name: app
    path_prefix: /
    upstream: "{upstream}"
"#,
        listen = opts.listen,
        admin = opts.admin_listen,
        sha = TokenHash::of(&admin_key).to_hex(),
        db = dir.path().join("patgate.redb").display(),
    );
    let settings = crate::config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data = server::bind(settings.listen).await?;
    let admin = server::bind(settings.admin.listen).await?;
    let data_addr = data.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let app = App::build(settings, None).await?;
    let (token, record) = app
        .lifecycle
        .create(
            NewToken {
                name: "dev token".into(),
                owner_id: "dev-user".into(),
                scopes: vec!["documents".into()],
                permissions: vec!["read".into(), "write".into()],
                ..Default::default()
            },
            &Caller::new(Actor::System),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print_banner(
        &token, &record.id, &admin_key, data_addr, admin_addr, &upstream,
    );
    let _keep = Arc::new(dir);
    app.run(data, admin, crate::app::shutdown_signal()).await;
    Ok(())
}

fn print_banner(
    token: &str,
    id: &str,
    admin_key: &str,
    data: SocketAddr,
    admin: SocketAddr,
    upstream: &str,
) {
    println!(
        r#"
patgate dev mode — embedded store in a temp dir, nothing persists.

  data plane:  http://{data}   →  upstream {upstream}
  admin API:   http://{admin}

A token (owner dev-user, scopes: documents, permissions: read,write; id {id}):

  export PAT={token}
  export PATGATE_ADMIN_KEY={admin_key}

Try it:

  curl -s http://{data}/hello -H "Authorization: Bearer $PAT"      # 200, upstream echoes X-Auth-* headers
  curl -s http://{data}/hello                                      # 401 Missing or invalid PAT
  curl -s http://{data}/_patgate/whoami -H "Authorization: Bearer $PAT"
  curl -s http://{admin}/v1/tokens -H "Authorization: Bearer $PATGATE_ADMIN_KEY"
  patgate token create --admin-url http://{admin} --name ci --owner dev-user --scope documents
  patgate token revoke --admin-url http://{admin} {id}

Ctrl-C to stop.
"#
    );
}
