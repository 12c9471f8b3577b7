//! State machine images: streamed out of a consistent redb read transaction
//! and installed through a staging database that replaces `kv.redb` only
//! once complete and verified.
//!
//! The image format is in `image.rs`.
//!
//! Writes continue while an image is read: redb's read transaction pins the
//! view it started with. Memory is bounded by one chunk plus one record.
//! Installing never touches `kv.redb` until the trailer's checksum and frame
//! count match; the swap is a rename, so a crash leaves either the old file
//! or the new one, and a leftover staging file is deleted on open.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use prost::Message;
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    WriteTransaction,
};

use super::error::{StoreError, db_err};
use super::image::{
    CHUNK_BYTES, ClientFrame, FrameParser, KIND_AUTH, KIND_CLIENT, KIND_LEASE, KIND_STATE,
    KIND_TRAILER, KIND_VERSION, LeaseFrame, MAGIC, SnapshotError, Trailer, VersionFrame,
    decode_state, push_frame,
};
use super::kv_store::{
    Backend, CLIENTS, IMAGE_STATE_FORMAT, KEY_AUTH, KEY_STATE, KV, KV_STAGING_FILE, KvState,
    KvStore, META, StoredValue, load_auth, load_state,
};
use super::lease::{LEASE_KEYS, LEASES, StoredLease};
use super::mvcc::{VERSIONS, VersionAt, VersionRow};
use crate::raft::SnapshotMeta;

/// How much an installer writes per staging transaction.
const STAGING_TXN_BYTES: usize = 8 * 1024 * 1024;

type Versions = ReadOnlyTable<VersionAt, VersionRow>;

enum Phase {
    /// History goes out in key then revision order, the image's order,
    /// which is not the table's: the order is listed first, when the
    /// image is first read.
    History(Versions),
    /// The versions left to send, in order, as `(key, revision, sub)`.
    HistoryInOrder(Versions, std::vec::IntoIter<(Vec<u8>, i64, u32)>),
    Clients(redb::Range<'static, u64, &'static [u8]>),
    Leases(redb::Range<'static, i64, &'static [u8]>),
    Trailer,
    Done,
}

/// A consistent image of the state machine, read in bounded chunks.
pub struct SnapshotReader {
    file: PathBuf,
    meta: SnapshotMeta,
    revision: i64,
    _txn: ReadTransaction,
    phase: Phase,
    pending: Vec<u8>,
    crc: crc32fast::Hasher,
    frames: u64,
}

impl fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("meta", &self.meta)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl SnapshotReader {
    /// The applied index, term and membership of the image (read in the
    /// same transaction as its keys).
    pub fn meta(&self) -> SnapshotMeta {
        self.meta.clone()
    }

    /// The store's revision in the image.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next chunk of the image (at most about [`CHUNK_BYTES`] plus one
    /// record), or `None` once the whole image was returned.
    pub fn next_chunk(&mut self) -> Option<Result<Bytes, StoreError>> {
        match self.fill() {
            Ok(()) if self.pending.is_empty() => None,
            Ok(()) => {
                let chunk = std::mem::take(&mut self.pending);
                Some(Ok(Bytes::from(chunk)))
            }
            Err(e) => {
                self.phase = Phase::Done;
                Some(Err(e))
            }
        }
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) {
        let start = self.pending.len();
        push_frame(&mut self.pending, kind, payload);
        self.crc.update(&self.pending[start..]);
        self.frames += 1;
    }

