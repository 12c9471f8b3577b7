//! The leader's side of leases: when each lease expires, keep-alives, and
//! expiring a lease by proposing its revoke.
//!
//! Which leases exist is replicated state (`storage/lease.rs`); when they
//! expire is not. Like etcd's lessor, only the leader keeps deadlines, on
//! its monotonic clock and in memory. An expired lease is revoked through
//! the log, so every member deletes its keys at the same index; followers
//! never expire anything on their own.
//!
//! Like etcd's lease checkpoints, the leader commits how long each lease
//! has left every checkpoint interval (`--lease-checkpoint-interval-ms`),
//! and a keep-alive clears a lease's record (it is back to its full TTL).
//! A member that becomes leader gives every lease the time its record
//! says, or its full TTL if there is none (etcd's "promote"): across a
//! leader change a lease can outlive its TTL by at most one interval, and
//! never expires early.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng as _;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::Driver;
use crate::raft::{RoleState, Term};
use crate::server::ClientError;
use crate::server::handle::{DriverReply, LeaseAnswer, LeaseQuery, LeaseReply, Rejection};
use crate::storage::{ApplyOutcome, Command, Op, StoreError};

/// How often the leader looks for expired leases.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long the leader waits for the revoke of an expired lease to apply
/// before it proposes it again (a proposal can be lost to a leader change
/// of an instant, or a full log).
const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// At most this many leases per checkpoint command (etcd's batch size).
const CHECKPOINTS_PER_COMMAND: usize = 1000;

/// The leader's deadlines. Empty on a member that does not lead.
#[derive(Debug, Default)]
pub(super) struct Lessor {
    /// The term this member leads in, once it promoted its leases.
    leading: Option<Term>,
    deadlines: HashMap<i64, Lease>,
    last_check: Option<Instant>,
    last_checkpoint: Option<Instant>,
}

