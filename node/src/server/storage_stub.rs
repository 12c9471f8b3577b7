//! PLACEHOLDER: stand-ins for the `storage` module (redb), so that the node
//! (and the gRPC layer built on [`NodeHandle`](super::NodeHandle)) compiles
//! before the storage branch is merged. Everything here is in memory and is
//! replaced by `crate::storage` once it lands; do not grow this file.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::raft::{
    Entry, EntryPayload, HardState, InitialState, LogIndex, MemStorage, Membership, Snapshot,
    SnapshotMeta, Storage, StorageError, Term,
};

/// A write to the key-value state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub op: Op,
}

/// One operation of a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        prev_kv: bool,
    },
    Delete {
        key: Vec<u8>,
        range_end: Option<Vec<u8>>,
        prev_kv: bool,
    },
}

impl Command {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
    pub fn decode(data: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(data).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
    pub fn validate(&self, limits: &Limits) -> Result<(), LimitError> {
        if let Op::Put { key, value, .. } = &self.op {
            if key.len() > limits.max_key_bytes {
                return Err(LimitError::KeyTooLarge(key.len()));
            }
            if value.len() > limits.max_value_bytes {
                return Err(LimitError::ValueTooLarge(value.len()));
            }
        }
        if let Op::Put { key, .. } | Op::Delete { key, .. } = &self.op {
            if key.is_empty() {
                return Err(LimitError::EmptyKey);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("key is {0} bytes, over the limit")]
    KeyTooLarge(usize),
    #[error("value is {0} bytes, over the limit")]
    ValueTooLarge(usize),
    #[error("key must not be empty")]
    EmptyKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1536,
            max_value_bytes: 1536 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub every_entries: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_entries: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub revision: u64,
    pub deleted: u64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Option<Vec<u8>>,
    pub limit: u64,
    pub count_only: bool,
    pub keys_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: u64,
    pub more: bool,
    pub revision: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("corrupt: {0}")]
    Corrupt(String),
}

/// The Raft log (in memory here).
#[derive(Debug, Default)]
pub struct LogStore {
    mem: MemStorage,
}

impl LogStore {
    pub fn open(_dir: &Path) -> Result<Self, StoreError> {
        Ok(LogStore::default())
    }
    pub fn is_initialized(&self) -> bool {
        false
    }
    pub fn bootstrap(&mut self, membership: Membership) -> Result<(), StoreError> {
        self.mem = MemStorage::new(membership);
        Ok(())
    }
    pub fn persist(
        &mut self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), StoreError> {
        if let Some(meta) = snapshot {
            self.mem.apply_snapshot(Snapshot {
                meta: meta.clone(),
                data: Bytes::new(),
            });
        }
        self.mem
            .append(entries)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(hs) = hard_state {
            self.mem.set_hard_state(hs);
        }
        Ok(())
    }
    pub fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StoreError> {
        self.mem
            .compact(meta.index, meta.membership, Bytes::new())
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }
    pub fn size_bytes(&self) -> u64 {
        0
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StorageError> {
        self.mem.entries(lo, hi, max_bytes)
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.mem.term(index)
    }
    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.mem.first_index()
    }
    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.mem.last_index()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.mem.snapshot()
    }
}

/// The key-value state machine (in memory here).
#[derive(Debug, Default)]
pub struct KvStore {
    data: BTreeMap<Vec<u8>, KeyValue>,
    revision: u64,
    applied: SnapshotMeta,
}

/// A consistent image of the state machine, read in chunks.
#[derive(Debug)]
pub struct KvSnapshotReader {
    meta: SnapshotMeta,
    chunks: std::vec::IntoIter<Bytes>,
}

impl KvSnapshotReader {
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        Ok(self.chunks.next())
    }
}

impl KvStore {
    pub fn open(_dir: &Path, _limits: Limits) -> Result<Self, StoreError> {
        Ok(KvStore::default())
    }
    pub fn applied(&self) -> &SnapshotMeta {
        &self.applied
    }
    pub fn revision(&self) -> u64 {
        self.revision
    }
    pub fn size_bytes(&self) -> u64 {
        0
    }
    pub fn apply(&mut self, entry: &Entry) -> Result<Option<ApplyOutcome>, StoreError> {
        self.applied.index = entry.index;
        self.applied.term = entry.term;
        match &entry.payload {
            EntryPayload::Noop => Ok(None),
            EntryPayload::Membership(m) => {
                self.applied.membership = m.clone();
                Ok(None)
            }
            EntryPayload::Command(data) => {
                let cmd = Command::decode(data)?;
                self.revision += 1;
                let rev = self.revision;
                Ok(Some(match cmd.op {
                    Op::Put { key, value, .. } => {
                        let old = self.data.get(&key).cloned();
                        let kv = KeyValue {
                            key: key.clone(),
                            value,
                            create_revision: old.as_ref().map_or(rev, |o| o.create_revision),
                            mod_revision: rev,
                            version: old.as_ref().map_or(1, |o| o.version + 1),
                        };
                        self.data.insert(key, kv);
                        ApplyOutcome {
                            revision: rev,
                            deleted: 0,
                            prev_kvs: old.into_iter().collect(),
                        }
                    }
                    Op::Delete { key, .. } => {
                        let old = self.data.remove(&key);
                        ApplyOutcome {
                            revision: rev,
                            deleted: u64::from(old.is_some()),
                            prev_kvs: old.into_iter().collect(),
                        }
                    }
                }))
            }
        }
    }
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult, StoreError> {
        let kvs: Vec<KeyValue> = match &req.range_end {
            None => self.data.get(&req.key).cloned().into_iter().collect(),
            Some(end) => self
                .data
                .range(req.key.clone()..)
                .take_while(|(k, _)| end.is_empty() || *k < end)
                .map(|(_, v)| v.clone())
                .collect(),
        };
        let count = kvs.len() as u64;
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        Ok(RangeResult {
            more: kvs.len() > limit,
            kvs: kvs.into_iter().take(limit).collect(),
            count,
            revision: self.revision,
        })
    }
    pub fn snapshot(&self) -> Result<KvSnapshotReader, StoreError> {
        let image = serde_json::to_vec(&(self.revision, self.data.values().collect::<Vec<_>>()))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(KvSnapshotReader {
            meta: self.applied.clone(),
            chunks: vec![Bytes::from(image)].into_iter(),
        })
    }
    pub fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        image: &mut dyn std::io::Read,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        image
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (revision, kvs): (u64, Vec<KeyValue>) =
            serde_json::from_slice(&buf).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.revision = revision;
        self.data = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        self.applied = meta.clone();
        Ok(())
    }
}
