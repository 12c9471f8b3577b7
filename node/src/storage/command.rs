//! The commands clients propose through the log, and their encoding.
//!
//! A command is what a [`raft::EntryPayload::Command`](crate::raft::EntryPayload)
//! carries. The semantics follow etcd's v3 KV API (put, delete range,
//! transaction with compares), so that the node can serve that API directly.
//! The encoding is protobuf (prost derive); the public types below are plain
//! Rust enums and are converted to and from private wire structs, so that an
//! invalid combination (a put without a key field, say) cannot be expressed
//! in the public API.

use bytes::Bytes;
use prost::Message;

use super::auth::{AuthOp, WireAuthOp};
use super::error::DecodeError;
use super::outcome::AlarmKind;

/// A client-chosen idempotency key: a command that carries one and was
/// already applied is answered with its original outcome instead of being
/// applied again. `seq` must increase per `client_id`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct RequestId {
    #[prost(uint64, tag = "1")]
    pub client_id: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

/// One command for the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub request_id: Option<RequestId>,
    pub op: Op,
    /// Who the member that admitted the command checked it for, and against
    /// which auth store. `None` for commands no client permission covers
    /// (lease expiry, alarms, administration) and in entries written before
    /// stamps existed: those apply without a permission check, as they
    /// always did.
    pub auth: Option<AuthStamp>,
}

/// The permission check a command passed at the gate: the caller and the
/// auth revision it was checked at. When the auth store has moved on by the
/// time the command applies, the command's permissions are checked again
/// against the auth store at that point of the log (see
/// [`super::access`]), so that a revoke committed between gate and apply
/// is not outrun.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthStamp {
    /// The user; `None` when auth was disabled at the gate (anyone).
    pub user: Option<String>,
    /// The auth store's revision the check used.
    pub revision: u64,
}

impl Command {
    /// A command without idempotency key and without auth stamp.
    pub fn new(op: Op) -> Command {
        Command {
            request_id: None,
            op,
            auth: None,
        }
    }
}

/// What a command does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`; with `prev_kv`, returns the previous pair.
    /// With `ignore_value` the key keeps its current value (and `value` must
    /// be empty); with `ignore_lease` it keeps its current lease (and
    /// `lease` must be 0); with either the key must exist (etcd's
    /// semantics). Otherwise the key is attached to `lease` (which must
    /// exist), or detached from any lease with 0.
    Put {
        key: Bytes,
        value: Bytes,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
        lease: i64,
    },
    /// Deletes the keys of a range (etcd `range_end` semantics, see
    /// [`RangeRequest`]); with `prev_kv`, returns the deleted pairs.
    DeleteRange {
        key: Bytes,
        range_end: Bytes,
        prev_kv: bool,
    },
    /// If every compare holds, runs `success`, otherwise `failure`;
    /// atomically, as one revision.
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    /// Discards the history before `revision` (etcd's Compact): reads below
    /// it fail as compacted from the moment it applies; the superseded
    /// versions are deleted in bounded steps over the following entries.
    Compact { revision: i64 },
    /// Lists, raises or disarms an alarm (etcd's Alarm call). Alarms are
    /// replicated state: a member raises one by proposing it, and every
    /// member applies it at the same index.
    Alarm {
        action: AlarmAction,
        /// The member the alarm is about (ignored by `Get`).
        member_id: u64,
        /// What the alarm is about (ignored by `Get`).
        kind: AlarmKind,
    },
    /// Creates lease `id` (never 0: the leader picks an id before it
    /// proposes) with a TTL in seconds (already raised to the minimum).
    LeaseGrant { id: i64, ttl: i64 },
    /// Deletes every key attached to lease `id`, at one revision, and the
    /// lease. Proposed by a client, or by the leader when the lease expired.
    LeaseRevoke { id: i64 },
    /// The leader's record of how long leases have left (etcd's lease
    /// checkpoint), so that a new leader does not give them their full TTL
    /// again: `(lease id, seconds left)`, 0 seconds clearing a record (the
    /// lease was kept alive: full TTL). Writes no key.
    LeaseCheckpoint { checkpoints: Vec<(i64, i64)> },
    /// A change to the users, roles, permissions or the auth-enabled flag
    /// (see `auth.rs`); writes no key.
    Auth(AuthOp),
}

