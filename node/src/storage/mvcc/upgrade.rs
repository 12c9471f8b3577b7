//! Bringing a `kv.redb` of an earlier format up to this build's, in place,
//! in one durable transaction, when the store opens:
//! - format 1 kept only the latest version of every key (`kv`);
//! - format 2 kept history by key: `history` (`(key, revision)` → stored
//!   version) and `changes` (`(revision, sub)` → key).
//!
//! Format 3 keeps every version once, by revision (`versions`), and finds
//! them by key through the in-memory key index. An upgraded file cannot be
//! opened by a build of an earlier format.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::super::error::{DecodeError, StoreError, corrupt, db_err};
use super::super::kv_store::{KEY_STATE, KV, KV_FORMAT_VERSION, META, StoredState};
use super::VERSIONS;
use super::key_index::decode_version;

/// Format 2's history by key.
const HISTORY_V2: TableDefinition<'_, (&[u8], i64), &[u8]> = TableDefinition::new("history");
/// Format 2's history by revision (keys only).
const CHANGES_V2: TableDefinition<'_, (i64, u32), &[u8]> = TableDefinition::new("changes");

/// Upgrades a file of format 1 or 2; any other file is left alone (an
/// unknown format is refused when its state is read).
pub(crate) fn upgrade(db: &Database, path: &Path) -> Result<(), StoreError> {
    let Some(old) = stored_state(db, path)? else {
        return Ok(());
    };
    match old.format_version {
        1 => from_v1(db, path, old),
        2 => from_v2(db, path, old),
        _ => Ok(()),
    }
}

fn stored_state(db: &Database, path: &Path) -> Result<Option<StoredState>, StoreError> {
    let txn = db.begin_read().map_err(db_err(path, "begin read"))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(path, "open meta")(e)),
    };
    let Some(v) = meta.get(KEY_STATE).map_err(db_err(path, "read state"))? else {
        return Ok(None);
    };
    StoredState::decode(v.value())
        .map(Some)
        .map_err(|source| DecodeError::Prost {
            what: "state machine state",
            source,
        })
        .map_err(corrupt(path, "state"))
}

/// Format 1: every live key gets its one known version, and the file's
/// revision becomes the compacted revision, since no version before it
/// was kept.
fn from_v1(db: &Database, path: &Path, old: StoredState) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err(path, "begin write"))?;
    {
        let kv = txn.open_table(KV).map_err(db_err(path, "open kv"))?;
        let mut versions = txn
            .open_table(VERSIONS)
            .map_err(db_err(path, "open versions"))?;
        let mut subs: HashMap<i64, u32> = HashMap::new();
        for item in kv.iter().map_err(db_err(path, "read kv"))? {
            let (k, v) = item.map_err(db_err(path, "read kv"))?;
            let mut stored = decode_version(path, v.value())?;
            let sub = subs.entry(stored.mod_revision).or_default();
            stored.sub = *sub;
            *sub = sub.saturating_add(1);
            versions
                .insert(
                    (stored.mod_revision, stored.sub),
                    (k.value(), stored.encode_to_vec().as_slice()),
                )
                .map_err(db_err(path, "write versions"))?;
        }
        let mut meta = txn.open_table(META).map_err(db_err(path, "open meta"))?;
        let upgraded = StoredState {
            format_version: KV_FORMAT_VERSION,
            compacted: old.revision,
            purge_done: true,
            ..old
        };
        meta.insert(KEY_STATE, upgraded.encode_to_vec().as_slice())
            .map_err(db_err(path, "write state"))?;
    }
    txn.commit().map_err(db_err(path, "commit"))
}

