//! Multi-version history of the key-value state machine (etcd's MVCC).
//!
//! Every write of a key is kept as one version in the `history` table,
//! keyed by `(key, revision)` so that the versions of a key sit together in
//! revision order: "the version of `k` as of revision `r`" is the last
//! entry of `k` at or below `r`, one ordered lookup. A delete writes a
//! tombstone version. The `changes` table lists the same versions by
//! `(revision, sub-revision)` (the position of the write inside its
//! revision), which is the order compaction walks history in, and the
//! order watchers will replay it in.
//!
//! The latest live version of every key is also kept in the state
//! machine's `kv` table (`kv_store.rs`): current reads and compares, the
//! common case, never look at history.
//!
//! - `key_index.rs`: finding the version of a key, or of every key in a
//!   range, as of a revision;
//! - `range.rs`: a range read at any revision, with etcd's filters, sorting
//!   and limit;
//! - `compaction.rs`: dropping the versions a compaction made unreachable,
//!   in bounded steps;
//! - `hash.rs`: a checksum of history, equal on members at the same index;
//! - `replay.rs`: history read back as changes in revision order (watch).

pub(crate) mod compaction;
pub(crate) mod hash;
pub(crate) mod key_index;
pub(crate) mod range;
pub(crate) mod replay;

use redb::TableDefinition;

/// `(key, revision)` → a stored version (`StoredValue` with `sub` and,
/// for a delete, `tombstone` set).
pub(crate) const HISTORY: TableDefinition<'_, (&[u8], i64), &[u8]> =
    TableDefinition::new("history");
/// `(revision, sub-revision)` → key: the versions in the order they were
/// written.
pub(crate) const CHANGES: TableDefinition<'_, (i64, u32), &[u8]> = TableDefinition::new("changes");
