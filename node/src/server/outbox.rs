//! What the driver needs of the network: a way to reach its peers.
//!
//! The driver only ever *hands over* messages and snapshot images; how they
//! travel is not its business. In a running node the gRPC transport
//! (`transport.rs`) carries them; the whole-node simulation (`sim`) carries
//! them through a simulated network instead, so that the real driver and
//! the real storage run under faults decided by a seed. Keeping this seam
//! here also keeps the driver free of any dependency on the transport.

use crate::raft::{Message, NodeId};
use crate::storage::SnapshotReader;

/// The outbound side of the peer protocol, as the driver sees it.
pub(crate) trait Outbox: Send {
    /// Makes the set of reachable peers match `peers` (id, peer URL).
    fn set_peers(&mut self, peers: &[(NodeId, String)]);

    /// Queues a message; returns false if it was dropped at once (unknown
    /// peer, full queue), in which case the driver reports the peer
    /// unreachable.
    fn send(&mut self, m: Message) -> bool;

    /// Streams a snapshot image to `m.to`. Its end is reported back to the
    /// driver as `Inbound::SnapshotSent`.
    fn send_snapshot(&mut self, m: Message, reader: SnapshotReader);
}
