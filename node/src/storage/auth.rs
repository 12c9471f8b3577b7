//! Users, roles, permissions and the auth-enabled flag: etcd's auth store as
//! replicated state.
//!
//! Everything here changes only by applying an [`AuthOp`] from the log, so
//! every member holds the same [`AuthState`] at the same index. The state is
//! one record in the state machine's `meta` table (a few users and roles,
//! read on every request, so it is also kept decoded in memory) and one
//! frame of a snapshot image. Passwords arrive already hashed (the member
//! that received the request hashed them): the log never holds a plaintext
//! password.
//!
//! The rules, and the error messages clients match on, are etcd's: `root`
//! must exist and hold the `root` role before auth is enabled; while it is
//! enabled neither can be removed; a permission is a key, or a half-open
//! range `[key, range_end)` (`range_end` `"\0"`: every key from `key` on),
//! and a request is allowed when the union of its user's permissions of the
//! needed kind covers the whole request range ([`AuthState::permitted`]).

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use super::error::DecodeError;

/// The user and the role that may do everything.
pub const ROOT: &str = "root";

/// What a permission allows (etcd's numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermKind {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermKind {
    /// etcd's wire number.
    pub fn number(self) -> i32 {
        self as i32
    }

    /// The kind of an etcd wire number.
    pub fn from_number(n: i32) -> Option<PermKind> {
        match n {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (PermKind::ReadWrite, _)
                | (PermKind::Read, Need::Read)
                | (PermKind::Write, Need::Write)
        )
    }
}

/// What a request needs on a range of keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// One permission of a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Bytes,
    /// etcd's `range_end`: empty for the key alone, `"\0"` for every key
    /// from `key` on.
    pub range_end: Bytes,
}

/// A user as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// The password hash ([`crate::auth::password`]); `None` for a user
    /// created without a password (it can only authenticate by certificate).
    pub password_hash: Option<String>,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
    /// The auth revision of the last password change: a token names it, so
    /// that changing a password invalidates the tokens issued before.
    pub password_revision: u64,
}

/// A role as stored: its permissions, sorted by key then range end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    pub permissions: Vec<Permission>,
}

/// The whole auth store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthState {
    pub enabled: bool,
    /// etcd's auth revision: bumped by every change.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// The key tokens are signed with, drawn by the member that received
    /// `auth enable` (so every member verifies every member's tokens);
    /// replaced by each enable, which invalidates older tokens.
    pub signing_key: Bytes,
}

/// A store that never used auth: disabled, at revision 1 as a fresh etcd's.
impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            signing_key: Bytes::new(),
        }
    }
}

/// A change to the auth store, as proposed through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOp {
    UserAdd {
        name: String,
        /// `None`: a user without a password.
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Bytes,
        range_end: Bytes,
    },
    Enable {
        signing_key: Bytes,
    },
    Disable,
}

/// Why an auth request was refused; the messages are etcd's, verbatim
/// (clients match on them), and each maps to etcd's gRPC code
/// ([`AuthError::is_invalid_argument`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
}

impl AuthError {
    /// Whether etcd answers this with InvalidArgument (otherwise
    /// FailedPrecondition, except the two with codes of their own:
    /// PermissionDenied and Unauthenticated).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            AuthError::UserEmpty
                | AuthError::RoleEmpty
                | AuthError::AuthFailed
                | AuthError::InvalidAuthMgmt
        )
    }
}

/// One end of an interval of keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    /// Past every key.
    Infinity,
}

/// The half-open interval `[start, end)` a key and an etcd `range_end`
/// stand for.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, End) {
    let end = match range_end {
        [] => {
            // Just the key: the next key after it is key + "\0".
            let mut next = key.to_vec();
            next.push(0);
            End::Key(next)
        }
        [0] => End::Infinity,
        end => End::Key(end.to_vec()),
    };
    (key.to_vec(), end)
}

