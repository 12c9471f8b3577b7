//! Compiles `proto/*.proto` with protox (a pure-Rust protobuf compiler), so
//! that building raftkv needs no `protoc` on the machine.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    compile_peer_protocol(&proto_dir)?;
    compile_etcd_api(&proto_dir.join("etcd"))?;
    Ok(())
}

/// The peer protocol (raft messages, snapshots, forwarding).
fn compile_peer_protocol(proto_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let files = [proto_dir.join("raft.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let descriptors = protox::compile(&files, [proto_dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// etcd's v3 client API subset (proto/etcd): server stubs for raftkv's
/// client port and client stubs for `raftkv bench` and the tests. Byte
/// fields become `bytes::Bytes` so that keys and values pass through without
/// copies.
fn compile_etcd_api(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let files = [dir.join("kv.proto"), dir.join("rpc.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let descriptors = protox::compile(&files, [dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
