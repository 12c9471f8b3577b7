//! What the network side hands the driver: peer messages, snapshot images
//! received and sent, unreachable peers and where peers said they are.
//!
//! It lives apart from both so that the transport and the driver each
//! depend on it, and never on one another.

use std::path::PathBuf;

use crate::raft::{Message, NodeId};

/// What the network side hands the driver.
#[derive(Debug)]
pub(crate) enum Inbound {
    Message(Message),
    /// A snapshot image arrived completely and is staged at `staged`;
    /// `message` is the InstallSnapshot (meta only) to step.
    SnapshotReceived {
        message: Message,
        staged: PathBuf,
    },
    /// An outbound snapshot stream finished.
    SnapshotSent {
        to: NodeId,
        ok: bool,
    },
    /// A peer could not be reached (stream broken or queue full).
    Unreachable(NodeId),
    /// A peer opened a message stream and said where it can be reached.
    PeerUrl {
        id: NodeId,
        url: String,
        client_url: Option<String>,
    },
}
