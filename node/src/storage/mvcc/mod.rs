//! Multi-version history of the key-value state machine (etcd's MVCC).
//!
//! Every write of a key is kept as one version in the `versions` table,
//! keyed by `(revision, sub-revision)` (the position of the write inside
//! its revision), so a write appends at the end of the table, and history
//! read in revision order (compaction, watch replay) is one ordered scan.
//! A delete writes a tombstone version. Finding the versions of a key is
//! the in-memory key index's job (`key_index.rs`).
//!
//! The latest live version of every key is also kept in the state
//! machine's `kv` table (`kv_store.rs`): current reads and compares, the
//! common case, never look at history.
//!
//! - `key_index.rs`: the versions of every key, in memory;
//! - `range.rs`: a range read at any revision, with etcd's filters, sorting
//!   and limit;
//! - `compaction.rs`: dropping the versions a compaction made unreachable,
//!   in bounded steps;
//! - `hash.rs`: a checksum of history, equal on members at the same index;
//! - `replay.rs`: history read back as changes in revision order (watch);
//! - `upgrade.rs`: files of the formats before this one, brought up to it.

pub(crate) mod compaction;
pub(crate) mod hash;
pub(crate) mod key_index;
pub(crate) mod range;
pub(crate) mod replay;
pub(crate) mod upgrade;

use redb::{Table, TableDefinition};

/// `(revision, sub-revision)` → `(key, stored version)`: every kept
/// version (a `StoredValue` with `sub` and, for a delete, `tombstone`
/// set), in the order they were written.
pub(crate) const VERSIONS: TableDefinition<'_, VersionAt, VersionRow> =
    TableDefinition::new("versions");

/// Where a version sits in `VERSIONS`: `(revision, sub-revision)`.
pub(crate) type VersionAt = (i64, u32);
/// A row of `VERSIONS`: `(key, stored version)`.
pub(crate) type VersionRow = (&'static [u8], &'static [u8]);

/// The `VERSIONS` table inside a write transaction.
pub(crate) type VersionsTable<'t> = Table<'t, VersionAt, VersionRow>;
