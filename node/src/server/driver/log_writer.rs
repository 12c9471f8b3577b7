//! The log writer: what the driver makes durable in the Raft log — each
//! `Ready`'s snapshot meta, entries and hard state in one write (group
//! commit) — and compaction of the log behind the state machine.

use std::time::Instant;

use tracing::debug;

use super::{Driver, DriverError};
use crate::raft::Ready;

impl Driver {
    /// Makes what `rd` hands over durable: the snapshot image first (the
    /// state machine must never be behind a compacted log), then log and
    /// hard state in one write; writes the snapshot replaced are failed.
    pub(super) fn persist_ready(&mut self, rd: &Ready) -> Result<(), DriverError> {
        if let Some(snapshot) = &rd.snapshot {
            self.install_snapshot(&snapshot.meta)?;
        }
        if rd.snapshot.is_some() || !rd.entries.is_empty() || rd.hard_state.is_some() {
            let started = Instant::now();
            let store = self.node.storage_mut();
            tokio::task::block_in_place(|| {
                store.persist(
                    rd.snapshot.as_ref().map(|s| &s.meta),
                    &rd.entries,
                    rd.hard_state.as_ref(),
                )
            })
            .map_err(|e| DriverError::Log(e.to_string()))?;
            self.metrics
                .disk_log_fsync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if let Some(snapshot) = &rd.snapshot {
            let failed = self.pending.fail_writes_through(snapshot.meta.index);
            self.metrics
                .raft_proposals_failed_total
                .inc_by(failed as u64);
        }
        Ok(())
    }

    /// Compacts the log behind the state machine when the policy says so.
    /// The state machine is made durable first: the log must never be
    /// compacted past what a restart can recover without it.
    pub(super) fn maybe_compact(&mut self) -> Result<(), DriverError> {
        // A crash between installing a snapshot into the state machine and
        // recording it in the log leaves the state machine ahead of the
        // log: only what the log holds and knows committed can go.
        let applied = self
            .kv
            .applied_index()
            .min(self.node.storage().stored_commit());
        let log_snapshot = self.node.storage().snapshot_meta().index;
        let Some(to) = self.cfg.snapshot_policy.compact_to(applied, log_snapshot) else {
            return Ok(());
        };
        let kv = &self.kv;
        let log = self.node.storage();
        tokio::task::block_in_place(|| {
            kv.sync()
                .map_err(|e| DriverError::StateMachine(e.to_string()))?;
            log.compact_to(to)
                .map_err(|e| DriverError::Log(e.to_string()))
        })?;
        debug!(index = %to, "compacted the log");
        Ok(())
    }
}
