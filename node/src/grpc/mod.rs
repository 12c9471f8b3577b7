//! raftkv's client gRPC API, wire-compatible with etcd's v3 API so that
//! `etcdctl` and etcd's client libraries work unchanged.
//!
//! - [`proto`]: the types generated from `proto/etcd`;
//! - [`convert`]: etcd requests into node calls and results back, errors into
//!   gRPC codes;
//! - [`kv`], [`watch`], [`lease`], [`maintenance`], [`cluster`], [`auth`]:
//!   the tonic services;
//! - [`backend`]: what the services need from a node ([`NodeHandle`]);
//! - [`gate`]: who a call comes from and whether it may do what it asks
//!   (etcd's auth, enforced by every service).
//!
//! The rest of Maintenance is not served: its calls are answered UNIMPLEMENTED, never
//! with a made-up success.

pub mod auth;
pub mod backend;
pub mod cluster;
pub mod convert;
pub mod gate;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod observe;
pub mod proto;
pub mod store;
pub mod watch;

#[cfg(test)]
pub(crate) mod fake_backend;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};

pub use backend::Backend;
use observe::Observer;

use proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};

use crate::metrics::Metrics;
use crate::server::NodeHandle;

/// How often an idle client connection is pinged, and how long the answer
/// may take before the connection is closed.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on accepted connections (client and peer ports).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Concurrent calls on one client connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// The client API's services over one backend, ready to serve; calls are
/// counted into `metrics` when given.
pub fn router<B: Backend>(backend: B, metrics: Option<Arc<Metrics>>) -> Router {
    // Never stopping: the caller ends the server by dropping it.
    router_until(backend, metrics, signal::channel(false).1)
}

/// [`router`], with watch streams ended once `stopping` turns true: they
/// never finish on their own, and a graceful shutdown waits for every
/// stream to finish.
fn router_until<B: Backend>(
    backend: B,
    metrics: Option<Arc<Metrics>>,
    stopping: signal::Receiver<bool>,
) -> Router {
    let observer = Observer::new(metrics);
    Server::builder()
        .tcp_nodelay(true)
        // A client that vanished without closing (a dead host, a dropped
        // NAT entry) is found by pings and its connection freed.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        // One connection cannot open streams without bound.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(KvServer::new(kv::KvService::new(
            backend.clone(),
            observer.clone(),
        )))
        .add_service(LeaseServer::new(lease::LeaseService::new(
            backend.clone(),
            observer.clone(),
        )))
        .add_service(WatchServer::new(watch::WatchService::new(
            backend.clone(),
            observer.clone(),
            stopping,
        )))
        .add_service(MaintenanceServer::new(
            maintenance::MaintenanceService::new(backend.clone(), observer.clone()),
        ))
        .add_service(ClusterServer::new(cluster::ClusterService::new(
            backend.clone(),
            observer.clone(),
        )))
        .add_service(AuthServer::new(auth::AuthService::new(backend, observer)))
}

/// Serves the client API on `addr` until the future is dropped (the
/// `raftkv serve` client port, 2379 by default).
pub fn serve(
    addr: SocketAddr,
    handle: NodeHandle,
    metrics: Option<Arc<Metrics>>,
) -> impl Future<Output = Result<(), tonic::transport::Error>> {
    router(handle, metrics).serve(addr)
}

/// Serves the client API on an already bound listener until `shutdown`
/// completes, then finishes the requests in flight.
///
/// TCP_NODELAY is set on every accepted connection here because tonic
/// ignores its builder's `tcp_nodelay` for a listener it did not bind; without
/// it a small response can wait ~40 ms for the peer's delayed ACK (Nagle).
///
/// With `tls`, every connection must complete a TLS handshake first (see
/// [`crate::tls::accept`]); a failed one never reaches the services.
pub async fn serve_with_shutdown<B: Backend>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: B,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_watches, stopping) = signal::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_watches.send(true);
    };
    let failures = metrics
        .as_deref()
        .map(|m| crate::tls::accept::HandshakeFailures::of(m, "client"))
        .unwrap_or_default();
    let router = router_until(backend, metrics, stopping);
    match tls {
        Some(config) => {
            let tls = crate::tls::accept::TlsListener { config, failures };
            router
                .serve_with_incoming_shutdown(crate::tls::accept::incoming(listener, tls), shutdown)
                .await
        }
        None => {
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(TCP_KEEPALIVE));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}
