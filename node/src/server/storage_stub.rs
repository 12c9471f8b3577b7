//! PLACEHOLDER: stand-ins for the `storage` module's client types, so that the
//! node (and the gRPC layer built on [`NodeHandle`](super::NodeHandle)) can
//! compile before the storage branch is merged. Every item here is replaced
//! by a re-export of `crate::storage` once it lands; do not grow this file.

use bytes::Bytes;

/// A write to the key-value state machine (placeholder for `storage::Command`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub op: Op,
}

/// One operation of a write (placeholder for `storage::Op`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
        prev_kv: bool,
    },
    Delete {
        key: Bytes,
        range_end: Option<Bytes>,
        prev_kv: bool,
    },
}

/// What applying a command did (placeholder for `storage::ApplyOutcome`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub revision: u64,
    pub deleted: u64,
    pub prev_kvs: Vec<KeyValue>,
}

/// A read of one key or a range (placeholder for `storage::RangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Bytes,
    pub range_end: Option<Bytes>,
    pub limit: u64,
    pub count_only: bool,
    pub keys_only: bool,
}

/// The answer to a [`RangeRequest`] (placeholder for `storage::RangeResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: u64,
    pub more: bool,
    pub revision: u64,
}

/// A key with its etcd-style metadata (placeholder for `storage::KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}
