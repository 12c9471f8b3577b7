//! etcd's `Maintenance` service: alarms (`etcdctl alarm`, and the alarm
//! check of `etcdctl endpoint health`), `Status` (`etcdctl endpoint
//! status`) and `HashKV` (`etcdctl endpoint hashkv`, and the tests'
//! cross-member consistency check), `MoveLeader` (`etcdctl
//! move-leader`), `Snapshot` (`etcdctl snapshot save`: a backup in
//! raftkv's format, see `storage/backup.rs`) and `Defragment` (a no-op
//! that answers success; see [`MaintenanceService::defragment`]). Calls not
//! declared in the proto are answered UNIMPLEMENTED.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{header, rejected, status_from, status_response, to_i64};
use super::gate;
use super::observe::Observer;
use super::proto::etcdserverpb::{
    self as pb, alarm_request::AlarmAction as PbAction, maintenance_server::Maintenance,
};
use super::store::{AlarmAction, AlarmKind, ApplyOutcome, Command, Op};
use crate::raft::NodeId;
use crate::storage::{BackupOrigin, BackupStream};

/// The largest blob of one `SnapshotResponse` (etcd sends 32 KiB; larger
/// messages cost fewer calls and stay far below every client's limit).
const SNAPSHOT_MESSAGE_BYTES: usize = 256 * 1024;
/// Messages read ahead of a slow client.
const SNAPSHOT_QUEUE: usize = 4;

/// The Maintenance service over a node.
#[derive(Debug, Clone)]
pub struct MaintenanceService<B> {
    backend: B,
    observer: Observer,
}

impl<B: Backend> MaintenanceService<B> {
    pub fn new(backend: B, observer: Observer) -> Self {
        MaintenanceService { backend, observer }
    }

    /// Lists, raises or disarms an alarm. Every action goes through the log
    /// (as in etcd), so a list is as fresh as a linearizable read and a
    /// raise or disarm is decided at one index on every member.
    async fn alarm_call(&self, r: pb::AlarmRequest) -> Result<pb::AlarmResponse, Status> {
        let action = match PbAction::try_from(r.action) {
            Ok(PbAction::Get) => AlarmAction::Get,
            Ok(PbAction::Activate) => AlarmAction::Activate,
            Ok(PbAction::Deactivate) => AlarmAction::Deactivate,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown alarm action {}",
                    r.action
                )));
            }
        };
        let kind = match (action, AlarmKind::from_number(r.alarm)) {
            (_, Some(kind)) => kind,
            // A list names no alarm type.
            (AlarmAction::Get, None) => AlarmKind::NoSpace,
            (_, None) => {
                return Err(Status::invalid_argument(format!(
                    "alarm type {} cannot be raised or disarmed",
                    r.alarm
                )));
            }
        };
        let result = self
            .backend
            .write(Command {
                request_id: None,
                auth: None,
                op: Op::Alarm {
                    action,
                    member_id: r.member_id,
                    kind,
                },
            })
            .await
            .map_err(status_from)?;
        let (revision, alarms) = match result.outcome {
            ApplyOutcome::Alarms { revision, alarms } => (revision, alarms),
            ApplyOutcome::Rejected(e) => return Err(rejected(&e)),
            other => {
                return Err(Status::internal(format!(
                    "an alarm command applied as {other:?}"
                )));
            }
        };
        Ok(pb::AlarmResponse {
            header: Some(header(
                self.backend.cluster_id(),
                self.backend.member_id(),
                revision,
                result.raft_term.get(),
            )),
            alarms: alarms
                .into_iter()
                .map(|a| pb::AlarmMember {
                    member_id: a.member_id,
                    alarm: a.kind.number(),
                })
                .collect(),
        })
    }
}

