//! Snapshots as the core sees them: a position in the log, the configuration
//! in force there, and the state machine image.

use bytes::Bytes;

use super::membership::Membership;
use super::types::{LogIndex, Term};

/// Where a snapshot sits in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: LogIndex,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration in force at `index`.
    pub membership: Membership,
}

/// A snapshot of the state machine.
///
/// The core never looks inside `data`. A driver that streams snapshots over a
/// separate channel (as the raftkv node does, in bounded chunks) leaves `data`
/// empty, moves the image itself, and steps the
/// [`InstallSnapshot`](super::MessageBody::InstallSnapshot) message into the
/// receiving core only once the whole image has arrived. The simulator keeps
/// the image inline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}
