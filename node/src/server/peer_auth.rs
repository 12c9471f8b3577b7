//! Who may speak on the peer port.
//!
//! Every peer call (message stream, snapshot, forwarded request) names its
//! sender in metadata. How that claim is proven depends on the mode:
//!
//! - **certificate** (`--peer-client-cert-auth`): the TLS handshake proved
//!   the caller holds a certificate from the peer CA; here the certificate
//!   must also name the host of the claimed member's peer URL (see
//!   [`crate::tls::peer_identity`]), so one member cannot pose as another.
//! - **shared secret** (`--peer-secret-file`): the caller adds a token, an
//!   HMAC-SHA256 under the secret of the cluster id, the sender id and the
//!   current minute. The secret never crosses the wire, a token proves one
//!   sender of one cluster for a few minutes, and it is checked in constant
//!   time. Without TLS an eavesdropper can replay a token within its window,
//!   so this mode stops whoever can reach the port, not whoever can read the
//!   traffic.
//! - **none** (`--peer-auth none`): claims are believed. Only for networks
//!   where nothing else can reach the peer port; the node says so loudly.
//!
//! Once a stream's sender is proven, every message on it must come `from`
//! that sender. Refusals are counted in
//! `raftkv_peer_messages_refused_total{reason}`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::raft::NodeId;
use crate::server::transport::{PEER_ID_HEADER, PEER_URL_HEADER};
use crate::tls::peer_identity;

/// gRPC metadata carrying the shared-secret token.
pub(crate) const PEER_TOKEN_HEADER: &str = "x-raftkv-peer-token";
/// Length of one token window, in seconds. A token is accepted in its own
/// window and the ones either side, which also absorbs clock skew.
const WINDOW_SECS: u64 = 60;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why the peer authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeerAuthError {
    #[error("cannot read the peer secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the peer secret must be at least {MIN_SECRET_BYTES} bytes (got {0})")]
    TooShort(usize),
}

