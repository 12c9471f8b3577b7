//! `spec.tls`: certificates for a cluster's members and for the operator's
//! own calls to them.
//!
//! - [`spec`]: the CRD types (`spec.tls`, `spec.networkPolicy`);
//! - [`authority`]: the cluster CA of mode `auto` and the certificates it
//!   issues, and when one is due for renewal;
//! - [`auto`]: the Secrets of mode `auto`, derived from what exists;
//! - [`cert_manager`]: the cert-manager `Certificate`s of mode `certManager`;
//! - [`pod`]: the volumes and `raftkv serve` flags TLS adds to a pod;
//! - [`operator_client`]: the CA and client certificate the operator uses;
//! - [`reconcile`]: the API calls of one pass.
//!
//! Whatever the mode, members keep authenticating peer streams with the
//! cluster's shared secret too; TLS adds encryption, certificate checks of
//! peers (a peer must name the member it claims to be) and, with
//! `clientCertAuth`, of clients.

pub mod authority;
pub mod auto;
pub mod cert_manager;
pub mod operator_client;
pub mod pod;
pub mod reconcile;
pub mod spec;
