//! The step loop: the only code that touches the consensus core. It takes
//! ticks, peer messages, client requests and the other stages' reports,
//! steps the core, and hands out each `Ready` without waiting for a disk:
//! what may go early is sent, the write goes to the log writer with the
//! messages that must wait for it (`log_writer.rs`), committed entries and
//! confirmed reads go to the applier (`applier.rs`), and the core hears
//! "persisted up to (index, term)" whenever the writer says so. Only a
//! snapshot received from a leader is installed here, synchronously, once
//! both other stages are idle: it is rare, and the state machine must take
//! it before the log does.

use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::answer::read_local;
use super::applier::{Applied, ApplyTask};
use super::log_writer::{LogWrite, Persisted};
use super::{Batch, Driver, DriverError, kv_error};
use crate::raft::{Message, MessageBody, NodeId, ProposeError, RaftError, Ready, RoleState};
use crate::server::driver::pending::{PendingRead, PendingWrite};
use crate::server::handle::{Rejection, Request};
use crate::server::inbound::Inbound;
use crate::server::member_info::MemberInfo;
use crate::server::put_path;
use crate::server::{ClientError, Consistency};
use crate::storage::Command;

impl Driver {
    pub(super) fn on_tick(&mut self) -> Result<(), DriverError> {
        self.node.tick();
        self.loops += 1;
        self.write_held_back_commit()?;
        if self.loops % 100 == 0 {
            self.pending.prune_abandoned();
            self.hand_applier(ApplyTask::Prune)?;
            self.publish_sizes();
        }
        Ok(())
    }

    pub(super) fn on_inbound(&mut self, inbound: Inbound) -> Result<(), DriverError> {
        match inbound {
            Inbound::Message(m) => {
                put_path::message("stepped", &m);
                if let MessageBody::HeartbeatResponse(_) = m.body {
                    if let Some(sent) = self.heartbeat_sent.remove(&m.from) {
                        self.metrics
                            .network_peer_rtt_seconds
                            .with_label_values(&[&m.from.to_string()])
                            .observe(sent.elapsed().as_secs_f64());
                    }
                }
                self.step(m)?;
            }
            Inbound::SnapshotReceived { message, staged } => {
                if let MessageBody::InstallSnapshot(s) = &message.body {
                    // Keep only the newest staged image per index (the
                    // same image may arrive again, and be staged again
                    // under the same name: that one must stay).
                    if let Some(old) = self.staged_snapshots.insert(s.meta.index, staged.clone())
                        && old != staged
                    {
                        let _ = std::fs::remove_file(old);
                    }
                }
                self.step(message)?;
            }
            Inbound::SnapshotSent { to, ok } => self.node.report_snapshot(to, ok),
            Inbound::Unreachable(to) => self.node.report_unreachable(to),
            Inbound::PeerUrl {
                id,
                url,
                client_url,
            } => {
                self.peer_hints.insert(id, url);
                if let Some(c) = client_url {
                    self.client_urls.insert(id, c);
                }
            }
        }
        Ok(())
    }

    /// Steps a peer's message. One the core refuses is counted and
    /// dropped: input from the network never stops the node.
    pub(super) fn step(&mut self, m: Message) -> Result<(), DriverError> {
        match self.node.step(m) {
            Ok(()) => Ok(()),
            Err(RaftError::Refused { from, reason }) => {
                self.metrics
                    .peer_messages_refused_total
                    .with_label_values(&[reason.label()])
                    .inc();
                debug!(from = %from, reason = %reason, "refused a peer message");
                Ok(())
            }
            Err(e) => Err(DriverError::Core(e.to_string())),
        }
    }

