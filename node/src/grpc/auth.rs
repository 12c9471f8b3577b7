//! etcd's `Auth` service: users, roles, permissions, the auth flag, and
//! `Authenticate`.
//!
//! Changes go through the log as [`Op::Auth`] commands, so every member
//! applies them at the same index; passwords are hashed here, on the member
//! that received the request, before the command is proposed. Reads (user
//! and role lists and details, the status) answer from this member's
//! applied auth store. `Authenticate` checks the password against that
//! store and hands out a signed token every member accepts (see
//! [`crate::auth::token`]).
//!
//! While auth is enabled every call but `Authenticate` and `AuthStatus`
//! needs the root role, except that a user may read itself and the roles
//! it holds (as in etcd).

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{auth_status, header, status_from, to_i64};
use super::gate::{self, Checked};
use super::observe::Observer;
use super::proto::etcdserverpb::{self as pb, auth_server::Auth};
use super::store::{ApplyOutcome, Command, Op};
use crate::auth::{self as authn, password, token};
use crate::storage::auth::{AuthError, AuthOp, PermKind, Permission};

/// The Auth service over a node.
#[derive(Debug, Clone)]
pub struct AuthService<B> {
    backend: B,
    observer: Observer,
}

/// Bytes of a token signing key.
const SIGNING_KEY_BYTES: usize = 32;

impl<B: Backend> AuthService<B> {
    pub fn new(backend: B, observer: Observer) -> Self {
        AuthService { backend, observer }
    }

    async fn header(&self) -> Result<Option<pb::ResponseHeader>, Status> {
        let s = self.backend.status().await.map_err(status_from)?;
        Ok(Some(header(
            self.backend.cluster_id(),
            self.backend.member_id(),
            to_i64(s.revision),
            s.term,
        )))
    }

    /// The caller of `request`, refused unless it holds the root role.
    fn root<T>(&self, request: &Request<T>) -> Result<Checked, Status> {
        let checked = gate::caller(&self.backend, request)?;
        checked.root()?;
        Ok(checked)
    }

    /// Proposes an auth change and answers with the header of the revision
    /// it applied at.
    async fn change(&self, op: AuthOp) -> Result<Option<pb::ResponseHeader>, Status> {
        let written = self
            .backend
            .write(Command {
                request_id: None,
                auth: None,
                op: Op::Auth(op),
            })
            .await
            .map_err(status_from)?;
        match written.outcome {
            ApplyOutcome::AuthChanged { revision, .. } => Ok(Some(header(
                self.backend.cluster_id(),
                self.backend.member_id(),
                revision,
                written.raft_term.0,
            ))),
            ApplyOutcome::Rejected(e) => Err(super::convert::rejected(&e)),
            other => Err(Status::internal(format!(
                "an auth change was answered with {other:?}"
            ))),
        }
    }

    /// Runs `f` and records the call.
    async fn observed<T>(
        &self,
        call: &'static str,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = f.await.map(Response::new);
        self.observer.record(call, started, &result);
        result
    }
}

/// A password hashed for the log; the hash is slow on purpose, so it runs
/// off the async workers.
async fn hash_password(plain: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || password::hash(&plain))
        .await
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))
}

/// etcd 3.5+ clients may send a bcrypt hash made on the client; raftkv's
/// hashes are its own (see [`password`]), so it takes passwords only.
fn refuse_client_hash(hashed: &str) -> Result<(), Status> {
    if hashed.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "raftkv: client-side password hashes are not supported; send the password",
        ))
    }
}