/// Sends a backup's bytes as `SnapshotResponse`s until it ends, the
/// image fails, or the client goes away. Runs on a blocking thread: it
/// reads the state machine's file.
fn stream_backup(
    mut backup: BackupStream,
    header: pb::ResponseHeader,
    tx: mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) {
    while let Some(chunk) = backup.next_chunk() {
        let chunk: Bytes = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "cannot read the snapshot: {e}"
                ))));
                return;
            }
        };
        let after = backup.remaining_at_least();
        let mut at = 0;
        while at < chunk.len() {
            let end = (at + SNAPSHOT_MESSAGE_BYTES).min(chunk.len());
            let msg = pb::SnapshotResponse {
                header: Some(header),
                remaining_bytes: (chunk.len() - end) as u64 + after,
                blob: chunk.slice(at..end),
            };
            if tx.blocking_send(Ok(msg)).is_err() {
                // The client went away; dropping the reader ends its read
                // transaction.
                return;
            }
            at = end;
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    /// Streams a backup of this member's state machine (never forwarded:
    /// like etcd, the member asked answers from its applied state), read
    /// from one consistent view while writes continue.
    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let started = Instant::now();
        let result: Result<Response<Self::SnapshotStream>, Status> = async {
            // A backup holds every key (and the auth store): root only.
            gate::caller(&self.backend, &request)?.root()?;
            let reader = self.backend.snapshot().await.map_err(status_from)?;
            let origin = BackupOrigin {
                cluster_id: self.backend.cluster_id(),
                member_id: self.backend.member_id(),
            };
            let backup = BackupStream::new(reader, origin);
            let header = header(
                origin.cluster_id,
                origin.member_id,
                backup.revision(),
                backup.meta().term.get(),
            );
            let (tx, rx) = mpsc::channel(SNAPSHOT_QUEUE);
            tokio::task::spawn_blocking(move || stream_backup(backup, header, tx));
            Ok(Response::new(ReceiverStream::new(rx)))
        }
        .await;
        self.observer.record("Snapshot", started, &result);
        result
    }

    /// Answers success without doing anything: redb reuses the pages that
    /// compaction and deletes free, and compacting the file in place
    /// (`redb::Database::compact`) needs the database to itself, which a
    /// serving member never has (readers and images hold it). etcd's
    /// clients and operators call Defragment routinely; a refusal would
    /// break them for no gain. etcd's answer has no header.
    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::DefragmentResponse>, Status> =
            gate::caller(&self.backend, &request)
                .and_then(|c| c.root())
                .map(|()| Response::new(pb::DefragmentResponse { header: None }));
        self.observer.record("Defragment", started, &result);
        result
    }

    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let started = Instant::now();
        let result = async {
            // Listing is open (as etcd's); raising or disarming is root's.
            let checked = gate::caller(&self.backend, &request)?;
            if request.get_ref().action != PbAction::Get as i32 {
                checked.root()?;
            }
            self.alarm_call(request.into_inner())
                .await
                .map(Response::new)
        }
        .await;
        self.observer.record("Alarm", started, &result);
        result
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let started = Instant::now();
        let result: Result<Response<pb::StatusResponse>, Status> = async {
            let status = self.backend.status().await.map_err(status_from)?;
            Ok(Response::new(status_response(
                &status,
                self.backend.member_id(),
            )))
        }
        .await;
        self.observer.record("Status", started, &result);
        result
    }

    /// Served by the member asked, from its own applied history, never
    /// forwarded: every member at the same revision must give the same hash.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let started = Instant::now();
        if let Err(denied) = gate::caller(&self.backend, &request).and_then(|c| c.root()) {
            let result = Err(denied);
            self.observer.record("HashKV", started, &result);
            return result;
        }
        let revision = request.into_inner().revision;
        let result: Result<Response<pb::HashKvResponse>, Status> = async {
            if revision < 0 {
                return Err(Status::invalid_argument(format!(
                    "revision {revision} is negative"
                )));
            }
            let r = self.backend.hash_kv(revision).await.map_err(status_from)?;
            Ok(Response::new(pb::HashKvResponse {
                header: Some(header(
                    self.backend.cluster_id(),
                    self.backend.member_id(),
                    r.hash.revision,
                    r.raft_term.get(),
                )),
                hash: r.hash.hash,
                compact_revision: r.hash.compact_revision,
                hash_revision: r.hash.hash_revision,
            }))
        }
        .await;
        self.observer.record("HashKV", started, &result);
        result
    }

    /// Asked of the leader (as etcdctl does), with etcd's errors for a
    /// member that does not lead and for a target that is not a voter.
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let started = Instant::now();
        if let Err(denied) = gate::caller(&self.backend, &request).and_then(|c| c.root()) {
            let result = Err(denied);
            self.observer.record("MoveLeader", started, &result);
            return result;
        }
        let target = request.into_inner().target_id;
        let result: Result<Response<pb::MoveLeaderResponse>, Status> = async {
            let me = self.backend.member_id();
            let status = self.backend.status().await.map_err(status_from)?;
            if status.leader_id != Some(me) {
                return Err(Status::failed_precondition("etcdserver: not leader"));
            }
            if !status
                .members
                .iter()
                .any(|m| m.id == target && m.role == "voter")
            {
                return Err(Status::failed_precondition(
                    "etcdserver: bad leader transferee",
                ));
            }
            self.backend
                .transfer_leader(NodeId(target))
                .await
                .map_err(status_from)?;
            Ok(Response::new(pb::MoveLeaderResponse {
                header: Some(header(
                    self.backend.cluster_id(),
                    me,
                    to_i64(status.revision),
                    status.term,
                )),
            }))
        }
        .await;
        self.observer.record("MoveLeader", started, &result);
        result
    }
}
