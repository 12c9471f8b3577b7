//! Status and administration: `/v1/status`, `/v1/members` (list, add a
//! learner, promote, remove) and `/v1/leader/transfer`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::http::HttpState;
use crate::http::auth::HttpCaller;
use crate::http::error::ApiError;
use crate::http::kv::read_body;
use crate::raft::NodeId;
use crate::server::{MemberStatus, NewMember, NodeStatus, validate_member_url};

/// Admin request bodies are small.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn json_body<T: for<'de> Deserialize<'de>>(
    st: &HttpState,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(body, MAX_ADMIN_BODY, st.body_timeout).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn member_id(raw: &str) -> Result<NodeId, ApiError> {
    match raw.parse::<u64>() {
        Ok(0) | Err(_) => Err(ApiError::bad_request(format!(
            "member id must be a positive integer, not {raw:?}"
        ))),
        Ok(id) => Ok(NodeId(id)),
    }
}

pub async fn status(State(st): State<HttpState>) -> Result<Json<NodeStatus>, ApiError> {
    Ok(Json(st.handle.status().await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<MemberStatus>,
    pub leader_id: Option<u64>,
}

pub async fn members(State(st): State<HttpState>) -> Result<Json<MemberList>, ApiError> {
    let s = st.handle.status().await?;
    Ok(Json(MemberList {
        members: s.members,
        leader_id: s.leader_id,
    }))
}

/// `POST /v1/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub id: Option<u64>,
    #[serde(default)]
    pub name: String,
    pub peer_url: String,
    #[serde(default)]
    pub client_url: String,
    /// Must be true (or absent): members join as learners and are promoted
    /// once they have caught up.
    pub learner: Option<bool>,
}

pub async fn add_member(
    State(st): State<HttpState>,
    caller: HttpCaller,
    body: Body,
) -> Result<(StatusCode, Json<MemberStatus>), ApiError> {
    caller.root()?;
    let req: AddMember = json_body(&st, body).await?;
    if req.learner == Some(false) {
        return Err(ApiError::bad_request(
            "members are added as learners (\"learner\": true) and promoted once caught up",
        ));
    }
    let peer_url = validate_member_url(&req.peer_url)
        .map_err(|e| ApiError::bad_request(format!("invalid peer_url: {e}")))?;
    // A client URL is optional; one that is given must be valid.
    let client_url = match req.client_url.as_str() {
        "" => String::new(),
        url => validate_member_url(url)
            .map_err(|e| ApiError::bad_request(format!("invalid client_url: {e}")))?,
    };
    let id = match req.id {
        Some(0) => return Err(ApiError::bad_request("member id 0 is reserved")),
        other => other.map(NodeId),
    };
    let m = st
        .handle
        .add_learner(NewMember {
            id,
            name: req.name,
            peer_url,
            client_url,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(m)))
}

pub async fn promote(
    State(st): State<HttpState>,
    caller: HttpCaller,
    Path(id): Path<String>,
) -> Result<Json<MemberStatus>, ApiError> {
    caller.root()?;
    Ok(Json(st.handle.promote(member_id(&id)?).await?))
}

pub async fn remove(
    State(st): State<HttpState>,
    caller: HttpCaller,
    Path(id): Path<String>,
) -> Result<Json<MemberStatus>, ApiError> {
    caller.root()?;
    Ok(Json(st.handle.remove(member_id(&id)?).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub to: u64,
}

pub async fn transfer_leader(
    State(st): State<HttpState>,
    caller: HttpCaller,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.root()?;
    let req: Transfer = json_body(&st, body).await?;
    let to = member_id(&req.to.to_string())?;
    st.handle.transfer_leader(to).await?;
    Ok(Json(serde_json::json!({ "leader_id": to.get() })))
}
