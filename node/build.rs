//! Generates the Rust code of raftkv's gRPC protocols.
//!
//! The .proto files are parsed by `protox` (pure Rust), so building raftkv
//! needs no system `protoc`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_etcd_api()?;
    Ok(())
}

/// etcd's v3 client API subset (proto/etcd): server stubs for raftkv's
/// client port and client stubs for `raftkv bench` and the tests. Byte
/// fields become `bytes::Bytes` so that keys and values pass through without
/// copies.
fn compile_etcd_api() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new("../proto/etcd");
    let files = [dir.join("kv.proto"), dir.join("rpc.proto")];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