    pub(super) fn on_request(
        &mut self,
        req: Request,
        batch: &mut Batch,
    ) -> Result<(), DriverError> {
        match req {
            Request::Write { mut cmd, reply } => {
                if let Err(e) = self
                    .prepare_grant(&mut cmd)
                    .and_then(|()| self.check_command(&cmd))
                    .and_then(|()| self.check_quota(&cmd, batch))
                {
                    let _ = reply.send(Err(e.into()));
                    return Ok(());
                }
                batch.writes.push((cmd.encode(), reply));
            }
            Request::Read {
                req,
                consistency: Consistency::Serializable,
                reply,
            } => {
                let result = read_local(&self.kv, &req, self.node.status().term);
                let _ = reply.send(result.map_err(Rejection::Failed));
            }
            Request::Read {
                req,
                consistency: Consistency::Linearizable,
                reply,
            } => match self.kv.limits().check_range(&req) {
                Ok(()) => batch.reads.push(PendingRead { req, reply }),
                Err(e) => {
                    let _ = reply.send(Err(kv_error(e).into()));
                }
            },
            Request::Status { reply } => {
                let _ = reply.send(Ok(self.status()));
            }
            Request::ChangeMembership { change, reply } => self.change_membership(change, reply)?,
            Request::TransferLeader { to, reply } => self.transfer_leader(to, reply),
            Request::HashKv { revision, reply } => self.hash_kv(revision, reply),
            Request::Snapshot { reply } => self.backup_image(reply),
            Request::Lease { query, reply } => self.answer_lease(query, reply),
            Request::Shutdown { reply } => self.start_shutdown(reply),
        }
        Ok(())
    }

    pub(super) fn check_command(&self, cmd: &Command) -> Result<(), ClientError> {
        self.kv.limits().check_op(&cmd.op).map_err(kv_error)
    }

