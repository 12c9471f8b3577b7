//! Translation between etcd's wire messages and the node's types: requests
//! into state-machine commands and reads, results into etcd responses, node
//! errors into gRPC status codes. Pure functions, so every rule here is unit
//! tested without a server.

use tonic::Status;

use super::proto::etcdserverpb::{self as pb, range_request::SortOrder, range_request::SortTarget};
use super::proto::mvccpb;
use super::store::{self, Command, Op};
use crate::server::{ClientError, MemberStatus, NodeStatus};
use crate::storage::auth::AuthError;

/// etcd's status for a node error. Messages keep etcd's `etcdserver:` prefix
/// where etcd clients recognise the error by it (no leader, timeouts).
pub fn status_from(err: ClientError) -> Status {
    match err {
        ClientError::NoLeader => Status::unavailable("etcdserver: no leader"),
        ClientError::Timeout => Status::unavailable("etcdserver: request timed out"),
        ClientError::Unavailable(m) => Status::unavailable(m),
        ClientError::InvalidArgument(m) => Status::invalid_argument(m),
        ClientError::OutOfRange(m) => Status::out_of_range(m),
        // etcd answers an oversized request with InvalidArgument.
        ClientError::TooLarge(m) => {
            Status::invalid_argument(format!("etcdserver: request is too large: {m}"))
        }
        // What gRPC itself answers for a message over the size limit.
        ClientError::ResponseTooLarge(m) => Status::resource_exhausted(m),
        ClientError::NotFound(m) => Status::not_found(m),
        ClientError::MembershipChangeInProgress => Status::failed_precondition(
            "etcdserver: another membership change is in progress; retry when it has committed",
        ),
        ClientError::FailedPrecondition(m) => Status::failed_precondition(m),
        ClientError::NoSpace => Status::resource_exhausted(NO_SPACE),
        ClientError::PermissionDenied(m) => Status::permission_denied(m),
        ClientError::Internal(m) => Status::internal(m),
    }
}

/// etcd's message for a write refused under the NOSPACE alarm (clients
/// match on it).
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A response header.
pub fn header(
    cluster_id: u64,
    member_id: u64,
    revision: i64,
    raft_term: u64,
) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id,
        member_id,
        revision,
        raft_term,
    }
}

/// Counts and sizes are u64 inside raftkv and int64 on etcd's wire; a value
/// beyond i64::MAX cannot occur in practice and saturates.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored key-value record on etcd's wire.
pub fn key_value(kv: store::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn require_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    Ok(())
}

/// A Range as the state machine's read. Sorting, revision filters and the
/// revision to read at are the state machine's to apply (inside a Txn as
/// well), so this is a plain translation.
pub fn range_request(req: &pb::RangeRequest) -> Result<store::RangeRequest, Status> {
    require_key(&req.key)?;
    let order = SortOrder::try_from(req.sort_order)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid sort option"))?;
    let target = SortTarget::try_from(req.sort_target)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid sort option"))?;
    Ok(store::RangeRequest {
        // etcd's range encoding is the store's too: an empty `range_end` is
        // the single key, "\0" every key from `key` on, else [key, range_end).
        key: req.key.clone(),
        range_end: req.range_end.clone(),
        // etcd reads a negative limit as no limit.
        limit: u64::try_from(req.limit).unwrap_or(0),
        keys_only: req.keys_only,
        count_only: req.count_only,
        // etcd reads a negative revision as the current one, like 0.
        revision: req.revision.max(0),
        sort_order: match order {
            SortOrder::None => store::SortOrder::None,
            SortOrder::Ascend => store::SortOrder::Ascend,
            SortOrder::Descend => store::SortOrder::Descend,
        } as i32,
        sort_target: match target {
            SortTarget::Key => store::SortTarget::Key,
            SortTarget::Version => store::SortTarget::Version,
            SortTarget::Create => store::SortTarget::Create,
            SortTarget::Mod => store::SortTarget::Mod,
            SortTarget::Value => store::SortTarget::Value,
        } as i32,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    })
}

/// Builds a Range response body (without header) from a read's result.
pub fn range_response(result: store::RangeResult) -> pb::RangeResponse {
    pb::RangeResponse {
        header: None,
        kvs: result.kvs.into_iter().map(key_value).collect(),
        more: result.more,
        count: to_i64(result.count),
    }
}

fn command(op: Op) -> Command {
    Command {
        request_id: None,
        auth: None,
        op,
    }
}

/// etcd's checks of a Put that need no state.
fn check_put(req: &pb::PutRequest) -> Result<(), Status> {
    require_key(&req.key)?;
    if req.ignore_value && !req.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(())
}

/// A Put as a state-machine command.
pub fn put_command(req: pb::PutRequest) -> Result<Command, Status> {
    check_put(&req)?;
    Ok(command(Op::Put {
        key: req.key,
        value: req.value,
        prev_kv: req.prev_kv,
        ignore_value: req.ignore_value,
        ignore_lease: req.ignore_lease,
        lease: req.lease,
    }))
}

