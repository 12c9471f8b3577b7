//! etcd's rule that a transaction branch writes each key at most once: two
//! puts of one key, or a put of a key a delete in the same branch covers,
//! are refused as "duplicate key". One revision holds one version of a key;
//! without the rule, the second write would silently overwrite the first
//! at the same revision.
//!
//! Nested transactions count as part of the branch they sit in: the puts of
//! both their branches and the deletes of both are checked against the
//! enclosing branch (a key put in both branches of one nested transaction
//! is fine, only one of them runs).

use std::collections::HashSet;

use bytes::Bytes;

use super::command::TxnOp;
use super::outcome::KvError;

/// A delete's range, etcd-encoded (`end` empty: one key; `"\0"`: no end).
struct Deleted {
    key: Bytes,
    end: Bytes,
}

impl Deleted {
    fn covers(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.key.as_ref()
        } else if self.end.as_ref() == [0] {
            k >= self.key.as_ref()
        } else {
            k >= self.key.as_ref() && k < self.end.as_ref()
        }
    }
}

fn covered(dels: &[Deleted], k: &[u8]) -> bool {
    dels.iter().any(|d| d.covers(k))
}

/// Checks both branches of a transaction.
pub(crate) fn check(success: &[TxnOp], failure: &[TxnOp]) -> Result<(), KvError> {
    branch(success)?;
    branch(failure)?;
    Ok(())
}

/// The keys a branch puts and the ranges it deletes, or the duplicate.
fn branch(ops: &[TxnOp]) -> Result<(HashSet<Bytes>, Vec<Deleted>), KvError> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::DeleteRange { key, range_end, .. } => Some(Deleted {
                key: key.clone(),
                end: range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts = HashSet::new();
    for op in ops {
        let TxnOp::Txn {
            success, failure, ..
        } = op
        else {
            continue;
        };
        let (puts_then, dels_then) = branch(success)?;
        let (puts_else, dels_else) = branch(failure)?;
        for k in &puts_then {
            if puts.contains(k) || covered(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || covered(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        if let TxnOp::Put { key, .. } = op {
            if puts.contains(key) || covered(&dels, key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &'static str) -> TxnOp {
        TxnOp::Put {
            key: Bytes::from_static(k.as_bytes()),
            value: Bytes::new(),
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        }
    }

    fn del(k: &'static str, end: &'static str) -> TxnOp {
        TxnOp::DeleteRange {
            key: Bytes::from_static(k.as_bytes()),
            range_end: Bytes::from_static(end.as_bytes()),
            prev_kv: false,
        }
    }

    fn txn(success: Vec<TxnOp>, failure: Vec<TxnOp>) -> TxnOp {
        TxnOp::Txn {
            compares: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn a_key_put_twice_in_one_branch_is_a_duplicate() {
        assert_eq!(
            check(&[put("a"), put("a")], &[]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(&[], &[put("a"), put("a")]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(check(&[put("a")], &[put("a")]), Ok(()));
        assert_eq!(check(&[put("a"), put("b")], &[]), Ok(()));
    }

    #[test]
    fn a_put_under_a_delete_of_the_same_branch_is_a_duplicate() {
        assert_eq!(
            check(&[del("a", "c"), put("b")], &[]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(&[put("b"), del("a", "\0")], &[]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(check(&[del("a", "b"), put("b")], &[]), Ok(()));
        assert_eq!(check(&[del("a", ""), del("a", "")], &[]), Ok(()));
    }

    #[test]
    fn nested_transactions_count_with_their_enclosing_branch() {
        assert_eq!(
            check(&[put("a"), txn(vec![put("a")], vec![])], &[]),
            Err(KvError::DuplicateKey)
        );
        assert_eq!(
            check(&[txn(vec![del("a", "z")], vec![]), put("b")], &[]),
            Err(KvError::DuplicateKey)
        );
        // Only one branch of the nested transaction runs.
        assert_eq!(check(&[txn(vec![put("a")], vec![put("a")])], &[]), Ok(()));
        assert_eq!(
            check(
                &[txn(vec![put("a")], vec![]), txn(vec![put("a")], vec![])],
                &[]
            ),
            Err(KvError::DuplicateKey)
        );
    }
}
