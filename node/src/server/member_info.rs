//! What the node keeps in a member's opaque `context` in the Raft
//! configuration: its name and addresses, as JSON. Because every membership
//! entry carries the whole configuration, any node can reach any member from
//! the log alone.
//!
//! It also holds the one check every edge (HTTP, gRPC, CLI, flags) applies
//! to a member URL before it goes into the configuration:
//! [`validate_member_url`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::server::transport::normalize_url;

/// Longest member URL accepted, in bytes.
pub const MAX_MEMBER_URL_BYTES: usize = 256;

/// Why a member's peer or client URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberUrlError {
    #[error("the URL is empty")]
    Empty,
    #[error("the URL is {0} bytes long; at most {MAX_MEMBER_URL_BYTES} are accepted")]
    TooLong(usize),
    #[error("the URL contains whitespace or control characters")]
    Whitespace,
    #[error("{0:?} is not a URL: {1}")]
    Malformed(String, String),
    #[error("the scheme must be http or https, not {0:?}")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL has no usable port")]
    Port,
    #[error("the URL must be scheme://host:port only, without {0}")]
    Extra(&'static str),
}

/// Checks a member URL (`http(s)://host[:port]`, or `host:port`, which
/// means http) and returns it in the form stored in the configuration
/// (`http://` added if no scheme is given; nothing else changes, so cluster
/// ids derived from URLs stay the same). Whitespace anywhere, even around
/// it, is refused: a URL with a stray newline is a mistake, not a URL.
pub fn validate_member_url(raw: &str) -> Result<String, MemberUrlError> {
    let trimmed = raw;
    if trimmed.is_empty() {
        return Err(MemberUrlError::Empty);
    }
    if trimmed.len() > MAX_MEMBER_URL_BYTES {
        return Err(MemberUrlError::TooLong(trimmed.len()));
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(MemberUrlError::Whitespace);
    }
    let normalized = normalize_url(trimmed);
    let url = url::Url::parse(&normalized)
        .map_err(|e| MemberUrlError::Malformed(trimmed.to_string(), e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(MemberUrlError::Scheme(url.scheme().to_string()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(MemberUrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(MemberUrlError::Extra("user info"));
    }
    if url.query().is_some() {
        return Err(MemberUrlError::Extra("a query"));
    }
    if url.fragment().is_some() {
        return Err(MemberUrlError::Extra("a fragment"));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(MemberUrlError::Extra("a path"));
    }
    if url.port_or_known_default().is_none_or(|p| p == 0) {
        return Err(MemberUrlError::Port);
    }
    Ok(normalized)
}

/// A member's name and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub peer_url: String,
    #[serde(default)]
    pub client_url: String,
}

impl MemberInfo {
    pub fn to_context(&self) -> Bytes {
        // Serializing three strings cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes a context. A context that is not ours (empty, or written by
    /// a tool) decodes to empty fields rather than failing: the member still
    /// exists, we just do not know how to reach it.
    pub fn from_context(context: &[u8]) -> MemberInfo {
        serde_json::from_slice(context).unwrap_or_default()
    }
}

/// The inputs an outside fault battery sent to member add; each edge's
/// tests run the same table.
#[cfg(test)]
pub(crate) fn bad_member_urls() -> Vec<String> {
    vec![
        String::new(),
        "not a url".into(),
        "http://".into(),
        "ftp://x:1".into(),
        "http://[::1".into(),
        "http://h:99999".into(),
        "http://h:0".into(),
        format!("http://{}:2380", "a".repeat(60 * 1024)),
        "http://h:2380\n".into(),
        "http://h:2380/x\ny".into(),
        "::::".into(),
        " http://h:2380".into(),
        "http://user:pw@h:2380".into(),
        "http://h:2380/path".into(),
        "http://h:2380?q=1".into(),
        "http://h:2380#f".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls_are_checked_in_one_place() {
        for bad in bad_member_urls() {
            assert!(
                validate_member_url(&bad).is_err(),
                "accepted {:?}",
                &bad[..bad.len().min(40)]
            );
        }
        for (good, stored) in [
            ("http://127.0.0.1:2380", "http://127.0.0.1:2380"),
            ("10.0.0.1:2380", "http://10.0.0.1:2380"),
            (
                "https://node-1.raftkv.svc:2380/",
                "https://node-1.raftkv.svc:2380/",
            ),
            ("http://[::1]:2380", "http://[::1]:2380"),
            ("http://h", "http://h"),
        ] {
            assert_eq!(validate_member_url(good).as_deref(), Ok(stored));
        }
    }

    #[test]
    fn info_round_trips_and_garbage_decodes_to_empty() {
        let info = MemberInfo {
            name: "n1".into(),
            peer_url: "http://127.0.0.1:2380".into(),
            client_url: "http://127.0.0.1:2379".into(),
        };
        assert_eq!(MemberInfo::from_context(&info.to_context()), info);
        assert_eq!(MemberInfo::from_context(b"\xff"), MemberInfo::default());
    }
}