/// A Compact as a state-machine command: it goes through the log so that
/// every member compacts at the same point.
pub fn compact_command(req: &pb::CompactionRequest) -> Command {
    command(Op::Compact {
        revision: req.revision,
    })
}

/// A DeleteRange as a state-machine command.
pub fn delete_command(req: pb::DeleteRangeRequest) -> Result<Command, Status> {
    require_key(&req.key)?;
    Ok(command(Op::DeleteRange {
        key: req.key,
        range_end: req.range_end,
        prev_kv: req.prev_kv,
    }))
}

/// A Txn as one state-machine command: the compares and both branches are
/// applied atomically at one revision.
pub fn txn_command(req: pb::TxnRequest) -> Result<Command, Status> {
    let (compares, success, failure) = txn_parts(req)?;
    Ok(command(Op::Txn {
        compares,
        success,
        failure,
    }))
}

type TxnParts = (Vec<store::Compare>, Vec<store::TxnOp>, Vec<store::TxnOp>);

fn txn_parts(req: pb::TxnRequest) -> Result<TxnParts, Status> {
    let compares = req
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<_, _>>()?;
    let success = req
        .success
        .into_iter()
        .map(txn_op)
        .collect::<Result<_, _>>()?;
    let failure = req
        .failure
        .into_iter()
        .map(txn_op)
        .collect::<Result<_, _>>()?;
    Ok((compares, success, failure))
}

fn compare(c: pb::Compare) -> Result<store::Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    require_key(&c.key)?;
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => store::CompareResult::Equal,
        Ok(R::Greater) => store::CompareResult::Greater,
        Ok(R::Less) => store::CompareResult::Less,
        Ok(R::NotEqual) => store::CompareResult::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare result",
            ));
        }
    };
    // The target names which operand counts; a missing operand is etcd's
    // zero value.
    let int = |u: &Option<U>| match u {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        _ => 0,
    };
    let target = match T::try_from(c.target) {
        Ok(T::Version) => store::CompareTarget::Version(int(&c.target_union)),
        Ok(T::Create) => store::CompareTarget::CreateRevision(int(&c.target_union)),
        Ok(T::Mod) => store::CompareTarget::ModRevision(int(&c.target_union)),
        Ok(T::Value) => store::CompareTarget::Value(match c.target_union {
            Some(U::Value(v)) => v,
            _ => bytes::Bytes::new(),
        }),
        Ok(T::Lease) => store::CompareTarget::Lease(int(&c.target_union)),
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare target",
            ));
        }
    };
    Ok(store::Compare {
        key: c.key,
        range_end: c.range_end,
        target,
        result,
    })
}

fn txn_op(op: pb::RequestOp) -> Result<store::TxnOp, Status> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(store::TxnOp::Range(range_request(&r)?)),
        Some(Request::RequestPut(p)) => {
            check_put(&p)?;
            Ok(store::TxnOp::Put {
                key: p.key,
                value: p.value,
                prev_kv: p.prev_kv,
                ignore_value: p.ignore_value,
                ignore_lease: p.ignore_lease,
                lease: p.lease,
            })
        }
        Some(Request::RequestDeleteRange(d)) => {
            require_key(&d.key)?;
            Ok(store::TxnOp::DeleteRange {
                key: d.key,
                range_end: d.range_end,
                prev_kv: d.prev_kv,
            })
        }
        Some(Request::RequestTxn(t)) => {
            let (compares, success, failure) = txn_parts(t)?;
            Ok(store::TxnOp::Txn {
                compares,
                success,
                failure,
            })
        }
        // etcd's answer to an empty op, odd as it reads.
        None => Err(Status::invalid_argument("etcdserver: key not found")),
    }
}

/// The responses of a Txn branch on etcd's wire. As in etcd, only the
/// transaction's own header names the cluster, member and term: a response
/// inside it carries the revision alone, and a nested transaction's header
/// is empty.
pub fn txn_responses(results: Vec<store::TxnOpResult>, revision: i64) -> Vec<pb::ResponseOp> {
    use pb::response_op::Response;
    let header = Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    });
    results
        .into_iter()
        .map(|r| pb::ResponseOp {
            response: Some(match r {
                store::TxnOpResult::Range(range) => {
                    let mut resp = range_response(range);
                    resp.header = header;
                    Response::ResponseRange(resp)
                }
                store::TxnOpResult::Put { prev_kv } => Response::ResponsePut(pb::PutResponse {
                    header,
                    prev_kv: prev_kv.map(key_value),
                }),
                store::TxnOpResult::DeleteRange { deleted, prev_kvs } => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header,
                        deleted: to_i64(deleted),
                        prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
                    })
                }
                store::TxnOpResult::Txn {
                    succeeded,
                    responses,
                } => Response::ResponseTxn(pb::TxnResponse {
                    header: Some(pb::ResponseHeader::default()),
                    succeeded,
                    responses: txn_responses(responses, revision),
                }),
            }),
        })
        .collect()
}

