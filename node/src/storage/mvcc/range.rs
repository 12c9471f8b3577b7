//! A range read at any revision not yet compacted, with etcd's filters,
//! sorting and limit.
//!
//! etcd's order of operations, kept exactly: read every key of the range
//! (the limit is applied during the read only when nothing is sorted or
//! filtered), drop the keys the revision filters exclude, sort, then cut at
//! the limit. `count` is always the number of keys in the range before
//! filters and limit. A sort order of NONE with a target other than the
//! key sorts ascending; a non-positive limit means no limit.

use std::cmp::Ordering;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use redb::ReadableTable;

use super::super::command::{RangeRequest, SortOrder, SortTarget};
use super::super::error::StoreError;
use super::super::kv_store::{decode_kv, for_each_in};
use super::super::outcome::{KeyValue, KvError, RangeResult};
use super::key_index::{self, KeyIndex};
use super::{VersionAt, VersionRow};

/// Where the versions of a read come from.
pub(crate) struct Source<'a, K, V> {
    /// The latest live version of every key.
    pub kv: &'a K,
    /// Every kept version, by revision.
    pub versions: &'a V,
    /// Where the versions of each key are.
    pub index: &'a RwLock<KeyIndex>,
    pub path: &'a Path,
    /// The store's revision, reported in the result.
    pub current: i64,
    /// The revision the `kv` table shows. `None` inside a transaction that
    /// already wrote: then every read at an explicit revision goes to
    /// history, which keeps the transaction's own writes out of it.
    pub kv_revision: Option<i64>,
    /// Reads below this revision fail as compacted.
    pub compacted: i64,
}

/// Checks that `revision` (0 = current) can be read: neither compacted nor
/// in the future.
pub(crate) fn check_revision(revision: i64, current: i64, compacted: i64) -> Result<(), KvError> {
    if revision > current {
        Err(KvError::FutureRevision)
    } else if revision > 0 && revision < compacted {
        Err(KvError::Compacted)
    } else {
        Ok(())
    }
}

impl<K, V> Source<'_, K, V>
where
    K: ReadableTable<&'static [u8], &'static [u8]>,
    V: ReadableTable<VersionAt, VersionRow>,
{
    /// Reads `req`; a compacted or future revision is
    /// `StoreError::InvalidRequest`.
    pub(crate) fn range(&self, req: &RangeRequest) -> Result<RangeResult, StoreError> {
        check_revision(req.revision, self.current, self.compacted)
            .map_err(StoreError::InvalidRequest)?;
        let order = match (req.sort_order(), req.sort_target()) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        // Ascending by key is the order reads produce anyway.
        let sorted = !(order == SortOrder::None
            || (order == SortOrder::Ascend && req.sort_target() == SortTarget::Key));
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let post = sorted || filtered;
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let mut out = RangeResult {
            revision: self.current,
            ..Default::default()
        };
        let mut take = |kv: KeyValue| {
            out.count += 1;
            if req.count_only || (!post && limit != 0 && out.kvs.len() >= limit) {
                return;
            }
            out.kvs.push(kv);
        };
        let at_kv = req.revision <= 0 || Some(req.revision) == self.kv_revision;
        if at_kv {
            for_each_in(self.kv, self.path, &req.key, &req.range_end, |k, v| {
                take(decode_kv(self.path, k, v)?);
                Ok(())
            })?;
        } else {
            // The index is read first and let go of before the versions
            // are: apply changes it as it writes.
            let live = {
                let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
                if req.revision < index.floor() {
                    return Err(StoreError::InvalidRequest(KvError::Compacted));
                }
                index.live_at(&req.key, &req.range_end, req.revision)
            };
            for (key, rev) in live {
                if req.count_only {
                    // Counted, never kept: no need to read the version.
                    take(KeyValue::default());
                    continue;
                }
                let stored = key_index::fetch(self.versions, self.path, rev)?;
                take(key_index::key_value(key, stored));
            }
        }
        if req.count_only {
            return Ok(out);
        }
        if filtered {
            out.kvs.retain(|kv| {
                (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision == 0
                        || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision == 0
                        || kv.create_revision <= req.max_create_revision)
            });
        }
        if sorted {
            let target = req.sort_target();
            // Stable: keys that tie stay in key order.
            out.kvs.sort_by(|a, b| {
                let o = compare_by(target, a, b);
                if order == SortOrder::Descend {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        if post {
            if limit != 0 && out.kvs.len() > limit {
                out.kvs.truncate(limit);
                out.more = true;
            }
        } else {
            out.more = limit != 0 && out.count > req.limit;
        }
        if req.keys_only {
            for kv in &mut out.kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(out)
    }
}

fn compare_by(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}
