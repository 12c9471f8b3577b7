//! What a key-value command needs of the auth store, and whether a caller
//! holds it: the one statement of the rules that both the client gates
//! (gRPC and HTTP, when a request arrives) and the state machine (when a
//! stamped command applies after the auth store changed) use.
//!
//! The rules are etcd's: a put needs write on its key (and read when it
//! returns the previous pair); a delete needs write on its range (and read
//! with `prev_kv`); a transaction needs read on every compare's range and
//! what each operation of both branches needs (whichever runs, nested
//! transactions included), a range inside it read. Commands that touch no
//! key by a client's request (compaction, alarms, leases, auth changes)
//! have no key needs here: their gates ask for the root role or nothing.
//!
//! Why a re-check at apply: a request is checked against the auth store
//! its member had applied when it arrived, then waits in the log. A
//! permission revoked (a user deleted, a role taken away, auth enabled)
//! in between commits first, and without a second look the write would
//! apply against a store that no longer allows it. The re-check depends
//! only on the command and the auth store at its point of the log, so
//! every member decides alike.

use super::auth::{AuthState, Need};
use super::command::{AuthStamp, Op, TxnOp};

/// Calls `f` with each `(need, key, range_end)` that `op` needs, in the
/// order a gate checks them, stopping at the first error. Commands that
/// are not key reads or writes need nothing here.
pub fn for_each_need<E>(
    op: &Op,
    f: &mut impl FnMut(Need, &[u8], &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    match op {
        Op::Put { key, prev_kv, .. } => put(key, *prev_kv, f),
        Op::DeleteRange {
            key,
            range_end,
            prev_kv,
        } => delete(key, range_end, *prev_kv, f),
        Op::Txn {
            compares,
            success,
            failure,
        } => txn(compares, success, failure, f),
        Op::Compact { .. }
        | Op::Alarm { .. }
        | Op::LeaseGrant { .. }
        | Op::LeaseRevoke { .. }
        | Op::LeaseCheckpoint { .. }
        | Op::Auth(_) => Ok(()),
    }
}

fn put<E>(
    key: &[u8],
    prev_kv: bool,
    f: &mut impl FnMut(Need, &[u8], &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    f(Need::Write, key, &[])?;
    if prev_kv {
        f(Need::Read, key, &[])?;
    }
    Ok(())
}

fn delete<E>(
    key: &[u8],
    range_end: &[u8],
    prev_kv: bool,
    f: &mut impl FnMut(Need, &[u8], &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    f(Need::Write, key, range_end)?;
    if prev_kv {
        f(Need::Read, key, range_end)?;
    }
    Ok(())
}

fn txn<E>(
    compares: &[super::command::Compare],
    success: &[TxnOp],
    failure: &[TxnOp],
    f: &mut impl FnMut(Need, &[u8], &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    for c in compares {
        f(Need::Read, &c.key, &c.range_end)?;
    }
    for op in success.iter().chain(failure) {
        match op {
            TxnOp::Range(r) => f(Need::Read, &r.key, &r.range_end)?,
            TxnOp::Put { key, prev_kv, .. } => put(key, *prev_kv, f)?,
            TxnOp::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => delete(key, range_end, *prev_kv, f)?,
            TxnOp::Txn {
                compares,
                success,
                failure,
            } => txn(compares, success, failure, f)?,
        }
    }
    Ok(())
}

/// Whether `user` (`None`: an unauthenticated caller) may run `op`
/// against `state`. With auth disabled, anyone may run anything; with it
/// enabled, a caller without a user may run nothing that needs a key.
pub fn permitted(state: &AuthState, user: Option<&str>, op: &Op) -> bool {
    if !state.enabled {
        return true;
    }
    for_each_need(op, &mut |need, key, range_end| match user {
        Some(u) if state.permitted(u, need, key, range_end) => Ok(()),
        _ => Err(()),
    })
    .is_ok()
}

/// Whether a stamped command must be refused when it applies against
/// `state` (the auth store at its point of the log): only when the auth
/// store changed since the gate checked it and the check now fails. A
/// command checked at the current revision is not checked again (the gate
/// saw this very store), which keeps the common case free.
pub fn denied_at_apply(state: &AuthState, stamp: &AuthStamp, op: &Op) -> bool {
    stamp.revision != state.revision && !permitted(state, stamp.user.as_deref(), op)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::auth::{AuthOp, PermKind, Permission};
    use crate::storage::command::{Compare, CompareResult, CompareTarget, RangeRequest};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn needs(op: &Op) -> Vec<(Need, Bytes, Bytes)> {
        let mut out = Vec::new();
        for_each_need(op, &mut |need, key: &[u8], end: &[u8]| {
            out.push((
                need,
                Bytes::copy_from_slice(key),
                Bytes::copy_from_slice(end),
            ));
            Ok::<(), ()>(())
        })
        .unwrap();
        out
    }

    fn put_op(key: &str, prev_kv: bool) -> Op {
        Op::Put {
            key: b(key),
            value: b("v"),
            prev_kv,
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        }
    }

    #[test]
    fn a_put_needs_write_and_read_only_for_its_previous_pair() {
        assert_eq!(
            needs(&put_op("k", false)),
            vec![(Need::Write, b("k"), Bytes::new())]
        );
        assert_eq!(
            needs(&put_op("k", true)),
            vec![
                (Need::Write, b("k"), Bytes::new()),
                (Need::Read, b("k"), Bytes::new())
            ]
        );
    }

    #[test]
    fn a_delete_needs_write_on_its_range_and_read_for_what_it_returns() {
        let op = Op::DeleteRange {
            key: b("a"),
            range_end: b("c"),
            prev_kv: true,
        };
        assert_eq!(
            needs(&op),
            vec![(Need::Write, b("a"), b("c")), (Need::Read, b("a"), b("c"))]
        );
    }

    #[test]
    fn a_txn_needs_its_compares_and_both_branches_nested_included() {
        let op = Op::Txn {
            compares: vec![Compare {
                key: b("c"),
                range_end: b("d"),
                target: CompareTarget::Version(1),
                result: CompareResult::Equal,
            }],
            success: vec![TxnOp::Range(RangeRequest::key(b("r")))],
            failure: vec![TxnOp::Txn {
                compares: vec![],
                success: vec![TxnOp::Put {
                    key: b("p"),
                    value: b("v"),
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                    lease: 0,
                }],
                failure: vec![TxnOp::DeleteRange {
                    key: b("x"),
                    range_end: Bytes::new(),
                    prev_kv: false,
                }],
            }],
        };
        assert_eq!(
            needs(&op),
            vec![
                (Need::Read, b("c"), b("d")),
                (Need::Read, b("r"), Bytes::new()),
                (Need::Write, b("p"), Bytes::new()),
                (Need::Write, b("x"), Bytes::new()),
            ]
        );
        assert!(needs(&Op::Compact { revision: 3 }).is_empty());
    }

    fn enabled_with_writer() -> AuthState {
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd {
                name: "root".into(),
                password_hash: None,
            },
            AuthOp::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthOp::RoleAdd { name: "w".into() },
            AuthOp::RoleGrantPermission {
                role: "w".into(),
                permission: Permission {
                    kind: PermKind::Write,
                    key: b("k"),
                    range_end: Bytes::new(),
                },
            },
            AuthOp::UserAdd {
                name: "alice".into(),
                password_hash: None,
            },
            AuthOp::UserGrantRole {
                user: "alice".into(),
                role: "w".into(),
            },
            AuthOp::Enable {
                signing_key: b("key"),
            },
        ] {
            s.apply(op).unwrap();
        }
        s
    }

    #[test]
    fn a_user_may_run_what_its_roles_cover_and_nobody_may_without_a_user() {
        let s = enabled_with_writer();
        assert!(permitted(&s, Some("alice"), &put_op("k", false)));
        // prev_kv needs read, which alice lacks.
        assert!(!permitted(&s, Some("alice"), &put_op("k", true)));
        assert!(!permitted(&s, Some("alice"), &put_op("other", false)));
        assert!(!permitted(&s, None, &put_op("k", false)));
        // Nothing key-related: nothing to refuse.
        assert!(permitted(&s, None, &Op::LeaseRevoke { id: 1 }));
        let disabled = AuthState::default();
        assert!(permitted(&disabled, None, &put_op("k", true)));
    }

    #[test]
    fn only_a_stamp_of_an_older_revision_is_checked_again() {
        let s = enabled_with_writer();
        let op = put_op("other", false);
        let current = AuthStamp {
            user: Some("alice".into()),
            revision: s.revision,
        };
        // Checked against this very store at the gate: trusted.
        assert!(!denied_at_apply(&s, &current, &op));
        let older = AuthStamp {
            revision: s.revision - 1,
            ..current
        };
        assert!(denied_at_apply(&s, &older, &op));
        assert!(!denied_at_apply(&s, &older, &put_op("k", false)));
    }
}