    fn fill(&mut self) -> Result<(), StoreError> {
        let file = self.file.clone();
        while self.pending.len() < CHUNK_BYTES {
            match &mut self.phase {
                Phase::History(_) => {
                    let Phase::History(versions) = std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        continue;
                    };
                    let mut order = Vec::new();
                    for item in versions.iter().map_err(db_err(&file, "read snapshot"))? {
                        let (at, v) = item.map_err(db_err(&file, "read snapshot"))?;
                        let (revision, sub) = at.value();
                        order.push((v.value().0.to_vec(), revision, sub));
                    }
                    order.sort_unstable();
                    self.phase = Phase::HistoryInOrder(versions, order.into_iter());
                }
                Phase::HistoryInOrder(versions, order) => match order.next() {
                    Some((key, revision, sub)) => {
                        let row = versions
                            .get((revision, sub))
                            .map_err(db_err(&file, "read snapshot"))?
                            .ok_or_else(|| {
                                super::error::corrupt(&file, "versions")(
                                    super::error::DecodeError::Missing {
                                        what: "versions",
                                        field: "a version listed by the same read",
                                    },
                                )
                            })?;
                        let frame = VersionFrame {
                            key: Bytes::from(key),
                            revision,
                            version: Bytes::copy_from_slice(row.value().1),
                        }
                        .encode_to_vec();
                        self.frame(KIND_VERSION, &frame);
                    }
                    None => {
                        let txn = &self._txn;
                        let clients = txn
                            .open_table(CLIENTS)
                            .map_err(db_err(&file, "open clients"))?;
                        let range = clients
                            .range::<u64>(..)
                            .map_err(db_err(&file, "read snapshot"))?;
                        self.phase = Phase::Clients(range);
                    }
                },
                Phase::Clients(iter) => match iter.next() {
                    Some(item) => {
                        let (k, v) = item.map_err(db_err(&file, "read snapshot"))?;
                        let frame = ClientFrame {
                            client_id: k.value(),
                            record: Bytes::copy_from_slice(v.value()),
                        }
                        .encode_to_vec();
                        self.frame(KIND_CLIENT, &frame);
                    }
                    None => {
                        self.phase = match self._txn.open_table(LEASES) {
                            Ok(t) => Phase::Leases(
                                t.range::<i64>(..).map_err(db_err(&file, "read snapshot"))?,
                            ),
                            // A file written before leases existed.
                            Err(redb::TableError::TableDoesNotExist(_)) => Phase::Trailer,
                            Err(e) => return Err(db_err(&file, "open leases")(e)),
                        };
                    }
                },
                Phase::Leases(iter) => match iter.next() {
                    Some(item) => {
                        let (k, v) = item.map_err(db_err(&file, "read snapshot"))?;
                        let frame = LeaseFrame {
                            id: k.value(),
                            lease: Bytes::copy_from_slice(v.value()),
                        }
                        .encode_to_vec();
                        self.frame(KIND_LEASE, &frame);
                    }
                    None => self.phase = Phase::Trailer,
                },
                Phase::Trailer => {
                    let trailer = Trailer {
                        frames: self.frames,
                        crc32: self.crc.clone().finalize(),
                    }
                    .encode_to_vec();
                    push_frame(&mut self.pending, KIND_TRAILER, &trailer);
                    self.phase = Phase::Done;
                }
                Phase::Done => break,
            }
        }
        Ok(())
    }
}

/// Receives an image chunk by chunk into a staging database.
pub struct SnapshotInstaller {
    store: KvStore,
    staging: PathBuf,
    db: Option<Database>,
    txn: Option<WriteTransaction>,
    txn_bytes: usize,
    parser: FrameParser,
    state: Option<KvState>,
    /// The last version received: once the next key starts (or the image
    /// ends), it is that key's latest version, and if live, its value.
    last: Option<(Bytes, StoredValue)>,
}

impl fmt::Debug for SnapshotInstaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotInstaller")
            .field("staging", &self.staging)
            .field("frames", &self.parser.frames())
            .finish_non_exhaustive()
    }
}

impl KvStore {
    /// A consistent image of the state machine as of now. Everything applied
    /// so far is made durable first, so the log may be compacted up to
    /// `reader.meta().index`.
    pub fn snapshot(&self) -> Result<SnapshotReader, StoreError> {
        self.check_failed()?;
        let path = self.inner.path.clone();
        let txn = {
            let mut durable = self.lock_writer();
            self.sync_locked(&mut durable)?;
            self.backend()
                .db
                .begin_read()
                .map_err(db_err(&path, "begin read"))?
        };
        let (state, auth) = {
            let meta = txn.open_table(META).map_err(db_err(&path, "open meta"))?;
            let auth = meta
                .get(KEY_AUTH)
                .map_err(db_err(&path, "read auth"))?
                .map(|v| v.value().to_vec());
            let v = meta
                .get(KEY_STATE)
                .map_err(db_err(&path, "read state"))?
                .ok_or_else(|| StoreError::NotAStore {
                    file: path.clone(),
                    kind: "key-value",
                    missing: "state record",
                })?;
            (v.value().to_vec(), auth)
        };
        let decoded = match KvState::decode(&state) {
            Ok(Ok(s)) => s,
            Ok(Err(found)) => {
                return Err(StoreError::UnknownFormat {
                    file: path,
                    found,
                    supported: super::KV_FORMAT_VERSION,
                });
            }
            Err(source) => {
                return Err(StoreError::Corrupt {
                    file: path,
                    what: "state",
                    source,
                });
            }
        };
        let versions = txn
            .open_table(VERSIONS)
            .map_err(db_err(&path, "open versions"))?;
        let mut reader = SnapshotReader {
            file: path,
            meta: decoded.meta(),
            revision: decoded.revision,
            _txn: txn,
            phase: Phase::History(versions),
            pending: Vec::with_capacity(CHUNK_BYTES + 4096),
            crc: crc32fast::Hasher::new(),
            frames: 0,
        };
        reader.pending.extend_from_slice(MAGIC);
        reader.crc.update(MAGIC);
        reader.frame(KIND_STATE, &decoded.encode_as(IMAGE_STATE_FORMAT));
        // Only a store that used auth sends it (see `image.rs`).
        if let Some(auth) = auth {
            reader.frame(KIND_AUTH, &auth);
        }
        Ok(reader)
    }

