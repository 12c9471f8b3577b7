//! The Rust types and stubs generated from `proto/etcd` (etcd's v3 API
//! subset): `etcdserverpb` for the services and their messages, `mvccpb` for
//! the key-value record.

#![allow(missing_docs, clippy::all, clippy::pedantic)]
#![allow(missing_debug_implementations)]

/// etcd's `mvccpb` package: the key-value record.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: KV, Maintenance and Cluster.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
