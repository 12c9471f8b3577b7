//! Authentication on the HTTP API: the same users, roles and permissions as
//! the gRPC API (etcd's auth store, replicated), enforced on every data and
//! admin route once auth is enabled.
//!
//! A request names its user with `Authorization: Bearer <token>` (a token
//! from `POST /v1/auth/login`, the same signed token gRPC's `Authenticate`
//! hands out, valid on every member) or `Authorization: Basic` (the password
//! is checked on each request, which costs a password hash each time: use
//! a token for many requests). Without either, the common name of a
//! verified client certificate is the user (as on the gRPC port). Without
//! any of them, or with a bad one, the
//! answer is 401; with one that lacks the permission, 403. Both are JSON
//! errors carrying etcd's message.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, check_password, identify, token};
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::http::server::ClientCertUser;
use crate::storage::Command;
use crate::storage::auth::{AuthError, AuthState, Need};

/// The caller of an HTTP request, with the auth store it was checked
/// against.
#[derive(Clone, Debug)]
pub struct HttpCaller {
    pub caller: Caller,
    pub state: Arc<AuthState>,
}

fn state_of(st: &HttpState) -> Arc<AuthState> {
    st.handle.store().map(|s| s.auth()).unwrap_or_default()
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match e {
            AuthError::UserEmpty | AuthError::InvalidAuthToken | AuthError::AuthFailed => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            AuthError::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            AuthError::AuthNotEnabled => (StatusCode::CONFLICT, "failed_precondition"),
            _ => (StatusCode::BAD_REQUEST, "invalid_argument"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

/// A user name and password from a Basic authorization header.
fn basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(B64.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

impl FromRequestParts<HttpState> for HttpCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &HttpState) -> Result<Self, ApiError> {
        let state = state_of(st);
        if !state.enabled {
            return Ok(HttpCaller {
                caller: Caller::Anyone,
                state,
            });
        }
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = match authorization {
            Some(v) if v.starts_with("Bearer ") => identify(
                &state,
                Some(v["Bearer ".len()..].trim()),
                None,
                SystemTime::now(),
            )?,
            Some(v) if v.starts_with("Basic ") => {
                let (user, password) = basic(v).ok_or(AuthError::AuthFailed)?;
                verify_password(state.clone(), user.clone(), password).await?;
                Caller::User(user)
            }
            Some(_) => return Err(AuthError::InvalidAuthToken.into()),
            // No credentials: the verified client certificate's name, as
            // on the gRPC port.
            None => {
                let cert_user = parts
                    .extensions
                    .get::<ClientCertUser>()
                    .map(|u| u.0.as_str());
                identify(&state, None, cert_user, SystemTime::now())?
            }
        };
        Ok(HttpCaller { caller, state })
    }
}

/// Checks a password off the async workers (the hash is slow on purpose).
async fn verify_password(
    state: Arc<AuthState>,
    user: String,
    password: String,
) -> Result<(), ApiError> {
    tokio::task::spawn_blocking(move || check_password(&state, &user, &password))
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("password check failed: {e}"),
        })?
        .map_err(ApiError::from)
}

impl HttpCaller {
    /// 403 unless the caller may do `need` on `[key, range_end)`.
    pub fn may(&self, need: Need, key: &[u8], range_end: &[u8]) -> Result<(), ApiError> {
        Ok(self.caller.may(&self.state, need, key, range_end)?)
    }

    /// 403 unless the caller may run `cmd` (the rules the gRPC gate uses,
    /// [`crate::storage::access`]); the command comes back stamped with the
    /// caller and the auth revision of this check, which the state machine
    /// checks again if the auth store changes before it applies.
    pub fn admit(&self, cmd: Command) -> Result<Command, ApiError> {
        Ok(self.caller.admit(&self.state, cmd)?)
    }

    /// 403 unless the caller holds the root role.
    pub fn root(&self) -> Result<(), ApiError> {
        Ok(self.caller.must_be_root(&self.state)?)
    }
}

/// The body of `POST /v1/auth/login`.
#[derive(Debug, Deserialize)]
pub struct Login {
    pub name: String,
    pub password: String,
}

/// The answer of `POST /v1/auth/login`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginAnswer {
    pub token: String,
    /// Seconds the token stays valid.
    pub ttl: u64,
}

/// `POST /v1/auth/login`: a token for a user name and password.
pub async fn login(
    State(st): State<HttpState>,
    body: axum::body::Body,
) -> Result<Json<LoginAnswer>, ApiError> {
    let body = crate::http::kv::read_body(body, st.max_body_bytes, st.body_timeout).await?;
    let login: Login = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"name\",\"password\"}}: {e}")))?;
    let state = state_of(&st);
    verify_password(state.clone(), login.name.clone(), login.password).await?;
    let ttl = st.handle.auth_token_ttl();
    let token =
        token::issue(&state, &login.name, SystemTime::now(), ttl).ok_or(AuthError::AuthFailed)?;
    Ok(Json(LoginAnswer {
        token,
        ttl: ttl.as_secs(),
    }))
}

/// The answer of `GET /v1/auth/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuthStatus {
    pub enabled: bool,
    pub revision: u64,
}

/// `GET /v1/auth/status`: whether auth is enabled (open to anyone, as
/// etcd's `AuthStatus`).
pub async fn status(State(st): State<HttpState>) -> Json<AuthStatus> {
    let state = state_of(&st);
    Json(AuthStatus {
        enabled: state.enabled,
        revision: state.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_basic_header_yields_its_user_and_password() {
        let v = format!("Basic {}", B64.encode("alice:pa:ss"));
        assert_eq!(basic(&v), Some(("alice".into(), "pa:ss".into())));
        assert_eq!(basic("Basic !!!"), None);
        assert_eq!(basic(&format!("Basic {}", B64.encode("nocolon"))), None);
    }
}
