//! What orchestrators and Prometheus poll: `/metrics`, `/healthz` (the
//! process and its driver loop are alive) and `/readyz` (the node knows a
//! leader and has applied what is committed, within a small gap).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::http::HttpState;
use crate::server::Health;

/// The driver ticks every few milliseconds; a loop this late is stuck.
const LOOP_STALE: Duration = Duration::from_secs(3);
/// How far applied may trail commit for the node to count as caught up.
pub(crate) const READY_APPLY_GAP: u64 = 100;

pub async fn metrics(State(st): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

pub async fn healthz(State(st): State<HttpState>) -> impl IntoResponse {
    let h = st.health.borrow().clone();
    if h.last_loop.elapsed() > LOOP_STALE {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "driver loop is not responding\n",
        );
    }
    (StatusCode::OK, "ok\n")
}

pub async fn readyz(State(st): State<HttpState>) -> impl IntoResponse {
    let h = st.health.borrow().clone();
    if h.last_loop.elapsed() > LOOP_STALE {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "driver loop is not responding\n".to_string(),
        );
    }
    match readiness(&h) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Whether a node in state `h` may say it is ready: it knows a leader and
/// has applied what that leader committed, within a small gap. Measured
/// against the leader's commit index, not the node's own: a follower that
/// waits for a snapshot commits nothing, so its own gap stays 0.
pub(crate) fn readiness(h: &Health) -> Result<(), String> {
    if h.leader.is_none() {
        return Err("no leader".to_string());
    }
    let target = h.commit_index.max(h.leader_commit);
    let gap = target.get().saturating_sub(h.applied_index.get());
    if gap > READY_APPLY_GAP {
        return Err(format!(
            "catching up: applied {} of {} committed entries",
            h.applied_index, target
        ));
    }
    Ok(())
}
