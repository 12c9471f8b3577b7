//! The key index: for every key, the revisions of its kept versions, held
//! in memory (etcd's `treeIndex`).
//!
//! Versions are stored by revision (`VERSIONS`), so that a write appends
//! to the end of one table instead of landing on a random page of a table
//! ordered by key. The index is what finds them by key: "the version of
//! `k` as of revision `r`" is a binary search in `k`'s list, then one
//! lookup by revision. It is rebuilt from `VERSIONS` when the store opens
//! or a snapshot is installed, and changed by apply as it writes, before
//! the transaction commits.
//!
//! Readers use it next to a read transaction that may be older than the
//! index, which is safe for two reasons:
//! - a reader only asks for revisions at or below its transaction's, and
//!   every version up to that revision was in the index before the
//!   transaction began;
//! - compaction removes versions from the index before its deletions are
//!   committed, but it raises [`KeyIndex::floor`] first; a read below the
//!   floor fails as compacted instead of finding a version missing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use bytes::Bytes;
use prost::Message;
use redb::ReadableTable;

use super::super::error::{DecodeError, StoreError, corrupt, db_err};
use super::super::kv_store::StoredValue;
use super::super::outcome::KeyValue;
use super::{VersionAt, VersionRow};

/// Where a version sits in `VERSIONS`: its revision and its position
/// inside that revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rev {
    pub revision: i64,
    pub sub: u32,
}

impl Rev {
    /// The table key of this version.
    pub(crate) fn at(self) -> (i64, u32) {
        (self.revision, self.sub)
    }

    /// The next position in `VERSIONS` after this one.
    pub(crate) fn after(self) -> (i64, u32) {
        match self.sub.checked_add(1) {
            Some(sub) => (self.revision, sub),
            None => (self.revision.saturating_add(1), 0),
        }
    }
}

/// One kept version of a key, as the index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub rev: Rev,
    /// The version is a delete.
    pub tombstone: bool,
}

/// Every kept version of every key, by key (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// Per key, its versions in revision order.
    keys: BTreeMap<Bytes, Vec<Entry>>,
    /// Reads below this revision fail as compacted: some of their
    /// versions may already be gone from the index.
    floor: i64,
}

impl KeyIndex {
    /// Rebuilds the index from a `VERSIONS` table; reads below `compacted`
    /// fail.
    pub(crate) fn load<T>(versions: &T, path: &Path, compacted: i64) -> Result<Self, StoreError>
    where
        T: ReadableTable<VersionAt, VersionRow>,
    {
        let mut index = KeyIndex {
            keys: BTreeMap::new(),
            floor: compacted,
        };
        for item in versions.iter().map_err(db_err(path, "read versions"))? {
            let (at, v) = item.map_err(db_err(path, "read versions"))?;
            let (revision, sub) = at.value();
            let (key, stored) = v.value();
            let tombstone = decode_version(path, stored)?.tombstone;
            index.record(key, Rev { revision, sub }, tombstone);
        }
        Ok(index)
    }

    /// The revision below which reads fail.
    pub(crate) fn floor(&self) -> i64 {
        self.floor
    }

    /// A compaction at `revision` took effect: versions below it may go.
    pub(crate) fn raise_floor(&mut self, revision: i64) {
        self.floor = self.floor.max(revision);
    }

    /// Adds a version of `key`, newer than every one it has.
    pub(crate) fn record(&mut self, key: &[u8], rev: Rev, tombstone: bool) {
        let entry = Entry { rev, tombstone };
        match self.keys.get_mut(key) {
            Some(versions) => versions.push(entry),
            None => {
                self.keys.insert(Bytes::copy_from_slice(key), vec![entry]);
            }
        }
    }

