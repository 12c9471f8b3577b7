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
use crate::auth::{Caller, identify};
use crate::storage::Command;
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

    /// Refuses unless the caller may run `cmd` (etcd's rules for puts,
    /// deletes and transactions, kept in [`crate::storage::access`]), and
    /// stamps it with the caller and the auth revision of this check.
    pub fn admit(&self, cmd: Command) -> Result<Command, Status> {
        self.caller
            .admit(&self.state, cmd)
            .map_err(|e| auth_status(&e))
    }
}
