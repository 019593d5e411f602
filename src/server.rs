//! Listeners and connections: the accept loop shared by the data plane and the admin
//! API, connection limits, header-read and idle timeouts, and graceful drain.
//!
//! [`serve`] takes an already-bound listener (tests bind port 0) and a shutdown
//! future (mini-redis style). On shutdown it stops accepting, asks every connection
//! to finish its in-flight requests and close, waits up to `grace`, then returns.
//!
//! Limits, and what a client sees when it passes one:
//! - request head larger than `max_header_bytes` → hyper answers `431` and closes;
//! - head not complete within `header_read_timeout` (slowloris) → closed without a
//!   response (hyper's timer also runs while a keep-alive connection waits for its
//!   next request, so an idle connection lasts at most this long too);
//! - no request in flight and nothing received for `idle_timeout` → closed (HTTP/1
//!   keep-alive and HTTP/2 alike; upgraded connections are tunnels and are not timed);
//! - `max_connections` open → the next connection is not accepted: it waits in the
//!   kernel's listen backlog until a served connection closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::body::{self, Body, BoxError};
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
    /// A connection with no request in flight that received nothing for this long is
    /// closed.
    pub idle_timeout: Duration,
}

/// The HTTP/1 + HTTP/2 connection settings every served connection uses.
fn http_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // hyper's minimum is 8 KiB; a head that does not fit is answered with 431.
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    builder
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
    let builder = Arc::new(http_builder(&options));
    // Every served connection holds one permit: when all are back, all are closed.
    let max = options.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Not accepting while every slot is taken leaves new connections in the
        // kernel's backlog until one closes.
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
        let conn = Connection {
            builder: builder.clone(),
            handler: handler.clone(),
            info: ConnInfo {
                peer,
                scheme: if tls.is_some() { "https" } else { "http" },
            },
            idle_timeout: options.idle_timeout,
            stop: stop_rx.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(async move {
                    conn.run(stream).await;
                    drop(open);
                    drop(permit);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let handshake_timeout = options.header_read_timeout;
                tokio::spawn(async move {
                    let _open = open;
                    let _permit = permit;
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => conn.run(s).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client.addr = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(client.addr = %peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline reached; closing remaining connections");
    }
}

/// Serves one already-established connection `io` (any byte stream: a socket, or an
/// in-memory pipe in the pipeline fuzz target) as [`serve`] serves an accepted one,
/// until the client closes it or it idles out. One difference: HTTP/1 half-close is
/// allowed, so a client may send its whole input, shut down its write side, and still
/// read every answer (without it an EOF cancels the requests still in flight).
pub async fn serve_io<H, S>(io: S, handler: Arc<H>, info: ConnInfo, options: &ServeOptions)
where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Never told to drain: the sender lives until the connection ends.
    let (_stop_tx, stop) = watch::channel(false);
    let mut builder = http_builder(options);
    builder.http1().half_close(true);
    let conn = Connection {
        builder: Arc::new(builder),
        handler,
        info,
        idle_timeout: options.idle_timeout,
        stop,
    };
    conn.run(io).await;
}

/// One accepted connection and what serving it needs.
struct Connection<H> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    info: ConnInfo,
    idle_timeout: Duration,
    /// Becomes `true` when the server drains.
    stop: watch::Receiver<bool>,
}

impl<H: Handler> Connection<H> {
    /// Serves HTTP/1 or HTTP/2 on `io` until the client closes, the connection has
    /// been idle for `idle_timeout`, or the server drains (in-flight requests finish
    /// first in both of the latter cases).
    async fn run<S>(mut self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(ActivityIo {
            inner: io,
            activity: activity.clone(),
        });
        let handler = self.handler.clone();
        let info = self.info;
        let in_service = activity.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            let guard = InFlight::begin(in_service.clone());
            async move {
                let resp = handler.call(req, info).await;
                // The request stays in flight until its response body is done.
                Ok::<_, Infallible>(resp.map(|b| body::boxed(Tracked { inner: b, guard })))
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            let deadline = activity.idle_deadline(self.idle_timeout);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(client.addr = %info.peer, error = %e, "connection ended with error");
                    }
                    return;
                }
                _ = self.stop.wait_for(|v| *v), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(deadline.into()), if !closing => {
                    if activity.is_idle(self.idle_timeout) {
                        tracing::debug!(client.addr = %info.peer, "closing idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// When a connection last received bytes, and how many of its requests are in flight.
/// Cost: one clock read per socket read; one atomic add per request start and end.
struct Activity {
    base: Instant,
    /// Milliseconds after `base` of the last read or request completion.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle if nothing happens until then.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= self.idle_deadline(idle)
    }
}

/// Counts a request as in flight until dropped (with its response body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is
    /// finished or dropped.
    struct Tracked {
        #[pin]
        inner: Body,
        guard: InFlight,
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A client stream that records when it last received bytes.
    struct ActivityIo<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
    }
}

impl<S: AsyncRead> AsyncRead for ActivityIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight_for_the_whole_timeout() {
        let idle = Duration::from_millis(300);
        let a = Arc::new(Activity::new());
        assert!(!a.is_idle(idle), "just opened");
        std::thread::sleep(Duration::from_millis(350));
        assert!(a.is_idle(idle), "nothing received");
        let req = InFlight::begin(a.clone());
        std::thread::sleep(Duration::from_millis(350));
        assert!(!a.is_idle(idle), "a request is in flight");
        drop(req);
        assert!(
            !a.is_idle(idle),
            "the timeout restarts when a response ends"
        );
        std::thread::sleep(Duration::from_millis(350));
        assert!(a.is_idle(idle));
        a.touch();
        assert!(!a.is_idle(idle), "bytes received");
    }
}
