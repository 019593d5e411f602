//! A real HTTP upstream on port 0 for integration tests.
//!
//! - any path: answers 200 with JSON `{method, uri, version, headers, bodyBytes}`
//!   (the request body is read fully and counted, never kept; `version` is what the
//!   upstream saw, e.g. `HTTP/2.0`);
//! - `.../delay/<ms>...`: sleeps first (for 504 tests);
//! - `.../stream/<bytes>...`: streams that many bytes back in 64 KiB chunks;
//! - any request with `Upgrade`: `101`, then echoes the raw upgraded bytes.
//!
//! HTTP/1.1 and HTTP/2 with prior knowledge (h2c); [`Upstream::start_tls`] serves the
//! same over TLS (ALPN `h2` / `http/1.1`), optionally requiring client certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A running upstream; stops when dropped.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:port` (the certificate's name must then come from the
    /// gateway's `tls.server_name`, or be the IP).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Starts the upstream on 127.0.0.1:0.
    pub async fn start() -> Upstream {
        Self::start_with(None).await
    }

    /// Starts the upstream on 127.0.0.1:0 behind TLS with `config`. Failed
    /// handshakes (a missing or unknown client certificate) close the connection.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(
                                    TokioIo::new(stream),
                                    service_fn(handle),
                                )
                                .await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(
                                    TokioIo::new(stream),
                                    service_fn(handle),
                                )
                                .await;
                        }
                    }
                });
            }
        });
        Upstream { addr, task }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn number_after(path: &str, marker: &str) -> Option<u64> {
    let rest = &path[path.find(marker)? + marker.len()..];
    rest.split('/').next()?.parse().ok()
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(proto) = req.headers().get("upgrade").cloned() {
        // Any upgrade: 101, then echo the raw bytes until the client closes.
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = on.await {
                let mut io = TokioIo::new(io);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            }
        });
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed();
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", proto)
            .header(
                "x-seen-auth-user",
                req.headers()
                    .get("x-auth-user-id")
                    .cloned()
                    .unwrap_or_else(|| http::HeaderValue::from_static("")),
            )
            .body(body)
            .expect("static response"));
    }
    if let Some(ms) = number_after(&path, "/delay/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = number_after(&path, "/stream/") {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let full = n / chunk.len() as u64;
        let rest = (n % chunk.len() as u64) as usize;
        let s =
            stream::iter((0..full).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))))
                .chain(stream::iter(
                    (rest > 0).then(|| Ok(Frame::data(Bytes::from(vec![b'y'; rest])))),
                ));
        let body = BoxBody::new(StreamBody::new(s));
        return Ok(Response::new(body));
    }
    let (parts, body) = req.into_parts();
    let mut n = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "bodyBytes": n,
    });
    let body = http_body_util::Full::new(Bytes::from(doc.to_string()))
        .map_err(|never| match never {})
        .boxed();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("connection", "keep-alive, x-upstream-hop")
        .header("x-upstream-hop", "must be stripped")
        .body(body)
        .expect("static response"))
}
