//! A single-node [`Backend`] for the service tests: the real state machine
//! ([`KvStore`] in a temp dir) without Raft, plus a member list, so the
//! services' translation is checked over real gRPC without a cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::raft::{Entry, EntryPayload, LogIndex, NodeId, Term};
use crate::server::{
    ClientError, Consistency, HashKvResult, LeaseAnswer, LeaseQuery, LeaseReply, MemberStatus,
    NewMember, NodeStatus, ReadResult, WriteResult,
};
use crate::storage::{KvStore, Limits, StoreError};

use super::backend::Backend;
use super::store::{Command, RangeRequest};

pub const CLUSTER_ID: u64 = 0xc1;
pub const MEMBER_ID: u64 = 1;
pub const TERM: u64 = 3;
/// The shortest TTL the fake grants (the driver's is from its timing).
pub const MIN_LEASE_TTL: i64 = 2;
/// The id the fake picks for the first grant that names none.
pub const FIRST_LEASE_ID: i64 = 0x7000;

#[derive(Debug)]
struct State {
    kv: KvStore,
    _dir: tempfile::TempDir,
    next_index: u64,
    members: Vec<MemberStatus>,
    /// When set, every call fails with this error.
    failing: Option<ClientError>,
    last_consistency: Option<Consistency>,
    /// Who leads (this member until a transfer).
    leader: u64,
    /// The next lease id to pick for a grant of id 0.
    next_lease_id: i64,
    watch_progress_interval: Duration,
    auth_token_ttl: Duration,
    /// Committed just before the next write: a concurrent change that
    /// reached the log between the write's gate and its entry.
    before_next_write: Option<Command>,
}

#[derive(Debug, Clone)]
pub struct FakeBackend {
    state: Arc<Mutex<State>>,
}

fn voter(id: u64) -> MemberStatus {
    MemberStatus {
        id,
        name: format!("n{id}"),
        peer_url: format!("http://127.0.0.1:{}", 2380 + id),
        client_url: format!("http://127.0.0.1:{}", 2379 + id),
        role: "voter".into(),
        match_index: None,
    }
}

