//! Translation between etcd's wire messages and the node's types: requests
//! into state-machine commands and reads, results into etcd responses, node
//! errors into gRPC status codes. Pure functions, so every rule here is unit
//! tested without a server.

use tonic::Status;

use super::proto::etcdserverpb::{self as pb, range_request::SortOrder, range_request::SortTarget};
use super::proto::mvccpb;
use super::store::{self, Command, Op};
use crate::server::{ClientError, MemberStatus, NodeStatus};

/// etcd's status for a node error. Messages keep etcd's `etcdserver:` prefix
/// where etcd clients recognise the error by it (no leader, timeouts).
pub fn status_from(err: ClientError) -> Status {
    match err {
        ClientError::NoLeader => Status::unavailable("etcdserver: no leader"),
        ClientError::Timeout => Status::unavailable("etcdserver: request timed out"),
        ClientError::Unavailable(m) => Status::unavailable(m),
        ClientError::InvalidArgument(m) => Status::invalid_argument(m),
        // etcd answers an oversized request with InvalidArgument.
        ClientError::TooLarge(m) => {
            Status::invalid_argument(format!("etcdserver: request is too large: {m}"))
        }
        ClientError::NotFound(m) => Status::not_found(m),
        ClientError::MembershipChangeInProgress => Status::failed_precondition(
            "etcdserver: another membership change is in progress; retry when it has committed",
        ),
        ClientError::FailedPrecondition(m) => Status::failed_precondition(m),
        ClientError::Internal(m) => Status::internal(m),
    }
}

/// A response header. Revisions are u64 inside raftkv and int64 on etcd's
/// wire; a revision beyond i64::MAX cannot occur in practice and saturates.
pub fn header(
    cluster_id: u64,
    member_id: u64,
    revision: u64,
    raft_term: u64,
) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id,
        member_id,
        revision: to_i64(revision),
        raft_term,
    }
}

pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored key-value record on etcd's wire (raftkv has no leases: 0).
pub fn key_value(kv: store::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.into(),
        value: kv.value.into(),
        create_revision: to_i64(kv.create_revision),
        mod_revision: to_i64(kv.mod_revision),
        version: to_i64(kv.version),
        lease: 0,
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("raftkv does not implement {what}"))
}

/// etcd's range encoding, kept as is: an empty `range_end` is the single key
/// `key`, `"\0"` is every key from `key` on, anything else is the half-open
/// range `[key, range_end)`.
fn range_end(range_end: &[u8]) -> Option<Vec<u8>> {
    (!range_end.is_empty()).then(|| range_end.to_vec())
}

fn require_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    Ok(())
}

/// What a Range needs beyond the state machine's read: sorting and
/// revision filters are applied by the service on the full result, then the
/// limit, as etcd itself does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    pub read: store::RangeRequest,
    /// The revision the client asked to read at (0: current).
    pub at_revision: i64,
    pub post: Option<PostProcess>,
}

/// Sorting, filters and the limit, applied after the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostProcess {
    order: SortOrder,
    target: SortTarget,
    limit: usize,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

/// Plans a Range: the read to do and what to do with its result.
pub fn range_plan(req: &pb::RangeRequest) -> Result<RangePlan, Status> {
    require_key(&req.key)?;
    if req.limit < 0 {
        return Err(Status::invalid_argument(
            "etcdserver: limit must not be negative",
        ));
    }
    if req.revision < 0 {
        return Err(Status::invalid_argument(
            "etcdserver: revision must not be negative",
        ));
    }
    let order = SortOrder::try_from(req.sort_order)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid sort option"))?;
    let target = SortTarget::try_from(req.sort_target)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid sort option"))?;
    // Ascending by key is the store's own order.
    let sorted =
        !(order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key));
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = u64::try_from(req.limit).unwrap_or(0);
    let post = (sorted || filtered).then(|| PostProcess {
        order,
        target,
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        min_mod: req.min_mod_revision,
        max_mod: req.max_mod_revision,
        min_create: req.min_create_revision,
        max_create: req.max_create_revision,
    });
    Ok(RangePlan {
        read: store::RangeRequest {
            key: req.key.to_vec(),
            range_end: range_end(&req.range_end),
            // With post-processing the limit applies after it.
            limit: if post.is_some() { 0 } else { limit },
            count_only: req.count_only,
            keys_only: req.keys_only,
        },
        at_revision: req.revision,
        post,
    })
}

