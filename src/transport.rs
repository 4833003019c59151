//! The HTTP transport: accepts TCP connections and serves HTTP/1.1 on them (hyper), under limits
//! no single client can lift. Every connection is bounded in time (headers, keep-alive idleness
//! and request bodies each have a deadline) and their number is capped below the process's
//! open-file limit, in all and per client address, with an immediate `503` for the connection
//! over a cap instead of a hang.
//! On shutdown it stops accepting, lets in-flight requests finish and waits for their
//! connections to close. Knows nothing about routes; `app` hands it the router.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpConfig;

/// The limits one listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most (websockets included: they keep their connection's slot).
    pub max_connections: usize,
    /// Open connections from one IP address at most; 0 for no such cap (a hub behind a proxy
    /// sees every client at the proxy's address).
    pub max_connections_per_ip: usize,
    /// A request's headers must arrive within this. hyper starts the timer whenever a
    /// connection waits for a request, so it is also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// A request's body must arrive whole within this, counted from its headers.
    pub body_read_timeout: Duration,
}

impl Limits {
    /// The configured limits, with the connection cap fitted under `fd_limit`.
    pub fn new(config: &HttpConfig, fd_limit: Option<u64>) -> Limits {
        Limits {
            max_connections: fit_connections(config.max_connections, fd_limit),
            max_connections_per_ip: config.max_connections_per_ip,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
        }
    }
}

/// Raises the open-file soft limit to the hard limit and returns the limit now in force (`None`
/// where it cannot be read). With the common default of 1024 (or 256 on some systems), a few
/// hundred idle sockets would otherwise leave no descriptor for storage or outbound requests.
pub fn raise_fd_limit() -> Option<u64> {
    // The hard limit may be "unlimited", which the kernel refuses as a soft limit; 2^20 is
    // Linux's usual `nr_open`.
    let raised =
        rlimit::increase_nofile_limit(u64::MAX).or_else(|_| rlimit::increase_nofile_limit(1 << 20));
    if let Err(e) = &raised {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => {
            tracing::info!(soft, hard, "open-file limit");
            Some(soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit");
            None
        }
    }
}

/// The connection cap that fits under `fd_limit`: a quarter of the descriptors (at least 64)
/// stay free for storage files, outbound pushes, JWKS fetches and refusals.
pub fn fit_connections(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let reserve = (limit / 4).max(64);
    let fits = usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1);
    if fits < configured {
        tracing::warn!(
            configured,
            fits,
            fd_limit = limit,
            "http.max_connections lowered to fit under the open-file limit"
        );
    }
    configured.min(fits)
}

/// How much of a request head (request line and headers) a connection buffers before it answers
/// 431: a head is refused once this much is buffered and still incomplete, so one a little
/// larger may pass when it arrives in one read; the memory bound is what matters.
pub const MAX_HEAD_BYTES: usize = 32 << 10;

/// At most this many refusals are being written at once; beyond that, connections over the cap
/// are closed without a word (a flood must not turn refusals into a resource of their own).
const MAX_REFUSALS: usize = 64;

