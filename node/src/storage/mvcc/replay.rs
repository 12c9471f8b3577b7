//! Reading history back as changes, in revision order: what a watcher that
//! starts in the past, or fell behind the change feed, is sent.
//!
//! `versions` holds every kept version by `(revision, sub)`, so a replay
//! from revision `r` is one ordered scan from `(r, 0)`. A change's previous
//! version, when asked for, is found through the key index. A replay stops
//! after a bounded number of matching changes, but only at the end of a
//! revision, so that a revision's changes always go out together.

use std::path::Path;
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use redb::ReadableTable;

use super::super::error::{StoreError, db_err};
use super::super::feed::{Change, ChangeKind, in_range};
use super::super::outcome::KeyValue;
use super::key_index::{KeyIndex, decode_version, fetch, key_value};
use super::{VersionAt, VersionRow};

/// What to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The first revision to read.
    pub from: i64,
    /// The keys, as an etcd range (`range_end` empty: `key` alone; `"\0"`:
    /// every key from `key` on).
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// Also read each change's previous version.
    pub prev_kv: bool,
    /// Stop at the end of the revision in which this many changes were
    /// read.
    pub max_changes: usize,
}

/// What a replay read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// `from` lies below the compacted revision: that history is gone.
    Compacted { compacted: i64 },
    /// The changes of the revisions `[from, through]`, in order.
    Changes {
        changes: Vec<Change>,
        through: i64,
        /// The store's revision at the time of the read.
        revision: i64,
    },
}

/// Reads the changes of `req`, given the store's `revision` and the
/// `compacted` one as of the same read transaction as `versions`.
pub(crate) fn replay<V>(
    versions: &V,
    index: &RwLock<KeyIndex>,
    path: &Path,
    req: &ReplayRequest,
    revision: i64,
    compacted: i64,
) -> Result<Replay, StoreError>
where
    V: ReadableTable<VersionAt, VersionRow>,
{
    if req.from < compacted {
        return Ok(Replay::Compacted { compacted });
    }
    let from = req.from.max(1);
    let mut out = Vec::new();
    let mut through = revision;
    if from <= revision {
        let iter = versions
            .range::<(i64, u32)>((from, 0)..=(revision, u32::MAX))
            .map_err(db_err(path, "read versions"))?;
        for item in iter {
            let (at, v) = item.map_err(db_err(path, "read versions"))?;
            let (rev, _) = at.value();
            if out.len() >= req.max_changes.max(1)
                && out.last().is_some_and(|c: &Change| c.revision() < rev)
            {
                through = rev - 1;
                break;
            }
            let (key, stored) = v.value();
            if !in_range(key, &req.key, &req.range_end) {
                continue;
            }
            let stored = decode_version(path, stored)?;
            let key = Bytes::copy_from_slice(key);
            let (kind, kv) = if stored.tombstone {
                let kv = KeyValue {
                    key: key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                };
                (ChangeKind::Delete, kv)
            } else {
                (ChangeKind::Put, key_value(key.clone(), stored))
            };
            // A create has no previous version to look for.
            let prev = if req.prev_kv && !(kind == ChangeKind::Put && kv.version == 1) {
                previous(versions, index, path, key, rev)?
            } else {
                None
            };
            out.push(Change { kind, kv, prev });
        }
    }
    Ok(Replay::Changes {
        changes: out,
        through,
        revision,
    })
}

/// The live version of `key` just before `revision`, if the index still
/// has it. Compaction drops a key's versions oldest first, so below its
/// floor the index answers right or not at all: a compaction running since
/// this read began may have dropped the previous version, as in etcd.
fn previous<V>(
    versions: &V,
    index: &RwLock<KeyIndex>,
    path: &Path,
    key: Bytes,
    revision: i64,
) -> Result<Option<KeyValue>, StoreError>
where
    V: ReadableTable<VersionAt, VersionRow>,
{
    let last = index
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .last_at(&key, revision - 1);
    match last.filter(|e| !e.tombstone) {
        Some(e) => Ok(Some(key_value(key, fetch(versions, path, e.rev)?))),
        None => Ok(None),
    }
}