/// Format 2: every version moves from `history` to `versions`, unchanged
/// (so history hashes stay equal), and `history` and `changes` go.
fn from_v2(db: &Database, path: &Path, old: StoredState) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err(path, "begin write"))?;
    {
        let history = txn
            .open_table(HISTORY_V2)
            .map_err(db_err(path, "open history"))?;
        let mut versions = txn
            .open_table(VERSIONS)
            .map_err(db_err(path, "open versions"))?;
        for item in history.iter().map_err(db_err(path, "read history"))? {
            let (k, v) = item.map_err(db_err(path, "read history"))?;
            let (key, revision) = k.value();
            let sub = decode_version(path, v.value())?.sub;
            versions
                .insert((revision, sub), (key, v.value()))
                .map_err(db_err(path, "write versions"))?;
        }
        drop(history);
        txn.delete_table(HISTORY_V2)
            .map_err(db_err(path, "drop history"))?;
        txn.delete_table(CHANGES_V2)
            .map_err(db_err(path, "drop changes"))?;
        let mut meta = txn.open_table(META).map_err(db_err(path, "open meta"))?;
        let upgraded = StoredState {
            format_version: KV_FORMAT_VERSION,
            ..old
        };
        meta.insert(KEY_STATE, upgraded.encode_to_vec().as_slice())
            .map_err(db_err(path, "write state"))?;
    }
    txn.commit().map_err(db_err(path, "commit"))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use redb::{ReadableDatabase, TableHandle};

    use super::*;
    use crate::raft::{Entry, EntryPayload, LogIndex, Term};
    use crate::storage::mvcc::replay::{Replay, ReplayRequest};
    use crate::storage::{Command, KvStore, Limits, Op, RangeRequest};

    fn entry(index: u64, op: Op) -> Entry {
        let command = Command {
            request_id: None,
            auth: None,
            op,
        };
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command(command.encode()),
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        }
    }

    /// Everything history answers: the hash, every key at every readable
    /// revision, and the replay of all changes with their previous values.
    fn history_of(store: &KvStore) -> (u32, Vec<String>, Replay) {
        let (hash, _) = store.hash_history(0).unwrap();
        let mut reads = Vec::new();
        for revision in store.compacted_revision()..=store.revision() {
            let all = RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                revision,
                ..Default::default()
            };
            reads.push(format!("{:?}", store.range(&all).unwrap().kvs));
        }
        let replay = store
            .replay(&ReplayRequest {
                from: store.compacted_revision(),
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                prev_kv: true,
                max_changes: usize::MAX,
            })
            .unwrap();
        (hash, reads, replay)
    }

    /// Rewrites a format 3 file as format 2 would have stored it.
    fn downgrade_to_v2(path: &Path) {
        let db = Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let versions = txn.open_table(VERSIONS).unwrap();
            let mut history = txn.open_table(HISTORY_V2).unwrap();
            let mut changes = txn.open_table(CHANGES_V2).unwrap();
            for item in versions.iter().unwrap() {
                let (at, v) = item.unwrap();
                let (revision, sub) = at.value();
                let (key, stored) = v.value();
                history.insert((key, revision), stored).unwrap();
                changes.insert((revision, sub), key).unwrap();
            }
            let mut meta = txn.open_table(META).unwrap();
            let state = meta.get(KEY_STATE).unwrap().unwrap().value().to_vec();
            let old = StoredState {
                format_version: 2,
                ..StoredState::decode(state.as_slice()).unwrap()
            };
            meta.insert(KEY_STATE, old.encode_to_vec().as_slice())
                .unwrap();
        }
        txn.delete_table(VERSIONS).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_format_2_file_opens_with_the_same_history_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let ops = [
            put("a", "1"),
            put("b", "1"),
            put("a", "2"),
            Op::DeleteRange {
                key: Bytes::from_static(b"b"),
                range_end: Bytes::new(),
                prev_kv: false,
            },
            put("c", "1"),
            Op::Compact { revision: 4 },
            put("a", "3"),
            put("b", "2"),
        ];
        let entries: Vec<Entry> = (1..).zip(ops).map(|(i, op)| entry(i, op)).collect();
        let before = {
            let store = KvStore::open(dir.path(), Limits::default()).unwrap();
            store.apply(&entries).unwrap();
            store.sync().unwrap();
            history_of(&store)
        };
        let path = dir.path().join(crate::storage::KV_FILE);
        downgrade_to_v2(&path);

        let store = KvStore::open(dir.path(), Limits::default()).unwrap();
        assert_eq!(history_of(&store), before);
        let backend = store.backend();
        let txn = backend.db.begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(tables.contains(&"versions".to_string()), "{tables:?}");
        assert!(!tables.contains(&"history".to_string()), "{tables:?}");
        assert!(!tables.contains(&"changes".to_string()), "{tables:?}");
        // The store goes on writing where it was: seven writes made
        // revision 8.
        store.apply(&[entry(9, put("d", "1"))]).unwrap();
        assert_eq!(store.revision(), 9);
        let d = store.get(b"d").unwrap().unwrap();
        assert_eq!((d.create_revision, d.version), (9, 1));
    }
}
