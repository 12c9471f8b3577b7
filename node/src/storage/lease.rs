//! Leases as replicated state (etcd's lessor, the part that lives in the
//! log): which leases exist with which TTL, and which keys each holds.
//!
//! Granting, revoking and attaching a key are commands, so every member
//! holds the same leases at the same applied index; they live in the state
//! machine's file and travel in snapshot images. *When* a lease expires is
//! not replicated: only the leader keeps deadlines, in memory (see the
//! driver's `lessor.rs`), and expires a lease by proposing its revoke.
//!
//! Two tables: `leases` (id → [`StoredLease`]) and `lease_keys`
//! (`(lease, key)` → nothing), the index a revoke walks to find the keys it
//! deletes. The index is derived from the keys' latest versions (each
//! carries its lease), which is why a snapshot image carries only the
//! leases and the installer rebuilds the index.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use redb::{ReadableTable, TableDefinition};

use super::error::{DecodeError, StoreError, corrupt, db_err};

/// lease id → [`StoredLease`].
pub(crate) const LEASES: TableDefinition<'_, i64, &[u8]> = TableDefinition::new("leases");
/// `(lease id, key)` → (): the keys attached to each lease.
pub(crate) const LEASE_KEYS: TableDefinition<'_, (i64, &[u8]), ()> =
    TableDefinition::new("lease_keys");

/// The largest TTL a lease may be granted with, in seconds (etcd's
/// `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease as stored.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct StoredLease {
    /// The granted TTL in seconds.
    #[prost(int64, tag = "1")]
    pub ttl: i64,
    /// Seconds left at the leader's last checkpoint; 0: none since the
    /// grant or the last keep-alive (the lease has its full TTL).
    #[prost(int64, tag = "2")]
    pub remaining_ttl: i64,
}

/// A lease as the state machine knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// Seconds left at the last checkpoint, if one is recorded: what a new
    /// leader gives the lease instead of its full TTL.
    pub remaining_ttl: Option<i64>,
}

pub(crate) fn encode_lease(ttl: i64) -> Vec<u8> {
    encode_checkpointed(ttl, 0)
}

pub(crate) fn encode_checkpointed(ttl: i64, remaining_ttl: i64) -> Vec<u8> {
    StoredLease {
        ttl,
        remaining_ttl: remaining_ttl.max(0),
    }
    .encode_to_vec()
}

fn info(id: i64, l: &StoredLease) -> LeaseInfo {
    LeaseInfo {
        id,
        ttl: l.ttl,
        remaining_ttl: (l.remaining_ttl > 0).then_some(l.remaining_ttl),
    }
}

pub(crate) fn decode_lease(path: &Path, buf: &[u8]) -> Result<StoredLease, StoreError> {
    StoredLease::decode(buf)
        .map_err(|source| DecodeError::Prost {
            what: "lease",
            source,
        })
        .map_err(corrupt(path, "lease"))
}

/// The lease `id`, if it exists.
pub(crate) fn get<T: ReadableTable<i64, &'static [u8]>>(
    leases: &T,
    path: &Path,
    id: i64,
) -> Result<Option<LeaseInfo>, StoreError> {
    leases
        .get(id)
        .map_err(db_err(path, "read lease"))?
        .map(|v| decode_lease(path, v.value()).map(|l| info(id, &l)))
        .transpose()
}

/// Every lease, by id.
pub(crate) fn all<T: ReadableTable<i64, &'static [u8]>>(
    leases: &T,
    path: &Path,
) -> Result<Vec<LeaseInfo>, StoreError> {
    let mut out = Vec::new();
    for item in leases.iter().map_err(db_err(path, "read leases"))? {
        let (k, v) = item.map_err(db_err(path, "read leases"))?;
        let l = decode_lease(path, v.value())?;
        out.push(info(k.value(), &l));
    }
    Ok(out)
}

