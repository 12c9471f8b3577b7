//! TLS for every listener and for the connections a node (or the CLI) opens.
//!
//! rustls with the `ring` provider throughout, so there is no OpenSSL in the
//! binary or the image. What lives where:
//!
//! - [`config`]: the files an operator names (`--cert-file`, `--key-file`,
//!   `--trusted-ca-file`, ...), turned into rustls server and client
//!   configurations;
//! - [`reload`]: a certificate and key that are re-read from disk when they
//!   change, so rotation (cert-manager, a cron job) needs no restart;
//! - [`trust`]: the same for trusted CA bundles, on both sides of a
//!   handshake, so a cluster can move to a new CA without a restart;
//! - [`accept`]: TLS handshakes on an accepted TCP stream, off the accept
//!   loop and bounded in time, for the gRPC ports;
//! - [`connect`]: a connector that dials `https://` URLs for tonic channels
//!   (peer streams, write forwarding, `raftkv bench`);
//! - [`local_ca`]: a throwaway CA for `raftkv dev --tls` and tests;
//! - [`client_identity`]: the user a client certificate stands for (its
//!   common name);
//! - [`peer_identity`]: whether a peer's certificate names the host of the
//!   member it claims to be.

pub mod accept;
pub mod client_identity;
pub mod config;
pub mod connect;
pub mod local_ca;
pub mod peer_identity;
pub mod reload;
pub mod trust;

use std::path::PathBuf;
use std::sync::Arc;

pub use config::{ClientTls, ServerTls};
pub use reload::ReloadingKeyPair;

/// The ALPN protocol gRPC runs on. gRPC clients (etcdctl among them) refuse a
/// TLS server that does not negotiate it.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1, offered on the HTTP port next to h2.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path} is not valid PEM: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("certificate {cert} and key {key} do not make a usable pair: {detail}")]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("trusted CA {path}: {detail}")]
    Ca { path: PathBuf, detail: String },
    #[error("{0}")]
    Config(String),
}

/// The one crypto provider every configuration is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests;
