//! The JSON key-value API: `/v1/kv/{key}` GET/PUT/DELETE and
//! `/v1/kv?prefix=&limit=`.
//!
//! Keys are the path after `/v1/kv/` (percent-decoded, so they may contain
//! `/`); values are the raw request and response bodies.

use axum::Json;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::http::HttpState;
use crate::http::auth::HttpCaller;
use crate::http::error::ApiError;
use crate::server::Consistency;
use crate::storage::auth::Need;
use crate::storage::{ApplyOutcome, Command, KeyValue, Op, RangeRequest, RequestId};

#[derive(Debug, Default, Deserialize)]
pub struct ReadParams {
    /// `serializable` for a local, possibly stale read.
    pub consistency: Option<String>,
    pub prefix: Option<String>,
    pub limit: Option<u64>,
}

fn params_of(p: Result<Query<ReadParams>, QueryRejection>) -> Result<ReadParams, ApiError> {
    p.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
}

fn consistency(p: &ReadParams) -> Result<Consistency, ApiError> {
    match p.consistency.as_deref() {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("serializable") => Ok(Consistency::Serializable),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be linearizable or serializable, not {other:?}"
        ))),
    }
}

/// The smallest key greater than every key that starts with `prefix`
/// (etcd's convention); empty means "to the end".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The key from the path; a path that does not decode (say, `%FF`, which
/// is not UTF-8) is a 400 with a JSON error like every other.
fn key_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(key)) if key.is_empty() => Err(ApiError::bad_request("the key must not be empty")),
        Ok(Path(key)) => Ok(key),
        Err(e) => Err(ApiError::bad_request(format!("invalid key: {e}"))),
    }
}

/// Reads the body, answering 413 if it is larger than `limit` (at once,
/// without reading it, when its declared length already is) and 408 if it
/// has not fully arrived within `timeout` (a client trickling its body).
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "the request body exceeds the limit of {limit} bytes"
        ))
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(ApiError::request_timeout(format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ))),
    }
}

#[derive(Serialize)]
struct PutAnswer {
    revision: i64,
}

/// Headers that make a write idempotent: a retry with the same client id
/// and sequence number gets the first attempt's answer instead of applying
/// twice. The sequence must increase per client id.
pub const CLIENT_ID_HEADER: &str = "x-raftkv-client-id";
pub const SEQUENCE_HEADER: &str = "x-raftkv-sequence";

fn request_id(headers: &HeaderMap) -> Result<Option<RequestId>, ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| ApiError::bad_request(format!("{name} must be an integer")))
            })
            .transpose()
    };
    match (number(CLIENT_ID_HEADER)?, number(SEQUENCE_HEADER)?) {
        (Some(client_id), Some(seq)) => Ok(Some(RequestId { client_id, seq })),
        (None, None) => Ok(None),
        _ => Err(ApiError::bad_request(format!(
            "{CLIENT_ID_HEADER} and {SEQUENCE_HEADER} go together"
        ))),
    }
}

pub async fn put(
    State(st): State<HttpState>,
    caller: HttpCaller,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = key_of(key)?;
    // Refused before its body is read; `admit` below checks the same and
    // stamps the command.
    caller.may(Need::Write, key.as_bytes(), &[])?;
    let request_id = request_id(&headers)?;
    let value = read_body(body, st.max_body_bytes, st.body_timeout).await?;
    let cmd = caller.admit(Command {
        request_id,
        auth: None,
        op: Op::Put {
            key: key.into_bytes().into(),
            value,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        },
    })?;
    let res = st.handle.write(cmd).await?;
    let (revision, _) = revision_and_deleted(&res.outcome);
    Ok(Json(serde_json::json!(PutAnswer { revision })))
}

pub async fn get(
    State(st): State<HttpState>,
    caller: HttpCaller,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key_of(key)?;
    caller.may(Need::Read, key.as_bytes(), &[])?;
    let params = params_of(params)?;
    let consistency = consistency(&params)?;
    let res = st
        .handle
        .range(RangeRequest::key(key.clone().into_bytes()), consistency)
        .await?;
    let Some(kv) = res.range.kvs.into_iter().next() else {
        return Err(ApiError::not_found(format!("key {key:?} does not exist")));
    };
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, v: i64| {
        headers.insert(name, HeaderValue::from(v));
    };
    put("x-raftkv-create-revision", kv.create_revision);
    put("x-raftkv-mod-revision", kv.mod_revision);
    put("x-raftkv-version", kv.version);
    put("x-raftkv-revision", res.range.revision);
    put("x-raftkv-term", res.raft_term.get() as i64);
    Ok((StatusCode::OK, headers, kv.value).into_response())
}

pub async fn delete(
    State(st): State<HttpState>,
    caller: HttpCaller,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = key_of(key)?;
    let request_id = request_id(&headers)?;
    let cmd = caller.admit(Command {
        request_id,
        auth: None,
        op: Op::DeleteRange {
            key: key.into_bytes().into(),
            range_end: Default::default(),
            prev_kv: false,
        },
    })?;
    let res = st.handle.write(cmd).await?;
    let (revision, deleted) = revision_and_deleted(&res.outcome);
    Ok(Json(serde_json::json!({
        "revision": revision,
        "deleted": deleted,
    })))
}

/// One key in a list answer. Keys and values are shown as UTF-8 (bytes
/// that are not valid UTF-8 appear as U+FFFD).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListedKv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

impl From<KeyValue> for ListedKv {
    fn from(kv: KeyValue) -> Self {
        ListedKv {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        }
    }
}

/// The answer of `GET /v1/kv`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListAnswer {
    pub kvs: Vec<ListedKv>,
    pub count: u64,
    pub more: bool,
    pub revision: i64,
}

pub async fn list(
    State(st): State<HttpState>,
    caller: HttpCaller,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Json<ListAnswer>, ApiError> {
    let params = params_of(params)?;
    let consistency = consistency(&params)?;
    let prefix = params.prefix.clone().unwrap_or_default().into_bytes();
    // etcd's conventions: "\0" as key and range end means every key, and an
    // empty prefix end means "to the end".
    let (key, range_end) = if prefix.is_empty() {
        (vec![0u8], vec![0u8])
    } else {
        match prefix_end(&prefix) {
            end if end.is_empty() => (prefix, vec![0u8]),
            end => (prefix, end),
        }
    };
    caller.may(Need::Read, &key, &range_end)?;
    let res = st
        .handle
        .range(
            RangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                limit: params.limit.unwrap_or(0),
                ..Default::default()
            },
            consistency,
        )
        .await?;
    Ok(Json(ListAnswer {
        count: res.range.count,
        more: res.range.more,
        revision: res.range.revision,
        kvs: res.range.kvs.into_iter().map(ListedKv::from).collect(),
    }))
}

/// The revision a write produced and how many keys it deleted.
pub fn revision_and_deleted(outcome: &ApplyOutcome) -> (i64, u64) {
    match outcome {
        ApplyOutcome::Put { revision, .. } => (*revision, 0),
        ApplyOutcome::Delete {
            revision, deleted, ..
        } => (*revision, *deleted),
        ApplyOutcome::Txn { revision, .. }
        | ApplyOutcome::Compact { revision }
        | ApplyOutcome::Alarms { revision, .. }
        | ApplyOutcome::LeaseGranted { revision, .. }
        | ApplyOutcome::LeaseRevoked { revision, .. }
        | ApplyOutcome::LeasesCheckpointed { revision }
        | ApplyOutcome::AuthChanged { revision, .. } => (*revision, 0),
        ApplyOutcome::Rejected(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"a"), b"b".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
    }
}
