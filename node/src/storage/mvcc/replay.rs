//! Reading history back as changes, in revision order: what a watcher that
//! starts in the past, or fell behind the change feed, is sent.
//!
//! The `changes` table lists every kept version by `(revision, sub)`, so a
//! replay from revision `r` is one ordered scan from `(r, 0)`; each entry
//! names its key, whose version at that revision is one lookup in
//! `history`. A replay stops after a bounded number of matching changes,
//! but only at the end of a revision, so that a revision's changes always
//! go out together.

use std::path::Path;

use redb::ReadableTable;

use super::super::error::{StoreError, db_err};
use super::super::feed::{Change, ChangeKind, in_range};
use super::super::outcome::KeyValue;
use super::key_index::{decode_version, get_at, key_value};

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
/// `compacted` one as of the same read transaction.
pub(crate) fn replay<C, H>(
    changes: &C,
    history: &H,
    path: &Path,
    req: &ReplayRequest,
    revision: i64,
    compacted: i64,
) -> Result<Replay, StoreError>
where
    C: ReadableTable<(i64, u32), &'static [u8]>,
    H: ReadableTable<(&'static [u8], i64), &'static [u8]>,
{
    if req.from < compacted {
        return Ok(Replay::Compacted { compacted });
    }
    let from = req.from.max(1);
    let mut out = Vec::new();
    let mut through = revision;
    if from <= revision {
        let iter = changes
            .range::<(i64, u32)>((from, 0)..=(revision, u32::MAX))
            .map_err(db_err(path, "read changes"))?;
        for item in iter {
            let (k, key) = item.map_err(db_err(path, "read changes"))?;
            let (rev, _) = k.value();
            if out.len() >= req.max_changes.max(1)
                && out.last().is_some_and(|c: &Change| c.revision() < rev)
            {
                through = rev - 1;
                break;
            }
            let key = key.value();
            if !in_range(key, &req.key, &req.range_end) {
                continue;
            }
            let Some(stored) = history
                .get((key, rev))
                .map_err(db_err(path, "read history"))?
            else {
                // Listed but gone: a tombstone at the compacted revision
                // being purged. etcd loses that event the same way.
                continue;
            };
            let stored = decode_version(path, stored.value())?;
            let (kind, kv) = if stored.tombstone {
                let kv = KeyValue {
                    key: bytes::Bytes::copy_from_slice(key),
                    mod_revision: rev,
                    ..Default::default()
                };
                (ChangeKind::Delete, kv)
            } else {
                (ChangeKind::Put, key_value(key, stored))
            };
            // A create has no previous version to look for.
            let prev = if req.prev_kv && !(kind == ChangeKind::Put && kv.version == 1) {
                get_at(history, path, key, rev - 1)?
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
