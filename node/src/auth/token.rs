//! Auth tokens: what `Authenticate` (gRPC) and `POST /v1/auth/login` (HTTP)
//! hand out, and every later request carries instead of a password.
//!
//! A token is signed (HMAC-SHA256) with the auth store's signing key, which
//! is replicated state (drawn once per `auth enable`), so a token issued by
//! one member is valid on every member: etcd clients reconnect to another
//! member after a failure and keep their token. That is why raftkv does not
//! use etcd's `simple` tokens (random strings kept in one member's memory).
//! A token names its user, the user's password revision (a password change
//! invalidates older tokens) and an expiry; anything wrong with it is etcd's
//! "invalid auth token", on which etcd's clients authenticate again.
//!
//! Form: `raftkv1.<claims>.<signature>`, both parts base64url.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use prost::Message;
use ring::hmac;

use crate::storage::auth::{AuthError, AuthState};

const PREFIX: &str = "raftkv1";

/// How long a token is valid unless `--auth-token-ttl` says otherwise:
/// etcd's default for its tokens (5 minutes).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Clone, PartialEq, prost::Message)]
struct Claims {
    #[prost(string, tag = "1")]
    user: String,
    #[prost(uint64, tag = "2")]
    password_revision: u64,
    /// Seconds since the Unix epoch.
    #[prost(uint64, tag = "3")]
    expires: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token for `user`, valid for `ttl` from `now`. `None` if the user does
/// not exist or auth is not enabled (no signing key).
pub fn issue(state: &AuthState, user: &str, now: SystemTime, ttl: Duration) -> Option<String> {
    if !state.enabled || state.signing_key.is_empty() {
        return None;
    }
    let u = state.users.get(user)?;
    let claims = Claims {
        user: user.to_string(),
        password_revision: u.password_revision,
        expires: unix(now).saturating_add(ttl.as_secs()),
    }
    .encode_to_vec();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &state.signing_key);
    let claims = B64.encode(claims);
    let tag = hmac::sign(&key, signed_part(&claims).as_bytes());
    Some(format!("{PREFIX}.{claims}.{}", B64.encode(tag.as_ref())))
}

fn signed_part(claims: &str) -> String {
    format!("{PREFIX}.{claims}")
}

/// The user a token stands for, if it is valid now against `state`.
pub fn verify(state: &AuthState, token: &str, now: SystemTime) -> Result<String, AuthError> {
    let invalid = AuthError::InvalidAuthToken;
    let mut parts = token.split('.');
    let (Some(PREFIX), Some(claims), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid);
    };
    if state.signing_key.is_empty() {
        return Err(invalid);
    }
    let tag = B64.decode(tag).map_err(|_| AuthError::InvalidAuthToken)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &state.signing_key);
    hmac::verify(&key, signed_part(claims).as_bytes(), &tag)
        .map_err(|_| AuthError::InvalidAuthToken)?;
    let claims = B64
        .decode(claims)
        .ok()
        .and_then(|c| Claims::decode(c.as_slice()).ok())
        .ok_or(AuthError::InvalidAuthToken)?;
    if claims.expires <= unix(now) {
        return Err(invalid);
    }
    match state.users.get(&claims.user) {
        Some(u) if u.password_revision == claims.password_revision => Ok(claims.user),
        _ => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::auth::{AuthOp, ROOT};

    fn enabled(key: &str) -> AuthState {
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd {
                name: ROOT.into(),
                password_hash: None,
            },
            AuthOp::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthOp::UserAdd {
                name: "u".into(),
                password_hash: None,
            },
            AuthOp::Enable {
                signing_key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            },
        ] {
            s.apply(op).unwrap();
        }
        s
    }

    #[test]
    fn a_token_names_its_user_until_it_expires() {
        let s = enabled("k1");
        let now = SystemTime::now();
        let t = issue(&s, "u", now, DEFAULT_TTL).unwrap();
        assert_eq!(verify(&s, &t, now).unwrap(), "u");
        assert_eq!(
            verify(&s, &t, now + DEFAULT_TTL),
            Err(AuthError::InvalidAuthToken)
        );
    }

    #[test]
    fn a_token_of_another_key_or_tampered_with_is_invalid() {
        let now = SystemTime::now();
        let s = enabled("k1");
        let t = issue(&s, "u", now, DEFAULT_TTL).unwrap();
        assert!(verify(&enabled("k2"), &t, now).is_err());
        // Claims of root under u's signature.
        let root = issue(&s, ROOT, now, DEFAULT_TTL).unwrap();
        let forged = format!(
            "{}.{}",
            root.rsplit_once('.').unwrap().0,
            t.rsplit_once('.').unwrap().1
        );
        assert!(verify(&s, &forged, now).is_err());
        for bad in ["", "x", "raftkv1..", "raftkv1.a.b.c", "other.a.b"] {
            assert_eq!(verify(&s, bad, now), Err(AuthError::InvalidAuthToken));
        }
    }

    #[test]
    fn a_password_change_or_deletion_invalidates_the_users_tokens() {
        let now = SystemTime::now();
        let mut s = enabled("k");
        let t = issue(&s, "u", now, DEFAULT_TTL).unwrap();
        s.apply(AuthOp::UserChangePassword {
            name: "u".into(),
            password_hash: None,
        })
        .unwrap();
        assert!(verify(&s, &t, now).is_err());
        let t = issue(&s, "u", now, DEFAULT_TTL).unwrap();
        assert!(verify(&s, &t, now).is_ok());
        s.apply(AuthOp::UserDelete { name: "u".into() }).unwrap();
        assert!(verify(&s, &t, now).is_err());
    }

    #[test]
    fn no_token_is_issued_while_auth_is_disabled() {
        let mut s = enabled("k");
        s.apply(AuthOp::Disable).unwrap();
        // The key stays until the next enable replaces it, but no token is
        // handed out meanwhile.
        assert!(issue(&s, "u", SystemTime::now(), DEFAULT_TTL).is_none());
    }
}