/// The keys attached to lease `id`, in key order.
pub(crate) fn keys<T: ReadableTable<(i64, &'static [u8]), ()>>(
    index: &T,
    path: &Path,
    id: i64,
) -> Result<Vec<Bytes>, StoreError> {
    let mut out = Vec::new();
    let lo: (i64, &[u8]) = (id, &[]);
    let iter = match id.checked_add(1) {
        Some(next) => index.range::<(i64, &[u8])>(lo..(next, &[][..])),
        None => index.range::<(i64, &[u8])>(lo..),
    }
    .map_err(db_err(path, "read lease keys"))?;
    for item in iter {
        let (k, _) = item.map_err(db_err(path, "read lease keys"))?;
        out.push(Bytes::copy_from_slice(k.value().1));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::raft::{Entry, EntryPayload, LogIndex, Membership, NodeId, Term};
    use crate::storage::{
        ApplyOutcome, Command, Compare, CompareResult, CompareTarget, KeyValue, KvError, KvStore,
        Limits, Op, RangeRequest, TxnOp, TxnOpResult,
    };

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// A store and the next log index to apply at.
    struct Sm {
        kv: KvStore,
        next: u64,
    }

    impl Sm {
        fn new(dir: &std::path::Path) -> Sm {
            Sm {
                kv: KvStore::open(dir, Limits::default()).unwrap(),
                next: 1,
            }
        }

        fn apply(&mut self, op: Op) -> ApplyOutcome {
            let e = Entry {
                term: Term(1),
                index: LogIndex(self.next),
                payload: EntryPayload::Command(
                    Command {
                        request_id: None,
                        auth: None,
                        op,
                    }
                    .encode(),
                ),
            };
            self.next += 1;
            self.kv.apply(&[e]).unwrap().pop().unwrap().1
        }

        fn put(&mut self, key: &str, lease: i64) -> ApplyOutcome {
            self.apply(put(key, lease, false))
        }

        fn get(&self, key: &str) -> Option<KeyValue> {
            self.kv.get(key.as_bytes()).unwrap()
        }
    }

    fn put(key: &str, lease: i64, ignore_lease: bool) -> Op {
        Op::Put {
            key: b(key),
            value: b("v"),
            prev_kv: true,
            ignore_value: false,
            ignore_lease,
            lease,
        }
    }

    #[test]
    fn a_granted_lease_holds_the_keys_put_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = Sm::new(dir.path());
        assert_eq!(
            sm.apply(Op::LeaseGrant { id: 7, ttl: 30 }),
            ApplyOutcome::LeaseGranted {
                revision: 1,
                id: 7,
                ttl: 30
            }
        );
        sm.put("a", 7);
        sm.put("b", 7);
        sm.put("c", 0);
        assert_eq!(sm.get("a").unwrap().lease, 7);
        assert_eq!(sm.get("c").unwrap().lease, 0);
        assert_eq!(sm.kv.lease_keys(7).unwrap(), vec![b("a"), b("b")]);
        assert_eq!(
            sm.kv.lease(7).unwrap(),
            Some(super::LeaseInfo {
                id: 7,
                ttl: 30,
                remaining_ttl: None
            })
        );
        assert_eq!(
            sm.apply(Op::LeaseGrant { id: 7, ttl: 5 }),
            ApplyOutcome::Rejected(KvError::LeaseExists)
        );
        assert_eq!(
            sm.apply(Op::LeaseGrant { id: 0, ttl: 5 }),
            ApplyOutcome::Rejected(KvError::LeaseNotFound),
            "0 means no lease, never an id"
        );
    }

    #[test]
    fn a_put_with_an_unknown_lease_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = Sm::new(dir.path());
        let rev = sm.kv.revision();
        assert_eq!(
            sm.put("a", 99),
            ApplyOutcome::Rejected(KvError::LeaseNotFound)
        );
        assert_eq!(sm.kv.revision(), rev);
        assert!(sm.get("a").is_none());
        // Inside a transaction too, before anything is written.
        let txn = Op::Txn {
            compares: vec![],
            success: vec![
                TxnOp::Put {
                    key: b("x"),
                    value: b("1"),
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                    lease: 0,
                },
                TxnOp::Put {
                    key: b("y"),
                    value: b("1"),
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                    lease: 99,
                },
            ],
            failure: vec![],
        };
        assert_eq!(
            sm.apply(txn),
            ApplyOutcome::Rejected(KvError::LeaseNotFound)
        );
        assert!(sm.get("x").is_none());
    }

    #[test]
    fn ignore_lease_keeps_the_lease_and_a_plain_put_or_delete_detaches() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = Sm::new(dir.path());
        sm.apply(Op::LeaseGrant { id: 3, ttl: 10 });
        sm.put("a", 3);
        sm.put("b", 3);
        sm.apply(put("a", 0, true));
        assert_eq!(sm.get("a").unwrap().lease, 3, "ignore_lease keeps it");
        assert_eq!(
            sm.apply(put("zz", 0, true)),
            ApplyOutcome::Rejected(KvError::KeyNotFound)
        );
        sm.put("a", 0);
        assert_eq!(sm.get("a").unwrap().lease, 0);
        sm.apply(Op::DeleteRange {
            key: b("b"),
            range_end: Bytes::new(),
            prev_kv: false,
        });
        assert!(sm.kv.lease_keys(3).unwrap().is_empty());
        // Revoking now deletes nothing: "a" was detached, "b" deleted.
        let rev = sm.kv.revision();
        assert_eq!(
            sm.apply(Op::LeaseRevoke { id: 3 }),
            ApplyOutcome::LeaseRevoked {
                revision: rev,
                id: 3
            }
        );
        assert!(sm.get("a").is_some());
    }

    #[test]
    fn a_revoke_deletes_every_attached_key_at_one_revision() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = Sm::new(dir.path());
        sm.apply(Op::LeaseGrant { id: 5, ttl: 10 });
        sm.put("a", 5);
        sm.put("b", 5);
        sm.put("c", 5);
        sm.put("keep", 0);
        let before = sm.kv.revision();
        assert_eq!(
            sm.apply(Op::LeaseRevoke { id: 5 }),
            ApplyOutcome::LeaseRevoked {
                revision: before + 1,
                id: 5
            }
        );
        assert_eq!(sm.kv.revision(), before + 1, "one revision for all");
        for k in ["a", "b", "c"] {
            assert!(sm.get(k).is_none(), "{k}");
        }
        assert!(sm.get("keep").is_some());
        assert_eq!(sm.kv.lease(5).unwrap(), None);
        assert!(sm.kv.leases().unwrap().is_empty());
        assert_eq!(
            sm.apply(Op::LeaseRevoke { id: 5 }),
            ApplyOutcome::Rejected(KvError::LeaseNotFound)
        );
        // History: the version before the revoke still shows its lease.
        let past = sm
            .kv
            .range(&RangeRequest {
                revision: before,
                ..RangeRequest::key(b("a"))
            })
            .unwrap();
        assert_eq!(past.kvs[0].lease, 5);
    }

    #[test]
    fn a_compare_on_lease_sees_the_key_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = Sm::new(dir.path());
        sm.apply(Op::LeaseGrant { id: 4, ttl: 10 });
        sm.put("a", 4);
        let cmp = |key: &str, lease| Op::Txn {
            compares: vec![Compare {
                key: b(key),
                range_end: Bytes::new(),
                target: CompareTarget::Lease(lease),
                result: CompareResult::Equal,
            }],
            success: vec![TxnOp::Range(RangeRequest::key(b(key)))],
            failure: vec![],
        };
        let succeeded = |o: ApplyOutcome| match o {
            ApplyOutcome::Txn {
                succeeded,
                responses,
                ..
            } => {
                if let Some(TxnOpResult::Range(r)) = responses.first()
                    && let Some(kv) = r.kvs.first()
                {
                    assert_eq!(kv.lease, 4);
                }
                succeeded
            }
            other => panic!("{other:?}"),
        };
        assert!(succeeded(sm.apply(cmp("a", 4))));
        assert!(!succeeded(sm.apply(cmp("a", 5))));
        assert!(
            succeeded(sm.apply(cmp("missing", 0))),
            "a missing key has lease 0"
        );
    }

    /// A checkpoint records how long a lease has left, writes no key,
    /// skips a lease that is gone, and 0 clears it (a keep-alive: full
    /// TTL); the record survives a restart.
    #[test]
    fn checkpoints_record_the_time_left_and_zero_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = Sm::new(dir.path());
            sm.apply(Op::LeaseGrant { id: 8, ttl: 60 });
            sm.apply(Op::LeaseGrant { id: 9, ttl: 60 });
            let before = sm.kv.revision();
            assert_eq!(
                sm.apply(Op::LeaseCheckpoint {
                    checkpoints: vec![(8, 41), (9, 50), (404, 7)],
                }),
                ApplyOutcome::LeasesCheckpointed { revision: before }
            );
            assert_eq!(sm.kv.revision(), before, "no key written");
            sm.apply(Op::LeaseCheckpoint {
                checkpoints: vec![(9, 0)],
            });
            assert_eq!(sm.kv.lease(404).unwrap(), None, "not created");
            sm.kv.sync().unwrap();
        }
        let kv = KvStore::open(dir.path(), Limits::default()).unwrap();
        let left: Vec<_> = kv
            .leases()
            .unwrap()
            .into_iter()
            .map(|l| (l.id, l.ttl, l.remaining_ttl))
            .collect();
        assert_eq!(left, vec![(8, 60, Some(41)), (9, 60, None)]);
    }

    #[test]
    fn leases_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = Sm::new(dir.path());
            sm.apply(Op::LeaseGrant { id: 8, ttl: 60 });
            sm.put("a", 8);
            sm.kv.sync().unwrap();
        }
        let kv = KvStore::open(dir.path(), Limits::default()).unwrap();
        assert_eq!(
            kv.leases().unwrap(),
            vec![super::LeaseInfo {
                id: 8,
                ttl: 60,
                remaining_ttl: None
            }]
        );
        assert_eq!(kv.lease_keys(8).unwrap(), vec![b("a")]);
        assert_eq!(kv.get(b"a").unwrap().unwrap().lease, 8);
    }

    #[test]
    fn a_follower_that_installs_a_snapshot_has_the_leases_and_their_keys() {
        let src_dir = tempfile::tempdir().unwrap();
        let mut sm = Sm::new(src_dir.path());
        sm.kv
            .apply(&[Entry {
                term: Term(1),
                index: LogIndex(1),
                payload: EntryPayload::Membership(Membership::with_voters([(
                    NodeId(1),
                    Bytes::new(),
                )])),
            }])
            .unwrap();
        sm.next = 2;
        sm.apply(Op::LeaseGrant { id: 1, ttl: 10 });
        sm.apply(Op::LeaseGrant { id: 2, ttl: 20 });
        sm.put("a", 1);
        sm.put("b", 2);
        sm.put("c", 1);
        sm.put("c", 0);
        let mut reader = sm.kv.snapshot().unwrap();
        let dst_dir = tempfile::tempdir().unwrap();
        let dst = KvStore::open(dst_dir.path(), Limits::default()).unwrap();
        let mut installer = dst.begin_install().unwrap();
        let mut check = crate::storage::ImageCheck::new(u64::MAX);
        while let Some(chunk) = reader.next_chunk() {
            let chunk = chunk.unwrap();
            check.feed(&chunk).unwrap();
            installer.write_chunk(&chunk).unwrap();
        }
        check.finish().unwrap();
        installer.finish().unwrap();
        assert_eq!(dst.leases().unwrap(), sm.kv.leases().unwrap());
        assert_eq!(dst.lease_keys(1).unwrap(), vec![b("a")]);
        assert_eq!(dst.lease_keys(2).unwrap(), vec![b("b")]);
        // And a revoke there deletes the keys as on the source.
        let mut follower = Sm {
            kv: dst,
            next: sm.next,
        };
        follower.apply(Op::LeaseRevoke { id: 1 });
        assert!(follower.get("a").is_none());
        assert!(follower.get("c").is_some());
    }
}
