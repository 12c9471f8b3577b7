//! The JSON key-value API: `/v1/kv/{key}` GET/PUT/DELETE and
//! `/v1/kv?prefix=&limit=`.
//!
//! Keys are the path after `/v1/kv/` (percent-decoded, so they may contain
//! `/`); values are the raw request and response bodies.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::server::Consistency;
use crate::server::storage_stub::{Command, KeyValue, Op, RangeRequest};

#[derive(Debug, Default, Deserialize)]
pub struct ReadParams {
    /// `serializable` for a local, possibly stale read.
    pub consistency: Option<String>,
    pub prefix: Option<String>,
    pub limit: Option<u64>,
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

/// Reads the body, answering 413 if it is larger than `limit`.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(format!(
            "the request body exceeds the limit of {limit} bytes"
        ))
    })
}

#[derive(Serialize)]
struct PutAnswer {
    revision: u64,
}

pub async fn put(
    State(st): State<HttpState>,
    Path(key): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let value = read_body(body, st.max_body_bytes).await?;
    let res = st
        .handle
        .write(Command {
            op: Op::Put {
                key: key.into_bytes(),
                value: value.to_vec(),
                prev_kv: false,
            },
        })
        .await?;
    Ok(Json(serde_json::json!(PutAnswer {
        revision: res.outcome.revision
    })))
}

pub async fn get(
    State(st): State<HttpState>,
    Path(key): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let consistency = consistency(&params)?;
    let res = st
        .handle
        .range(
            RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            },
            consistency,
        )
        .await?;
    let Some(kv) = res.range.kvs.into_iter().next() else {
        return Err(ApiError::not_found(format!("key {key:?} does not exist")));
    };
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, v: u64| {
        headers.insert(name, HeaderValue::from(v));
    };
    put("x-raftkv-create-revision", kv.create_revision);
    put("x-raftkv-mod-revision", kv.mod_revision);
    put("x-raftkv-version", kv.version);
    put("x-raftkv-revision", res.range.revision);
    put("x-raftkv-term", res.raft_term.get());
    Ok((StatusCode::OK, headers, kv.value).into_response())
}

pub async fn delete(
    State(st): State<HttpState>,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let res = st
        .handle
        .write(Command {
            op: Op::Delete {
                key: key.into_bytes(),
                range_end: None,
                prev_kv: false,
            },
        })
        .await?;
    Ok(Json(serde_json::json!({
        "revision": res.outcome.revision,
        "deleted": res.outcome.deleted,
    })))
}

/// One key in a list answer. Keys and values are shown as UTF-8 (bytes
/// that are not valid UTF-8 appear as U+FFFD).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListedKv {
    pub key: String,
    pub value: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
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
    pub revision: u64,
}

pub async fn list(
    State(st): State<HttpState>,
    Query(params): Query<ReadParams>,
) -> Result<Json<ListAnswer>, ApiError> {
    let consistency = consistency(&params)?;
    let prefix = params.prefix.clone().unwrap_or_default().into_bytes();
    let range_end = prefix_end(&prefix);
    let res = st
        .handle
        .range(
            RangeRequest {
                key: prefix,
                range_end: Some(range_end),
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
