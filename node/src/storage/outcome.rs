//! What applying a command produces, and the stored form of an outcome
//! (kept per client so that a retried command gets its original answer).

use bytes::Bytes;
use prost::Message;

use super::error::DecodeError;

/// A key with its value and etcd-style metadata.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// The revision of the put that created the key (since its last delete).
    #[prost(int64, tag = "3")]
    pub create_revision: i64,
    /// The revision of the last put to the key.
    #[prost(int64, tag = "4")]
    pub mod_revision: i64,
    /// How many puts since creation (1 after the first).
    #[prost(int64, tag = "5")]
    pub version: i64,
    /// The lease the key is attached to (0: none); a key is deleted when
    /// its lease is revoked or expires.
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// The answer to a [`RangeRequest`](super::RangeRequest).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RangeResult {
    #[prost(message, repeated, tag = "1")]
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds (regardless of `limit`).
    #[prost(uint64, tag = "2")]
    pub count: u64,
    /// Whether `limit` cut the answer short.
    #[prost(bool, tag = "3")]
    pub more: bool,
    /// The store revision the answer reflects.
    #[prost(int64, tag = "4")]
    pub revision: i64,
}

/// The result of one operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResult {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        responses: Vec<TxnOpResult>,
    },
}

/// Why a command was rejected. Rejection is deterministic (it depends only
/// on the command and the limits), so every replica rejects the same
/// commands and the log keeps moving.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key of {size} bytes exceeds the limit of {max}")]
    KeyTooLarge { size: usize, max: usize },
    #[error("value of {size} bytes exceeds the limit of {max}")]
    ValueTooLarge { size: usize, max: usize },
    /// etcd's message, as clients see it; `count` and `max` are for logs.
    #[error("etcdserver: too many operations in txn request")]
    TooManyTxnOps { count: usize, max: usize },
    #[error("undecodable command: {0}")]
    Undecodable(String),
    /// A transaction writes one key twice in one branch (or a put overlaps a
    /// delete): etcd refuses it, since one revision holds one version of a
    /// key. The messages of these variants are etcd's, verbatim: clients
    /// match on them.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A read or compaction at a revision that compaction already discarded.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read or compaction at a revision the store has not reached.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put with `ignore_value` or `ignore_lease` on a key that does not
    /// exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A write while the NOSPACE alarm is raised (the backend quota was
    /// exceeded): refused until the alarm is disarmed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A put that attaches a key to, or a revoke of, a lease that does
    /// not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant of a lease id that is in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant with a TTL above [`MAX_LEASE_TTL`](super::lease::MAX_LEASE_TTL).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A put with `ignore_lease` that names a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error(
        "request {seq} of client {client_id} is older than its last applied request {last_seq}"
    )]
    StaleRequest {
        client_id: u64,
        seq: u64,
        last_seq: u64,
    },
    /// A retry must repeat its command exactly: the same (client, seq) with
    /// another command is a client bug, and answering it with the first
    /// command's outcome would acknowledge a write that never happens.
    #[error(
        "request {seq} of client {client_id} was already used for a different command; \
         use a new sequence number for a new command"
    )]
    IdempotencyConflict { client_id: u64, seq: u64 },
    /// An auth change the auth store refused (etcd's message).
    #[error("{0}")]
    Auth(#[from] super::auth::AuthError),
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Put {
        revision: i64,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        revision: i64,
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        responses: Vec<TxnOpResult>,
    },
    /// History before the command's revision is gone; `revision` is the
    /// store's revision when it applied.
    Compact {
        revision: i64,
    },
    /// The answer to an alarm command: for a list every raised alarm, for
    /// a raise the alarm, for a disarm the alarm cleared (none if it was
    /// not raised); `revision` is the store's revision.
    Alarms {
        revision: i64,
        alarms: Vec<Alarm>,
    },
    /// A lease was granted: its id and TTL (seconds) as stored;
    /// `revision` is the store's (a grant writes no key).
    LeaseGranted {
        revision: i64,
        id: i64,
        ttl: i64,
    },
    /// A lease was revoked and its keys deleted, all at `revision` (the
    /// store's revision unchanged if it had no keys).
    LeaseRevoked {
        revision: i64,
        id: i64,
    },
    /// Lease checkpoints were recorded; `revision` is the store's (they
    /// write no key).
    LeasesCheckpointed {
        revision: i64,
    },
    /// The auth store changed (it writes no key): `revision` is the
    /// store's, `auth_revision` the auth store's after the change.
    AuthChanged {
        revision: i64,
        auth_revision: u64,
    },
    Rejected(KvError),
}

