//! The invariants the whole-node simulation checks after every tick:
//!
//! - **one state per index**: two members that applied the same index hold
//!   the same state machine (keys, values, metadata, revision, the
//!   configuration, and the whole history with the compacted revision),
//!   by a hash of all of it;
//! - **a configuration in force**: a member that applied anything knows at
//!   least one voter (a snapshot-installed member must not forget the
//!   configuration);
//! - **nothing acknowledged is lost**: a member whose revision reached an
//!   acknowledged write's revision holds that write in its history (unless
//!   compacted);
//! - **readiness is earned**: a member does not say it is ready while it is
//!   behind the cluster's commit index for longer than a leader needs to
//!   tell it so.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::raft::{LogIndex, NodeId};
use crate::storage::{KvStore, RangeRequest};

/// A broken invariant: what, where and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub tick: u64,
    pub property: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tick {}: {}: {}", self.tick, self.property, self.detail)
    }
}

/// A write the cluster acknowledged: `key` was set to `value` at `revision`.
#[derive(Clone, Debug)]
pub(super) struct Acked {
    pub key: Bytes,
    pub value: Bytes,
    pub revision: i64,
}

/// What the checks remember between ticks.
#[derive(Debug, Default)]
pub(super) struct Checks {
    /// The first state hash seen at each applied index, and whose it was.
    by_applied: BTreeMap<LogIndex, (u64, NodeId)>,
    /// The applied index each member was last hashed at.
    hashed_at: BTreeMap<NodeId, LogIndex>,
    /// For how many ticks in a row each member said it was ready while
    /// behind.
    ready_while_behind: BTreeMap<NodeId, u64>,
}

/// Everything a state machine holds, as one number.
pub(super) fn state_hash(kv: &KvStore) -> Result<u64, String> {
    let all = kv
        .range(&RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for kv in &all.kvs {
        kv.key.hash(&mut h);
        kv.value.hash(&mut h);
        (kv.create_revision, kv.mod_revision, kv.version).hash(&mut h);
    }
    kv.revision().hash(&mut h);
    kv.hash_history(0).map_err(|e| e.to_string())?.hash(&mut h);
    crate::storage::encode_membership(&kv.membership()).hash(&mut h);
    Ok(h.finish())
}

impl Checks {
    /// One state per index, and a configuration in force.
    pub fn state(&mut self, id: NodeId, kv: &KvStore) -> Result<(), (&'static str, String)> {
        let applied = kv.applied_index();
        if applied > LogIndex::ZERO && kv.membership().voter_count() == 0 {
            return Err((
                "a configuration in force",
                format!("member {id} applied {applied} but knows no voter"),
            ));
        }
        // Before anything is applied a joining member knows nothing yet,
        // unlike a bootstrapped one: there is no state to compare.
        if applied == LogIndex::ZERO || self.hashed_at.get(&id) == Some(&applied) {
            return Ok(());
        }
        self.hashed_at.insert(id, applied);
        let hash = state_hash(kv).map_err(|e| ("readable state", format!("member {id}: {e}")))?;
        match self.by_applied.get(&applied) {
            Some((first, other)) if *first != hash => Err((
                "one state per index",
                format!("members {other} and {id} differ at applied index {applied}"),
            )),
            Some(_) => Ok(()),
            None => {
                self.by_applied.insert(applied, (hash, id));
                Ok(())
            }
        }
    }

    /// Nothing acknowledged is lost.
    pub fn acknowledged(
        id: NodeId,
        kv: &KvStore,
        acked: &[Acked],
    ) -> Result<(), (&'static str, String)> {
        let revision = kv.revision();
        let compacted = kv.compacted_revision();
        // Each write is read back at its own revision, from history; what
        // a compaction discarded can no longer be read.
        for a in acked
            .iter()
            .filter(|a| a.revision <= revision && a.revision >= compacted)
        {
            let found = kv
                .read(&RangeRequest {
                    revision: a.revision,
                    ..RangeRequest::key(a.key.clone())
                })
                .map_err(|e| ("readable state", format!("member {id}: {e}")))?
                .kvs
                .pop();
            let ok = found
                .as_ref()
                .is_some_and(|kv| kv.value == a.value && kv.mod_revision == a.revision);
            if !ok {
                return Err((
                    "nothing acknowledged is lost",
                    format!(
                        "member {id} at revision {revision} lacks {:?} written at {}: has {:?}",
                        a.key, a.revision, found
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Readiness is earned: `ready` is what the member's readiness probe
    /// says, `behind` whether it is more than the probe's gap behind the
    /// cluster's commit index, `grace` how many ticks a member may take to
    /// learn that.
    pub fn readiness(
        &mut self,
        id: NodeId,
        ready: bool,
        behind: bool,
        grace: u64,
    ) -> Result<(), (&'static str, String)> {
        let n = self.ready_while_behind.entry(id).or_insert(0);
        *n = if ready && behind { *n + 1 } else { 0 };
        if *n > grace {
            return Err((
                "readiness is earned",
                format!("member {id} said it was ready while behind for {n} ticks"),
            ));
        }
        Ok(())
    }

    /// Forgets what was known of a member's applied state (it restarted or
    /// was removed).
    pub fn forget(&mut self, id: NodeId) {
        self.hashed_at.remove(&id);
        self.ready_while_behind.remove(&id);
    }
}