    /// Proposes every write of the batch in one append, and starts one
    /// ReadIndex round for every linearizable read of the batch.
    pub(super) fn flush_batch(&mut self, batch: Batch) -> Result<(), DriverError> {
        if !batch.writes.is_empty() {
            let (data, replies): (Vec<Bytes>, Vec<_>) = batch.writes.into_iter().unzip();
            match self.node.propose_batch(data) {
                Ok(proposals) => {
                    put_path::stage("proposed", put_path::last_index(&proposals, |p| p.index));
                    // Handed to the applier before the entries can commit,
                    // so it knows whom to answer when they apply.
                    for (p, reply) in proposals.into_iter().zip(replies) {
                        self.hand_applier(ApplyTask::AwaitWrite {
                            index: p.index,
                            write: PendingWrite {
                                term: p.term,
                                reply,
                            },
                        })?;
                    }
                }
                Err(e) => {
                    // A follower's NotLeader is a redirect (the request is
                    // forwarded to the leader), not a failed proposal.
                    if !matches!(e, ProposeError::NotLeader { .. }) {
                        self.metrics
                            .raft_proposals_failed_total
                            .inc_by(replies.len() as u64);
                    }
                    let rejection = self.rejection(e);
                    for reply in replies {
                        let _ = reply.send(Err(rejection.clone()));
                    }
                }
            }
        }
        if !batch.reads.is_empty() {
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            match self.node.read_index(ctx) {
                Ok(()) => {
                    self.pending.reads_awaiting_index.insert(ctx, batch.reads);
                }
                Err(e) => {
                    let rejection = self.rejection(e);
                    for r in batch.reads {
                        let _ = r.reply.send(Err(rejection.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands out one `Ready`; returns whether there was one.
    pub(super) fn handle_ready(&mut self) -> Result<bool, DriverError> {
        if !self.node.has_ready() {
            return Ok(false);
        }
        let mut rd: Ready = self.node.ready();

        // Committed entries go to the applier first: they are durable on a
        // majority already, and applying them is what their clients wait
        // for, while the sends below (commit notices among them) are not.
        // (A Ready with a snapshot installs it first, on an idle applier.)
        if rd.snapshot.is_none() && !rd.committed_entries.is_empty() {
            put_path::stage(
                "committed",
                put_path::last_index(&rd.committed_entries, |e| e.index),
            );
            self.hand_applier(ApplyTask::Apply(std::mem::take(&mut rd.committed_entries)))?;
        }

        // A leader's appends go out before its own write: followers then
        // write in parallel with us, and a round costs one fsync, not two.
        // (The core counts the leader toward commit only for what it has
        // persisted, so this cannot commit anything early.)
        let (early, later): (Vec<Message>, Vec<Message>) = std::mem::take(&mut rd.messages)
            .into_iter()
            .partition(Message::can_send_before_persist);
        for m in early {
            self.send(m);
        }

        let mut acks = Vec::new();
        if let Some(snapshot) = rd.snapshot.take() {
            // Rare: the state machine takes the image first, then the log
            // records it, with nothing else in flight on either.
            acks.extend(self.log_writer.wait_idle()?);
            if let Some(report) = self.applier.wait_idle()? {
                self.on_applied(report);
            }
            self.install_snapshot(&snapshot.meta)?;
            self.held_commit.written_with_snapshot(rd.hard_state);
            let store = self.node.storage();
            tokio::task::block_in_place(|| {
                store.persist(Some(&snapshot.meta), &rd.entries, rd.hard_state.as_ref())
            })
            .map_err(|e| DriverError::Log(e.to_string()))?;
            self.hand_applier(ApplyTask::FailWritesThrough(snapshot.meta.index))?;
            acks.push(Persisted {
                writes: 0,
                last: Some(
                    rd.entries
                        .last()
                        .map_or((snapshot.meta.index, snapshot.meta.term), |e| {
                            (e.index, e.term)
                        }),
                ),
                then_send: later,
            });
        } else {
            let entries = std::mem::take(&mut rd.entries);
            let hard_state = self
                .held_commit
                .route(rd.hard_state.take(), !entries.is_empty());
            let write = LogWrite {
                entries,
                hard_state,
                then_send: later,
                barrier: None,
            };
            if !write.writes_anything() && self.writes_in_flight == 0 {
                // Nothing to wait for: what they promise is durable.
                for m in write.then_send {
                    self.send(m);
                }
            } else {
                self.writes_in_flight += 1;
                acks.extend(self.log_writer.submit(write)?);
            }
        }

        if !rd.committed_entries.is_empty() {
            self.hand_applier(ApplyTask::Apply(rd.committed_entries))?;
        }
        let term = self.node.status().term;
        for rs in rd.read_states {
            if let Some(reads) = self.pending.reads_awaiting_index.remove(&rs.ctx) {
                self.hand_applier(ApplyTask::ServeReads {
                    index: rs.index,
                    term,
                    reads,
                })?;
            }
        }
        self.node.advance_handed();

        // Only now may the core hear about dropped messages and durable
        // writes (an inline writer's come back at once).
        for p in acks {
            self.on_persisted(p);
        }
        self.report_unreachable();
        Ok(true)
    }

    /// Writes a commit index that was held back and found no write to go
    /// with: on a quiet cluster the stored commit index catches up within
    /// a tick.
    pub(super) fn write_held_back_commit(&mut self) -> Result<(), DriverError> {
        let Some(hs) = self.held_commit.take() else {
            return Ok(());
        };
        self.writes_in_flight += 1;
        let ack = self.log_writer.submit(LogWrite {
            hard_state: Some(hs),
            ..LogWrite::default()
        })?;
        if let Some(p) = ack {
            self.on_persisted(p);
        }
        Ok(())
    }

    /// The log writer made a group of writes durable: the messages they
    /// held back may go, and the core may count them.
    pub(super) fn on_persisted(&mut self, p: Persisted) {
        self.writes_in_flight = self.writes_in_flight.saturating_sub(p.writes);
        for m in p.then_send {
            self.send(m);
        }
        if let Some((index, term)) = p.last {
            put_path::stage("persisted", index);
            self.node.on_persisted(index, term);
        }
    }

    /// What the applier reports: lease grants and revokes for the lessor.
    pub(super) fn on_applied(&mut self, report: Applied) {
        for outcome in &report.lease_outcomes {
            self.lessor_applied(outcome);
        }
    }

    /// Hands the applier a task (inline, it is done at once).
    pub(super) fn hand_applier(&mut self, task: ApplyTask) -> Result<(), DriverError> {
        if let Some(report) = self.applier.submit(task)? {
            self.on_applied(report);
        }
        Ok(())
    }

    pub(super) fn report_unreachable(&mut self) {
        for to in std::mem::take(&mut self.unreachable) {
            self.node.report_unreachable(to);
        }
    }

    pub(super) fn send(&mut self, m: Message) {
        put_path::message("sent", &m);
        let to = m.to;
        let queued = match &m.body {
            MessageBody::InstallSnapshot(_) => {
                self.send_snapshot(m);
                true
            }
            MessageBody::Heartbeat(_) => {
                self.heartbeat_sent.entry(to).or_insert_with(Instant::now);
                self.transport.send(m)
            }
            _ => self.transport.send(m),
        };
        if !queued && !self.unreachable.contains(&to) {
            self.unreachable.push(to);
        }
    }

    /// Streams a consistent image of the state machine to a follower. The
    /// core asked for "a snapshot"; we send the image we actually have, with
    /// its own meta.
    pub(super) fn send_snapshot(&mut self, m: Message) {
        let reader = match tokio::task::block_in_place(|| self.kv.snapshot()) {
            Ok(r) => r,
            Err(e) => {
                warn!(to = %m.to, error = %e, "cannot open a snapshot to send");
                self.node.report_snapshot(m.to, false);
                return;
            }
        };
        let meta = reader.meta();
        let message = Message {
            body: MessageBody::InstallSnapshot(crate::raft::Snapshot {
                meta,
                data: Bytes::new(),
            }),
            ..m
        };
        self.transport.send_snapshot(message, reader);
    }

    pub(super) fn after_loop(&mut self) {
        let status = self.node.status();
        if status.leader != self.last_leader {
            if status.leader.is_some() {
                self.metrics.raft_leader_changes_total.inc();
            }
            info!(leader = ?status.leader, term = %status.term, "leader changed");
            self.last_leader = status.leader;
        }
        if status.role != RoleState::Leader {
            self.pending.fail_reads_awaiting_index();
            self.heartbeat_sent.clear();
        }
        // Transfers finish when the target leads.
        if !self.pending.transfers.is_empty() {
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending.transfers)
                .into_iter()
                .partition(|t| status.leader == Some(t.to));
            for t in done {
                let _ = t.reply.send(Ok(()));
            }
            self.pending.transfers = waiting;
        }
        self.lessor_turn();
        self.update_peers();
        self.persist_vote_withholding();
        self.publish_status(&status);
    }

    /// "Ask the leader instead", with where the leader is, if known.
    pub(super) fn not_leader(&self) -> Rejection {
        self.rejection(ProposeError::NotLeader {
            leader: self.node.status().leader,
        })
    }

    /// Keeps one outbound stream per member (other than us) of the
    /// configuration in force.
    pub(super) fn update_peers(&mut self) {
        let membership = self.node.membership();
        let members: Vec<(NodeId, String)> = membership
            .members()
            .map(|(id, m)| (id, MemberInfo::from_context(&m.context).peer_url))
            .collect();
        // Published whole (us included) so that an empty directory means
        // "no configuration yet", not "a cluster of one".
        if !self.cfg.members.holds(&members) {
            self.cfg.members.set(members.iter().cloned());
        }
        let mut peers: Vec<(NodeId, String)> = members
            .into_iter()
            .filter(|(id, _)| *id != self.cfg.id)
            .collect();
        for (id, url) in &self.peer_hints {
            if *id != self.cfg.id && !membership.contains(*id) {
                peers.push((*id, url.clone()));
            }
        }
        peers.sort();
        if self.peers_of.as_ref() != Some(&peers) {
            self.transport.set_peers(&peers);
            self.peers_of = Some(peers);
        }
    }
}