    /// Starts receiving an image. Nothing changes until
    /// [`SnapshotInstaller::finish`] verified the whole image.
    pub fn begin_install(&self) -> Result<SnapshotInstaller, StoreError> {
        self.check_failed()?;
        let staging = self.inner.dir.join(KV_STAGING_FILE);
        if staging.exists() {
            std::fs::remove_file(&staging).map_err(|source| StoreError::Io {
                file: staging.clone(),
                op: "remove old staging file",
                source,
            })?;
        }
        let db = self
            .inner
            .disk
            .create(&super::db_with_cache(self.inner.cache_bytes), &staging)
            .map_err(db_err(&staging, "create"))?;
        Ok(SnapshotInstaller {
            store: self.clone(),
            staging,
            db: Some(db),
            txn: None,
            txn_bytes: 0,
            parser: FrameParser::default(),
            state: None,
            last: None,
        })
    }
}

impl SnapshotInstaller {
    /// Feeds the next chunk of the image (chunks may split frames anywhere).
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let mut parser = std::mem::take(&mut self.parser);
        let result = parser.feed(chunk, |kind, frame, payload| {
            self.handle(kind, frame, payload)
        });
        self.parser = parser;
        result
    }

    fn handle(&mut self, kind: u8, frame: &[u8], payload: &[u8]) -> Result<(), StoreError> {
        let staging = self.staging.clone();
        let malformed = |what| move |source| SnapshotError::Malformed { what, source };
        let txn = match self.txn.take() {
            Some(t) => t,
            None => {
                let db = self.db.as_ref().ok_or(SnapshotError::Incomplete)?;
                let mut t = db.begin_write().map_err(db_err(&staging, "begin write"))?;
                t.set_durability(Durability::None)
                    .map_err(|e| db_err(&staging, "set durability")(redb::Error::from(e)))?;
                t
            }
        };
        match kind {
            KIND_STATE => {
                let state = decode_state(payload)?;
                let mut meta = txn.open_table(META).map_err(db_err(&staging, "write"))?;
                // In this build's file format, whichever the image said.
                meta.insert(KEY_STATE, state.encode().as_slice())
                    .map_err(db_err(&staging, "write"))?;
                drop(meta);
                txn.open_table(KV).map_err(db_err(&staging, "write"))?;
                txn.open_table(VERSIONS)
                    .map_err(db_err(&staging, "write"))?;
                txn.open_table(CLIENTS).map_err(db_err(&staging, "write"))?;
                txn.open_table(LEASES).map_err(db_err(&staging, "write"))?;
                txn.open_table(LEASE_KEYS)
                    .map_err(db_err(&staging, "write"))?;
                self.state = Some(state);
            }
            KIND_VERSION => {
                let f = VersionFrame::decode(payload).map_err(malformed("version"))?;
                let stored =
                    StoredValue::decode(f.version.as_ref()).map_err(malformed("version"))?;
                {
                    let mut versions = txn
                        .open_table(VERSIONS)
                        .map_err(db_err(&staging, "write"))?;
                    versions
                        .insert(
                            (f.revision, stored.sub),
                            (f.key.as_ref(), f.version.as_ref()),
                        )
                        .map_err(db_err(&staging, "write"))?;
                }
                if self.last.as_ref().is_some_and(|(k, _)| *k != f.key) {
                    flush_latest(&txn, &staging, self.last.take())?;
                }
                self.last = Some((f.key, stored));
            }
            KIND_CLIENT => {
                let f = ClientFrame::decode(payload).map_err(malformed("client"))?;
                let mut t = txn.open_table(CLIENTS).map_err(db_err(&staging, "write"))?;
                t.insert(f.client_id, f.record.as_ref())
                    .map_err(db_err(&staging, "write"))?;
            }
            KIND_AUTH => {
                super::auth::AuthState::decode(payload).map_err(SnapshotError::BadAuth)?;
                let mut meta = txn.open_table(META).map_err(db_err(&staging, "write"))?;
                meta.insert(KEY_AUTH, payload)
                    .map_err(db_err(&staging, "write"))?;
            }
            KIND_LEASE => {
                let f = LeaseFrame::decode(payload).map_err(malformed("lease"))?;
                StoredLease::decode(f.lease.as_ref()).map_err(malformed("lease"))?;
                let mut t = txn.open_table(LEASES).map_err(db_err(&staging, "write"))?;
                t.insert(f.id, f.lease.as_ref())
                    .map_err(db_err(&staging, "write"))?;
            }
            other => return Err(SnapshotError::UnknownKind(other).into()),
        }
        self.txn_bytes += frame.len();
        if self.txn_bytes >= STAGING_TXN_BYTES {
            txn.commit().map_err(db_err(&staging, "commit"))?;
            self.txn_bytes = 0;
        } else {
            self.txn = Some(txn);
        }
        Ok(())
    }

    /// Verifies that the whole image arrived intact, makes it durable and
    /// swaps it in for the current state machine. Returns the image's meta.
    pub fn finish(mut self) -> Result<SnapshotMeta, StoreError> {
        self.parser.complete()?;
        let staging = self.staging.clone();
        let db = self.db.take().ok_or(SnapshotError::Incomplete)?;
        let txn = match self.txn.take() {
            Some(mut t) => {
                t.set_durability(Durability::Immediate)
                    .map_err(|e| db_err(&staging, "set durability")(redb::Error::from(e)))?;
                t
            }
            None => db.begin_write().map_err(db_err(&staging, "begin write"))?,
        };
        flush_latest(&txn, &staging, self.last.take())?;
        txn.commit().map_err(db_err(&staging, "commit"))?;
        db.close().map_err(db_err(&staging, "close"))?;

        let store = self.store.clone();
        let inner = &store.inner;
        let mut durable = store.lock_writer();
        // Hold the database slot while swapping so that no reader opens the
        // old file after the rename.
        let mut slot = inner
            .backend
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        std::fs::rename(&staging, &inner.path).map_err(|source| StoreError::Io {
            file: inner.path.clone(),
            op: "replace with installed snapshot",
            source,
        })?;
        super::sync_dir(&inner.dir)?;
        let db = inner
            .disk
            .open(&super::db_with_cache(inner.cache_bytes), &inner.path)
            .map_err(db_err(&inner.path, "open"))?;
        // The state is re-read from the installed file: what it says wins.
        let loaded = load_state(&db, &inner.path)?;
        let auth = load_auth(&db, &inner.path)?;
        *slot = Arc::new(Backend::load(db, &inner.path, &loaded)?);
        *inner.state.write().unwrap_or_else(PoisonError::into_inner) = loaded.clone();
        *inner.auth.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(auth);
        *durable = loaded.applied_index;
        drop(slot);
        // Watchers read what the image brought from its history.
        store.announce_jump(loaded.revision);
        Ok(loaded.meta())
    }
}

/// Writes a key's last version into the `kv` table, unless it is a delete,
/// and the key into its lease's index.
fn flush_latest(
    txn: &WriteTransaction,
    staging: &std::path::Path,
    last: Option<(Bytes, StoredValue)>,
) -> Result<(), StoreError> {
    let Some((key, stored)) = last else {
        return Ok(());
    };
    if stored.tombstone {
        return Ok(());
    }
    let latest = StoredValue { sub: 0, ..stored };
    let mut kv = txn.open_table(KV).map_err(db_err(staging, "write"))?;
    kv.insert(key.as_ref(), latest.encode_to_vec().as_slice())
        .map_err(db_err(staging, "write"))?;
    if latest.lease != 0 {
        let mut index = txn
            .open_table(LEASE_KEYS)
            .map_err(db_err(staging, "write"))?;
        index
            .insert((latest.lease, key.as_ref()), ())
            .map_err(db_err(staging, "write"))?;
    }
    Ok(())
}

impl Drop for SnapshotInstaller {
    fn drop(&mut self) {
        // An abandoned install leaves the current state machine untouched;
        // the staging file is removed (or, after a crash, on the next open).
        if self.db.is_some() {
            self.txn.take();
            self.db.take();
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}
