//! raftkv's client gRPC API, wire-compatible with etcd's v3 API: the
//! generated protocol types and the tonic services that translate etcd
//! requests into calls on the node.

pub mod proto;
