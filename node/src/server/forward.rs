//! Forwarding client requests from a follower to the leader over the peer
//! protocol's `Forward` RPC, and the encoding of their payloads.
//!
//! Payloads travel as bytes inside the protobuf envelope, in the state
//! machine's own encodings (commands as in the log, range requests and
//! results as their prost form, write outcomes in a small prost mirror
//! below), which keeps `raft.proto` independent of the KV types.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use futures::StreamExt as _;
use futures::future::BoxFuture;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::raft::{NodeId, Term};
use crate::server::handle::{
    Forwarded, ForwardedReply, Forwarder, LeaderHint, LeaseAnswer, LeaseQuery, LeaseReply,
    MemberChange, NewMember,
};
use crate::server::peer_auth::PeerAuth;
use crate::server::peer_proto as pb;
use crate::server::peer_proto::peer_client::PeerClient;
use crate::server::transport::{MAX_PEER_MESSAGE_BYTES, normalize_url};
use crate::server::{ClientError, MemberStatus, ReadResult, WriteResult, validate_member_url};
use crate::storage::{
    Alarm, AlarmKind, ApplyOutcome, Command, KeyValue, RangeRequest, RangeResult, TxnOpResult,
};
use crate::tls::connect::Connector;

/// The forwarded form of a [`WriteResult`].
#[derive(Clone, PartialEq, prost::Message)]
struct WireWrite {
    #[prost(uint64, tag = "1")]
    raft_term: u64,
    #[prost(int64, tag = "2")]
    revision: i64,
    /// 1 = put, 2 = delete, 3 = txn, 4 = compact, 5 = alarm, 6 = lease
    /// granted, 7 = lease revoked, 8 = leases checkpointed, 9 = auth
    /// store changed.
    #[prost(uint32, tag = "3")]
    kind: u32,
    #[prost(message, optional, tag = "4")]
    prev_kv: Option<KeyValue>,
    #[prost(uint64, tag = "5")]
    deleted: u64,
    #[prost(message, repeated, tag = "6")]
    prev_kvs: Vec<KeyValue>,
    #[prost(bool, tag = "7")]
    succeeded: bool,
    #[prost(message, repeated, tag = "8")]
    responses: Vec<WireTxnOpResult>,
    /// The alarm list: (member, etcd alarm type) pairs.
    #[prost(message, repeated, tag = "9")]
    alarms: Vec<WireAlarm>,
    /// A granted lease's id and TTL.
    #[prost(int64, tag = "10")]
    lease_id: i64,
    #[prost(int64, tag = "11")]
    lease_ttl: i64,
    /// The auth store's revision after an auth change.
    #[prost(uint64, tag = "12")]
    auth_revision: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireAlarm {
    #[prost(uint64, tag = "1")]
    member_id: u64,
    #[prost(int32, tag = "2")]
    kind: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireTxnOpResult {
    /// 1 = range, 2 = put, 3 = delete, 4 = nested txn.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(message, optional, tag = "2")]
    range: Option<RangeResult>,
    #[prost(message, optional, tag = "3")]
    prev_kv: Option<KeyValue>,
    #[prost(uint64, tag = "4")]
    deleted: u64,
    #[prost(message, repeated, tag = "5")]
    prev_kvs: Vec<KeyValue>,
    /// A nested transaction's branch and results.
    #[prost(bool, tag = "6")]
    succeeded: bool,
    #[prost(message, repeated, tag = "7")]
    responses: Vec<WireTxnOpResult>,
}

/// The forwarded form of a [`LeaseQuery`].
#[derive(Clone, PartialEq, prost::Message)]
struct WireLeaseQuery {
    /// 1 = keep-alive, 2 = time to live, 3 = list.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(int64, tag = "2")]
    id: i64,
    #[prost(bool, tag = "3")]
    keys: bool,
}

/// The forwarded form of a [`LeaseReply`].
#[derive(Clone, PartialEq, prost::Message)]
struct WireLeaseReply {
    /// As in [`WireLeaseQuery`].
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(int64, tag = "2")]
    id: i64,
    #[prost(int64, tag = "3")]
    ttl: i64,
    #[prost(int64, tag = "4")]
    granted_ttl: i64,
    #[prost(bytes = "bytes", repeated, tag = "5")]
    keys: Vec<bytes::Bytes>,
    #[prost(int64, repeated, tag = "6")]
    ids: Vec<i64>,
    #[prost(int64, tag = "7")]
    revision: i64,
    #[prost(uint64, tag = "8")]
    raft_term: u64,
}

fn lease_query_to_wire(q: &LeaseQuery) -> WireLeaseQuery {
    match q {
        LeaseQuery::KeepAlive(id) => WireLeaseQuery {
            kind: 1,
            id: *id,
            keys: false,
        },
        LeaseQuery::TimeToLive { id, keys } => WireLeaseQuery {
            kind: 2,
            id: *id,
            keys: *keys,
        },
        LeaseQuery::Leases => WireLeaseQuery {
            kind: 3,
            ..Default::default()
        },
    }
}

fn lease_query_from_wire(w: WireLeaseQuery) -> Result<LeaseQuery, ClientError> {
    match w.kind {
        1 => Ok(LeaseQuery::KeepAlive(w.id)),
        2 => Ok(LeaseQuery::TimeToLive {
            id: w.id,
            keys: w.keys,
        }),
        3 => Ok(LeaseQuery::Leases),
        k => Err(bad("lease query", format!("unknown kind {k}"))),
    }
}

fn lease_reply_to_wire(r: LeaseReply) -> WireLeaseReply {
    let mut w = WireLeaseReply {
        revision: r.revision,
        raft_term: r.raft_term.get(),
        ..Default::default()
    };
    match r.answer {
        LeaseAnswer::KeepAlive { id, ttl } => {
            w.kind = 1;
            w.id = id;
            w.ttl = ttl;
        }
        LeaseAnswer::TimeToLive {
            id,
            ttl,
            granted_ttl,
            keys,
        } => {
            w.kind = 2;
            w.id = id;
            w.ttl = ttl;
            w.granted_ttl = granted_ttl;
            w.keys = keys;
        }
        LeaseAnswer::Leases(ids) => {
            w.kind = 3;
            w.ids = ids;
        }
    }
    w
}

fn lease_reply_from_wire(w: WireLeaseReply) -> Result<LeaseReply, ClientError> {
    let answer = match w.kind {
        1 => LeaseAnswer::KeepAlive {
            id: w.id,
            ttl: w.ttl,
        },
        2 => LeaseAnswer::TimeToLive {
            id: w.id,
            ttl: w.ttl,
            granted_ttl: w.granted_ttl,
            keys: w.keys,
        },
        3 => LeaseAnswer::Leases(w.ids),
        k => return Err(bad("lease answer", format!("unknown kind {k}"))),
    };
    Ok(LeaseReply {
        answer,
        revision: w.revision,
        raft_term: Term(w.raft_term),
    })
}

/// The forwarded form of a [`ReadResult`].
#[derive(Clone, PartialEq, prost::Message)]
struct WireRead {
    #[prost(uint64, tag = "1")]
    raft_term: u64,
    #[prost(message, optional, tag = "2")]
    range: Option<RangeResult>,
}

fn write_to_wire(w: WriteResult) -> Result<WireWrite, ClientError> {
    let mut out = WireWrite {
        raft_term: w.raft_term.get(),
        ..Default::default()
    };
    match w.outcome {
        ApplyOutcome::Put { revision, prev_kv } => {
            out.kind = 1;
            out.revision = revision;
            out.prev_kv = prev_kv;
        }
        ApplyOutcome::Delete {
            revision,
            deleted,
            prev_kvs,
        } => {
            out.kind = 2;
            out.revision = revision;
            out.deleted = deleted;
            out.prev_kvs = prev_kvs;
        }
        ApplyOutcome::Txn {
            revision,
            succeeded,
            responses,
        } => {
            out.kind = 3;
            out.revision = revision;
            out.succeeded = succeeded;
            out.responses = txn_results_to_wire(responses);
        }
        ApplyOutcome::Compact { revision } => {
            out.kind = 4;
            out.revision = revision;
        }
        ApplyOutcome::Alarms { revision, alarms } => {
            out.kind = 5;
            out.revision = revision;
            out.alarms = alarms
                .into_iter()
                .map(|a| WireAlarm {
                    member_id: a.member_id,
                    kind: a.kind.number(),
                })
                .collect();
        }
        ApplyOutcome::LeaseGranted { revision, id, ttl } => {
            out.kind = 6;
            out.revision = revision;
            out.lease_id = id;
            out.lease_ttl = ttl;
        }
        ApplyOutcome::LeaseRevoked { revision, id } => {
            out.kind = 7;
            out.revision = revision;
            out.lease_id = id;
        }
        ApplyOutcome::LeasesCheckpointed { revision } => {
            out.kind = 8;
            out.revision = revision;
        }
        ApplyOutcome::AuthChanged {
            revision,
            auth_revision,
        } => {
            out.kind = 9;
            out.revision = revision;
            out.auth_revision = auth_revision;
        }
        ApplyOutcome::Rejected(e) => return Err(crate::server::kv_error(e)),
    }
    Ok(out)
}

fn txn_results_to_wire(results: Vec<TxnOpResult>) -> Vec<WireTxnOpResult> {
    results
        .into_iter()
        .map(|r| match r {
            TxnOpResult::Range(range) => WireTxnOpResult {
                kind: 1,
                range: Some(range),
                ..Default::default()
            },
            TxnOpResult::Put { prev_kv } => WireTxnOpResult {
                kind: 2,
                prev_kv,
                ..Default::default()
            },
            TxnOpResult::DeleteRange { deleted, prev_kvs } => WireTxnOpResult {
                kind: 3,
                deleted,
                prev_kvs,
                ..Default::default()
            },
            TxnOpResult::Txn {
                succeeded,
                responses,
            } => WireTxnOpResult {
                kind: 4,
                succeeded,
                responses: txn_results_to_wire(responses),
                ..Default::default()
            },
        })
        .collect()
}

fn txn_results_from_wire(results: Vec<WireTxnOpResult>) -> Result<Vec<TxnOpResult>, ClientError> {
    results
        .into_iter()
        .map(|r| match r.kind {
            1 => Ok(TxnOpResult::Range(r.range.unwrap_or_default())),
            2 => Ok(TxnOpResult::Put { prev_kv: r.prev_kv }),
            3 => Ok(TxnOpResult::DeleteRange {
                deleted: r.deleted,
                prev_kvs: r.prev_kvs,
            }),
            4 => Ok(TxnOpResult::Txn {
                succeeded: r.succeeded,
                responses: txn_results_from_wire(r.responses)?,
            }),
            k => Err(bad("txn result", format!("unknown kind {k}"))),
        })
        .collect()
}

fn write_from_wire(w: WireWrite) -> Result<WriteResult, ClientError> {
    let outcome = match w.kind {
        1 => ApplyOutcome::Put {
            revision: w.revision,
            prev_kv: w.prev_kv,
        },
        2 => ApplyOutcome::Delete {
            revision: w.revision,
            deleted: w.deleted,
            prev_kvs: w.prev_kvs,
        },
        3 => ApplyOutcome::Txn {
            revision: w.revision,
            succeeded: w.succeeded,
            responses: txn_results_from_wire(w.responses)?,
        },
        4 => ApplyOutcome::Compact {
            revision: w.revision,
        },
        5 => ApplyOutcome::Alarms {
            revision: w.revision,
            alarms: w
                .alarms
                .iter()
                .map(|a| {
                    AlarmKind::from_number(a.kind)
                        .map(|kind| Alarm {
                            member_id: a.member_id,
                            kind,
                        })
                        .ok_or_else(|| bad("alarm", format!("unknown type {}", a.kind)))
                })
                .collect::<Result<_, _>>()?,
        },
        6 => ApplyOutcome::LeaseGranted {
            revision: w.revision,
            id: w.lease_id,
            ttl: w.lease_ttl,
        },
        7 => ApplyOutcome::LeaseRevoked {
            revision: w.revision,
            id: w.lease_id,
        },
        8 => ApplyOutcome::LeasesCheckpointed {
            revision: w.revision,
        },
        9 => ApplyOutcome::AuthChanged {
            revision: w.revision,
            auth_revision: w.auth_revision,
        },
        k => return Err(bad("write result", format!("unknown kind {k}"))),
    };
    Ok(WriteResult {
        outcome,
        raft_term: Term(w.raft_term),
    })
}

#[derive(Serialize, Deserialize)]
struct WireMember {
    id: u64,
    name: String,
    peer_url: String,
    client_url: String,
    role: String,
    match_index: Option<u64>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Internal(format!("malformed forwarded {what}: {e}"))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(v).map_err(|e| ClientError::Internal(e.to_string()))
}

/// Encodes a forwarded request.
pub(crate) fn encode_request(r: &Forwarded) -> Result<pb::ForwardRequest, ClientError> {
    use pb::forward_request::Request as R;
    let request = match r {
        Forwarded::Write(cmd) => R::Write(cmd.encode().to_vec()),
        Forwarded::Read(req) => R::Read(req.encode_to_vec()),
        Forwarded::ChangeMembership(MemberChange::AddLearner(m)) => R::AddLearner(pb::NewMember {
            id: m.id.map_or(0, |i| i.get()),
            name: m.name.clone(),
            peer_url: m.peer_url.clone(),
            client_url: m.client_url.clone(),
        }),
        Forwarded::ChangeMembership(MemberChange::Promote(id)) => R::Promote(id.get()),
        Forwarded::ChangeMembership(MemberChange::Remove(id)) => R::Remove(id.get()),
        Forwarded::TransferLeader(id) => R::TransferLeader(id.get()),
        Forwarded::Lease(q) => R::Lease(lease_query_to_wire(q).encode_to_vec()),
    };
    Ok(pb::ForwardRequest {
        request: Some(request),
    })
}

/// Decodes a forwarded request that came from the network.
pub(crate) fn decode_request(r: pb::ForwardRequest) -> Result<Forwarded, ClientError> {
    use pb::forward_request::Request as R;
    let nonzero = |id: u64| {
        if id == 0 {
            Err(ClientError::InvalidArgument("member id 0".into()))
        } else {
            Ok(NodeId(id))
        }
    };
    Ok(
        match r.request.ok_or_else(|| bad("request", "empty envelope"))? {
            R::Write(b) => Forwarded::Write(Command::decode(&b).map_err(|e| bad("write", e))?),
            R::Read(b) => {
                Forwarded::Read(RangeRequest::decode(b.as_slice()).map_err(|e| bad("read", e))?)
            }
            R::AddLearner(m) => {
                // Checked at the follower's edge already; checked again in
                // case the follower runs an older version.
                let url = |u: &str| {
                    validate_member_url(u)
                        .map_err(|e| ClientError::InvalidArgument(format!("member URL: {e}")))
                };
                let peer_url = url(&m.peer_url)?;
                let client_url = match m.client_url.as_str() {
                    "" => String::new(),
                    u => url(u)?,
                };
                Forwarded::ChangeMembership(MemberChange::AddLearner(NewMember {
                    id: (m.id != 0).then_some(NodeId(m.id)),
                    name: m.name,
                    peer_url,
                    client_url,
                }))
            }
            R::Promote(id) => Forwarded::ChangeMembership(MemberChange::Promote(nonzero(id)?)),
            R::Remove(id) => Forwarded::ChangeMembership(MemberChange::Remove(nonzero(id)?)),
            R::TransferLeader(id) => Forwarded::TransferLeader(nonzero(id)?),
            R::Lease(b) => Forwarded::Lease(lease_query_from_wire(
                WireLeaseQuery::decode(b.as_slice()).map_err(|e| bad("lease query", e))?,
            )?),
        },
    )
}

/// Encodes the leader's answer (or error).
pub(crate) fn encode_reply(r: Result<ForwardedReply, ClientError>) -> pb::ForwardResponse {
    use pb::forward_response::Response as R;
    let response = match r.and_then(|reply| {
        Ok(match reply {
            ForwardedReply::Write(w) => R::Write(write_to_wire(w)?.encode_to_vec()),
            ForwardedReply::Read(r) => R::Read(
                WireRead {
                    raft_term: r.raft_term.get(),
                    range: Some(r.range),
                }
                .encode_to_vec(),
            ),
            ForwardedReply::Member(m) => R::Member(to_json(&WireMember {
                id: m.id,
                name: m.name,
                peer_url: m.peer_url,
                client_url: m.client_url,
                role: m.role,
                match_index: m.match_index,
            })?),
            ForwardedReply::Done => R::Done(pb::Empty {}),
            ForwardedReply::Lease(l) => R::Lease(lease_reply_to_wire(l).encode_to_vec()),
        })
    }) {
        Ok(r) => r,
        Err(e) => R::Error(pb::ForwardError {
            code: e.code().to_string(),
            // The bare message: the variant is rebuilt around it.
            message: e.detail(),
        }),
    };
    pb::ForwardResponse {
        response: Some(response),
    }
}

/// The answer to forwarded call `id`, as it goes back on the stream. An
/// answer larger than the stream's message limit would break the stream and
/// with it every other call it carries, so it is replaced by an error for
/// this call alone.
pub(crate) fn answer(
    id: u64,
    reply: Result<ForwardedReply, ClientError>,
    limit: usize,
) -> pb::ForwardAnswer {
    let answer = pb::ForwardAnswer {
        id,
        response: Some(encode_reply(reply)),
    };
    let size = answer.encoded_len();
    if size <= limit {
        return answer;
    }
    pb::ForwardAnswer {
        id,
        response: Some(encode_reply(Err(ClientError::ResponseTooLarge(format!(
            "the answer is {size} bytes; a follower can relay at most {limit} \
             (ask the leader directly, or narrow the request with a limit)"
        ))))),
    }
}

/// Decodes the leader's answer.
pub(crate) fn decode_reply(r: pb::ForwardResponse) -> Result<ForwardedReply, ClientError> {
    use pb::forward_response::Response as R;
    match r.response.ok_or_else(|| bad("reply", "empty envelope"))? {
        R::Error(e) => Err(error_from_code(&e.code, e.message)),
        R::Write(b) => {
            let w = WireWrite::decode(b.as_slice()).map_err(|e| bad("write result", e))?;
            Ok(ForwardedReply::Write(write_from_wire(w)?))
        }
        R::Read(b) => {
            let r = WireRead::decode(b.as_slice()).map_err(|e| bad("read result", e))?;
            Ok(ForwardedReply::Read(ReadResult {
                range: r.range.unwrap_or_default(),
                raft_term: Term(r.raft_term),
            }))
        }
        R::Member(b) => {
            let m: WireMember = serde_json::from_slice(&b).map_err(|e| bad("member", e))?;
            Ok(ForwardedReply::Member(MemberStatus {
                id: m.id,
                name: m.name,
                peer_url: m.peer_url,
                client_url: m.client_url,
                role: m.role,
                match_index: m.match_index,
            }))
        }
        R::Done(_) => Ok(ForwardedReply::Done),
        R::Lease(b) => {
            let w = WireLeaseReply::decode(b.as_slice()).map_err(|e| bad("lease answer", e))?;
            Ok(ForwardedReply::Lease(lease_reply_from_wire(w)?))
        }
    }
}

/// Rebuilds a [`ClientError`] from its code and message (the message
/// already says what went wrong; it is kept as the detail).
fn error_from_code(code: &str, message: String) -> ClientError {
    match code {
        "no_leader" => ClientError::NoLeader,
        "timeout" => ClientError::Timeout,
        "invalid_argument" => ClientError::InvalidArgument(message),
        "out_of_range" => ClientError::OutOfRange(message),
        "too_large" => ClientError::TooLarge(message),
        "response_too_large" => ClientError::ResponseTooLarge(message),
        "not_found" => ClientError::NotFound(message),
        "membership_change_in_progress" => ClientError::MembershipChangeInProgress,
        "failed_precondition" => ClientError::FailedPrecondition(message),
        "unavailable" => ClientError::Unavailable(message),
        "no_space" => ClientError::NoSpace,
        "permission_denied" => ClientError::PermissionDenied(message),
        _ => ClientError::Internal(message),
    }
}

/// The [`Forwarder`] that talks to the leader's peer endpoint: one lazily
/// connected channel and one long-lived [`Pipe`] per leader URL.
#[derive(Debug)]
pub(crate) struct GrpcForwarder {
    pipes: Mutex<HashMap<String, Arc<Pipe>>>,
    /// Dials the leader (with TLS for an `https://` peer URL).
    connector: Connector,
    /// Proves to the leader that the call comes from a member.
    auth: PeerAuth,
    self_id: NodeId,
}

impl GrpcForwarder {
    fn pipe(&self, url: &str) -> Result<Arc<Pipe>, ClientError> {
        let mut pipes = self
            .pipes
            .lock()
            .map_err(|_| ClientError::Internal("forwarder lock poisoned".into()))?;
        if let Some(p) = pipes.get(url) {
            return Ok(p.clone());
        }
        let endpoint = Endpoint::from_shared(normalize_url(url))
            .map_err(|e| ClientError::Internal(format!("bad leader URL {url}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true);
        let channel = self.connector.connect_lazy(endpoint);
        let pipe = Arc::new(Pipe {
            channel,
            auth: self.auth.clone(),
            self_id: self.self_id,
            stream: tokio::sync::Mutex::new(None),
        });
        pipes.insert(url.to_string(), pipe.clone());
        Ok(pipe)
    }
}

impl Forwarder for GrpcForwarder {
    fn forward(
        &self,
        leader: LeaderHint,
        request: Forwarded,
    ) -> BoxFuture<'static, Result<ForwardedReply, ClientError>> {
        let pipe = self.pipe(&leader.peer_url);
        Box::pin(async move {
            let request = encode_request(&request)?;
            let reply = pipe?.call(request, leader.id).await?;
            decode_reply(reply)
        })
    }
}

/// The forwarding stream to one leader: calls go out on it as they come and
/// answers are matched back by id. A broken stream fails the calls it
/// carried and is reopened by the next call.
#[derive(Debug)]
struct Pipe {
    channel: Channel,
    auth: PeerAuth,
    self_id: NodeId,
    stream: tokio::sync::Mutex<Option<Arc<OpenStream>>>,
}

/// One open forwarding stream.
#[derive(Debug)]
struct OpenStream {
    calls: mpsc::Sender<pb::ForwardCall>,
    /// `None` once the stream broke: nobody will answer any more.
    waiting: Mutex<Option<HashMap<u64, Waiting>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A call waiting for its answer.
#[derive(Debug)]
struct Waiting {
    answer: oneshot::Sender<Result<pb::ForwardResponse, ClientError>>,
    /// Whether the call was taken from the queue onto the wire. One that
    /// never was cannot have reached the leader.
    sent: bool,
}

/// Calls that may wait to be sent on one stream.
const CALLS_QUEUED: usize = 1024;

impl Pipe {
    async fn call(
        &self,
        request: pb::ForwardRequest,
        leader: NodeId,
    ) -> Result<pb::ForwardResponse, ClientError> {
        // A call over the message limit would break the stream (and fail
        // every call on it) without ever reaching the leader. (The call's
        // envelope, an id and two tags, adds at most 16 bytes.)
        let size = request.encoded_len() + 16;
        if size > MAX_PEER_MESSAGE_BYTES {
            return Err(ClientError::TooLarge(format!(
                "the request is {size} bytes; a follower can forward at most \
                 {MAX_PEER_MESSAGE_BYTES}"
            )));
        }
        let stream = self.open().await?;
        let id = stream
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = stream
                .waiting
                .lock()
                .map_err(|_| ClientError::Internal("forwarder lock poisoned".into()))?;
            // Broke between `open` and here: the call never left, retry.
            let Some(waiting) = waiting.as_mut() else {
                return Err(ClientError::NoLeader);
            };
            waiting.insert(
                id,
                Waiting {
                    answer: tx,
                    sent: false,
                },
            );
        }
        if stream
            .calls
            .send(pb::ForwardCall {
                id,
                request: Some(request),
            })
            .await
            .is_err()
        {
            stream.forget(id);
            return Err(ClientError::NoLeader);
        }
        // A stream that broke answers every call itself: "no leader" (which
        // retries) for the calls that never left, "lost the leader" for the
        // ones the leader may have acted on.
        let lost = |why: &str| {
            ClientError::Unavailable(format!(
                "lost the leader ({leader}) while it handled the request: {why}"
            ))
        };
        match rx.await {
            Ok(Err(ClientError::Unavailable(why))) => Err(lost(&why)),
            Ok(result) => result,
            Err(_) => Err(lost("the stream ended")),
        }
    }

    /// The open stream, opening one if there is none (or it broke).
    async fn open(&self) -> Result<Arc<OpenStream>, ClientError> {
        let mut current = self.stream.lock().await;
        if let Some(s) = current.as_ref() {
            if s.is_open() {
                return Ok(s.clone());
            }
        }
        let (calls, outbound) = mpsc::channel(CALLS_QUEUED);
        let stream = Arc::new(OpenStream {
            calls,
            waiting: Mutex::new(Some(HashMap::new())),
            next_id: std::sync::atomic::AtomicU64::new(1),
        });
        // Marks each call as sent when the transport takes it.
        let outbound = {
            let stream = Arc::downgrade(&stream);
            tokio_stream::wrappers::ReceiverStream::new(outbound).map(move |call| {
                if let Some(s) = stream.upgrade() {
                    s.mark_sent(call.id);
                }
                call
            })
        };
        // Answers may be as large as the leader's peer server allows.
        let mut client = PeerClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        // A refused connection proves the leader never saw anything: "no
        // leader", which the caller retries with the leader it learns next.
        let mut request = tonic::Request::new(outbound);
        self.auth.stamp(&mut request, self.self_id);
        let answers = client
            .forward(request)
            .await
            .map_err(|_| ClientError::NoLeader)?
            .into_inner();
        tokio::spawn(dispatch(answers, stream.clone()));
        *current = Some(stream.clone());
        Ok(stream)
    }
}

impl OpenStream {
    fn is_open(&self) -> bool {
        self.waiting.lock().is_ok_and(|w| w.is_some()) && !self.calls.is_closed()
    }

    fn mark_sent(&self, id: u64) {
        if let Ok(mut w) = self.waiting.lock() {
            if let Some(call) = w.as_mut().and_then(|w| w.get_mut(&id)) {
                call.sent = true;
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut w) = self.waiting.lock() {
            w.as_mut().map(|w| w.remove(&id));
        }
    }

    /// Marks the stream broken and answers the calls still waiting.
    fn broke(&self, why: &str) {
        let waiting = match self.waiting.lock() {
            Ok(mut w) => w.take(),
            Err(_) => None,
        };
        for (_, call) in waiting.into_iter().flatten() {
            let _ = call.answer.send(Err(if call.sent {
                ClientError::Unavailable(why.to_string())
            } else {
                ClientError::NoLeader
            }));
        }
    }
}

/// Hands each answer to its caller until the stream ends, then fails the
/// calls still waiting and marks the stream broken.
async fn dispatch(mut answers: tonic::Streaming<pb::ForwardAnswer>, stream: Arc<OpenStream>) {
    let why = loop {
        let answer = match answers.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => break "the leader closed the stream".to_string(),
            Err(status) => break status.to_string(),
        };
        let caller = stream
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.as_mut().and_then(|w| w.remove(&answer.id)));
        if let (Some(caller), Some(response)) = (caller, answer.response) {
            let _ = caller.answer.send(Ok(response));
        }
    };
    tracing::debug!(why, "a forwarding stream ended");
    stream.broke(&why);
}

/// Shared form for the handle.
pub(crate) fn grpc_forwarder(
    connector: Connector,
    auth: PeerAuth,
    self_id: NodeId,
) -> Arc<dyn Forwarder> {
    Arc::new(GrpcForwarder {
        pipes: Mutex::default(),
        connector,
        auth,
        self_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Op;

    #[test]
    fn requests_and_replies_round_trip() {
        // A forwarded write keeps the stamp its follower's gate gave it:
        // the leader's state machine re-checks against it.
        let cmd = Command {
            request_id: None,
            auth: Some(crate::storage::AuthStamp {
                user: Some("alice".into()),
                revision: 9,
            }),
            op: Op::Put {
                key: bytes::Bytes::from_static(b"k"),
                value: bytes::Bytes::from_static(b"v"),
                prev_kv: true,
                ignore_value: false,
                ignore_lease: true,
                lease: 0,
            },
        };
        let decoded = decode_request(encode_request(&Forwarded::Write(cmd.clone())).unwrap());
        assert!(matches!(decoded, Ok(Forwarded::Write(c)) if c == cmd));
        let req = RangeRequest::key(&b"a"[..]);
        let decoded = decode_request(encode_request(&Forwarded::Read(req.clone())).unwrap());
        assert!(matches!(decoded, Ok(Forwarded::Read(r)) if r == req));
        let decoded = decode_request(
            encode_request(&Forwarded::ChangeMembership(MemberChange::Remove(NodeId(
                3,
            ))))
            .unwrap(),
        );
        assert!(matches!(
            decoded,
            Ok(Forwarded::ChangeMembership(MemberChange::Remove(NodeId(3))))
        ));

        let reply = decode_reply(encode_reply(Ok(ForwardedReply::Write(WriteResult {
            outcome: ApplyOutcome::Txn {
                revision: 5,
                succeeded: true,
                responses: vec![
                    TxnOpResult::Put { prev_kv: None },
                    TxnOpResult::DeleteRange {
                        deleted: 1,
                        prev_kvs: vec![],
                    },
                ],
            },
            raft_term: Term(2),
        }))));
        let Ok(ForwardedReply::Write(w)) = reply else {
            panic!("not a write reply: {reply:?}")
        };
        assert_eq!(w.raft_term, Term(2));
        assert!(matches!(
            w.outcome,
            ApplyOutcome::Txn {
                revision: 5,
                succeeded: true,
                ref responses
            } if responses.len() == 2
        ));
    }

    #[test]
    fn lease_questions_answers_and_outcomes_round_trip() {
        for q in [
            LeaseQuery::KeepAlive(7),
            LeaseQuery::TimeToLive { id: -3, keys: true },
            LeaseQuery::Leases,
        ] {
            let decoded = decode_request(encode_request(&Forwarded::Lease(q.clone())).unwrap());
            assert!(matches!(decoded, Ok(Forwarded::Lease(d)) if d == q));
        }
        for answer in [
            LeaseAnswer::KeepAlive { id: 7, ttl: 10 },
            LeaseAnswer::TimeToLive {
                id: 7,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![bytes::Bytes::from_static(b"k")],
            },
            LeaseAnswer::Leases(vec![1, 2]),
        ] {
            let reply = LeaseReply {
                answer,
                revision: 9,
                raft_term: Term(4),
            };
            let back = decode_reply(encode_reply(Ok(ForwardedReply::Lease(reply.clone()))));
            assert!(matches!(back, Ok(ForwardedReply::Lease(r)) if r == reply));
        }
        for outcome in [
            ApplyOutcome::LeaseGranted {
                revision: 3,
                id: 11,
                ttl: 60,
            },
            ApplyOutcome::LeaseRevoked {
                revision: 4,
                id: 11,
            },
            ApplyOutcome::LeasesCheckpointed { revision: 5 },
            ApplyOutcome::AuthChanged {
                revision: 5,
                auth_revision: 3,
            },
        ] {
            let back = decode_reply(encode_reply(Ok(ForwardedReply::Write(WriteResult {
                outcome: outcome.clone(),
                raft_term: Term(1),
            }))));
            assert!(matches!(back, Ok(ForwardedReply::Write(w)) if w.outcome == outcome));
        }
    }

    #[test]
    fn errors_keep_their_kind_across_the_wire() {
        for e in [
            ClientError::NoLeader,
            ClientError::MembershipChangeInProgress,
            ClientError::TooLarge("value".into()),
            ClientError::NotFound("member 9".into()),
        ] {
            let back = decode_reply(encode_reply(Err(e.clone()))).unwrap_err();
            assert_eq!(back.code(), e.code());
        }
    }

    /// etcd's clients match on the message (an auth refusal, say): the
    /// leader's error reaches the follower's client exactly as it was.
    #[test]
    fn errors_keep_their_message_across_the_wire() {
        for e in [
            ClientError::FailedPrecondition("etcdserver: root user does not exist".into()),
            ClientError::InvalidArgument("etcdserver: user name is empty".into()),
            // A write the leader refused at apply (its auth store changed).
            ClientError::PermissionDenied("etcdserver: permission denied".into()),
            ClientError::NoLeader,
        ] {
            let back = decode_reply(encode_reply(Err(e.clone()))).unwrap_err();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn an_answer_too_large_for_the_stream_becomes_an_error_for_its_call_alone() {
        let read = || {
            Ok(ForwardedReply::Read(ReadResult {
                range: RangeResult {
                    kvs: vec![KeyValue {
                        key: bytes::Bytes::from_static(b"k"),
                        value: bytes::Bytes::from(vec![b'x'; 4096]),
                        ..Default::default()
                    }],
                    count: 1,
                    ..Default::default()
                },
                raft_term: Term(3),
            }))
        };
        let fits = answer(7, read(), 1 << 20);
        assert_eq!(fits.id, 7);
        assert!(matches!(
            decode_reply(fits.response.unwrap()),
            Ok(ForwardedReply::Read(r)) if r.range.kvs[0].value.len() == 4096
        ));
        let too_big = answer(8, read(), 1024);
        assert_eq!(too_big.id, 8);
        assert!(prost::Message::encoded_len(&too_big) <= 1024);
        let err = decode_reply(too_big.response.unwrap()).unwrap_err();
        assert!(matches!(err, ClientError::ResponseTooLarge(_)), "{err:?}");
        assert!(err.to_string().contains("1024"), "{err}");
    }

    #[tokio::test]
    async fn a_broken_stream_tells_calls_that_never_left_from_those_that_may_have() {
        let (calls, _outbound) = mpsc::channel(4);
        let stream = OpenStream {
            calls,
            waiting: Mutex::new(Some(HashMap::new())),
            next_id: std::sync::atomic::AtomicU64::new(1),
        };
        let mut answers = Vec::new();
        for id in [1, 2] {
            let (tx, rx) = oneshot::channel();
            stream.waiting.lock().unwrap().as_mut().unwrap().insert(
                id,
                Waiting {
                    answer: tx,
                    sent: false,
                },
            );
            answers.push(rx);
        }
        stream.mark_sent(1);
        stream.broke("connection reset");
        assert!(!stream.is_open());
        let sent = answers.remove(0).await.unwrap();
        assert!(matches!(sent, Err(ClientError::Unavailable(_))), "{sent:?}");
        let unsent = answers.remove(0).await.unwrap();
        assert_eq!(unsent, Err(ClientError::NoLeader), "never left: retried");
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        let r = pb::ForwardRequest {
            request: Some(pb::forward_request::Request::Write(b"\xff\x00".to_vec())),
        };
        assert!(decode_request(r).is_err());
        assert!(decode_request(pb::ForwardRequest { request: None }).is_err());
        let r = pb::ForwardRequest {
            request: Some(pb::forward_request::Request::Promote(0)),
        };
        assert!(decode_request(r).is_err());
    }
}