/// What an [`Op::Alarm`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmAction {
    /// Only answers the alarm list.
    Get,
    Activate,
    Deactivate,
}

/// A condition of a transaction. Over a range (non-empty `range_end`), every
/// key in it must satisfy the condition. A missing key has version, create
/// and mod revision 0, and every value comparison on it is false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Bytes,
    pub range_end: Bytes,
    pub target: CompareTarget,
    pub result: CompareResult,
}

/// What a compare looks at, and the operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Value(Bytes),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    /// The key's lease id (0 for none, and for a missing key).
    Lease(i64),
}

/// How the stored attribute must relate to the operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Range(RangeRequest),
    Put {
        key: Bytes,
        value: Bytes,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
        lease: i64,
    },
    DeleteRange {
        key: Bytes,
        range_end: Bytes,
        prev_kv: bool,
    },
    /// A nested transaction: its compares are evaluated, like every compare
    /// of the enclosing transaction, against the state before it ran.
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
}

/// How a range's result is ordered (etcd's numbering). `None` with a
/// target other than the key sorts ascending, as etcd does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SortOrder {
    None = 0,
    Ascend = 1,
    Descend = 2,
}

/// What a range's result is ordered by (etcd's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SortTarget {
    Key = 0,
    Version = 1,
    Create = 2,
    Mod = 3,
    Value = 4,
}

/// A read of a key or a range of keys.
///
/// `range_end` follows etcd: empty means just `key`; `"\0"` means every key
/// `>= key`; otherwise the half-open interval `[key, range_end)`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub range_end: Bytes,
    /// At most this many pairs (0 = no limit).
    #[prost(uint64, tag = "3")]
    pub limit: u64,
    /// Return keys and metadata without values.
    #[prost(bool, tag = "4")]
    pub keys_only: bool,
    /// Return only the count.
    #[prost(bool, tag = "5")]
    pub count_only: bool,
    /// Read as of this revision (0 = the current one); it must not be
    /// compacted nor in the future.
    #[prost(int64, tag = "6")]
    pub revision: i64,
    #[prost(enumeration = "SortOrder", tag = "7")]
    pub sort_order: i32,
    #[prost(enumeration = "SortTarget", tag = "8")]
    pub sort_target: i32,
    /// Filters on the keys' revisions (0 = no bound); like sorting, applied
    /// before the limit.
    #[prost(int64, tag = "9")]
    pub min_mod_revision: i64,
    #[prost(int64, tag = "10")]
    pub max_mod_revision: i64,
    #[prost(int64, tag = "11")]
    pub min_create_revision: i64,
    #[prost(int64, tag = "12")]
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// A request for one key.
    pub fn key(key: impl Into<Bytes>) -> Self {
        RangeRequest {
            key: key.into(),
            ..Default::default()
        }
    }
}

