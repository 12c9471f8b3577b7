//! Whether a peer's certificate is the certificate of the member it claims
//! to be.
//!
//! The TLS handshake proves a peer holds a certificate from the peer CA.
//! That is not enough: every member has one, so member 2 could claim to be
//! member 1 (and, say, send a TimeoutNow "from the leader"). A member's
//! identity is the host of its peer URL in the configuration, as etcd ties
//! peers to their URLs, so the certificate must name that host in its
//! subject alternative names (DNS name or IP address).

use rustls_pki_types::{CertificateDer, ServerName};

/// Why a certificate does not prove a member's identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the peer URL {0:?} has no host")]
    NoHost(String),
    #[error("the certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the certificate does not name {host}: {detail}")]
    WrongHost { host: String, detail: String },
}

/// The host of a peer URL (`https://node-1.example:2380` → `node-1.example`).
pub fn host_of(peer_url: &str) -> Result<String, IdentityError> {
    let with_scheme = if peer_url.contains("://") {
        peer_url.to_string()
    } else {
        format!("http://{peer_url}")
    };
    url::Url::parse(&with_scheme)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| IdentityError::NoHost(peer_url.to_string()))
}

/// Checks that `chain`'s leaf certificate names the host of `peer_url`.
/// The chain itself was verified against the peer CA by the handshake.
pub fn check(
    chain: Option<&[CertificateDer<'static>]>,
    peer_url: &str,
) -> Result<(), IdentityError> {
    let leaf = chain
        .and_then(|c| c.first())
        .ok_or(IdentityError::NoCertificate)?;
    let host = host_of(peer_url)?;
    let name = ServerName::try_from(host.clone()).map_err(|e| IdentityError::WrongHost {
        host: host.clone(),
        detail: e.to_string(),
    })?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| IdentityError::WrongHost {
            host,
            detail: e.to_string(),
        })
}
