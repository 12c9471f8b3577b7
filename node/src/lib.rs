//! raftkv: a Raft-replicated key-value store.
//!
//! The crate is layered so that data flows one way:
//!
//! - [`raft`] is the consensus core. It is pure and deterministic: no I/O, no
//!   clock, no threads. It is *stepped* by a driver and hands back, through
//!   [`raft::Ready`], what to persist, send and apply.
//! - [`storage`] (redb) keeps the Raft log, the hard state and the key-value
//!   state machine durable.
//! - [`auth`] decides who a client request comes from and what it may do
//!   (the users and roles are replicated state in [`storage`]).
//! - `server` runs the driver loop on tokio and the gRPC transport; `http`
//!   serves the JSON API, metrics and health; `cli` holds the subcommands.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod raft;
pub mod server;
pub mod storage;
pub mod tls;