// ---- wire form -------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct WireCommand {
    #[prost(message, optional, tag = "1")]
    request_id: Option<RequestId>,
    #[prost(oneof = "WireOp", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10")]
    op: Option<WireOp>,
    /// Absent in entries written before stamps existed.
    #[prost(message, optional, tag = "11")]
    auth: Option<WireAuthStamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireAuthStamp {
    /// Absent: anyone (auth was disabled at the gate).
    #[prost(string, optional, tag = "1")]
    user: Option<String>,
    #[prost(uint64, tag = "2")]
    revision: u64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireOp {
    #[prost(message, tag = "2")]
    Put(WirePut),
    #[prost(message, tag = "3")]
    Delete(WireDelete),
    #[prost(message, tag = "4")]
    Txn(WireTxn),
    #[prost(message, tag = "5")]
    Compact(WireCompact),
    #[prost(message, tag = "6")]
    Alarm(WireAlarm),
    #[prost(message, tag = "7")]
    LeaseGrant(WireLeaseGrant),
    #[prost(message, tag = "8")]
    LeaseRevoke(WireLeaseRevoke),
    #[prost(message, tag = "9")]
    LeaseCheckpoint(WireLeaseCheckpoint),
    #[prost(message, tag = "10")]
    Auth(WireAuthOp),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireLeaseCheckpoint {
    #[prost(message, repeated, tag = "1")]
    checkpoints: Vec<WireCheckpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireCheckpoint {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    remaining_ttl: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireLeaseGrant {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireLeaseRevoke {
    #[prost(int64, tag = "1")]
    id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireAlarm {
    /// 0 get, 1 activate, 2 deactivate (etcd's numbers).
    #[prost(uint32, tag = "1")]
    action: u32,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    /// etcd's alarm type number.
    #[prost(int32, tag = "3")]
    kind: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireCompact {
    #[prost(int64, tag = "1")]
    revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WirePut {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
    #[prost(bool, tag = "3")]
    prev_kv: bool,
    #[prost(bool, tag = "4")]
    ignore_value: bool,
    #[prost(bool, tag = "5")]
    ignore_lease: bool,
    /// Absent (0) in entries written before leases existed: no lease.
    #[prost(int64, tag = "6")]
    lease: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireDelete {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    range_end: Bytes,
    #[prost(bool, tag = "3")]
    prev_kv: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireTxn {
    #[prost(message, repeated, tag = "1")]
    compares: Vec<WireCompare>,
    #[prost(message, repeated, tag = "2")]
    success: Vec<WireTxnOp>,
    #[prost(message, repeated, tag = "3")]
    failure: Vec<WireTxnOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireCompare {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    range_end: Bytes,
    /// 0 equal, 1 greater, 2 less, 3 not equal.
    #[prost(uint32, tag = "3")]
    result: u32,
    #[prost(oneof = "WireTarget", tags = "4, 5, 6, 7, 8")]
    target: Option<WireTarget>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireTarget {
    #[prost(bytes = "bytes", tag = "4")]
    Value(Bytes),
    #[prost(int64, tag = "5")]
    Version(i64),
    #[prost(int64, tag = "6")]
    CreateRevision(i64),
    #[prost(int64, tag = "7")]
    ModRevision(i64),
    #[prost(int64, tag = "8")]
    Lease(i64),
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireTxnOp {
    #[prost(oneof = "WireTxnOpKind", tags = "1, 2, 3, 4")]
    op: Option<WireTxnOpKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum WireTxnOpKind {
    #[prost(message, tag = "1")]
    Range(RangeRequest),
    #[prost(message, tag = "2")]
    Put(WirePut),
    #[prost(message, tag = "3")]
    Delete(WireDelete),
    #[prost(message, tag = "4")]
    Txn(WireTxn),
}

const WHAT: &str = "command";

impl Op {
    /// Whether this operation stores data (a put anywhere in it): what the
    /// NOSPACE alarm refuses. Deletes and compactions are not, so that
    /// space can still be freed.
    pub fn adds_data(&self) -> bool {
        fn any_put(ops: &[TxnOp]) -> bool {
            ops.iter().any(|op| match op {
                TxnOp::Put { .. } => true,
                TxnOp::Txn {
                    success, failure, ..
                } => any_put(success) || any_put(failure),
                TxnOp::Range(_) | TxnOp::DeleteRange { .. } => false,
            })
        }
        match self {
            // etcd's quota covers lease grants too.
            Op::Put { .. } | Op::LeaseGrant { .. } => true,
            Op::Txn {
                success, failure, ..
            } => any_put(success) || any_put(failure),
            Op::DeleteRange { .. }
            | Op::Compact { .. }
            | Op::Alarm { .. }
            | Op::LeaseRevoke { .. }
            | Op::LeaseCheckpoint { .. }
            | Op::Auth(_) => false,
        }
    }

    /// A checksum of what this operation does, kept with a client's last
    /// request so that a retry can be told from a different command that
    /// reuses its sequence number. Stable across versions: it covers the
    /// operation's protobuf encoding, which is part of the log format.
    pub fn fingerprint(&self) -> u64 {
        // Neither the idempotency key nor the auth stamp: a retry that
        // passed the gate again at a later auth revision is the same
        // command.
        let bytes = Command::new(self.clone()).encode();
        // crc32 in the high half, the length in the low half; never 0,
        // which stands for "not recorded".
        ((u64::from(crc32fast::hash(&bytes)) << 32) | (bytes.len() as u64 & 0xffff_ffff)).max(1)
    }
}

impl Command {
    /// The protobuf encoding of this command.
    pub fn encode(&self) -> Bytes {
        let op = match &self.op {
            Op::Put {
                key,
                value,
                prev_kv,
                ignore_value,
                ignore_lease,
                lease,
            } => WireOp::Put(WirePut {
                key: key.clone(),
                value: value.clone(),
                prev_kv: *prev_kv,
                ignore_value: *ignore_value,
                ignore_lease: *ignore_lease,
                lease: *lease,
            }),
            Op::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => WireOp::Delete(WireDelete {
                key: key.clone(),
                range_end: range_end.clone(),
                prev_kv: *prev_kv,
            }),
            Op::Txn {
                compares,
                success,
                failure,
            } => WireOp::Txn(txn_to_wire(compares, success, failure)),
            Op::Compact { revision } => WireOp::Compact(WireCompact {
                revision: *revision,
            }),
            Op::Alarm {
                action,
                member_id,
                kind,
            } => WireOp::Alarm(WireAlarm {
                action: match action {
                    AlarmAction::Get => 0,
                    AlarmAction::Activate => 1,
                    AlarmAction::Deactivate => 2,
                },
                member_id: *member_id,
                kind: kind.number(),
            }),
            Op::LeaseGrant { id, ttl } => WireOp::LeaseGrant(WireLeaseGrant { id: *id, ttl: *ttl }),
            Op::LeaseRevoke { id } => WireOp::LeaseRevoke(WireLeaseRevoke { id: *id }),
            Op::LeaseCheckpoint { checkpoints } => WireOp::LeaseCheckpoint(WireLeaseCheckpoint {
                checkpoints: checkpoints
                    .iter()
                    .map(|&(id, remaining_ttl)| WireCheckpoint { id, remaining_ttl })
                    .collect(),
            }),
            Op::Auth(op) => WireOp::Auth(op.to_wire()),
        };
        Bytes::from(
            WireCommand {
                request_id: self.request_id,
                op: Some(op),
                auth: self.auth.as_ref().map(|a| WireAuthStamp {
                    user: a.user.clone(),
                    revision: a.revision,
                }),
            }
            .encode_to_vec(),
        )
    }

    /// Decodes a command; every malformed input is an error, never a panic.
    pub fn decode(buf: &[u8]) -> Result<Command, DecodeError> {
        let w =
            WireCommand::decode(buf).map_err(|source| DecodeError::Prost { what: WHAT, source })?;
        let op = match w.op {
            Some(WireOp::Put(p)) => Op::Put {
                key: p.key,
                value: p.value,
                prev_kv: p.prev_kv,
                ignore_value: p.ignore_value,
                ignore_lease: p.ignore_lease,
                lease: p.lease,
            },
            Some(WireOp::LeaseGrant(g)) => Op::LeaseGrant {
                id: g.id,
                ttl: g.ttl,
            },
            Some(WireOp::LeaseRevoke(r)) => Op::LeaseRevoke { id: r.id },
            Some(WireOp::LeaseCheckpoint(c)) => Op::LeaseCheckpoint {
                checkpoints: c
                    .checkpoints
                    .into_iter()
                    .map(|c| (c.id, c.remaining_ttl))
                    .collect(),
            },
            Some(WireOp::Auth(a)) => Op::Auth(AuthOp::from_wire(a)?),
            Some(WireOp::Delete(d)) => Op::DeleteRange {
                key: d.key,
                range_end: d.range_end,
                prev_kv: d.prev_kv,
            },
            Some(WireOp::Txn(t)) => {
                let (compares, success, failure) = txn_from_wire(t)?;
                Op::Txn {
                    compares,
                    success,
                    failure,
                }
            }
            Some(WireOp::Compact(c)) => Op::Compact {
                revision: c.revision,
            },
            Some(WireOp::Alarm(a)) => Op::Alarm {
                action: match a.action {
                    0 => AlarmAction::Get,
                    1 => AlarmAction::Activate,
                    2 => AlarmAction::Deactivate,
                    _ => {
                        return Err(DecodeError::Missing {
                            what: WHAT,
                            field: "alarm action",
                        });
                    }
                },
                member_id: a.member_id,
                kind: match AlarmKind::from_number(a.kind) {
                    Some(kind) => kind,
                    // A list names no alarm type (etcd sends NONE).
                    None if a.action == 0 => AlarmKind::NoSpace,
                    None => {
                        return Err(DecodeError::Missing {
                            what: WHAT,
                            field: "alarm type",
                        });
                    }
                },
            },
            None => {
                return Err(DecodeError::Missing {
                    what: WHAT,
                    field: "op",
                });
            }
        };
        Ok(Command {
            request_id: w.request_id,
            op,
            auth: w.auth.map(|a| AuthStamp {
                user: a.user,
                revision: a.revision,
            }),
        })
    }
}

fn compare_to_wire(c: &Compare) -> WireCompare {
    WireCompare {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        result: match c.result {
            CompareResult::Equal => 0,
            CompareResult::Greater => 1,
            CompareResult::Less => 2,
            CompareResult::NotEqual => 3,
        },
        target: Some(match &c.target {
            CompareTarget::Value(v) => WireTarget::Value(v.clone()),
            CompareTarget::Version(v) => WireTarget::Version(*v),
            CompareTarget::CreateRevision(v) => WireTarget::CreateRevision(*v),
            CompareTarget::ModRevision(v) => WireTarget::ModRevision(*v),
            CompareTarget::Lease(v) => WireTarget::Lease(*v),
        }),
    }
}

fn compare_from_wire(w: WireCompare) -> Result<Compare, DecodeError> {
    let result = match w.result {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        other => {
            return Err(DecodeError::Invalid {
                what: WHAT,
                field: "compare result",
                value: i64::from(other),
            });
        }
    };
    let target = match w.target {
        Some(WireTarget::Value(v)) => CompareTarget::Value(v),
        Some(WireTarget::Version(v)) => CompareTarget::Version(v),
        Some(WireTarget::CreateRevision(v)) => CompareTarget::CreateRevision(v),
        Some(WireTarget::ModRevision(v)) => CompareTarget::ModRevision(v),
        Some(WireTarget::Lease(v)) => CompareTarget::Lease(v),
        None => {
            return Err(DecodeError::Missing {
                what: WHAT,
                field: "compare target",
            });
        }
    };
    Ok(Compare {
        key: w.key,
        range_end: w.range_end,
        target,
        result,
    })
}

fn txn_to_wire(compares: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> WireTxn {
    WireTxn {
        compares: compares.iter().map(compare_to_wire).collect(),
        success: success.iter().map(txn_op_to_wire).collect(),
        failure: failure.iter().map(txn_op_to_wire).collect(),
    }
}

type TxnParts = (Vec<Compare>, Vec<TxnOp>, Vec<TxnOp>);

fn txn_from_wire(t: WireTxn) -> Result<TxnParts, DecodeError> {
    Ok((
        t.compares
            .into_iter()
            .map(compare_from_wire)
            .collect::<Result<_, _>>()?,
        t.success
            .into_iter()
            .map(txn_op_from_wire)
            .collect::<Result<_, _>>()?,
        t.failure
            .into_iter()
            .map(txn_op_from_wire)
            .collect::<Result<_, _>>()?,
    ))
}

fn txn_op_to_wire(op: &TxnOp) -> WireTxnOp {
    let op = match op {
        TxnOp::Range(r) => WireTxnOpKind::Range(r.clone()),
        TxnOp::Put {
            key,
            value,
            prev_kv,
            ignore_value,
            ignore_lease,
            lease,
        } => WireTxnOpKind::Put(WirePut {
            key: key.clone(),
            value: value.clone(),
            prev_kv: *prev_kv,
            ignore_value: *ignore_value,
            ignore_lease: *ignore_lease,
            lease: *lease,
        }),
        TxnOp::DeleteRange {
            key,
            range_end,
            prev_kv,
        } => WireTxnOpKind::Delete(WireDelete {
            key: key.clone(),
            range_end: range_end.clone(),
            prev_kv: *prev_kv,
        }),
        TxnOp::Txn {
            compares,
            success,
            failure,
        } => WireTxnOpKind::Txn(txn_to_wire(compares, success, failure)),
    };
    WireTxnOp { op: Some(op) }
}

fn txn_op_from_wire(w: WireTxnOp) -> Result<TxnOp, DecodeError> {
    Ok(match w.op {
        Some(WireTxnOpKind::Range(r)) => TxnOp::Range(r),
        Some(WireTxnOpKind::Put(p)) => TxnOp::Put {
            key: p.key,
            value: p.value,
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
            lease: p.lease,
        },
        Some(WireTxnOpKind::Delete(d)) => TxnOp::DeleteRange {
            key: d.key,
            range_end: d.range_end,
            prev_kv: d.prev_kv,
        },
        Some(WireTxnOpKind::Txn(t)) => {
            let (compares, success, failure) = txn_from_wire(t)?;
            TxnOp::Txn {
                compares,
                success,
                failure,
            }
        }
        None => {
            return Err(DecodeError::Missing {
                what: WHAT,
                field: "txn op",
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn every_kind_of_command_round_trips() {
        let cmds = [
            Command {
                request_id: Some(RequestId {
                    client_id: 7,
                    seq: 3,
                }),
                auth: None,
                op: Op::Put {
                    key: b("k"),
                    value: b("v"),
                    prev_kv: true,
                    ignore_value: true,
                    ignore_lease: false,
                    lease: 5,
                },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::DeleteRange {
                    key: b("a"),
                    range_end: b("\0"),
                    prev_kv: false,
                },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::Txn {
                    compares: vec![
                        Compare {
                            key: b("k"),
                            range_end: Bytes::new(),
                            target: CompareTarget::Value(b("v")),
                            result: CompareResult::NotEqual,
                        },
                        Compare {
                            key: b("a"),
                            range_end: b("z"),
                            target: CompareTarget::ModRevision(-4),
                            result: CompareResult::Less,
                        },
                        Compare {
                            key: b("k"),
                            range_end: Bytes::new(),
                            target: CompareTarget::CreateRevision(0),
                            result: CompareResult::Equal,
                        },
                        Compare {
                            key: b("k"),
                            range_end: Bytes::new(),
                            target: CompareTarget::Version(2),
                            result: CompareResult::Greater,
                        },
                        Compare {
                            key: b("k"),
                            range_end: Bytes::new(),
                            target: CompareTarget::Lease(9),
                            result: CompareResult::Equal,
                        },
                    ],
                    success: vec![
                        TxnOp::Range(RangeRequest {
                            key: b("a"),
                            range_end: b("b"),
                            limit: 3,
                            keys_only: true,
                            count_only: false,
                            revision: 7,
                            sort_order: SortOrder::Descend as i32,
                            sort_target: SortTarget::Mod as i32,
                            min_mod_revision: 1,
                            max_mod_revision: 2,
                            min_create_revision: 3,
                            max_create_revision: 4,
                        }),
                        TxnOp::Put {
                            key: b("x"),
                            value: Bytes::new(),
                            prev_kv: false,
                            ignore_value: false,
                            ignore_lease: false,
                            lease: 0,
                        },
                        TxnOp::Txn {
                            compares: vec![],
                            success: vec![TxnOp::Range(RangeRequest::key(b("n")))],
                            failure: vec![],
                        },
                    ],
                    failure: vec![TxnOp::DeleteRange {
                        key: b("x"),
                        range_end: Bytes::new(),
                        prev_kv: true,
                    }],
                },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::Compact { revision: 42 },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::Alarm {
                    action: AlarmAction::Activate,
                    member_id: 7,
                    kind: AlarmKind::NoSpace,
                },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::Alarm {
                    action: AlarmAction::Deactivate,
                    member_id: 7,
                    kind: AlarmKind::Corrupt,
                },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::LeaseGrant { id: 77, ttl: 10 },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::LeaseRevoke { id: 77 },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::LeaseCheckpoint {
                    checkpoints: vec![(77, 4), (78, 0)],
                },
            },
            Command {
                request_id: None,
                auth: None,
                op: Op::Auth(AuthOp::RoleAdd { name: "r".into() }),
            },
        ];
        for c in cmds {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn a_put_encoded_before_leases_existed_decodes_without_a_lease() {
        // The old wire form: no field 6.
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldPut {
            #[prost(bytes = "bytes", tag = "1")]
            key: Bytes,
            #[prost(bytes = "bytes", tag = "2")]
            value: Bytes,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldCommand {
            #[prost(message, optional, tag = "2")]
            put: Option<OldPut>,
        }
        let old = OldCommand {
            put: Some(OldPut {
                key: b("k"),
                value: b("v"),
            }),
        }
        .encode_to_vec();
        match Command::decode(&old).unwrap().op {
            Op::Put { key, lease, .. } => assert_eq!((key, lease), (b("k"), 0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_auth_stamp_round_trips_with_and_without_a_user() {
        for user in [Some("alice".to_string()), None] {
            let c = Command {
                request_id: Some(RequestId {
                    client_id: 1,
                    seq: 2,
                }),
                op: Op::DeleteRange {
                    key: b("k"),
                    range_end: Bytes::new(),
                    prev_kv: false,
                },
                auth: Some(AuthStamp {
                    user: user.clone(),
                    revision: 17,
                }),
            };
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn a_command_encoded_before_auth_stamps_existed_decodes_without_one() {
        // The old wire form: a request id and an op, no field 11.
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldCommand {
            #[prost(message, optional, tag = "1")]
            request_id: Option<RequestId>,
            #[prost(message, optional, tag = "2")]
            put: Option<WirePut>,
        }
        let old = OldCommand {
            request_id: Some(RequestId {
                client_id: 3,
                seq: 4,
            }),
            put: Some(WirePut {
                key: b("k"),
                value: b("v"),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let c = Command::decode(&old).unwrap();
        assert_eq!(c.auth, None);
        assert_eq!(
            c.request_id,
            Some(RequestId {
                client_id: 3,
                seq: 4
            })
        );
        assert!(matches!(c.op, Op::Put { .. }), "{c:?}");
        // And the other way round: a stamped command is the old form plus
        // one field, which an older decoder skips.
        let stamped = Command {
            auth: Some(AuthStamp {
                user: Some("alice".into()),
                revision: 5,
            }),
            ..c
        };
        let read_by_old = OldCommand::decode(stamped.encode().as_ref()).unwrap();
        assert_eq!(read_by_old.put.map(|p| p.key), Some(b("k")));
    }

    #[test]
    fn malformed_commands_are_typed_errors() {
        assert!(matches!(
            Command::decode(&[]),
            Err(DecodeError::Missing { field: "op", .. })
        ));
        assert!(matches!(
            Command::decode(&[0x12, 0xff]),
            Err(DecodeError::Prost { .. })
        ));
        let bad = WireCommand {
            request_id: None,
            auth: None,
            op: Some(WireOp::Txn(WireTxn {
                compares: vec![WireCompare {
                    result: 9,
                    target: Some(WireTarget::Version(1)),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert!(matches!(
            Command::decode(&bad),
            Err(DecodeError::Invalid {
                field: "compare result",
                ..
            })
        ));
    }
}
