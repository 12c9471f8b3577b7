//! The HTTP API (axum): the JSON key-value API, status and administration,
//! Prometheus metrics and health probes. See ARCHITECTURE.md for the table
//! every test may rely on. Every route is counted and timed in
//! `raftkv_http_requests_total` / `raftkv_http_request_duration_seconds`.

mod admin;
pub mod auth;
pub mod error;
pub mod kv;
pub(crate) mod probes;
pub mod server;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::server::{Health, NodeHandle};

pub use admin::{AddMember, MemberList};
pub use kv::{ListAnswer, ListedKv};
pub use server::{HttpLimits, serve};

/// What every handler needs.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub handle: NodeHandle,
    pub health: watch::Receiver<Health>,
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted (the value size limit plus slack);
    /// larger bodies are answered 413 without being read further.
    pub max_body_bytes: usize,
    /// A request body must have arrived this long after its head (408).
    pub body_timeout: Duration,
}

/// The API's router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/status", get(auth::status))
        .route("/v1/status", get(admin::status))
        .route("/v1/members", get(admin::members).post(admin::add_member))
        .route("/v1/members/{id}/promote", post(admin::promote))
        .route("/v1/members/{id}", axum::routing::delete(admin::remove))
        .route("/v1/leader/transfer", post(admin::transfer_leader))
        .route("/metrics", get(probes::metrics))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// The router of the plain observability port (`--listen-metrics`): only
/// what Prometheus and a kubelet poll, never data or admin routes, so it
/// may stay unencrypted and unauthenticated while the HTTP API requires
/// client certificates (which neither can present).
pub fn observability_router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(probes::metrics))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Counts and times every request by its route template.
async fn record(State(st): State<HttpState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .http_requests_total
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    st.metrics
        .http_request_duration_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    resp
}
