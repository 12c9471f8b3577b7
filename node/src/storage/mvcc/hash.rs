//! A checksum of history: every stored version up to a revision, and the
//! compacted revision. Compaction deletes the same versions at the same
//! applied index on every member, so two members that applied the same
//! entries have the same hash; the node simulation checks exactly that,
//! and it is what etcd's HashKV answers with.
//!
//! The hash covers the versions in key then revision order, as it did when
//! history was stored by key (format 2), so that members on either format
//! agree during an upgrade. It is computed from a read transaction alone,
//! not from the key index, which may be ahead of it.

use std::path::Path;

use redb::ReadableTable;

use super::super::error::{DecodeError, StoreError, corrupt, db_err};
use super::{VersionAt, VersionRow};

/// crc32 over `(key, revision, stored version)` of every version at or
/// below `revision`, in key then revision order, then `compacted`.
pub(crate) fn hash_history<T>(
    versions: &T,
    path: &Path,
    revision: i64,
    compacted: i64,
) -> Result<u32, StoreError>
where
    T: ReadableTable<VersionAt, VersionRow>,
{
    let mut order: Vec<(Vec<u8>, i64, u32)> = Vec::new();
    for item in versions
        .range::<(i64, u32)>(..=(revision, u32::MAX))
        .map_err(db_err(path, "read versions"))?
    {
        let (at, v) = item.map_err(db_err(path, "read versions"))?;
        let (rev, sub) = at.value();
        order.push((v.value().0.to_vec(), rev, sub));
    }
    order.sort_unstable();
    let mut h = crc32fast::Hasher::new();
    for (key, rev, sub) in order {
        let row = versions
            .get((rev, sub))
            .map_err(db_err(path, "read versions"))?
            .ok_or_else(|| {
                corrupt(path, "versions")(DecodeError::Missing {
                    what: "versions",
                    field: "a version listed by the same read",
                })
            })?;
        let stored = row.value().1;
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(&key);
        h.update(&rev.to_le_bytes());
        h.update(&(stored.len() as u64).to_le_bytes());
        h.update(stored);
    }
    h.update(&compacted.to_le_bytes());
    Ok(h.finalize())
}
