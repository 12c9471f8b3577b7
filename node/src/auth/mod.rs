//! Client authentication and authorization, shared by the gRPC and the
//! HTTP API: who a request comes from ([`identify`]) and whether that
//! caller may do what it asks ([`Caller`]).
//!
//! The users, roles and permissions themselves are replicated state
//! ([`crate::storage::auth`]); this module only reads them. A request is
//! checked on the member that received it, against that member's applied
//! auth store, before it is proposed or forwarded to the leader: the peer
//! `Forward` RPC carries requests that were already checked (peer
//! authentication is the peer port's business, see the TLS docs). A write
//! carries the caller and the auth revision it was checked at
//! ([`Caller::admit`]); if the auth store changed by the time it applies,
//! the state machine checks it again against the store at that point of the
//! log ([`crate::storage::access`]), so a permission revoked while the write
//! was in flight refuses it ("permission denied") on every member.
//!
//! - [`password`]: the password hash (made before a command enters the log);
//! - [`token`]: signed tokens any member verifies.

pub mod password;
pub mod token;

use std::time::SystemTime;

use crate::storage::access;
use crate::storage::auth::{AuthError, AuthState, Need};
use crate::storage::{AuthStamp, Command};

/// Who a request comes from, as far as permissions are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Auth is disabled: everyone may do everything.
    Anyone,
    /// An authenticated user.
    User(String),
}

/// Identifies a request's caller: with auth disabled anyone; otherwise the
/// user of a valid `token`, else the common name of the client certificate
/// the TLS handshake verified (`cert_user`), as etcd does. Neither is etcd's
/// "user name is empty"; a token that is not valid (expired, signed before
/// the last `auth enable`, of a deleted user) is "invalid auth token".
pub fn identify(
    state: &AuthState,
    token: Option<&str>,
    cert_user: Option<&str>,
    now: SystemTime,
) -> Result<Caller, AuthError> {
    if !state.enabled {
        return Ok(Caller::Anyone);
    }
    if let Some(t) = token {
        return token::verify(state, t, now).map(Caller::User);
    }
    match cert_user {
        Some(u) if !u.is_empty() => Ok(Caller::User(u.to_string())),
        _ => Err(AuthError::UserEmpty),
    }
}

/// Checks a user name and password against the auth store (the part of
/// `Authenticate` that needs the password hash).
pub fn check_password(state: &AuthState, user: &str, password: &str) -> Result<(), AuthError> {
    if !state.enabled {
        return Err(AuthError::AuthNotEnabled);
    }
    match state
        .users
        .get(user)
        .and_then(|u| u.password_hash.as_deref())
    {
        Some(hash) if password::verify(password, hash) => Ok(()),
        // An unknown user, a user without a password, a wrong password:
        // one answer, so that names cannot be probed.
        _ => Err(AuthError::AuthFailed),
    }
}

impl Caller {
    /// Whether the caller may do `need` on `[key, range_end)`.
    pub fn may(
        &self,
        state: &AuthState,
        need: Need,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User(u) if state.permitted(u, need, key, range_end) => Ok(()),
            Caller::User(_) => Err(AuthError::PermissionDenied),
        }
    }

    /// Refuses unless the caller may run `cmd` on `state` (what it needs is
    /// [`access::for_each_need`]'s), and stamps it with the caller and
    /// `state`'s revision, so that the state machine checks it again should
    /// the auth store change before it applies.
    pub fn admit(&self, state: &AuthState, mut cmd: Command) -> Result<Command, AuthError> {
        access::for_each_need(&cmd.op, &mut |need, key, range_end| {
            self.may(state, need, key, range_end)
        })?;
        cmd.auth = Some(AuthStamp {
            user: self.user().map(str::to_string),
            revision: state.revision,
        });
        Ok(cmd)
    }

    /// Whether the caller may administer the cluster (users, roles,
    /// membership, maintenance): the root role.
    pub fn must_be_root(&self, state: &AuthState) -> Result<(), AuthError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User(u) if state.is_root(u) => Ok(()),
            Caller::User(_) => Err(AuthError::PermissionDenied),
        }
    }

    /// The user's name, if auth is enabled.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Anyone => None,
            Caller::User(u) => Some(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::auth::{AuthOp, ROOT};

    fn state(enabled: bool) -> AuthState {
        let mut s = AuthState::default();
        let hash = password::hash("pw").unwrap();
        for op in [
            AuthOp::UserAdd {
                name: ROOT.into(),
                password_hash: Some(hash.clone()),
            },
            AuthOp::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthOp::UserAdd {
                name: "nopass".into(),
                password_hash: None,
            },
        ] {
            s.apply(op).unwrap();
        }
        if enabled {
            s.apply(AuthOp::Enable {
                signing_key: bytes::Bytes::from_static(b"key"),
            })
            .unwrap();
        }
        s
    }

    #[test]
    fn with_auth_disabled_anyone_may_do_anything() {
        let s = state(false);
        let c = identify(&s, Some("garbage"), None, SystemTime::now()).unwrap();
        assert_eq!(c, Caller::Anyone);
        assert!(c.may(&s, Need::Write, b"k", b"").is_ok());
        assert_eq!(
            check_password(&s, ROOT, "pw"),
            Err(AuthError::AuthNotEnabled)
        );
    }

    #[test]
    fn with_auth_enabled_a_caller_needs_a_token_or_a_certificate() {
        let s = state(true);
        let now = SystemTime::now();
        assert_eq!(identify(&s, None, None, now), Err(AuthError::UserEmpty));
        assert_eq!(
            identify(&s, None, Some("nopass"), now),
            Ok(Caller::User("nopass".into()))
        );
        assert_eq!(
            identify(&s, Some("raftkv1.x.y"), Some("nopass"), now),
            Err(AuthError::InvalidAuthToken)
        );
        let t = token::issue(&s, ROOT, now, token::DEFAULT_TTL).unwrap();
        assert_eq!(
            identify(&s, Some(&t), None, now),
            Ok(Caller::User(ROOT.into()))
        );
        let nopass = Caller::User("nopass".into());
        assert_eq!(
            nopass.may(&s, Need::Read, b"k", b""),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(nopass.must_be_root(&s), Err(AuthError::PermissionDenied));
        assert!(Caller::User(ROOT.into()).must_be_root(&s).is_ok());
    }

    #[test]
    fn a_wrong_password_an_unknown_user_and_a_passwordless_user_fail_alike() {
        let s = state(true);
        assert!(check_password(&s, ROOT, "pw").is_ok());
        for (u, p) in [(ROOT, "wrong"), ("nobody", "pw"), ("nopass", "")] {
            assert_eq!(check_password(&s, u, p), Err(AuthError::AuthFailed));
        }
    }
}
