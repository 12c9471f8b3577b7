//! The errors of durable storage.
//!
//! Every error that concerns a file names it, so that an operator reading a
//! refusal to start knows which file to look at and what is wrong with it.

use std::path::PathBuf;

use crate::raft::{LogIndex, NodeId};

/// Why a store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O error, corrupt or truncated file, disk full...).
    #[error("{file}: {op} failed: {source}")]
    Db {
        file: PathBuf,
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// A file-system operation outside redb failed.
    #[error("{file}: {op} failed: {source}")]
    Io {
        file: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A record stored in the file could not be decoded.
    #[error("{file}: stored {what} is corrupt: {source}")]
    Corrupt {
        file: PathBuf,
        what: &'static str,
        #[source]
        source: DecodeError,
    },
    /// The file was written by an unknown (newer) format version.
    #[error("{file}: unknown format version {found} (this build reads version {supported})")]
    UnknownFormat {
        file: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The data directory belongs to another cluster.
    #[error("{file}: belongs to cluster {found:#x}, not to this node's cluster {expected:#x}")]
    WrongCluster {
        file: PathBuf,
        expected: u64,
        found: u64,
    },
    /// The data directory belongs to another node of the cluster.
    #[error("{file}: belongs to node {found}, not to this node ({expected})")]
    WrongNode {
        file: PathBuf,
        expected: NodeId,
        found: NodeId,
    },
    /// The file exists but lacks the records every store of this kind has
    /// from its creation on.
    #[error("{file}: not a raftkv {kind} store (missing {missing})")]
    NotAStore {
        file: PathBuf,
        kind: &'static str,
        missing: &'static str,
    },
    /// The caller asked for a write that would break the log's contiguity
    /// (a bug in the caller, not a disk problem).
    #[error("{file}: cannot write log entries from {index}: {reason}")]
    InvalidAppend {
        file: PathBuf,
        index: LogIndex,
        reason: &'static str,
    },
    /// The caller asked to apply entries that do not follow the applied
    /// index (a bug in the caller).
    #[error("{file}: cannot apply entry {got}: the applied index is {applied}")]
    ApplyGap {
        file: PathBuf,
        applied: LogIndex,
        got: LogIndex,
    },
    /// A read request is invalid (e.g. an empty key).
    #[error("invalid request: {0}")]
    InvalidRequest(crate::storage::KvError),
    /// A snapshot image could not be read or installed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::storage::SnapshotError),
    /// `force_new_cluster` for a node its own log does not list.
    #[error("{file}: node {id} is not a member of the configuration its log holds")]
    NotAMember { file: PathBuf, id: NodeId },
    /// `bootstrap` on a store that already holds state.
    #[error("{file}: already holds state; refusing to bootstrap it again")]
    AlreadyBootstrapped { file: PathBuf },
    /// An earlier write failed; the store refuses further writes because it
    /// can no longer tell what is on disk. Restart the node.
    #[error("{file}: an earlier write failed ({first}); refusing further writes until restart")]
    Failed { file: PathBuf, first: String },
}

/// Why bytes could not be decoded into a value.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: {source}")]
    Prost {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{what}: missing field {field}")]
    Missing {
        what: &'static str,
        field: &'static str,
    },
    #[error("{what}: invalid value {value} for {field}")]
    Invalid {
        what: &'static str,
        field: &'static str,
        value: i64,
    },
}

/// Wraps a redb error with the file and operation it concerns.
pub(crate) fn db_err<'a, E: Into<redb::Error>>(
    file: &'a std::path::Path,
    op: &'static str,
) -> impl FnOnce(E) -> StoreError + 'a {
    move |e| StoreError::Db {
        file: file.to_path_buf(),
        op,
        source: Box::new(e.into()),
    }
}

/// Wraps a decoding error with the file and record it concerns.
pub(crate) fn corrupt<'a>(
    file: &'a std::path::Path,
    what: &'static str,
) -> impl FnOnce(DecodeError) -> StoreError + 'a {
    move |source| StoreError::Corrupt {
        file: file.to_path_buf(),
        what,
        source,
    }
}
