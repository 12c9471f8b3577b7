//! The generated types and services of `proto/raft.proto` (the peer protocol).
#![allow(missing_debug_implementations, clippy::all)]

tonic::include_proto!("raftkv.peer.v1");
