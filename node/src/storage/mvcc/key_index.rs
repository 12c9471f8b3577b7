//! Finding versions in history: the version of one key, or of every key of
//! a range, as of a revision.
//!
//! A range at a past revision visits each distinct key once (two ordered
//! lookups per key: "the next key" and "its last version at or below the
//! revision"), so its cost grows with the number of keys in the range, not
//! with how many versions each of them has.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use redb::ReadableTable;

use super::super::error::{DecodeError, StoreError, corrupt, db_err};
use super::super::kv_store::StoredValue;
use super::super::outcome::KeyValue;

/// A stored version as read back, with its position in history.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub revision: i64,
    pub stored: StoredValue,
}

pub(crate) fn decode_version(path: &Path, buf: &[u8]) -> Result<StoredValue, StoreError> {
    StoredValue::decode(buf)
        .map_err(|source| DecodeError::Prost {
            what: "key version",
            source,
        })
        .map_err(corrupt(path, "key version"))
}

/// The key-value pair a (non-tombstone) version stands for.
pub(crate) fn key_value(key: &[u8], v: StoredValue) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key),
        value: v.value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        lease: v.lease,
    }
}

/// The last version of `key` at or below `revision`, tombstones included.
pub(crate) fn last_version<T: ReadableTable<(&'static [u8], i64), &'static [u8]>>(
    history: &T,
    path: &Path,
    key: &[u8],
    revision: i64,
) -> Result<Option<Version>, StoreError> {
    let mut iter = history
        .range::<(&[u8], i64)>((key, i64::MIN)..=(key, revision))
        .map_err(db_err(path, "read history"))?;
    match iter.next_back() {
        Some(item) => {
            let (k, v) = item.map_err(db_err(path, "read history"))?;
            Ok(Some(Version {
                revision: k.value().1,
                stored: decode_version(path, v.value())?,
            }))
        }
        None => Ok(None),
    }
}

/// The value of `key` as of `revision` (`None` if it did not exist then).
pub(crate) fn get_at<T: ReadableTable<(&'static [u8], i64), &'static [u8]>>(
    history: &T,
    path: &Path,
    key: &[u8],
    revision: i64,
) -> Result<Option<KeyValue>, StoreError> {
    Ok(last_version(history, path, key, revision)?
        .filter(|v| !v.stored.tombstone)
        .map(|v| key_value(key, v.stored)))
}

/// The first key at or after `from` that has any version.
fn next_key<T: ReadableTable<(&'static [u8], i64), &'static [u8]>>(
    history: &T,
    path: &Path,
    from: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut iter = history
        .range::<(&[u8], i64)>((from, i64::MIN)..)
        .map_err(db_err(path, "read history"))?;
    match iter.next() {
        Some(item) => {
            let (k, _) = item.map_err(db_err(path, "read history"))?;
            Ok(Some(k.value().0.to_vec()))
        }
        None => Ok(None),
    }
}

/// Calls `f`, in key order, for every key of the etcd range
/// `[key, range_end)` that existed at `revision`, with its value then.
pub(crate) fn for_each_at<T: ReadableTable<(&'static [u8], i64), &'static [u8]>>(
    history: &T,
    path: &Path,
    key: &[u8],
    range_end: &[u8],
    revision: i64,
    mut f: impl FnMut(KeyValue) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if range_end.is_empty() {
        if let Some(kv) = get_at(history, path, key, revision)? {
            f(kv)?;
        }
        return Ok(());
    }
    let to_end = range_end == [0];
    if !to_end && range_end <= key {
        return Ok(());
    }
    let mut from = key.to_vec();
    while let Some(k) = next_key(history, path, &from)? {
        if !to_end && k.as_slice() >= range_end {
            break;
        }
        if let Some(kv) = get_at(history, path, &k, revision)? {
            f(kv)?;
        }
        // The smallest key after `k`.
        from = k;
        from.push(0);
    }
    Ok(())
}