/// A command the state machine refused, as etcd would answer it.
pub fn rejected(err: &store::KvError) -> Status {
    use store::KvError as E;
    match err {
        E::EmptyKey => Status::invalid_argument("etcdserver: key is not provided"),
        E::KeyTooLarge { .. } | E::ValueTooLarge { .. } => {
            Status::invalid_argument(format!("etcdserver: request is too large: {err}"))
        }
        E::TooManyTxnOps { .. } => Status::invalid_argument(err.to_string()),
        E::StaleRequest { .. } | E::IdempotencyConflict { .. } => {
            Status::failed_precondition(err.to_string())
        }
        E::Undecodable(_) => Status::internal(err.to_string()),
        // These carry etcd's own messages.
        E::DuplicateKey | E::KeyNotFound | E::ValueProvided => {
            Status::invalid_argument(err.to_string())
        }
        E::Compacted | E::FutureRevision => Status::out_of_range(err.to_string()),
        E::NoSpace => Status::resource_exhausted(err.to_string()),
        // etcd's codes for its lease errors.
        E::LeaseNotFound => Status::not_found(err.to_string()),
        E::LeaseExists => Status::failed_precondition(err.to_string()),
        E::LeaseTtlTooLarge => Status::out_of_range(err.to_string()),
        E::LeaseProvided => Status::invalid_argument(err.to_string()),
        E::Auth(e) => auth_status(e),
    }
}

/// An auth refusal with etcd's code and message.
pub fn auth_status(err: &AuthError) -> Status {
    match err {
        AuthError::PermissionDenied => Status::permission_denied(err.to_string()),
        AuthError::InvalidAuthToken => Status::unauthenticated(err.to_string()),
        e if e.is_invalid_argument() => Status::invalid_argument(err.to_string()),
        e => Status::failed_precondition(e.to_string()),
    }
}

/// A member on etcd's wire. A member that has not published a client URL
/// yet has none listed (as in etcd).
pub fn member(m: &MemberStatus) -> pb::Member {
    let urls = |u: &str| {
        if u.is_empty() {
            Vec::new()
        } else {
            vec![u.to_string()]
        }
    };
    pb::Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: urls(&m.peer_url),
        client_ur_ls: urls(&m.client_url),
        is_learner: m.role == "learner",
    }
}

/// Maintenance.Status from the node's status.
pub fn status_response(s: &NodeStatus, member_id: u64) -> pb::StatusResponse {
    let db = s.log_db_size_bytes.saturating_add(s.kv_db_size_bytes);
    pb::StatusResponse {
        header: Some(header(s.cluster_id, member_id, to_i64(s.revision), s.term)),
        version: env!("CARGO_PKG_VERSION").to_string(),
        db_size: to_i64(db),
        leader: s.leader_id.unwrap_or(0),
        raft_index: s.commit_index,
        raft_term: s.term,
        raft_applied_index: s.applied_index,
        errors: s.alarms.clone(),
        db_size_in_use: to_i64(db),
        is_learner: s.role == "learner",
        // etcd's storage version names the schema of its bbolt file;
        // raftkv's files are not etcd's, so there is none to report.
        storage_version: String::new(),
        db_size_quota: to_i64(s.quota_backend_bytes),
        // Downgrades are etcd's; raftkv never has one under way.
        downgrade_info: Some(pb::DowngradeInfo::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn etcd_range_encoding_passes_through_unchanged() {
        let single = range_request(&pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            ..Default::default()
        })
        .unwrap();
        assert!(single.range_end.is_empty());
        let from = range_request(&pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"\0"),
            limit: 5,
            revision: 3,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Mod as i32,
            min_mod_revision: 2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(&from.range_end[..], b"\0");
        assert_eq!(from.limit, 5);
        assert_eq!(from.revision, 3);
        assert_eq!(from.sort_order(), store::SortOrder::Descend);
        assert_eq!(from.sort_target(), store::SortTarget::Mod);
        assert_eq!(from.min_mod_revision, 2);
    }

    #[test]
    fn a_negative_limit_is_no_limit_like_etcd() {
        let r = range_request(&pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            limit: -3,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.limit, 0);
    }

    #[test]
    fn a_negative_revision_is_the_current_one_like_etcd() {
        let r = range_request(&pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            revision: -2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.revision, 0);
    }

    #[test]
    fn an_empty_txn_op_gets_etcds_answer() {
        let err = txn_command(pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::InvalidArgument, "etcdserver: key not found")
        );
    }

    #[test]
    fn a_member_without_a_client_url_lists_none() {
        let m = member(&MemberStatus {
            id: 9,
            name: String::new(),
            peer_url: "http://h:2380".into(),
            client_url: String::new(),
            role: "learner".into(),
            match_index: None,
        });
        assert_eq!(m.peer_ur_ls, vec!["http://h:2380"]);
        assert!(m.client_ur_ls.is_empty());
        assert!(m.is_learner);
    }
}
