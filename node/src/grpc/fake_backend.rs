//! An in-memory [`Backend`] for the service tests: a single-node key-value
//! store with etcd's revision rules and a member list, so the services'
//! translation can be checked over real gRPC without a cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::raft::{NodeId, Term};
use crate::server::{
    ClientError, Consistency, MemberStatus, NewMember, NodeStatus, ReadResult, WriteResult,
};

use super::backend::Backend;
use super::store::{ApplyOutcome, Command, KeyValue, Op, RangeRequest, RangeResult};

pub const CLUSTER_ID: u64 = 0xc1;
pub const MEMBER_ID: u64 = 1;
pub const TERM: u64 = 3;

#[derive(Debug, Default)]
struct State {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: u64,
    members: Vec<MemberStatus>,
    /// When set, every call fails with this error.
    failing: Option<ClientError>,
    last_consistency: Option<Consistency>,
}

#[derive(Debug, Clone, Default)]
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
        let b = FakeBackend::default();
        b.state.lock().unwrap().members = vec![voter(1), voter(2), voter(3)];
        b
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

/// etcd's range encoding over an ordered map.
fn in_range(key: &[u8], from: &[u8], end: &Option<Vec<u8>>) -> bool {
    match end.as_deref() {
        None => key == from,
        Some([0]) => key >= from,
        Some(end) => key >= from && key < end,
    }
}

fn matching(s: &State, from: &[u8], end: &Option<Vec<u8>>) -> Vec<KeyValue> {
    s.kvs
        .values()
        .filter(|kv| in_range(&kv.key, from, end))
        .cloned()
        .collect()
}

impl Backend for FakeBackend {
    fn member_id(&self) -> u64 {
        MEMBER_ID
    }
    fn cluster_id(&self) -> u64 {
        CLUSTER_ID
    }

    async fn write(&self, cmd: Command) -> Result<WriteResult, ClientError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        let outcome = match cmd.op {
            Op::Put {
                key,
                value,
                prev_kv,
            } => {
                s.revision += 1;
                let rev = s.revision;
                let prev = s.kvs.get(&key).cloned();
                let kv = KeyValue {
                    key: key.clone(),
                    value,
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                };
                s.kvs.insert(key, kv);
                ApplyOutcome {
                    revision: rev,
                    deleted: 0,
                    prev_kvs: if prev_kv {
                        prev.into_iter().collect()
                    } else {
                        vec![]
                    },
                }
            }
            Op::Delete {
                key,
                range_end,
                prev_kv,
            } => {
                let gone = matching(&s, &key, &range_end);
                for kv in &gone {
                    s.kvs.remove(&kv.key);
                }
                if !gone.is_empty() {
                    s.revision += 1;
                }
                ApplyOutcome {
                    revision: s.revision,
                    deleted: gone.len() as u64,
                    prev_kvs: if prev_kv { gone } else { vec![] },
                }
            }
        };
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
        let mut kvs = matching(&s, &req.key, &req.range_end);
        let count = kvs.len() as u64;
        let mut more = false;
        if req.limit > 0 && kvs.len() as u64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        if req.count_only {
            kvs.clear();
        }
        Ok(ReadResult {
            range: RangeResult {
                kvs,
                count,
                more,
                revision: s.revision,
            },
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
            leader_id: Some(MEMBER_ID),
            commit_index: 42,
            applied_index: 41,
            last_log_index: 42,
            first_log_index: 1,
            revision: s.revision,
            members: s.members.clone(),
            log_db_size_bytes: 1000,
            kv_db_size_bytes: 24,
        })
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
}
