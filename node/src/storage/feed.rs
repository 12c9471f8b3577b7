//! The change feed: what each apply batch did to the keys, announced to
//! whoever watches (the Watch service) once it is committed.
//!
//! The feed is a `tokio::sync::broadcast` channel owned by the state
//! machine. Sending never blocks and never fails the apply: a subscriber
//! that falls behind by more than [`FEED_CAPACITY`] announcements loses the
//! oldest ones (it is told it lagged), and a subscriber that misses
//! anything reads it back from history instead (see
//! [`KvStore::replay`](super::KvStore::replay)). So the feed is an
//! optimisation of the common case, never the only copy of an event.
//!
//! Each announcement says which revisions it covers, `(after, revision]`;
//! a subscriber that has delivered everything up to `after` can go on with
//! the announced changes, anyone else must read history first. A store
//! that moves without listing its changes (a snapshot was installed, or
//! nobody subscribed when the batch applied) announces [`Applied::Jumped`].

use std::sync::Arc;

use tokio::sync::broadcast;

use super::outcome::KeyValue;

/// Announcements kept for a subscriber that has not read them yet.
pub const FEED_CAPACITY: usize = 256;

/// What a change did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// A put: the key as written. A delete: the key, with `mod_revision`
    /// the revision of the delete and nothing else set (etcd's tombstone).
    pub kv: KeyValue,
    /// The key before the change; `None` if it did not exist. A change read
    /// back from history carries it only when asked for, and only while the
    /// previous version is not compacted.
    pub prev: Option<KeyValue>,
}

impl Change {
    /// The revision the change happened at.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// One announcement of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every change of the revisions `(after, revision]`, in the order they
    /// were made.
    Changes {
        after: i64,
        revision: i64,
        changes: Vec<Change>,
    },
    /// The store is at `revision` now; what changed before it must be read
    /// from history.
    Jumped { revision: i64 },
}

impl Applied {
    /// The store's revision once this was applied.
    pub fn revision(&self) -> i64 {
        match self {
            Applied::Changes { revision, .. } | Applied::Jumped { revision } => *revision,
        }
    }
}

/// A subscription to the feed.
pub type Subscription = broadcast::Receiver<Arc<Applied>>;

/// The sending side, held by the state machine.
#[derive(Debug)]
pub(crate) struct Feed {
    tx: broadcast::Sender<Arc<Applied>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            tx: broadcast::channel(FEED_CAPACITY).0,
        }
    }
}

impl Feed {
    /// Whether anyone listens: changes are collected only then.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub(crate) fn subscribe(&self) -> Subscription {
        self.tx.subscribe()
    }

    /// Announces a batch; nobody listening is not an error.
    pub(crate) fn announce(&self, applied: Applied) {
        let _ = self.tx.send(Arc::new(applied));
    }
}

/// Whether `key` lies in the etcd range `[start, end)` (`end` empty: the
/// key `start` alone; `end` = `"\0"`: every key from `start` on).
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd_conventions() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"zz", b"b", b"\0"));
        assert!(!in_range(b"a", b"b", b"\0"));
        assert!(in_range(b"ab", b"a", b"b"));
        assert!(!in_range(b"b", b"a", b"b"));
    }
}