#[derive(Debug)]
struct Lease {
    deadline: Instant,
    /// When its revoke was last proposed, once it expired.
    revoke_proposed: Option<Instant>,
    /// A checkpoint of it is recorded (or on its way): a keep-alive must
    /// clear it, or a new leader would cut the renewed lease short.
    checkpointed: bool,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl Driver {
    /// What the lessor does once per turn: promote on becoming leader,
    /// forget everything on losing leadership, and expire leases.
    pub(super) fn lessor_turn(&mut self) {
        let status = self.node.status();
        if status.role != RoleState::Leader {
            if self.lessor.leading.is_some() {
                debug!("no longer leading: dropping lease deadlines");
                self.lessor = Lessor::default();
            }
            return;
        }
        let now = Instant::now();
        if self.lessor.leading != Some(status.term) {
            self.promote_leases(status.term, now);
        }
        if self
            .lessor
            .last_check
            .is_some_and(|t| now.duration_since(t) < CHECK_EVERY)
        {
            return;
        }
        self.lessor.last_check = Some(now);
        self.expire_leases(now);
        self.checkpoint_leases(now);
    }

    /// Every checkpoint interval, commits how long each lease has left
    /// (rounded up to whole seconds: never shorter than the truth). A
    /// lease with at most one interval left is left out, as etcd leaves
    /// out leases whose TTL is that short: it expires or is renewed before
    /// another checkpoint would matter, and the record it keeps (if any)
    /// only gives it more time.
    fn checkpoint_leases(&mut self, now: Instant) {
        let interval = self.cfg.lease_checkpoint_interval;
        if interval.is_zero() {
            return;
        }
        let Some(last) = self.lessor.last_checkpoint else {
            // The first interval runs from promotion.
            self.lessor.last_checkpoint = Some(now);
            return;
        };
        if now.duration_since(last) < interval {
            return;
        }
        self.lessor.last_checkpoint = Some(now);
        let mut checkpoints = Vec::new();
        for (id, lease) in &mut self.lessor.deadlines {
            if lease.revoke_proposed.is_some() {
                continue;
            }
            let left = lease.deadline.saturating_duration_since(now);
            if left <= interval {
                continue;
            }
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            checkpoints.push((*id, i64::try_from(secs).unwrap_or(i64::MAX)));
            lease.checkpointed = true;
        }
        if checkpoints.is_empty() {
            return;
        }
        checkpoints.sort_unstable();
        let data: Vec<Bytes> = checkpoints
            .chunks(CHECKPOINTS_PER_COMMAND)
            .map(|chunk| {
                Command {
                    request_id: None,
                    auth: None,
                    op: Op::LeaseCheckpoint {
                        checkpoints: chunk.to_vec(),
                    },
                }
                .encode()
            })
            .collect();
        // Nobody waits: a lost checkpoint only means a new leader gives
        // the lease more time, never less.
        match self.node.propose_batch(data) {
            Ok(_) => debug!(leases = checkpoints.len(), "proposed lease checkpoints"),
            Err(e) => debug!(error = %e, "could not propose lease checkpoints"),
        }
    }

    /// Gives every lease the time its last checkpoint recorded, or its
    /// full TTL, from now (etcd's promote).
    fn promote_leases(&mut self, term: Term, now: Instant) {
        let leases = match self.kv.leases() {
            Ok(l) => l,
            Err(e) => {
                // Try again next turn; nothing expires meanwhile.
                warn!(error = %e, "cannot read the leases to promote them");
                return;
            }
        };
        self.lessor.deadlines = leases
            .into_iter()
            .map(|l| {
                let left = l.remaining_ttl.map_or(l.ttl, |r| r.min(l.ttl));
                (
                    l.id,
                    Lease {
                        deadline: now + ttl_duration(left),
                        revoke_proposed: None,
                        checkpointed: l.remaining_ttl.is_some(),
                    },
                )
            })
            .collect();
        self.lessor.leading = Some(term);
        self.lessor.last_checkpoint = None;
        debug!(
            leases = self.lessor.deadlines.len(),
            "leading: leases promoted"
        );
    }

    /// Proposes the revoke of every expired lease whose revoke is not
    /// already on its way.
    fn expire_leases(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (id, lease) in &mut self.lessor.deadlines {
            if lease.deadline > now {
                continue;
            }
            if lease
                .revoke_proposed
                .is_some_and(|t| now.duration_since(t) < REVOKE_RETRY)
            {
                continue;
            }
            lease.revoke_proposed = Some(now);
            due.push(*id);
        }
        if due.is_empty() {
            return;
        }
        let data: Vec<Bytes> = due
            .iter()
            .map(|&id| {
                Command {
                    request_id: None,
                    auth: None,
                    op: Op::LeaseRevoke { id },
                }
                .encode()
            })
            .collect();
        // Nobody waits for these: the revoke's outcome, when it applies,
        // removes the lease here.
        match self.node.propose_batch(data) {
            Ok(_) => debug!(leases = ?due, "proposed the revoke of expired leases"),
            Err(e) => debug!(error = %e, "could not propose the revoke of expired leases"),
        }
    }

    /// Keeps the deadlines in step with what applied: a granted lease
    /// starts its TTL, a revoked one is gone.
    pub(super) fn lessor_applied(&mut self, outcome: &ApplyOutcome) {
        if self.lessor.leading.is_none() {
            return;
        }
        match outcome {
            ApplyOutcome::LeaseGranted { id, ttl, .. } => {
                self.lessor.deadlines.insert(
                    *id,
                    Lease {
                        deadline: Instant::now() + ttl_duration(*ttl),
                        revoke_proposed: None,
                        checkpointed: false,
                    },
                );
            }
            ApplyOutcome::LeaseRevoked { id, .. } => {
                self.lessor.deadlines.remove(id);
            }
            _ => {}
        }
    }

    /// Prepares a grant for the log on the leader: picks an unused id for
    /// id 0 and raises a TTL below the minimum (both depend on this
    /// member's state and configuration, so they are decided once, here,
    /// and the log carries the result).
    pub(super) fn prepare_grant(&self, cmd: &mut Command) -> Result<(), ClientError> {
        let Op::LeaseGrant { id, ttl } = &mut cmd.op else {
            return Ok(());
        };
        if self.node.status().role != RoleState::Leader {
            // The leader this is forwarded to decides.
            return Ok(());
        }
        *ttl = (*ttl).max(self.cfg.min_lease_ttl);
        if *id == 0 {
            let mut rng = rand::rng();
            loop {
                // A positive id, as etcd's are.
                let candidate = rng.random_range(1..=i64::MAX);
                if self.kv.lease(candidate).map_err(internal)?.is_none() {
                    *id = candidate;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Answers a lease question; only the leader can.
    pub(super) fn answer_lease(
        &mut self,
        query: LeaseQuery,
        reply: oneshot::Sender<DriverReply<LeaseReply>>,
    ) {
        let status = self.node.status();
        if status.role != RoleState::Leader || self.lessor.leading != Some(status.term) {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let answer = self.lease_answer(query, Instant::now());
        let _ = reply.send(
            answer
                .map(|answer| LeaseReply {
                    answer,
                    revision: self.kv.revision(),
                    raft_term: status.term,
                })
                .map_err(Rejection::Failed),
        );
    }

    fn lease_answer(
        &mut self,
        query: LeaseQuery,
        now: Instant,
    ) -> Result<LeaseAnswer, ClientError> {
        Ok(match query {
            LeaseQuery::KeepAlive(id) => {
                let ttl = match self.kv.lease(id).map_err(internal)? {
                    None => 0,
                    Some(info) => {
                        let lease = self.lessor.deadlines.entry(id).or_insert(Lease {
                            deadline: now,
                            revoke_proposed: None,
                            checkpointed: info.remaining_ttl.is_some(),
                        });
                        if lease.revoke_proposed.is_some() {
                            // Expired: its revoke is on its way (etcd
                            // answers a late keep-alive with TTL 0 too).
                            0
                        } else {
                            lease.deadline = now + ttl_duration(info.ttl);
                            if std::mem::take(&mut lease.checkpointed) {
                                self.clear_checkpoint(id);
                            }
                            info.ttl
                        }
                    }
                };
                LeaseAnswer::KeepAlive { id, ttl }
            }
            LeaseQuery::TimeToLive { id, keys } => match self.kv.lease(id).map_err(internal)? {
                None => LeaseAnswer::TimeToLive {
                    id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                },
                Some(info) => {
                    let left = self
                        .lessor
                        .deadlines
                        .get(&id)
                        .map_or(ttl_duration(info.ttl), |l| {
                            l.deadline.saturating_duration_since(now)
                        });
                    LeaseAnswer::TimeToLive {
                        id,
                        ttl: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                        granted_ttl: info.ttl,
                        keys: if keys {
                            self.kv.lease_keys(id).map_err(internal)?
                        } else {
                            Vec::new()
                        },
                    }
                }
            },
            LeaseQuery::Leases => LeaseAnswer::Leases(
                self.kv
                    .leases()
                    .map_err(internal)?
                    .into_iter()
                    .map(|l| l.id)
                    .collect(),
            ),
        })
    }
}

impl Driver {
    /// A renewed lease is back to its full TTL: its checkpoint goes (etcd
    /// checkpoints 0 for it), so that a new leader does not cut it short.
    fn clear_checkpoint(&mut self, id: i64) {
        let cmd = Command {
            request_id: None,
            auth: None,
            op: Op::LeaseCheckpoint {
                checkpoints: vec![(id, 0)],
            },
        };
        if let Err(e) = self.node.propose_batch(vec![cmd.encode()]) {
            debug!(error = %e, lease = id, "could not clear a lease checkpoint");
        }
    }
}

fn internal(e: StoreError) -> ClientError {
    ClientError::Internal(e.to_string())
}