impl ApplyOutcome {
    /// The store's revision once the command applied (`None`: refused).
    pub fn revision(&self) -> Option<i64> {
        match self {
            ApplyOutcome::Put { revision, .. }
            | ApplyOutcome::Delete { revision, .. }
            | ApplyOutcome::Txn { revision, .. }
            | ApplyOutcome::Compact { revision }
            | ApplyOutcome::Alarms { revision, .. }
            | ApplyOutcome::LeaseGranted { revision, .. }
            | ApplyOutcome::LeaseRevoked { revision, .. }
            | ApplyOutcome::LeasesCheckpointed { revision }
            | ApplyOutcome::AuthChanged { revision, .. } => Some(*revision),
            ApplyOutcome::Rejected(_) => None,
        }
    }
}

/// What an alarm is about (etcd's `AlarmType`; the numbers are etcd's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// The backend quota (`--quota-backend-bytes`) was exceeded: writes
    /// are refused until the alarm is disarmed.
    NoSpace = 1,
    /// A member found its state machine inconsistent with the others.
    Corrupt = 2,
}

impl AlarmKind {
    /// etcd's wire number of the alarm type.
    pub fn number(self) -> i32 {
        self as i32
    }

    /// The alarm type of an etcd wire number; `None` for NONE (0) or
    /// unknown numbers.
    pub fn from_number(n: i32) -> Option<AlarmKind> {
        match n {
            1 => Some(AlarmKind::NoSpace),
            2 => Some(AlarmKind::Corrupt),
            _ => None,
        }
    }

    /// etcd's name for the alarm (what `etcdctl alarm list` prints).
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }
}

/// One raised alarm: which member raised it, and what about. Ordered by
/// member, then kind, which is the order alarm lists are kept in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    pub member_id: u64,
    pub kind: AlarmKind,
}

/// etcd's rendering, which `Maintenance.Status` lists as an error:
/// `memberID:<id> alarm:NOSPACE`.
impl std::fmt::Display for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "memberID:{} alarm:{}", self.member_id, self.kind.name())
    }
}

