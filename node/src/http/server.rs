//! Serving the HTTP API on a listener with the limits a public port needs:
//! every connection is accounted for, so slow or idle clients cannot pile up
//! and use up the process's file descriptors.
//!
//! - header read timeout: once the first byte of a request head has
//!   arrived, the whole head must follow within `header_timeout`
//!   (slowloris), else the connection is dropped;
//! - idle timeout: a keep-alive connection with no request for
//!   `idle_timeout` is closed;
//! - body read timeout: enforced where bodies are read (`kv::read_body`),
//!   so the client gets a JSON 408 instead of a dropped connection;
//! - a bound on open connections: at the bound, the connection idle the
//!   longest is closed to make room (as nginx reuses keep-alive
//!   connections when it runs out), so a fresh `/healthz` is served even
//!   while idle clients hold every slot; if none is idle, the newcomer gets
//!   a 503 and is closed.
//!
//! axum's own `serve` offers none of these knobs, so this is a small accept
//! loop over hyper-util's connection builder (HTTP/1.1 and HTTP/2).

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::tls::accept::{HandshakeFailures, TlsListener};

/// Connection limits of the HTTP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request head must arrive within this time of its first byte.
    pub header_timeout: Duration,
    /// A request body must arrive within this time of its head.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_connections: 1024,
        }
    }
}

/// How long a connection told to close may take to finish the request it
/// is serving before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (say, out of file descriptors) before the
/// next: retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long the "too many connections" answer may take to write.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the watchdog of one connection needs to know about it.
#[derive(Debug)]
struct Activity {
    /// Requests whose answer is not produced yet.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight (ms since `epoch`).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived (ms since
    /// `epoch`), or `NONE` while nothing has.
    head_started: AtomicU64,
    /// Set when the server wants the connection closed (room for another).
    evicted: std::sync::atomic::AtomicBool,
    /// Wakes the watchdog when any of the above changes.
    changed: Notify,
    epoch: Instant,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            evicted: std::sync::atomic::AtomicBool::new(false),
            changed: Notify::new(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.is_idle()
            && self
                .head_started
                .compare_exchange(NONE, self.now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// A request head was parsed: the request is being served.
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        self.changed.notify_one();
        Busy(self.clone())
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Why the connection should close now, or when to look again
    /// (`None`: when something changes).
    fn verdict(&self, limits: &HttpLimits) -> Result<Option<Instant>, &'static str> {
        if self.evicted.load(Ordering::Acquire) {
            return Err("evicted to make room for a new connection");
        }
        if !self.is_idle() {
            return Ok(None);
        }
        let now = Instant::now();
        let head = self.head_started.load(Ordering::Acquire);
        if head != NONE {
            let deadline = self.at(head) + limits.header_timeout;
            return if now >= deadline {
                Err("request head not received within the header timeout")
            } else {
                Ok(Some(deadline))
            };
        }
        let deadline = self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout;
        if now >= deadline {
            Err("idle for the idle timeout")
        } else {
            Ok(Some(deadline))
        }
    }
}

/// Marks a request in flight until dropped (its answer written out, or the
/// connection gone).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_one();
    }
}

