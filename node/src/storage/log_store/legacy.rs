//! Reading a log written by earlier builds, which kept it in one redb file
//! (`raft-log.redb`), so that an upgraded node moves it into segments (see
//! `LogStore::open_on`) instead of refusing its data directory.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::super::codec::{self, StoredIdentity};
use super::super::disk::Disk;
use super::super::error::{StoreError, corrupt, db_err};
use super::{Identity, LOG_DIR, LogStore, StorageId, check_owner, exists};
use crate::raft::{Entry, HardState, SnapshotMeta};

/// The file name of a log of earlier builds inside the data directory.
pub const LEGACY_LOG_FILE: &str = "raft-log.redb";

/// The only format version of that file.
const LEGACY_FORMAT_VERSION: u64 = 1;

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_IDENTITY: &str = "identity";
const KEY_HARD_STATE: &str = "hard_state";
const KEY_SNAPSHOT: &str = "snapshot_meta";
const KEY_WITHHOLD_VOTES: &str = "withhold_votes";

/// What a legacy log holds besides its entries.
pub(super) struct LegacyState {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    pub has_state: bool,
    pub withhold_votes: bool,
}

fn not_a_store(path: &Path, missing: &'static str) -> StoreError {
    StoreError::NotAStore {
        file: path.to_path_buf(),
        kind: "log",
        missing,
    }
}

fn open(disk: &Disk, path: &Path) -> Result<redb::Database, StoreError> {
    disk.open(&super::super::db_with_cache(8 << 20), path)
        .map_err(db_err(path, "open"))
}

/// The identity record of the legacy log at `path`.
pub(super) fn identity_record(disk: &Disk, path: &Path) -> Result<StoredIdentity, StoreError> {
    let db = open(disk, path)?;
    let txn = db.begin_read().map_err(db_err(path, "begin read"))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(not_a_store(path, "meta table"));
        }
        Err(e) => return Err(db_err(path, "open meta")(e)),
    };
    let id = meta
        .get(KEY_IDENTITY)
        .map_err(db_err(path, "read identity"))?
        .ok_or_else(|| not_a_store(path, "identity record"))?;
    let id = codec::decode_identity(id.value()).map_err(corrupt(path, "identity"))?;
    if id.format_version != LEGACY_FORMAT_VERSION {
        return Err(StoreError::UnknownFormat {
            file: path.to_path_buf(),
            found: id.format_version,
            supported: LEGACY_FORMAT_VERSION,
        });
    }
    Ok(id)
}

/// Reads the legacy log at `path`, whose identity record the caller has
/// checked: its state and its entries, in order. A legacy log holds only
/// the window of entries its compaction kept, so they are read at once.
fn read(disk: &Disk, path: &Path) -> Result<(LegacyState, Vec<Entry>), StoreError> {
    let db = open(disk, path)?;
    let txn = db.begin_read().map_err(db_err(path, "begin read"))?;
    let meta = txn.open_table(META).map_err(db_err(path, "open meta"))?;
    let mut state = LegacyState {
        hard_state: HardState::default(),
        snapshot: SnapshotMeta::default(),
        has_state: false,
        withhold_votes: false,
    };
    if let Some(v) = meta
        .get(KEY_HARD_STATE)
        .map_err(db_err(path, "read hard state"))?
    {
        state.hard_state =
            codec::decode_hard_state(v.value()).map_err(corrupt(path, "hard state"))?;
        state.has_state = true;
    }
    if let Some(v) = meta
        .get(KEY_SNAPSHOT)
        .map_err(db_err(path, "read snapshot meta"))?
    {
        state.snapshot =
            codec::decode_snapshot_meta(v.value()).map_err(corrupt(path, "snapshot meta"))?;
        state.has_state = true;
    }
    state.withhold_votes = meta
        .get(KEY_WITHHOLD_VOTES)
        .map_err(db_err(path, "read vote withholding"))?
        .is_some();
    let mut entries = Vec::new();
    let table = match txn.open_table(ENTRIES) {
        Ok(t) => Some(t),
        // A received snapshot dropped the table; the next append recreated it.
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(db_err(path, "open entries")(e)),
    };
    if let Some(t) = table {
        for item in t.iter().map_err(db_err(path, "read entries"))? {
            let (_, v) = item.map_err(db_err(path, "read entries"))?;
            let e = codec::decode_entry(v.value()).map_err(corrupt(path, "log entry"))?;
            state.has_state = true;
            entries.push(e);
        }
    }
    Ok((state, entries))
}

/// Moves a legacy log (`raft-log.redb`) into segments: written into a
/// directory beside the final one, which is renamed into place once
/// complete; the legacy file is removed after that (see `open_on`).
pub(super) fn import(disk: &Disk, dir: &Path, identity: Identity) -> Result<(), StoreError> {
    let legacy_path = dir.join(LEGACY_LOG_FILE);
    let staging = dir.join(format!("{LOG_DIR}.importing"));
    if exists(&staging)? {
        std::fs::remove_dir_all(&staging).map_err(|source| StoreError::Io {
            file: staging.clone(),
            op: "remove an interrupted import",
            source,
        })?;
    }
    let id = identity_record(disk, &legacy_path)?;
    check_owner(&legacy_path, id.cluster_id, id.node_id, identity)?;
    let storage_id = (id.storage_id != 0).then_some(StorageId(id.storage_id));
    let (legacy, entries) = read(disk, &legacy_path)?;
    {
        let store = LogStore::open_dir(disk, &staging, identity, storage_id)?;
        if legacy.has_state {
            let mut chunks = entries.chunks(1024);
            store.persist(
                Some(&legacy.snapshot),
                chunks.next().unwrap_or_default(),
                Some(&legacy.hard_state),
            )?;
            for chunk in chunks {
                store.persist(None, chunk, None)?;
            }
        }
        if legacy.withhold_votes {
            store.set_withhold_votes(true)?;
        }
    }
    let target = dir.join(LOG_DIR);
    std::fs::rename(&staging, &target).map_err(|source| StoreError::Io {
        file: target.clone(),
        op: "move the imported log into place",
        source,
    })?;
    crate::storage::sync_dir(dir)
}

/// Writes a legacy log, as earlier builds did, for the tests of the move
/// into segments.
#[cfg(test)]
pub(super) fn write_for_test(
    path: &Path,
    identity: StoredIdentity,
    hard_state: &HardState,
    snapshot: &SnapshotMeta,
    entries: &[Entry],
) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(KEY_IDENTITY, codec::encode_identity(&identity).as_slice())
            .unwrap();
        meta.insert(
            KEY_HARD_STATE,
            codec::encode_hard_state(hard_state).as_slice(),
        )
        .unwrap();
        meta.insert(
            KEY_SNAPSHOT,
            codec::encode_snapshot_meta(snapshot).as_slice(),
        )
        .unwrap();
        let mut t = txn.open_table(ENTRIES).unwrap();
        for e in entries {
            t.insert(e.index.get(), codec::encode_entry(e).as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
}
