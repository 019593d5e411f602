//! Listeners and connections: the accept loop shared by the data plane and the admin
//! API, connection limits, header-read timeout, and graceful drain.
//!
//! [`serve`] takes an already-bound listener (tests bind port 0) and a shutdown
//! future (mini-redis style). On shutdown it stops accepting, lets in-flight
//! connections finish for up to `grace`, then returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::Body;
use crate::proxy::ConnInfo;
use crate::tls::TlsReloader;

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; never fails (errors are responses).
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

impl Handler for crate::proxy::Gateway {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.handle(req, conn)
    }
}

/// Connection-level options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A request head must arrive within this.
    pub header_read_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    /// At most this many connections are served at once; more wait in the backlog.
    pub max_connections: usize,
    /// Drain deadline after shutdown is signalled.
    pub shutdown_grace: Duration,
}

/// Serves `listener` with `handler` until `shutdown` resolves, then drains. With
/// `tls`, each connection first completes a TLS handshake (within the header-read
/// timeout) and is served as `https`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    tls: Option<Arc<TlsReloader>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // hyper's minimum is 8 KiB; larger heads are answered with 431.
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new();
        let handler = handler.clone();
        let conn_info = ConnInfo {
            peer,
            scheme: if tls.is_some() { "https" } else { "http" },
        };
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, std::convert::Infallible>(handler.call(req, conn_info).await) }
        });
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(client.addr = %peer, error = %e, "connection ended with error");
                    }
                    drop(open);
                    drop(permit);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let handshake_timeout = options.header_read_timeout;
                tokio::spawn(async move {
                    let _open = open;
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(client.addr = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client.addr = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(client.addr = %peer, error = %e, "connection ended with error");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached; closing remaining connections");
    }
}

/// Counts an open connection in the `open_connections` gauge until dropped.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        crate::metrics::metrics().open_connections.inc();
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::metrics().open_connections.dec();
    }
}

/// Binds `addr`, saying which address failed.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