/// A response body that keeps its request marked in flight until hyper has
/// written it out (and drops it).
struct Held {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A stream that reports reads to its connection's [`Activity`].
struct Watched<S> {
    tcp: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
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

/// The open connections, to find one to close when the bound is reached.
#[derive(Debug, Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// Signalled whenever a connection closes (for shutdown).
    closed: Notify,
}

impl Connections {
    /// Registers a new connection if there is room, or can be made by
    /// closing the connection idle the longest.
    fn admit(self: &Arc<Self>, max: usize) -> Option<Registered> {
        let mut open = self.open.lock().ok()?;
        let live = open
            .values()
            .filter(|a| !a.evicted.load(Ordering::Acquire))
            .count();
        if live >= max {
            let victim = open
                .values()
                .filter(|a| a.is_idle() && !a.evicted.load(Ordering::Acquire))
                .min_by_key(|a| {
                    // Idle since the earliest moment, on one clock.
                    let since = match a.head_started.load(Ordering::Acquire) {
                        NONE => a.idle_since.load(Ordering::Acquire),
                        head => head,
                    };
                    a.at(since)
                })?;
            victim.evict();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        open.insert(id, activity.clone());
        Some(Registered {
            id,
            activity,
            connections: self.clone(),
        })
    }

    fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

/// A connection's place in [`Connections`], given back when dropped.
struct Registered {
    id: u64,
    activity: Arc<Activity>,
    connections: Arc<Connections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.connections.open.lock() {
            open.remove(&self.id);
        }
        self.connections.closed.notify_waiters();
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes,
/// then lets the connections finish the requests they are serving (each
/// for at most a few seconds) and returns.
///
/// With `tls`, each connection's handshake runs in its own task and counts
/// against the connection bound; it must finish within the header timeout,
/// so a client that stalls mid-handshake is treated like a slow request
/// head.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (acceptor, failures) = match tls {
        Some(tls) => (
            Some(tokio_rustls::TlsAcceptor::from(tls.config)),
            tls.failures,
        ),
        None => (None, HandshakeFailures::default()),
    };
    let connections = Arc::new(Connections::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (tcp, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: the open connections
                // will free some (they are all bounded in time).
                warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Small JSON answers must not wait for Nagle + delayed ACKs.
        let _ = tcp.set_nodelay(true);
        match connections.admit(limits.max_connections.max(1)) {
            Some(registered) => {
                let router = router.clone();
                let stop = stop_rx.clone();
                match acceptor.clone() {
                    None => {
                        tokio::spawn(serve_connection(
                            tcp, None, router, limits, registered, stop,
                        ));
                    }
                    Some(acceptor) => {
                        let failures = failures.clone();
                        tokio::spawn(async move {
                            let handshake =
                                tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp));
                            match handshake.await {
                                Ok(Ok(tls)) => {
                                    // The verified client certificate's
                                    // name: the user when auth is on.
                                    let cert_user = tls
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(|c| c.first())
                                        .and_then(crate::tls::client_identity::common_name)
                                        .map(ClientCertUser);
                                    serve_connection(
                                        tls, cert_user, router, limits, registered, stop,
                                    )
                                    .await
                                }
                                Ok(Err(e)) => failures.record(Some(from), Some(e)),
                                Err(_) => failures.record(Some(from), None),
                            }
                        });
                    }
                }
            }
            None => {
                tokio::spawn(refuse(tcp));
            }
        }
    }
    let _ = stop_tx.send(true);
    while connections.len() > 0 {
        let closed = connections.closed.notified();
        if connections.len() == 0 {
            break;
        }
        closed.await;
    }
}

/// Answers a connection there is no room for and closes it.
async fn refuse(mut tcp: TcpStream) {
    const BODY: &str =
        r#"{"error":"too many open HTTP connections; retry later","code":"unavailable"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSE_WRITE_TIMEOUT, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// The common name of the client certificate a connection's TLS handshake
/// verified, in every request's extensions (see `auth.rs`).
#[derive(Clone, Debug)]
pub struct ClientCertUser(pub String);

async fn serve_connection<S>(
    tcp: S,
    cert_user: Option<ClientCertUser>,
    router: Router,
    limits: HttpLimits,
    registered: Registered,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = registered.activity.clone();
    let io = TokioIo::new(Watched {
        tcp,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let busy = activity.begin();
            let router = router.clone();
            if let Some(u) = &cert_user {
                req.extensions_mut().insert(u.clone());
            }
            async move {
                let resp = router.oneshot(req.map(Body::new)).await;
                // Busy until the answer's body has been written out.
                resp.map(|r| r.map(|body| Body::new(Held { body, _busy: busy })))
            }
        })
    };
    // hyper's own header timeout starts when a connection starts waiting
    // for a request, which would cut idle keep-alive connections short:
    // the watchdog below times heads from their first byte instead. (On
    // HTTP/2 any frame on an idle connection starts that clock.)
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let verdict = activity.verdict(&limits);
        if let Err(why) = verdict {
            if activity.is_idle() {
                // Nothing is owed to the client (it may be half-way through
                // a request head, which hyper would wait for): hang up.
                debug!(why, "closing an HTTP connection");
                break;
            }
            if closing.is_none() {
                // Let the request being served finish, then close.
                conn.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(CLOSE_GRACE)));
            }
        }
        let stopping = closing.is_none();
        let changed = activity.changed.notified();
        let wake = async {
            match verdict {
                Ok(Some(at)) => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let grace_over = async {
            match closing.as_mut() {
                Some(s) => s.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            _ = changed => {}
            _ = wake => {}
            _ = grace_over => break,
            _ = stop.wait_for(|s| *s), if stopping => {
                activity.evict();
            }
        }
    }
    drop(registered);
}