/// What a connection over the cap is told before it is closed.
fn refusal() -> String {
    let body =
        r#"{"error":"unavailable","description":"too many open connections; retry shortly"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-language: en\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish and returns once every connection has closed. Upgraded
/// connections (websockets) are no longer HTTP; their handlers watch for shutdown themselves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp {
        max: limits.max_connections_per_ip,
        open: Mutex::default(),
    });
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // A request head over this is answered 431. hyper's default (~400 KiB) let every
        // connection hold that much of a half-sent head: 1.6 GB at 4096 connections.
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept: neither
                    // is the listener's fault. A pause keeps an exhausted process from spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Deltas, feed frames and 202s are small writes that must leave at once: without
        // TCP_NODELAY, Nagle's algorithm holds one behind an unacknowledged predecessor
        // (delayed ACK on the peer) and adds up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        // The per-address cap first: one client alone cannot take every slot.
        let taken = per_ip
            .take(peer.ip())
            .and_then(|ip| Some((ip, slots.clone().try_acquire_owned().ok()?)));
        let Some((ip_slot, slot)) = taken else {
            metrics::counter!("ssf_hub_http_connections_refused_total").increment(1);
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse(tcp, permit));
            }
            continue;
        };
        let io = TokioIo::new(Held {
            _ip_slot: ip_slot,
            _slot: slot,
            _gauge: Gauge::open(),
            tcp,
        });
        let service = Service {
            router: router.clone(),
            body_read_timeout: limits.body_read_timeout,
        };
        let conn = http.serve_connection(io, service).with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let done = tokio::select! {
                done = conn.as_mut() => done,
                _ = shutdown.cancelled() => {
                    // Finishes the request in flight, if any, then closes.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers a connection over the cap: waits (briefly) for its request head, so an HTTP client
/// reads the refusal as the answer to its request rather than as an unsolicited message, writes
/// the 503, half-closes, and reads what else the client sent for a moment before closing
/// (closing a socket with unread input sends a reset, which can destroy the refusal before the
/// client reads it). The whole exchange is bounded by two seconds.
async fn refuse(mut tcp: TcpStream, _permit: OwnedSemaphorePermit) {
    let mut buf = [0u8; 2048];
    let head = async {
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 8192 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), head).await;
    let answer = async {
        tcp.write_all(refusal().as_bytes()).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Counts open connections in `ssf_hub_http_connections` for as long as it lives.
#[derive(Debug)]
struct Gauge;

impl Gauge {
    fn open() -> Gauge {
        metrics::gauge!("ssf_hub_http_connections").increment(1.0);
        Gauge
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!("ssf_hub_http_connections").decrement(1.0);
    }
}

/// Open connections by client address.
#[derive(Debug)]
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// A slot for one more connection from `ip`, unless it holds `max` already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max == 0 {
            return Some(IpSlot { per_ip: None, ip });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: Some(self.clone()),
            ip,
        })
    }
}

/// One connection's place under its address's cap, given back when dropped.
#[derive(Debug)]
struct IpSlot {
    per_ip: Option<Arc<PerIp>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(per_ip) = &self.per_ip else { return };
        let mut open = per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection's socket with its slot under the cap. An upgraded connection (websocket) takes
/// the socket, and with it the slot, along: the slot frees only when the socket closes.
#[derive(Debug)]
struct Held {
    // Fields drop in order: the slots are free before the peer can see the socket close, so a
    // client that reconnects on seeing it close finds them free.
    _ip_slot: IpSlot,
    _slot: OwnedSemaphorePermit,
    _gauge: Gauge,
    tcp: TcpStream,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// The router as a hyper service, each request body under its deadline.
#[derive(Debug, Clone)]
struct Service {
    router: Router,
    body_read_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let timeout = self.body_read_timeout;
        let req = req.map(|body| {
            if body.is_end_stream() {
                // No body (most GETs): no timer to arm.
                Body::new(body)
            } else {
                Body::new(Deadline {
                    inner: Body::new(body),
                    expires: Box::pin(tokio::time::sleep(timeout)),
                })
            }
        });
        let mut router = self.router.clone();
        Box::pin(async move { tower_service::Service::call(&mut router, req).await })
    }
}

/// The request body did not arrive whole within `http.body_read_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time (http.body_read_timeout_ms)")]
pub struct BodyTimeout;

/// Whether `e`, or any error it wraps, is a [`BodyTimeout`]: body readers (extractors,
/// `to_bytes`) wrap the body's error in their own.
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<BodyTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes: a client trickling
/// a body a byte at a time cannot hold a connection and its handler open for longer.
struct Deadline {
    inner: Body,
    expires: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.expires.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_a_quarter_of_the_descriptors_free() {
        // The issue's machine: 256 descriptors leave 192 for connections.
        assert_eq!(fit_connections(4096, Some(256)), 192);
        assert_eq!(fit_connections(4096, Some(1024)), 768);
        assert_eq!(fit_connections(4096, Some(1 << 20)), 4096);
        assert_eq!(fit_connections(100, Some(1 << 20)), 100);
        // Never zero, however low the limit; unknown limits leave the configured cap.
        assert_eq!(fit_connections(4096, Some(16)), 1);
        assert_eq!(fit_connections(4096, None), 4096);
    }
}