// ---- stored form (only accepted outcomes are stored) ------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct StoredOutcome {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(oneof = "StoredKind", tags = "2, 3, 4, 5")]
    kind: Option<StoredKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum StoredKind {
    #[prost(message, tag = "2")]
    Put(StoredPut),
    #[prost(message, tag = "3")]
    Delete(StoredDelete),
    #[prost(message, tag = "4")]
    Txn(StoredTxn),
    #[prost(message, tag = "5")]
    Compact(StoredCompact),
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredCompact {}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredPut {
    #[prost(message, optional, tag = "1")]
    prev_kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredDelete {
    #[prost(uint64, tag = "1")]
    deleted: u64,
    #[prost(message, repeated, tag = "2")]
    prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredTxn {
    #[prost(bool, tag = "1")]
    succeeded: bool,
    #[prost(message, repeated, tag = "2")]
    responses: Vec<StoredTxnOpResult>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredTxnOpResult {
    #[prost(oneof = "StoredOpKind", tags = "1, 2, 3, 4")]
    kind: Option<StoredOpKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum StoredOpKind {
    #[prost(message, tag = "1")]
    Range(RangeResult),
    #[prost(message, tag = "2")]
    Put(StoredPut),
    #[prost(message, tag = "3")]
    Delete(StoredDelete),
    #[prost(message, tag = "4")]
    Txn(StoredTxn),
}

/// The last applied request of a client and its outcome.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredClient {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(message, optional, tag = "2")]
    outcome: Option<StoredOutcome>,
    /// The fingerprint of the command (`Op::fingerprint`); 0 in records
    /// written before it was kept, which match any retry.
    #[prost(uint64, tag = "3")]
    fingerprint: u64,
}

/// The last applied request of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientRecord {
    pub seq: u64,
    pub fingerprint: u64,
    pub outcome: ApplyOutcome,
}

const WHAT: &str = "client outcome";

/// Encodes the outcome of request `seq` for the per-client table. `None` for
/// a rejection, which is not remembered (a retry is rejected again).
pub(crate) fn encode_client_record(
    seq: u64,
    fingerprint: u64,
    outcome: &ApplyOutcome,
) -> Option<Vec<u8>> {
    let (revision, kind) = match outcome {
        ApplyOutcome::Put { revision, prev_kv } => (
            *revision,
            StoredKind::Put(StoredPut {
                prev_kv: prev_kv.clone(),
            }),
        ),
        ApplyOutcome::Delete {
            revision,
            deleted,
            prev_kvs,
        } => (
            *revision,
            StoredKind::Delete(StoredDelete {
                deleted: *deleted,
                prev_kvs: prev_kvs.clone(),
            }),
        ),
        ApplyOutcome::Txn {
            revision,
            succeeded,
            responses,
        } => (
            *revision,
            StoredKind::Txn(stored_txn(*succeeded, responses)),
        ),
        ApplyOutcome::Compact { revision } => (*revision, StoredKind::Compact(StoredCompact {})),
        // Alarm commands are idempotent and carry no request id; their
        // answer is not remembered.
        // Lease commands carry no request id either (the gRPC API sends
        // none); a retried grant of an id is refused as existing.
        ApplyOutcome::Alarms { .. }
        | ApplyOutcome::LeaseGranted { .. }
        | ApplyOutcome::LeaseRevoked { .. }
        | ApplyOutcome::LeasesCheckpointed { .. }
        | ApplyOutcome::AuthChanged { .. }
        | ApplyOutcome::Rejected(_) => return None,
    };
    Some(
        StoredClient {
            seq,
            outcome: Some(StoredOutcome {
                revision,
                kind: Some(kind),
            }),
            fingerprint,
        }
        .encode_to_vec(),
    )
}

fn stored_txn(succeeded: bool, responses: &[TxnOpResult]) -> StoredTxn {
    StoredTxn {
        succeeded,
        responses: responses
            .iter()
            .map(|r| StoredTxnOpResult {
                kind: Some(match r {
                    TxnOpResult::Range(r) => StoredOpKind::Range(r.clone()),
                    TxnOpResult::Put { prev_kv } => StoredOpKind::Put(StoredPut {
                        prev_kv: prev_kv.clone(),
                    }),
                    TxnOpResult::DeleteRange { deleted, prev_kvs } => {
                        StoredOpKind::Delete(StoredDelete {
                            deleted: *deleted,
                            prev_kvs: prev_kvs.clone(),
                        })
                    }
                    TxnOpResult::Txn {
                        succeeded,
                        responses,
                    } => StoredOpKind::Txn(stored_txn(*succeeded, responses)),
                }),
            })
            .collect(),
    }
}

fn txn_results(t: StoredTxn) -> Result<Vec<TxnOpResult>, DecodeError> {
    t.responses
        .into_iter()
        .map(|r| {
            match r.kind.ok_or(DecodeError::Missing {
                what: WHAT,
                field: "txn op result",
            })? {
                StoredOpKind::Range(r) => Ok(TxnOpResult::Range(r)),
                StoredOpKind::Put(p) => Ok(TxnOpResult::Put { prev_kv: p.prev_kv }),
                StoredOpKind::Delete(d) => Ok(TxnOpResult::DeleteRange {
                    deleted: d.deleted,
                    prev_kvs: d.prev_kvs,
                }),
                StoredOpKind::Txn(t) => Ok(TxnOpResult::Txn {
                    succeeded: t.succeeded,
                    responses: txn_results(t)?,
                }),
            }
        })
        .collect()
}

/// Decodes a per-client record.
pub(crate) fn decode_client_record(buf: &[u8]) -> Result<ClientRecord, DecodeError> {
    let missing = |field| DecodeError::Missing { what: WHAT, field };
    let c =
        StoredClient::decode(buf).map_err(|source| DecodeError::Prost { what: WHAT, source })?;
    let o = c.outcome.ok_or_else(|| missing("outcome"))?;
    let outcome = match o.kind.ok_or_else(|| missing("kind"))? {
        StoredKind::Put(p) => ApplyOutcome::Put {
            revision: o.revision,
            prev_kv: p.prev_kv,
        },
        StoredKind::Delete(d) => ApplyOutcome::Delete {
            revision: o.revision,
            deleted: d.deleted,
            prev_kvs: d.prev_kvs,
        },
        StoredKind::Txn(t) => ApplyOutcome::Txn {
            revision: o.revision,
            succeeded: t.succeeded,
            responses: txn_results(t)?,
        },
        StoredKind::Compact(_) => ApplyOutcome::Compact {
            revision: o.revision,
        },
    };
    Ok(ClientRecord {
        seq: c.seq,
        fingerprint: c.fingerprint,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"v"),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 7,
        }
    }

    #[test]
    fn accepted_outcomes_round_trip_and_rejections_are_not_stored() {
        let outcomes = [
            ApplyOutcome::Put {
                revision: 4,
                prev_kv: Some(kv("a")),
            },
            ApplyOutcome::Delete {
                revision: 5,
                deleted: 2,
                prev_kvs: vec![kv("a"), kv("b")],
            },
            ApplyOutcome::Txn {
                revision: 6,
                succeeded: false,
                responses: vec![
                    TxnOpResult::Range(RangeResult {
                        kvs: vec![kv("c")],
                        count: 4,
                        more: true,
                        revision: 6,
                    }),
                    TxnOpResult::Put { prev_kv: None },
                    TxnOpResult::DeleteRange {
                        deleted: 0,
                        prev_kvs: vec![],
                    },
                ],
            },
        ];
        for o in outcomes {
            let buf = encode_client_record(9, 77, &o).unwrap();
            let expected = ClientRecord {
                seq: 9,
                fingerprint: 77,
                outcome: o,
            };
            assert_eq!(decode_client_record(&buf).unwrap(), expected);
        }
        assert!(encode_client_record(1, 1, &ApplyOutcome::Rejected(KvError::EmptyKey)).is_none());
        assert!(decode_client_record(&[0xff]).is_err());
    }
}