impl AuthState {
    /// Whether `user` may do what `need` says on `[key, range_end)` (etcd
    /// range semantics). The root role may do everything; a user that no
    /// longer exists, nothing.
    pub fn permitted(&self, user: &str, need: Need, key: &[u8], range_end: &[u8]) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return true;
        }
        let (start, end) = interval(key, range_end);
        if End::Key(start.clone()) >= end {
            // An empty or inverted range: etcd refuses it too.
            return false;
        }
        let mut granted: Vec<(Vec<u8>, End)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter())
            .filter(|p| p.kind.allows(need))
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        granted.sort();
        // Merge overlapping or touching intervals; the request is allowed
        // when one merged interval covers it.
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(granted.len());
        for (s, e) in granted {
            match merged.last_mut() {
                Some((_, last_end)) if End::Key(s.clone()) <= *last_end => {
                    if e > *last_end {
                        *last_end = e;
                    }
                }
                _ => merged.push((s, e)),
            }
        }
        merged.iter().any(|(s, e)| *s <= start && end <= *e)
    }

    /// Whether `user` holds the root role (what administration needs).
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Applies one change; on an error nothing changed. Every change that
    /// succeeds bumps the auth revision (as etcd's does).
    pub fn apply(&mut self, op: AuthOp) -> Result<(), AuthError> {
        match op {
            AuthOp::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let revision = self.revision + 1;
                self.users.insert(
                    name,
                    User {
                        password_hash,
                        roles: Vec::new(),
                        password_revision: revision,
                    },
                );
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users
                    .remove(&name)
                    .ok_or(AuthError::UserNotFound)
                    .map(drop)?;
            }
            AuthOp::UserChangePassword {
                name,
                password_hash,
            } => {
                let revision = self.revision + 1;
                let user = self.users.get_mut(&name).ok_or(AuthError::UserNotFound)?;
                user.password_hash = password_hash;
                user.password_revision = revision;
            }
            AuthOp::UserGrantRole { user, role } => {
                // The root role may be granted before it exists (etcdctl's
                // `auth enable` does so); any other must exist.
                if role != ROOT && !self.roles.contains_key(&role) {
                    if !self.users.contains_key(&user) {
                        return Err(AuthError::UserNotFound);
                    }
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(&user).ok_or(AuthError::UserNotFound)?;
                if let Err(at) = u.roles.binary_search(&role) {
                    u.roles.insert(at, role);
                }
            }
            AuthOp::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(&user).ok_or(AuthError::UserNotFound)?;
                let at = u
                    .roles
                    .binary_search(&role)
                    .map_err(|_| AuthError::RoleNotGranted)?;
                u.roles.remove(at);
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name, Role::default());
            }
            AuthOp::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(&name).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.retain(|r| *r != name);
                }
            }
            AuthOp::RoleGrantPermission { role, permission } => {
                let r = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                // The same key and range again replaces the kind.
                let at = r.permissions.binary_search_by(|p| {
                    (&p.key, &p.range_end).cmp(&(&permission.key, &permission.range_end))
                });
                match at {
                    Ok(i) => r.permissions[i].kind = permission.kind,
                    Err(i) => r.permissions.insert(i, permission),
                }
            }
            AuthOp::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                let at = r
                    .permissions
                    .iter()
                    .position(|p| p.key == key && p.range_end == range_end)
                    .ok_or(AuthError::PermissionNotGranted)?;
                r.permissions.remove(at);
            }
            AuthOp::Enable { signing_key } => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                self.signing_key = signing_key;
            }
            AuthOp::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
        }
        self.revision += 1;
        Ok(())
    }

    /// Whether this is the state of a store that never used auth (what
    /// images of such a store leave out).
    pub fn is_empty(&self) -> bool {
        *self == AuthState::default()
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        StoredAuth {
            enabled: self.enabled,
            revision: self.revision,
            users: self
                .users
                .iter()
                .map(|(name, u)| StoredUser {
                    name: name.clone(),
                    password_hash: u.password_hash.clone(),
                    roles: u.roles.clone(),
                    password_revision: u.password_revision,
                })
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(name, r)| StoredRole {
                    name: name.clone(),
                    permissions: r.permissions.iter().map(permission_to_wire).collect(),
                })
                .collect(),
            signing_key: self.signing_key.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes the stored form; malformed input is an error, never a panic.
    pub fn decode(buf: &[u8]) -> Result<AuthState, DecodeError> {
        let s =
            StoredAuth::decode(buf).map_err(|source| DecodeError::Prost { what: WHAT, source })?;
        let mut users = BTreeMap::new();
        for u in s.users {
            let mut roles = u.roles;
            roles.sort();
            roles.dedup();
            users.insert(
                u.name,
                User {
                    password_hash: u.password_hash,
                    roles,
                    password_revision: u.password_revision,
                },
            );
        }
        let mut roles = BTreeMap::new();
        for r in s.roles {
            let mut permissions = r
                .permissions
                .into_iter()
                .map(permission_from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            permissions.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
            roles.insert(r.name, Role { permissions });
        }
        Ok(AuthState {
            enabled: s.enabled,
            revision: s.revision,
            users,
            roles,
            signing_key: s.signing_key,
        })
    }
}

// ---- stored and wire forms -------------------------------------------------

const WHAT: &str = "auth store";

#[derive(Clone, PartialEq, prost::Message)]
struct StoredAuth {
    #[prost(bool, tag = "1")]
    enabled: bool,
    #[prost(uint64, tag = "2")]
    revision: u64,
    #[prost(message, repeated, tag = "3")]
    users: Vec<StoredUser>,
    #[prost(message, repeated, tag = "4")]
    roles: Vec<StoredRole>,
    #[prost(bytes = "bytes", tag = "5")]
    signing_key: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredUser {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, optional, tag = "2")]
    password_hash: Option<String>,
    #[prost(string, repeated, tag = "3")]
    roles: Vec<String>,
    #[prost(uint64, tag = "4")]
    password_revision: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredRole {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    permissions: Vec<WirePermission>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WirePermission {
    /// etcd's number: 0 read, 1 write, 2 readwrite.
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(bytes = "bytes", tag = "2")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    range_end: Bytes,
}

fn permission_to_wire(p: &Permission) -> WirePermission {
    WirePermission {
        kind: p.kind.number(),
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

fn permission_from_wire(w: WirePermission) -> Result<Permission, DecodeError> {
    Ok(Permission {
        kind: PermKind::from_number(w.kind).ok_or(DecodeError::Invalid {
            what: WHAT,
            field: "permission type",
            value: i64::from(w.kind),
        })?,
        key: w.key,
        range_end: w.range_end,
    })
}

/// An [`AuthOp`] in a command: which change (`kind`) and its operands.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WireAuthOp {
    #[prost(uint32, tag = "1")]
    kind: u32,
    /// The user, or the role for role changes.
    #[prost(string, tag = "2")]
    name: String,
    /// The role of a grant or revoke to a user.
    #[prost(string, tag = "3")]
    role: String,
    #[prost(string, optional, tag = "4")]
    password_hash: Option<String>,
    #[prost(message, optional, tag = "5")]
    permission: Option<WirePermission>,
    #[prost(bytes = "bytes", tag = "6")]
    signing_key: Bytes,
}

impl AuthOp {
    pub(super) fn to_wire(&self) -> WireAuthOp {
        let mut w = WireAuthOp::default();
        match self {
            AuthOp::UserAdd {
                name,
                password_hash,
            } => {
                w.kind = 1;
                w.name = name.clone();
                w.password_hash = password_hash.clone();
            }
            AuthOp::UserDelete { name } => {
                w.kind = 2;
                w.name = name.clone();
            }
            AuthOp::UserChangePassword {
                name,
                password_hash,
            } => {
                w.kind = 3;
                w.name = name.clone();
                w.password_hash = password_hash.clone();
            }
            AuthOp::UserGrantRole { user, role } => {
                w.kind = 4;
                w.name = user.clone();
                w.role = role.clone();
            }
            AuthOp::UserRevokeRole { user, role } => {
                w.kind = 5;
                w.name = user.clone();
                w.role = role.clone();
            }
            AuthOp::RoleAdd { name } => {
                w.kind = 6;
                w.name = name.clone();
            }
            AuthOp::RoleDelete { name } => {
                w.kind = 7;
                w.name = name.clone();
            }
            AuthOp::RoleGrantPermission { role, permission } => {
                w.kind = 8;
                w.name = role.clone();
                w.permission = Some(permission_to_wire(permission));
            }
            AuthOp::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                w.kind = 9;
                w.name = role.clone();
                w.permission = Some(WirePermission {
                    kind: 0,
                    key: key.clone(),
                    range_end: range_end.clone(),
                });
            }
            AuthOp::Enable { signing_key } => {
                w.kind = 10;
                w.signing_key = signing_key.clone();
            }
            AuthOp::Disable => w.kind = 11,
        }
        w
    }

    pub(super) fn from_wire(w: WireAuthOp) -> Result<AuthOp, DecodeError> {
        const OP: &str = "auth command";
        let permission = |w: Option<WirePermission>| {
            w.ok_or(DecodeError::Missing {
                what: OP,
                field: "permission",
            })
        };
        Ok(match w.kind {
            1 => AuthOp::UserAdd {
                name: w.name,
                password_hash: w.password_hash,
            },
            2 => AuthOp::UserDelete { name: w.name },
            3 => AuthOp::UserChangePassword {
                name: w.name,
                password_hash: w.password_hash,
            },
            4 => AuthOp::UserGrantRole {
                user: w.name,
                role: w.role,
            },
            5 => AuthOp::UserRevokeRole {
                user: w.name,
                role: w.role,
            },
            6 => AuthOp::RoleAdd { name: w.name },
            7 => AuthOp::RoleDelete { name: w.name },
            8 => AuthOp::RoleGrantPermission {
                role: w.name,
                permission: permission_from_wire(permission(w.permission)?)?,
            },
            9 => {
                let p = permission(w.permission)?;
                AuthOp::RoleRevokePermission {
                    role: w.name,
                    key: p.key,
                    range_end: p.range_end,
                }
            }
            10 => AuthOp::Enable {
                signing_key: w.signing_key,
            },
            11 => AuthOp::Disable,
            other => {
                return Err(DecodeError::Invalid {
                    what: OP,
                    field: "kind",
                    value: i64::from(other),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn perm(kind: PermKind, key: &str, range_end: &str) -> Permission {
        Permission {
            kind,
            key: b(key),
            range_end: b(range_end),
        }
    }

    /// A store with user `u` holding role `r` with `perms`, and root.
    fn store_with(perms: &[Permission]) -> AuthState {
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd {
                name: ROOT.into(),
                password_hash: Some("h".into()),
            },
            AuthOp::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthOp::UserAdd {
                name: "u".into(),
                password_hash: Some("h".into()),
            },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            },
        ] {
            s.apply(op).unwrap();
        }
        for p in perms {
            s.apply(AuthOp::RoleGrantPermission {
                role: "r".into(),
                permission: p.clone(),
            })
            .unwrap();
        }
        s
    }

    #[test]
    fn a_prefix_permission_covers_keys_and_ranges_inside_it_only() {
        // etcdctl's --prefix /app/ grants ["/app/", "/app0").
        let s = store_with(&[perm(PermKind::ReadWrite, "/app/", "/app0")]);
        assert!(s.permitted("u", Need::Read, b"/app/x", b""));
        assert!(s.permitted("u", Need::Write, b"/app/", b""));
        assert!(s.permitted("u", Need::Read, b"/app/", b"/app0"));
        assert!(s.permitted("u", Need::Read, b"/app/a", b"/app/b"));
        assert!(!s.permitted("u", Need::Read, b"/app", b""));
        assert!(!s.permitted("u", Need::Read, b"/other", b""));
        // A range that starts inside and ends outside.
        assert!(!s.permitted("u", Need::Read, b"/app/a", b"/b"));
        // Every key from /app/ on.
        assert!(!s.permitted("u", Need::Read, b"/app/", b"\0"));
    }

    #[test]
    fn a_single_key_permission_covers_that_key_alone() {
        let s = store_with(&[perm(PermKind::Read, "k", "")]);
        assert!(s.permitted("u", Need::Read, b"k", b""));
        assert!(!s.permitted("u", Need::Read, b"k0", b""));
        assert!(!s.permitted("u", Need::Read, b"k", b"l"));
        // k's range is [k, k\0): that range exactly is the key.
        assert!(s.permitted("u", Need::Read, b"k", b"k\0"));
    }

    #[test]
    fn read_and_write_permissions_are_separate_and_readwrite_is_both() {
        let s = store_with(&[
            perm(PermKind::Read, "r", ""),
            perm(PermKind::Write, "w", ""),
            perm(PermKind::ReadWrite, "rw", ""),
        ]);
        assert!(s.permitted("u", Need::Read, b"r", b""));
        assert!(!s.permitted("u", Need::Write, b"r", b""));
        assert!(s.permitted("u", Need::Write, b"w", b""));
        assert!(!s.permitted("u", Need::Read, b"w", b""));
        assert!(s.permitted("u", Need::Read, b"rw", b""));
        assert!(s.permitted("u", Need::Write, b"rw", b""));
    }

    #[test]
    fn adjacent_and_overlapping_permissions_cover_their_union() {
        let s = store_with(&[
            perm(PermKind::Read, "a", "c"),
            perm(PermKind::Read, "c", "e"),
            perm(PermKind::Read, "d", "g"),
        ]);
        assert!(s.permitted("u", Need::Read, b"a", b"g"));
        assert!(s.permitted("u", Need::Read, b"b", b"f"));
        assert!(!s.permitted("u", Need::Read, b"a", b"h"));
        // A gap is not covered.
        let gap = store_with(&[
            perm(PermKind::Read, "a", "c"),
            perm(PermKind::Read, "d", "g"),
        ]);
        assert!(!gap.permitted("u", Need::Read, b"a", b"e"));
        assert!(gap.permitted("u", Need::Read, b"d", b"e"));
    }

    #[test]
    fn an_open_ended_permission_covers_every_key_after_its_start() {
        let s = store_with(&[perm(PermKind::Read, "m", "\0")]);
        assert!(s.permitted("u", Need::Read, b"m", b"\0"));
        assert!(s.permitted("u", Need::Read, b"zzz", b""));
        assert!(s.permitted("u", Need::Read, b"n", b"\0"));
        assert!(!s.permitted("u", Need::Read, b"a", b"\0"));
        assert!(!s.permitted("u", Need::Read, b"l", b""));
    }

    #[test]
    fn root_may_do_everything_and_an_unknown_user_nothing() {
        let s = store_with(&[]);
        assert!(s.permitted(ROOT, Need::Write, b"\0", b"\0"));
        assert!(!s.permitted("u", Need::Read, b"k", b""));
        assert!(!s.permitted("nobody", Need::Read, b"k", b""));
        assert!(s.is_root(ROOT));
        assert!(!s.is_root("u"));
    }

    #[test]
    fn an_inverted_range_is_refused() {
        let s = store_with(&[perm(PermKind::Read, "a", "\0")]);
        assert!(!s.permitted("u", Need::Read, b"z", b"b"));
    }

    #[test]
    fn enabling_needs_root_with_the_root_role() {
        let mut s = AuthState::default();
        let enable = || AuthOp::Enable {
            signing_key: b("key"),
        };
        assert_eq!(s.apply(enable()), Err(AuthError::RootUserNotExist));
        s.apply(AuthOp::UserAdd {
            name: ROOT.into(),
            password_hash: None,
        })
        .unwrap();
        assert_eq!(s.apply(enable()), Err(AuthError::RootRoleNotExist));
        s.apply(AuthOp::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        })
        .unwrap();
        s.apply(enable()).unwrap();
        assert!(s.enabled);
        assert_eq!(s.signing_key, b("key"));
        // While enabled, root and its role stay.
        assert_eq!(
            s.apply(AuthOp::UserDelete { name: ROOT.into() }),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(AuthOp::UserRevokeRole {
                user: ROOT.into(),
                role: ROOT.into()
            }),
            Err(AuthError::InvalidAuthMgmt)
        );
        s.apply(AuthOp::Disable).unwrap();
        assert!(!s.enabled);
        s.apply(AuthOp::UserDelete { name: ROOT.into() }).unwrap();
    }

    #[test]
    fn user_and_role_changes_answer_with_etcds_errors() {
        let mut s = store_with(&[perm(PermKind::Read, "k", "")]);
        let rev = s.revision;
        assert_eq!(
            s.apply(AuthOp::UserAdd {
                name: "u".into(),
                password_hash: None
            }),
            Err(AuthError::UserAlreadyExist)
        );
        assert_eq!(
            s.apply(AuthOp::UserAdd {
                name: String::new(),
                password_hash: None
            }),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(
            s.apply(AuthOp::RoleAdd { name: "r".into() }),
            Err(AuthError::RoleAlreadyExist)
        );
        assert_eq!(
            s.apply(AuthOp::UserGrantRole {
                user: "u".into(),
                role: "nope".into()
            }),
            Err(AuthError::RoleNotFound)
        );
        assert_eq!(
            s.apply(AuthOp::UserRevokeRole {
                user: "u".into(),
                role: "nope".into()
            }),
            Err(AuthError::RoleNotGranted)
        );
        assert_eq!(
            s.apply(AuthOp::RoleRevokePermission {
                role: "r".into(),
                key: b("other"),
                range_end: Bytes::new()
            }),
            Err(AuthError::PermissionNotGranted)
        );
        assert_eq!(
            s.apply(AuthOp::UserDelete { name: "x".into() }),
            Err(AuthError::UserNotFound)
        );
        assert_eq!(s.revision, rev, "a refused change changes nothing");
        // Deleting a role takes it from its users.
        s.apply(AuthOp::RoleDelete { name: "r".into() }).unwrap();
        assert!(s.users["u"].roles.is_empty());
        assert!(!s.permitted("u", Need::Read, b"k", b""));
    }

    #[test]
    fn a_password_change_moves_the_users_password_revision() {
        let mut s = store_with(&[]);
        let before = s.users["u"].password_revision;
        s.apply(AuthOp::UserChangePassword {
            name: "u".into(),
            password_hash: Some("h2".into()),
        })
        .unwrap();
        assert!(s.users["u"].password_revision > before);
        assert_eq!(s.users["u"].password_hash.as_deref(), Some("h2"));
    }

    #[test]
    fn the_state_and_every_op_round_trip() {
        let mut s = store_with(&[
            perm(PermKind::ReadWrite, "/app/", "/app0"),
            perm(PermKind::Write, "k", ""),
        ]);
        s.apply(AuthOp::Enable {
            signing_key: b("secret"),
        })
        .unwrap();
        assert_eq!(AuthState::decode(&s.encode()).unwrap(), s);
        let ops = [
            AuthOp::UserAdd {
                name: "a".into(),
                password_hash: Some("h".into()),
            },
            AuthOp::UserAdd {
                name: "b".into(),
                password_hash: None,
            },
            AuthOp::UserDelete { name: "a".into() },
            AuthOp::UserChangePassword {
                name: "a".into(),
                password_hash: Some("x".into()),
            },
            AuthOp::UserGrantRole {
                user: "a".into(),
                role: "r".into(),
            },
            AuthOp::UserRevokeRole {
                user: "a".into(),
                role: "r".into(),
            },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::RoleDelete { name: "r".into() },
            AuthOp::RoleGrantPermission {
                role: "r".into(),
                permission: perm(PermKind::Write, "a", "b"),
            },
            AuthOp::RoleRevokePermission {
                role: "r".into(),
                key: b("a"),
                range_end: b("b"),
            },
            AuthOp::Enable {
                signing_key: b("k"),
            },
            AuthOp::Disable,
        ];
        for op in ops {
            assert_eq!(AuthOp::from_wire(op.to_wire()).unwrap(), op);
        }
        assert!(AuthState::decode(&[0xff]).is_err());
        assert!(
            AuthOp::from_wire(WireAuthOp {
                kind: 99,
                ..Default::default()
            })
            .is_err()
        );
    }
}