    /// Forgets one version of `key` (compaction).
    pub(crate) fn remove(&mut self, key: &[u8], rev: Rev) {
        if let Some(versions) = self.keys.get_mut(key) {
            if let Ok(i) = versions.binary_search_by_key(&rev, |e| e.rev) {
                versions.remove(i);
            }
            if versions.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Forgets the `n` oldest versions of `key` (compaction).
    pub(crate) fn remove_oldest(&mut self, key: &[u8], n: usize) {
        if let Some(versions) = self.keys.get_mut(key) {
            versions.drain(..n.min(versions.len()));
            if versions.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// The last version of `key` at or below `revision`, tombstones
    /// included.
    pub(crate) fn last_at(&self, key: &[u8], revision: i64) -> Option<Entry> {
        let versions = self.keys.get(key)?;
        last_in(versions, revision)
    }

    /// At most `limit` versions of `key` older than `revision`, oldest
    /// first.
    pub(crate) fn older_than(&self, key: &[u8], revision: i64, limit: usize) -> Vec<Entry> {
        self.keys.get(key).map_or_else(Vec::new, |versions| {
            versions
                .iter()
                .take_while(|e| e.rev.revision < revision)
                .take(limit)
                .copied()
                .collect()
        })
    }

    /// The key and version of every key of the etcd range `[key,
    /// range_end)` that existed at `revision`, in key order.
    pub(crate) fn live_at(&self, key: &[u8], range_end: &[u8], revision: i64) -> Vec<(Bytes, Rev)> {
        let mut out = Vec::new();
        let mut take = |k: &Bytes, versions: &Vec<Entry>| {
            if let Some(e) = last_in(versions, revision).filter(|e| !e.tombstone) {
                out.push((k.clone(), e.rev));
            }
        };
        if range_end.is_empty() {
            if let Some((k, versions)) = self.keys.get_key_value(key) {
                take(k, versions);
            }
            return out;
        }
        let end = if range_end == [0] {
            Bound::Unbounded
        } else if range_end <= key {
            return out;
        } else {
            Bound::Excluded(range_end)
        };
        for (k, versions) in self.keys.range::<[u8], _>((Bound::Included(key), end)) {
            take(k, versions);
        }
        out
    }

    /// How many keys have a kept version.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.keys.len()
    }
}

/// The last of `versions` at or below `revision`.
fn last_in(versions: &[Entry], revision: i64) -> Option<Entry> {
    let n = versions.partition_point(|e| e.rev.revision <= revision);
    n.checked_sub(1).map(|i| versions[i])
}

pub(crate) fn decode_version(path: &Path, buf: &[u8]) -> Result<StoredValue, StoreError> {
    StoredValue::decode(buf)
        .map_err(|source| DecodeError::Prost {
            what: "key version",
            source,
        })
        .map_err(corrupt(path, "key version"))
}

/// Reads the version the index placed at `rev`. Missing is corruption:
/// the index only lists versions its readers' transactions hold.
pub(crate) fn fetch<T>(versions: &T, path: &Path, rev: Rev) -> Result<StoredValue, StoreError>
where
    T: ReadableTable<VersionAt, VersionRow>,
{
    let row = versions
        .get(rev.at())
        .map_err(db_err(path, "read versions"))?
        .ok_or_else(|| {
            corrupt(path, "key index")(DecodeError::Missing {
                what: "versions",
                field: "a version the key index lists",
            })
        })?;
    decode_version(path, row.value().1)
}

/// The key-value pair a (non-tombstone) version stands for.
pub(crate) fn key_value(key: Bytes, v: StoredValue) -> KeyValue {
    KeyValue {
        key,
        value: v.value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        lease: v.lease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(revision: i64) -> Rev {
        Rev { revision, sub: 0 }
    }

    fn index() -> KeyIndex {
        let mut i = KeyIndex::default();
        i.record(b"a", rev(2), false);
        i.record(b"b", rev(3), false);
        i.record(b"a", rev(4), false);
        i.record(b"b", rev(5), true);
        i.record(b"c", rev(6), false);
        i
    }

    #[test]
    fn the_version_as_of_a_revision_is_the_last_at_or_below_it() {
        let i = index();
        assert_eq!(i.last_at(b"a", 1), None);
        assert_eq!(i.last_at(b"a", 3).map(|e| e.rev), Some(rev(2)));
        assert_eq!(i.last_at(b"a", 9).map(|e| e.rev), Some(rev(4)));
        assert_eq!(i.last_at(b"b", 5).map(|e| e.tombstone), Some(true));
        assert_eq!(i.last_at(b"z", 9), None);
    }

    #[test]
    fn a_range_at_a_revision_lists_the_keys_alive_then_in_key_order() {
        let i = index();
        let keys = |end: &[u8], at| -> Vec<(Vec<u8>, i64)> {
            i.live_at(b"a", end, at)
                .into_iter()
                .map(|(k, r)| (k.to_vec(), r.revision))
                .collect()
        };
        assert_eq!(keys(b"\0", 4), vec![(b"a".to_vec(), 4), (b"b".to_vec(), 3)]);
        // b was deleted at 5, c created at 6.
        assert_eq!(keys(b"\0", 6), vec![(b"a".to_vec(), 4), (b"c".to_vec(), 6)]);
        assert_eq!(keys(b"c", 6), vec![(b"a".to_vec(), 4)]);
        assert_eq!(keys(b"", 3), vec![(b"a".to_vec(), 2)]);
        assert_eq!(keys(b"a", 6), vec![]);
    }

    #[test]
    fn removing_a_keys_last_version_forgets_the_key() {
        let mut i = index();
        assert_eq!(i.older_than(b"a", 4, 10).len(), 1);
        i.remove_oldest(b"a", 1);
        assert_eq!(i.older_than(b"a", 4, 10).len(), 0);
        assert_eq!(i.last_at(b"a", 9).map(|e| e.rev), Some(rev(4)));
        i.remove(b"c", rev(6));
        assert_eq!(i.keys(), 2);
        assert!(i.live_at(b"c", b"", 9).is_empty());
    }
}
