//! A checksum of history: every stored version up to a revision, and the
//! compacted revision. Compaction deletes the same versions at the same
//! applied index on every member, so two members that applied the same
//! entries have the same hash; the node simulation checks exactly that,
//! and it is what etcd's HashKV answers with.

use std::path::Path;

use redb::ReadableTable;

use super::super::error::{StoreError, db_err};

/// crc32 over `(key, revision, stored version)` of every version at or
/// below `revision`, in key then revision order, then `compacted`.
pub(crate) fn hash_history<T: ReadableTable<(&'static [u8], i64), &'static [u8]>>(
    history: &T,
    path: &Path,
    revision: i64,
    compacted: i64,
) -> Result<u32, StoreError> {
    let mut h = crc32fast::Hasher::new();
    for item in history.iter().map_err(db_err(path, "read history"))? {
        let (k, v) = item.map_err(db_err(path, "read history"))?;
        let (key, rev) = k.value();
        if rev > revision {
            continue;
        }
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(&rev.to_le_bytes());
        h.update(&(v.value().len() as u64).to_le_bytes());
        h.update(v.value());
    }
    h.update(&compacted.to_le_bytes());
    Ok(h.finalize())
}
