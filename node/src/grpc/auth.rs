//! etcd's `Auth` service for a store that has no users, roles or
//! permissions: authentication is never enabled. What reads the auth state
//! answers as an etcd with none would (status disabled, empty lists, an
//! Authenticate refused because auth is off, AuthDisable a no-op); what
//! would create users or turn auth on is refused with a message saying so,
//! never with a made-up success.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::convert::{header, status_from, to_i64};
use super::observe::Observer;
use super::proto::etcdserverpb::{self as pb, auth_server::Auth};

/// etcd's answer to Authenticate while auth is disabled.
const NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
/// etcd's auth store starts at revision 1, and raftkv's never changes.
const AUTH_REVISION: u64 = 1;

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "raftkv has no authentication: {what} is not supported (use TLS client certificates, see --client-cert-auth)"
    ))
}

/// The Auth service over a node.
#[derive(Debug, Clone)]
pub struct AuthService<B> {
    backend: B,
    observer: Observer,
}

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

    fn refuse<T>(&self, call: &'static str, what: &str) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = Err(unsupported(what));
        self.observer.record(call, started, &result);
        result
    }
}

#[tonic::async_trait]
impl<B: Backend> Auth for AuthService<B> {
    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let started = Instant::now();
        let result = self.header().await.map(|header| {
            Response::new(pb::AuthStatusResponse {
                header,
                enabled: false,
                auth_revision: AUTH_REVISION,
            })
        });
        self.observer.record("AuthStatus", started, &result);
        result
    }

    async fn authenticate(
        &self,
        _request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let started = Instant::now();
        let result = Err(Status::failed_precondition(NOT_ENABLED));
        self.observer.record("Authenticate", started, &result);
        result
    }

    /// Auth is off and stays off: nothing to do, as in etcd.
    async fn auth_disable(
        &self,
        _request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let started = Instant::now();
        let result = self
            .header()
            .await
            .map(|header| Response::new(pb::AuthDisableResponse { header }));
        self.observer.record("AuthDisable", started, &result);
        result
    }

    async fn user_list(
        &self,
        _request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let started = Instant::now();
        let result = self.header().await.map(|header| {
            Response::new(pb::AuthUserListResponse {
                header,
                users: Vec::new(),
            })
        });
        self.observer.record("UserList", started, &result);
        result
    }

    async fn role_list(
        &self,
        _request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let started = Instant::now();
        let result = self.header().await.map(|header| {
            Response::new(pb::AuthRoleListResponse {
                header,
                roles: Vec::new(),
            })
        });
        self.observer.record("RoleList", started, &result);
        result
    }

    async fn auth_enable(
        &self,
        _request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.refuse("AuthEnable", "enabling authentication")
    }

    async fn user_add(
        &self,
        _request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.refuse("UserAdd", "adding a user")
    }

    async fn user_get(
        &self,
        _request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        self.refuse("UserGet", "reading a user")
    }

    async fn user_delete(
        &self,
        _request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        self.refuse("UserDelete", "deleting a user")
    }

    async fn user_change_password(
        &self,
        _request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.refuse("UserChangePassword", "changing a password")
    }

    async fn user_grant_role(
        &self,
        _request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        self.refuse("UserGrantRole", "granting a role")
    }

    async fn user_revoke_role(
        &self,
        _request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        self.refuse("UserRevokeRole", "revoking a role")
    }

    async fn role_add(
        &self,
        _request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        self.refuse("RoleAdd", "adding a role")
    }

    async fn role_get(
        &self,
        _request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        self.refuse("RoleGet", "reading a role")
    }

    async fn role_delete(
        &self,
        _request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        self.refuse("RoleDelete", "deleting a role")
    }

    async fn role_grant_permission(
        &self,
        _request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        self.refuse("RoleGrantPermission", "granting a permission")
    }

    async fn role_revoke_permission(
        &self,
        _request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        self.refuse("RoleRevokePermission", "revoking a permission")
    }
}