/// A secret shared by the members of one cluster.
pub struct PeerSecret {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

impl PeerSecret {
    /// A secret from its bytes (surrounding whitespace, such as the newline
    /// of a file, is not part of it).
    pub fn from_bytes(secret: &[u8]) -> Result<Self, PeerAuthError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(PeerAuthError::TooShort(secret.len()));
        }
        Ok(PeerSecret {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        })
    }

    /// Reads the secret from a file.
    pub fn load(path: &Path) -> Result<Self, PeerAuthError> {
        let bytes = std::fs::read(path).map_err(|source| PeerAuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    fn signed(cluster_id: u64, sender: NodeId, window: u64) -> [u8; 39] {
        let mut msg = [0u8; 39];
        msg[..15].copy_from_slice(b"raftkv-peer-v1\0");
        msg[15..23].copy_from_slice(&cluster_id.to_be_bytes());
        msg[23..31].copy_from_slice(&sender.get().to_be_bytes());
        msg[31..39].copy_from_slice(&window.to_be_bytes());
        msg
    }

    /// The token `sender` presents in `cluster_id` at `now_secs`.
    pub fn token(&self, cluster_id: u64, sender: NodeId, now_secs: u64) -> String {
        let tag = ring::hmac::sign(
            &self.key,
            &Self::signed(cluster_id, sender, now_secs / WINDOW_SECS),
        );
        hex(tag.as_ref())
    }

    /// Whether `token` proves `sender` of `cluster_id` at `now_secs`.
    pub fn verify(&self, cluster_id: u64, sender: NodeId, token: &str, now_secs: u64) -> bool {
        let Some(tag) = unhex(token) else {
            return false;
        };
        let window = now_secs / WINDOW_SECS;
        [window.saturating_sub(1), window, window.saturating_add(1)]
            .iter()
            .any(|w| {
                // `verify` compares in constant time.
                ring::hmac::verify(&self.key, &Self::signed(cluster_id, sender, *w), &tag).is_ok()
            })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The peer URLs of the members of the configuration in force, kept by the
/// driver and read by the peer service to check certificates against.
#[derive(Clone, Debug, Default)]
pub struct MemberDirectory(Arc<RwLock<HashMap<NodeId, String>>>);

impl MemberDirectory {
    pub fn set(&self, members: impl IntoIterator<Item = (NodeId, String)>) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        map.extend(members);
    }

    /// Whether the directory holds exactly `members` (a cheap read, so the
    /// driver can check on every turn and write only on change).
    pub fn holds(&self, members: &[(NodeId, String)]) -> bool {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.len() == members.len()
            && members
                .iter()
                .all(|(id, url)| map.get(id).is_some_and(|u| u == url))
    }

    pub fn url_of(&self, id: NodeId) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// The peer port's security, as configured: TLS on the listener, how to
/// dial peers, and how callers are authenticated. There is deliberately no
/// `Default`: whoever starts a node says what it is.
#[derive(Clone, Debug)]
pub struct PeerSecurity {
    /// TLS on the peer listener.
    pub tls: Option<crate::tls::ServerTls>,
    /// What to trust and present when dialling `https://` peers.
    pub dial: crate::tls::ClientTls,
    /// Require (and send) shared-secret tokens.
    pub secret: Option<Arc<PeerSecret>>,
    /// Require a peer certificate that names the claimed member
    /// (`--peer-client-cert-auth`; needs `tls` with a trusted CA).
    pub certificate_auth: bool,
}

impl PeerSecurity {
    /// No TLS, and claims are believed: for tests and for networks where
    /// nothing else reaches the peer port.
    pub fn none() -> Self {
        PeerSecurity {
            tls: None,
            dial: crate::tls::ClientTls::default(),
            secret: None,
            certificate_auth: false,
        }
    }

    /// Whether callers are authenticated at all.
    pub fn authenticates(&self) -> bool {
        self.secret.is_some() || self.certificate_auth
    }

    /// The checks for `cluster_id`.
    pub fn auth(&self, cluster_id: u64) -> PeerAuth {
        PeerAuth {
            cluster_id,
            secret: self.secret.clone(),
            certificate: self.certificate_auth,
        }
    }
}

/// How this node proves itself to peers and checks peers' claims.
#[derive(Clone, Debug)]
pub struct PeerAuth {
    pub cluster_id: u64,
    /// Tokens are required (and sent) when set.
    pub secret: Option<Arc<PeerSecret>>,
    /// A certificate naming the claimed member is required.
    pub certificate: bool,
}

/// A peer call that was refused, and the metric label saying why.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub detail: String,
}

impl Refused {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Refused {
            reason,
            detail: detail.into(),
        }
    }

    pub fn into_status(self) -> tonic::Status {
        tonic::Status::unauthenticated(format!("peer refused: {}", self.detail))
    }
}

impl PeerAuth {
    /// Claims are believed.
    pub fn none(cluster_id: u64) -> Self {
        PeerAuth {
            cluster_id,
            secret: None,
            certificate: false,
        }
    }

    /// Whether a caller's claim is checked at all.
    pub fn authenticates(&self) -> bool {
        self.secret.is_some() || self.certificate
    }

    /// Adds who we are (and the proof of it) to an outgoing peer call.
    pub fn stamp<T>(&self, request: &mut tonic::Request<T>, self_id: NodeId) {
        let md = request.metadata_mut();
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(self_id.get().to_string()) {
            md.insert(PEER_ID_HEADER, v);
        }
        if let Some(secret) = &self.secret {
            let token = secret.token(self.cluster_id, self_id, now_secs());
            if let Ok(v) = tonic::metadata::MetadataValue::try_from(token) {
                md.insert(PEER_TOKEN_HEADER, v);
            }
        }
    }

    /// Who the caller of `request` proved to be: `Ok(None)` when nothing is
    /// checked and the caller named nobody.
    pub fn verify<T>(
        &self,
        request: &tonic::Request<T>,
        members: &MemberDirectory,
    ) -> Result<Option<NodeId>, Refused> {
        let md = request.metadata();
        let claimed = md
            .get(PEER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|id| *id != 0)
            .map(NodeId);
        if !self.authenticates() {
            return Ok(claimed);
        }
        let Some(claimed) = claimed else {
            return Err(Refused::new(
                "unauthenticated",
                "the call does not name its sender",
            ));
        };
        if let Some(secret) = &self.secret {
            let token = md
                .get(PEER_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !secret.verify(self.cluster_id, claimed, token, now_secs()) {
                return Err(Refused::new(
                    "bad_peer_token",
                    format!("no valid cluster token for node {claimed}"),
                ));
            }
        }
        if self.certificate {
            // A node that knows no configuration yet (one started with
            // --join) cannot look the sender up; it checks the certificate
            // against the URL the sender says it has, which the peer CA
            // vouches for.
            let url = match members.url_of(claimed) {
                Some(url) => url,
                None if members.is_empty() => md
                    .get(PEER_URL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
                    .ok_or_else(|| {
                        Refused::new("not_a_member", format!("node {claimed} has no peer URL"))
                    })?,
                None => {
                    return Err(Refused::new(
                        "not_a_member",
                        format!("node {claimed} is not a member"),
                    ));
                }
            };
            let certs = request
                .extensions()
                .get::<crate::tls::accept::TlsPeer>()
                .and_then(|i| i.certificates.clone());
            peer_identity::check(certs.as_deref().map(|c| c.as_slice()), &url).map_err(|e| {
                Refused::new(
                    "certificate_identity",
                    format!("node {claimed} at {url}: {e}"),
                )
            })?;
        }
        Ok(Some(claimed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_proves_its_sender_and_cluster_for_a_few_minutes_only() {
        let s = PeerSecret::from_bytes(b"0123456789abcdef-secret").unwrap();
        let t = s.token(7, NodeId(2), 1_000_000);
        assert!(s.verify(7, NodeId(2), &t, 1_000_000));
        assert!(s.verify(7, NodeId(2), &t, 1_000_000 + 60));
        assert!(!s.verify(7, NodeId(2), &t, 1_000_000 + 240), "expired");
        assert!(!s.verify(7, NodeId(3), &t, 1_000_000), "another sender");
        assert!(!s.verify(8, NodeId(2), &t, 1_000_000), "another cluster");
        let other = PeerSecret::from_bytes(b"another secret of 16+ bytes").unwrap();
        assert!(!other.verify(7, NodeId(2), &t, 1_000_000), "another secret");
        assert!(!s.verify(7, NodeId(2), "zz", 1_000_000));
        assert!(!s.verify(7, NodeId(2), "", 1_000_000));
        assert!(!s.verify(7, NodeId(2), "ab\u{e9}", 1_000_000));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(PeerSecret::from_bytes(b"  short\n").is_err());
        assert!(PeerSecret::from_bytes(b"sixteen bytes ok\n").is_ok());
    }
}