/// Refuses a read at a revision other than the current one: raftkv keeps
/// only the latest version of each key, which is what etcd calls having
/// compacted everything before the current revision.
pub fn check_revision(asked: i64, current: u64) -> Result<(), Status> {
    let current = to_i64(current);
    if asked == 0 || asked == current {
        Ok(())
    } else if asked > current {
        Err(Status::out_of_range(
            "etcdserver: mvcc: required revision is a future revision",
        ))
    } else {
        Err(Status::out_of_range(format!(
            "etcdserver: mvcc: required revision has been compacted (raftkv keeps no history; the current revision is {current})"
        )))
    }
}

/// Builds a Range response body (without header) from a read's result.
pub fn range_response(result: store::RangeResult, post: Option<&PostProcess>) -> pb::RangeResponse {
    let count = to_i64(result.count);
    let mut kvs: Vec<mvccpb::KeyValue> = result.kvs.into_iter().map(key_value).collect();
    let mut more = result.more;
    if let Some(p) = post {
        kvs.retain(|kv| {
            (p.min_mod == 0 || kv.mod_revision >= p.min_mod)
                && (p.max_mod == 0 || kv.mod_revision <= p.max_mod)
                && (p.min_create == 0 || kv.create_revision >= p.min_create)
                && (p.max_create == 0 || kv.create_revision <= p.max_create)
        });
        let order = if p.order == SortOrder::None {
            SortOrder::Ascend
        } else {
            p.order
        };
        kvs.sort_by(|a, b| {
            let o = match p.target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
        if p.limit > 0 && kvs.len() > p.limit {
            kvs.truncate(p.limit);
            more = true;
        }
    }
    pb::RangeResponse {
        header: None,
        kvs,
        more,
        count,
    }
}

/// A Put as a state-machine command.
pub fn put_command(req: pb::PutRequest) -> Result<Command, Status> {
    require_key(&req.key)?;
    if req.lease != 0 {
        return Err(unimplemented("leases"));
    }
    if req.ignore_value || req.ignore_lease {
        return Err(unimplemented("ignore_value / ignore_lease"));
    }
    Ok(Command {
        op: Op::Put {
            key: req.key.to_vec(),
            value: req.value.to_vec(),
            prev_kv: req.prev_kv,
        },
    })
}

/// A DeleteRange as a state-machine command.
pub fn delete_command(req: pb::DeleteRangeRequest) -> Result<Command, Status> {
    require_key(&req.key)?;
    Ok(Command {
        op: Op::Delete {
            key: req.key.to_vec(),
            range_end: range_end(&req.range_end),
            prev_kv: req.prev_kv,
        },
    })
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
        header: Some(header(s.cluster_id, member_id, s.revision, s.term)),
        version: env!("CARGO_PKG_VERSION").to_string(),
        db_size: to_i64(db),
        leader: s.leader_id.unwrap_or(0),
        raft_index: s.commit_index,
        raft_term: s.term,
        raft_applied_index: s.applied_index,
        errors: Vec::new(),
        db_size_in_use: to_i64(db),
        is_learner: s.role == "learner",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn etcd_range_encoding_passes_through_unchanged() {
        let single = range_plan(&pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(single.read.range_end, None);
        let from = range_plan(&pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"\0"),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from.read.range_end, Some(vec![0]));
        assert_eq!(from.read.limit, 5);
        assert!(from.post.is_none());
    }

    #[test]
    fn sorting_or_filtering_moves_the_limit_after_the_read() {
        let plan = range_plan(&pb::RangeRequest {
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"b"),
            limit: 2,
            min_mod_revision: 3,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(plan.read.limit, 0);
        let result = store::RangeResult {
            kvs: (1..=4)
                .map(|r| store::KeyValue {
                    key: vec![b'a', b'0' + r as u8],
                    value: vec![],
                    create_revision: r,
                    mod_revision: r,
                    version: 1,
                })
                .collect(),
            count: 4,
            more: false,
            revision: 4,
        };
        let resp = range_response(result, plan.post.as_ref());
        let mods: Vec<i64> = resp.kvs.iter().map(|kv| kv.mod_revision).collect();
        assert_eq!(mods, vec![3, 4]);
        assert_eq!(resp.count, 4);
    }

    #[test]
    fn only_the_current_revision_can_be_read() {
        assert!(check_revision(0, 7).is_ok());
        assert!(check_revision(7, 7).is_ok());
        assert_eq!(
            check_revision(6, 7).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            check_revision(8, 7).unwrap_err().code(),
            tonic::Code::OutOfRange
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
