//! The applier: committed entries into the state machine, answering the
//! writes that waited for them, and installing a snapshot image the core
//! accepted.

use std::collections::HashMap;

use tracing::info;

use super::{Driver, DriverError, kv_error};
use crate::raft::{Entry, LogIndex};
use crate::server::ClientError;
use crate::server::handle::{Rejection, WriteResult};
use crate::storage::{ApplyOutcome, CHUNK_BYTES};

impl Driver {
    /// Installs the staged image the core has accepted: fed chunk by chunk
    /// into the state machine's installer, which swaps it in only once the
    /// whole image verified.
    pub(super) fn install_snapshot(
        &mut self,
        meta: &crate::raft::SnapshotMeta,
    ) -> Result<(), DriverError> {
        let Some(path) = self.staged_snapshots.remove(&meta.index) else {
            return Err(DriverError::Snapshot(format!(
                "the core installs a snapshot at index {} that was never staged",
                meta.index
            )));
        };
        let kv = &self.kv;
        let installed = tokio::task::block_in_place(|| {
            use std::io::Read;
            let mut file = std::fs::File::open(&path)
                .map_err(|e| DriverError::Snapshot(format!("{}: {e}", path.display())))?;
            let mut installer = kv
                .begin_install()
                .map_err(|e| DriverError::Snapshot(e.to_string()))?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| DriverError::Snapshot(format!("{}: {e}", path.display())))?;
                if n == 0 {
                    break;
                }
                installer
                    .write_chunk(&buf[..n])
                    .map_err(|e| DriverError::Snapshot(e.to_string()))?;
            }
            installer
                .finish()
                .map_err(|e| DriverError::Snapshot(e.to_string()))
        })?;
        if installed.index != meta.index || installed.term != meta.term {
            return Err(DriverError::Snapshot(format!(
                "the staged image is at {}/{}, the core expected {}/{}",
                installed.index, installed.term, meta.index, meta.term
            )));
        }
        let _ = std::fs::remove_file(&path);
        // Older staged images are useless now.
        let stale: Vec<_> = self
            .staged_snapshots
            .range(..=meta.index)
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            if let Some(p) = self.staged_snapshots.remove(&i) {
                let _ = std::fs::remove_file(p);
            }
        }
        info!(index = %meta.index, term = %meta.term, "installed snapshot");
        Ok(())
    }

    pub(super) fn apply(&mut self, entries: &[Entry]) -> Result<(), DriverError> {
        if entries.is_empty() {
            return Ok(());
        }
        let kv = &self.kv;
        let outcomes: HashMap<LogIndex, ApplyOutcome> =
            tokio::task::block_in_place(|| kv.apply(entries))
                .map_err(|e| DriverError::StateMachine(e.to_string()))?
                .into_iter()
                .collect();
        let mut outcomes = outcomes;
        for outcome in outcomes.values() {
            self.lessor_applied(outcome);
        }
        for e in entries {
            let (index, term) = (e.index, e.term);
            if let Some(w) = self.pending.take_write(index) {
                match outcomes.remove(&index) {
                    Some(ApplyOutcome::Rejected(err)) if w.term == term => {
                        self.metrics.raft_proposals_failed_total.inc();
                        let _ = w.reply.send(Err(Rejection::Failed(kv_error(err))));
                    }
                    Some(outcome) if w.term == term => {
                        self.metrics.raft_proposals_committed_total.inc();
                        let _ = w.reply.send(Ok(WriteResult {
                            outcome,
                            raft_term: term,
                        }));
                    }
                    _ => {
                        self.metrics.raft_proposals_failed_total.inc();
                        // Another leader's entry holds this index: ours can
                        // never commit, so retrying cannot apply it twice.
                        let _ = w.reply.send(Err(Rejection::Failed(ClientError::NoLeader)));
                    }
                }
            }
            if self
                .pending
                .change
                .as_ref()
                .is_some_and(|c| c.index == index)
            {
                if let Some(c) = self.pending.change.take() {
                    let result = if c.term == term {
                        Ok(c.member)
                    } else {
                        Err(Rejection::Failed(ClientError::NoLeader))
                    };
                    let _ = c.reply.send(result);
                }
            }
        }
        Ok(())
    }
}