impl FakeBackend {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(dir.path(), Limits::default()).unwrap();
        FakeBackend {
            state: Arc::new(Mutex::new(State {
                kv,
                _dir: dir,
                next_index: 1,
                members: vec![voter(1), voter(2), voter(3)],
                failing: None,
                last_consistency: None,
                leader: MEMBER_ID,
                next_lease_id: FIRST_LEASE_ID,
                watch_progress_interval: crate::server::DEFAULT_WATCH_PROGRESS_INTERVAL,
                auth_token_ttl: crate::auth::token::DEFAULT_TTL,
                before_next_write: None,
            })),
        }
    }

    /// The state machine behind the backend (the watch tests write to it
    /// directly, and compact it).
    pub fn kv(&self) -> KvStore {
        self.state.lock().unwrap().kv.clone()
    }

    pub fn set_watch_progress_interval(&self, interval: Duration) {
        self.state.lock().unwrap().watch_progress_interval = interval;
    }

    pub fn set_auth_token_ttl(&self, ttl: Duration) {
        self.state.lock().unwrap().auth_token_ttl = ttl;
    }

    /// Has `cmd` commit right before the next write's entry, after that
    /// write passed its gate.
    pub fn before_next_write(&self, cmd: Command) {
        self.state.lock().unwrap().before_next_write = Some(cmd);
    }

    /// Commits `cmd` now, as another client's request would.
    pub fn commit(&self, cmd: Command) {
        let mut s = self.state.lock().unwrap();
        commit(&mut s, &cmd);
    }

    pub fn fail_with(&self, err: Option<ClientError>) {
        self.state.lock().unwrap().failing = err;
    }

    pub fn last_consistency(&self) -> Option<Consistency> {
        self.state.lock().unwrap().last_consistency
    }

    fn check(&self) -> Result<(), ClientError> {
        match &self.state.lock().unwrap().failing {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// Applies `cmd` as the next entry.
fn commit(s: &mut State, cmd: &Command) {
    let index = LogIndex(s.next_index);
    s.next_index += 1;
    s.kv.apply(&[Entry {
        term: Term(TERM),
        index,
        payload: EntryPayload::Command(cmd.encode()),
    }])
    .unwrap();
}

impl Backend for FakeBackend {
    fn member_id(&self) -> u64 {
        MEMBER_ID
    }
    fn cluster_id(&self) -> u64 {
        CLUSTER_ID
    }

    async fn write(&self, mut cmd: Command) -> Result<WriteResult, ClientError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        // What the leader does to a grant before it proposes it.
        if let super::store::Op::LeaseGrant { id, ttl } = &mut cmd.op {
            *ttl = (*ttl).max(MIN_LEASE_TTL);
            if *id == 0 {
                *id = s.next_lease_id;
                s.next_lease_id += 1;
            }
        }
        // What the driver checks when it proposes.
        s.kv.limits()
            .check_op(&cmd.op)
            .map_err(crate::server::kv_error)?;
        if let Some(first) = s.before_next_write.take() {
            commit(&mut s, &first);
        }
        let index = LogIndex(s.next_index);
        s.next_index += 1;
        let entry = Entry {
            term: Term(TERM),
            index,
            payload: EntryPayload::Command(cmd.encode()),
        };
        let (_, outcome) = s.kv.apply(&[entry]).unwrap().pop().unwrap();
        Ok(WriteResult {
            outcome,
            raft_term: Term(TERM),
        })
    }

    async fn range(
        &self,
        req: RangeRequest,
        consistency: Consistency,
    ) -> Result<ReadResult, ClientError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        s.last_consistency = Some(consistency);
        s.kv.limits()
            .check_range(&req)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let range = s.kv.range(&req).map_err(|e| match e {
            StoreError::InvalidRequest(e) => crate::server::kv_error(e),
            e => ClientError::Internal(e.to_string()),
        })?;
        Ok(ReadResult {
            range,
            raft_term: Term(TERM),
        })
    }

    /// The fake has no clock: a lease has its whole TTL left.
    async fn lease(&self, query: LeaseQuery) -> Result<LeaseReply, ClientError> {
        self.check()?;
        let s = self.state.lock().unwrap();
        let internal = |e: StoreError| ClientError::Internal(e.to_string());
        let answer = match query {
            LeaseQuery::KeepAlive(id) => LeaseAnswer::KeepAlive {
                id,
                ttl: s.kv.lease(id).map_err(internal)?.map_or(0, |l| l.ttl),
            },
            LeaseQuery::TimeToLive { id, keys } => match s.kv.lease(id).map_err(internal)? {
                None => LeaseAnswer::TimeToLive {
                    id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: vec![],
                },
                Some(l) => LeaseAnswer::TimeToLive {
                    id,
                    ttl: l.ttl,
                    granted_ttl: l.ttl,
                    keys: if keys {
                        s.kv.lease_keys(id).map_err(internal)?
                    } else {
                        vec![]
                    },
                },
            },
            LeaseQuery::Leases => LeaseAnswer::Leases(
                s.kv.leases()
                    .map_err(internal)?
                    .into_iter()
                    .map(|l| l.id)
                    .collect(),
            ),
        };
        Ok(LeaseReply {
            answer,
            revision: s.kv.revision(),
            raft_term: Term(TERM),
        })
    }

    async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.check()?;
        let s = self.state.lock().unwrap();
        Ok(NodeStatus {
            id: MEMBER_ID,
            name: "n1".into(),
            cluster_id: CLUSTER_ID,
            role: "leader".into(),
            term: TERM,
            leader_id: Some(s.leader),
            commit_index: 42,
            applied_index: 41,
            last_log_index: 42,
            first_log_index: 1,
            revision: s.kv.revision() as u64,
            members: s.members.clone(),
            log_db_size_bytes: 1000,
            kv_db_size_bytes: 24,
            quota_backend_bytes: 1 << 30,
            alarms: s.kv.alarms().iter().map(ToString::to_string).collect(),
            storage_id: "00000000000000a1".into(),
            withholding_votes: false,
        })
    }

    async fn hash_kv(&self, revision: i64) -> Result<HashKvResult, ClientError> {
        self.check()?;
        let s = self.state.lock().unwrap();
        let hash = s.kv.hash_at(revision).map_err(|e| match e {
            StoreError::InvalidRequest(e) => crate::server::kv_error(e),
            e => ClientError::Internal(e.to_string()),
        })?;
        Ok(HashKvResult {
            hash,
            raft_term: Term(TERM),
        })
    }

    async fn snapshot(&self) -> Result<crate::storage::SnapshotReader, ClientError> {
        self.check()?;
        let kv = self.state.lock().unwrap().kv.clone();
        kv.snapshot()
            .map_err(|e| ClientError::Internal(e.to_string()))
    }

    async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        if !s.members.iter().any(|m| m.id == to.0) {
            return Err(ClientError::NotFound(format!("member {to} does not exist")));
        }
        s.leader = to.0;
        Ok(())
    }

    async fn add_learner(&self, m: NewMember) -> Result<MemberStatus, ClientError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        let id = s.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let added = MemberStatus {
            id,
            name: m.name,
            peer_url: m.peer_url,
            client_url: m.client_url,
            role: "learner".into(),
            match_index: None,
        };
        s.members.push(added.clone());
        Ok(added)
    }

    async fn promote(&self, id: NodeId) -> Result<MemberStatus, ClientError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        let m = s
            .members
            .iter_mut()
            .find(|m| m.id == id.0)
            .ok_or_else(|| ClientError::NotFound("etcdserver: member not found".into()))?;
        if m.role != "learner" {
            return Err(ClientError::FailedPrecondition(
                "etcdserver: can only promote a learner member".into(),
            ));
        }
        m.role = "voter".into();
        Ok(m.clone())
    }

    async fn remove(&self, id: NodeId) -> Result<MemberStatus, ClientError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        let pos = s
            .members
            .iter()
            .position(|m| m.id == id.0)
            .ok_or_else(|| ClientError::NotFound("etcdserver: member not found".into()))?;
        Ok(s.members.remove(pos))
    }

    fn watch_store(&self) -> Option<KvStore> {
        Some(self.kv())
    }

    fn watch_progress_interval(&self) -> Duration {
        self.state.lock().unwrap().watch_progress_interval
    }

    fn auth_token_ttl(&self) -> Duration {
        self.state.lock().unwrap().auth_token_ttl
    }
}