fn perm_to_wire(p: &Permission) -> pb::Permission {
    pb::Permission {
        perm_type: p.kind.number(),
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

#[tonic::async_trait]
impl<B: Backend> Auth for AuthService<B> {
    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.observed("AuthStatus", async {
            let state = self.backend.auth_state();
            Ok(pb::AuthStatusResponse {
                header: self.header().await?,
                enabled: state.enabled,
                auth_revision: state.revision,
            })
        })
        .await
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        self.observed("Authenticate", async {
            let req = request.into_inner();
            let state = self.backend.auth_state();
            // The check is slow on purpose (the password hash): off the
            // async workers.
            let checked = state.clone();
            let name = req.name.clone();
            tokio::task::spawn_blocking(move || {
                authn::check_password(&checked, &name, &req.password)
            })
            .await
            .map_err(|e| Status::internal(format!("password check failed: {e}")))?
            .map_err(|e| auth_status(&e))?;
            let ttl = self.backend.auth_token_ttl();
            let token = token::issue(&state, &req.name, SystemTime::now(), ttl)
                .ok_or_else(|| auth_status(&AuthError::AuthFailed))?;
            Ok(pb::AuthenticateResponse {
                header: self.header().await?,
                token,
            })
        })
        .await
    }

    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.observed("AuthEnable", async {
            self.root(&request)?;
            let mut key = [0u8; SIGNING_KEY_BYTES];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| Status::internal("the system random number generator failed"))?;
            let header = self
                .change(AuthOp::Enable {
                    signing_key: Bytes::copy_from_slice(&key),
                })
                .await?;
            Ok(pb::AuthEnableResponse { header })
        })
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.observed("AuthDisable", async {
            self.root(&request)?;
            let header = self.change(AuthOp::Disable).await?;
            Ok(pb::AuthDisableResponse { header })
        })
        .await
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.observed("UserAdd", async {
            self.root(&request)?;
            let req = request.into_inner();
            refuse_client_hash(&req.hashed_password)?;
            if req.name.is_empty() {
                return Err(auth_status(&AuthError::UserEmpty));
            }
            let no_password = req.options.is_some_and(|o| o.no_password);
            let password_hash = if no_password {
                None
            } else {
                Some(hash_password(req.password).await?)
            };
            let header = self
                .change(AuthOp::UserAdd {
                    name: req.name,
                    password_hash,
                })
                .await?;
            Ok(pb::AuthUserAddResponse { header })
        })
        .await
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        self.observed("UserGet", async {
            let checked = gate::caller(&self.backend, &request)?;
            let req = request.into_inner();
            // A user may read itself.
            if checked.caller.user() != Some(req.name.as_str()) {
                checked.root()?;
            }
            let user = checked
                .state
                .users
                .get(&req.name)
                .ok_or_else(|| auth_status(&AuthError::UserNotFound))?;
            Ok(pb::AuthUserGetResponse {
                header: self.header().await?,
                roles: user.roles.clone(),
            })
        })
        .await
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.observed("UserList", async {
            let checked = self.root(&request)?;
            Ok(pb::AuthUserListResponse {
                header: self.header().await?,
                users: checked.state.users.keys().cloned().collect(),
            })
        })
        .await
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.observed("UserDelete", async {
            self.root(&request)?;
            let name = request.into_inner().name;
            let header = self.change(AuthOp::UserDelete { name }).await?;
            Ok(pb::AuthUserDeleteResponse { header })
        })
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.observed("UserChangePassword", async {
            self.root(&request)?;
            let req = request.into_inner();
            refuse_client_hash(&req.hashed_password)?;
            let password_hash = Some(hash_password(req.password).await?);
            let header = self
                .change(AuthOp::UserChangePassword {
                    name: req.name,
                    password_hash,
                })
                .await?;
            Ok(pb::AuthUserChangePasswordResponse { header })
        })
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        self.observed("UserGrantRole", async {
            self.root(&request)?;
            let req = request.into_inner();
            let header = self
                .change(AuthOp::UserGrantRole {
                    user: req.user,
                    role: req.role,
                })
                .await?;
            Ok(pb::AuthUserGrantRoleResponse { header })
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        self.observed("UserRevokeRole", async {
            self.root(&request)?;
            let req = request.into_inner();
            let header = self
                .change(AuthOp::UserRevokeRole {
                    user: req.name,
                    role: req.role,
                })
                .await?;
            Ok(pb::AuthUserRevokeRoleResponse { header })
        })
        .await
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.observed("RoleAdd", async {
            self.root(&request)?;
            let name = request.into_inner().name;
            let header = self.change(AuthOp::RoleAdd { name }).await?;
            Ok(pb::AuthRoleAddResponse { header })
        })
        .await
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        self.observed("RoleGet", async {
            let checked = gate::caller(&self.backend, &request)?;
            let req = request.into_inner();
            // A user may read the roles it holds.
            let holds = checked
                .caller
                .user()
                .and_then(|u| checked.state.users.get(u))
                .is_some_and(|u| u.roles.contains(&req.role));
            if !holds {
                checked.root()?;
            }
            let role = checked
                .state
                .roles
                .get(&req.role)
                .ok_or_else(|| auth_status(&AuthError::RoleNotFound))?;
            Ok(pb::AuthRoleGetResponse {
                header: self.header().await?,
                perm: role.permissions.iter().map(perm_to_wire).collect(),
            })
        })
        .await
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.observed("RoleList", async {
            let checked = self.root(&request)?;
            Ok(pb::AuthRoleListResponse {
                header: self.header().await?,
                roles: checked.state.roles.keys().cloned().collect(),
            })
        })
        .await
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.observed("RoleDelete", async {
            self.root(&request)?;
            let name = request.into_inner().role;
            let header = self.change(AuthOp::RoleDelete { name }).await?;
            Ok(pb::AuthRoleDeleteResponse { header })
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        self.observed("RoleGrantPermission", async {
            self.root(&request)?;
            let req = request.into_inner();
            let perm = req
                .perm
                .ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
            let kind = PermKind::from_number(perm.perm_type).ok_or_else(|| {
                Status::invalid_argument(format!("unknown permission type {}", perm.perm_type))
            })?;
            let header = self
                .change(AuthOp::RoleGrantPermission {
                    role: req.name,
                    permission: Permission {
                        kind,
                        key: perm.key,
                        range_end: perm.range_end,
                    },
                })
                .await?;
            Ok(pb::AuthRoleGrantPermissionResponse { header })
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        self.observed("RoleRevokePermission", async {
            self.root(&request)?;
            let req = request.into_inner();
            let header = self
                .change(AuthOp::RoleRevokePermission {
                    role: req.role,
                    key: req.key,
                    range_end: req.range_end,
                })
                .await?;
            Ok(pb::AuthRoleRevokePermissionResponse { header })
        })
        .await
    }
}
