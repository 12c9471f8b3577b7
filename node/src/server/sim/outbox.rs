//! The simulation's side of the driver's [`Outbox`]: messages and snapshot
//! images are collected here and put on the simulated network by the
//! cluster after each turn.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::raft::{Message, NodeId};
use crate::server::outbox::Outbox;
use crate::storage::SnapshotReader;

/// A snapshot image read out of the sender's state machine at send time.
#[derive(Debug)]
pub(super) struct OutgoingSnapshot {
    pub message: Message,
    /// The image, or why it could not be read.
    pub chunks: Result<Vec<Bytes>, String>,
}

#[derive(Debug, Default)]
pub(super) struct Collected {
    pub peers: BTreeSet<NodeId>,
    pub messages: Vec<Message>,
    pub snapshots: Vec<OutgoingSnapshot>,
}

/// Shared between a node's driver (which fills it) and the cluster (which
/// empties it).
#[derive(Clone, Debug, Default)]
pub(super) struct SimOutbox(pub Arc<Mutex<Collected>>);

impl SimOutbox {
    pub fn take(&self) -> Collected {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Collected {
            peers: c.peers.clone(),
            messages: std::mem::take(&mut c.messages),
            snapshots: std::mem::take(&mut c.snapshots),
        }
    }
}

impl Outbox for SimOutbox {
    fn set_peers(&mut self, peers: &[(NodeId, String)]) {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        c.peers = peers.iter().map(|(id, _)| *id).collect();
    }

    fn send(&mut self, m: Message) -> bool {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !c.peers.contains(&m.to) {
            return false;
        }
        c.messages.push(m);
        true
    }

    fn send_snapshot(&mut self, m: Message, mut reader: SnapshotReader) {
        let mut chunks = Vec::new();
        let mut failed = None;
        while let Some(chunk) = reader.next_chunk() {
            match chunk {
                Ok(c) => chunks.push(c),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        c.snapshots.push(OutgoingSnapshot {
            message: m,
            chunks: match failed {
                Some(e) => Err(e),
                None => Ok(chunks),
            },
        });
    }
}
