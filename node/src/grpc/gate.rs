//! Who a gRPC call comes from, and whether it may do what it asks: every
//! service asks here before it reads, writes or forwards anything.
//!
//! The caller is the user of the `token` metadata entry (what etcd's
//! clients send after `Authenticate`), else the common name of the verified
//! client certificate; with auth disabled, anyone (see [`crate::auth`]).
//! Refusals carry etcd's codes and messages, which clients act on (a
//! client re-authenticates on "invalid auth token").

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Status};

use super::backend::Backend;
use super::convert::auth_status;
use super::proto::etcdserverpb::{self as pb, request_op::Request as OpRequest};
use crate::auth::{Caller, identify};
use crate::storage::auth::{AuthState, Need};
use crate::tls::accept::TlsPeer;
use crate::tls::client_identity::common_name;

/// The metadata key etcd's clients put their token under.
pub const TOKEN_METADATA: &str = "token";

/// A call's caller, with the auth store it was identified against (the
/// checks of one call all use that one state).
#[derive(Clone, Debug)]
pub struct Checked {
    pub caller: Caller,
    pub state: Arc<AuthState>,
}

/// Identifies the caller of `request` on `backend`'s auth store.
pub fn caller<B: Backend, T>(backend: &B, request: &Request<T>) -> Result<Checked, Status> {
    let state = backend.auth_state();
    if !state.enabled {
        return Ok(Checked {
            caller: Caller::Anyone,
            state,
        });
    }
    let token = request
        .metadata()
        .get(TOKEN_METADATA)
        .and_then(|v| v.to_str().ok());
    let cert_user = request
        .extensions()
        .get::<TlsPeer>()
        .and_then(|p| p.certificates.as_ref())
        .and_then(|chain| chain.first())
        .and_then(common_name);
    let caller = identify(&state, token, cert_user.as_deref(), SystemTime::now())
        .map_err(|e| auth_status(&e))?;
    Ok(Checked { caller, state })
}

impl Checked {
    /// Refuses unless the caller may do `need` on `[key, range_end)`.
    pub fn may(&self, need: Need, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.caller
            .may(&self.state, need, key, range_end)
            .map_err(|e| auth_status(&e))
    }

    /// Refuses unless the caller holds the root role.
    pub fn root(&self) -> Result<(), Status> {
        self.caller
            .must_be_root(&self.state)
            .map_err(|e| auth_status(&e))
    }

    /// A put: write on its key, and read if it returns the previous pair.
    pub fn put(&self, r: &pb::PutRequest) -> Result<(), Status> {
        self.may(Need::Write, &r.key, &[])?;
        if r.prev_kv {
            self.may(Need::Read, &r.key, &[])?;
        }
        Ok(())
    }

    /// A delete: write on its range, and read if it returns what it deleted.
    pub fn delete(&self, r: &pb::DeleteRangeRequest) -> Result<(), Status> {
        self.may(Need::Write, &r.key, &r.range_end)?;
        if r.prev_kv {
            self.may(Need::Read, &r.key, &r.range_end)?;
        }
        Ok(())
    }

    /// A transaction: read on every compare, and every operation of both
    /// branches (whichever runs), nested transactions included.
    pub fn txn(&self, r: &pb::TxnRequest) -> Result<(), Status> {
        if matches!(self.caller, Caller::Anyone) {
            return Ok(());
        }
        for c in &r.compare {
            self.may(Need::Read, &c.key, &c.range_end)?;
        }
        for op in r.success.iter().chain(&r.failure) {
            match &op.request {
                Some(OpRequest::RequestRange(r)) => self.may(Need::Read, &r.key, &r.range_end)?,
                Some(OpRequest::RequestPut(p)) => self.put(p)?,
                Some(OpRequest::RequestDeleteRange(d)) => self.delete(d)?,
                Some(OpRequest::RequestTxn(t)) => self.txn(t)?,
                None => {}
            }
        }
        Ok(())
    }
}
