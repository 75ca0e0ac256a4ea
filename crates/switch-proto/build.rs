//! Generates the gRPC stubs and message types from `proto/` with a vendored
//! `protoc`, so a fresh machine needs no system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    set_protoc_env(&protoc);

    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "common",
        "qr",
        "terminal",
        "authorization",
        "issuer",
        "settlement",
        "events",
        "notifier",
    ]
    .map(|name| proto_root.join(format!("switch/v1/{name}.proto")));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("switch_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&proto_root))?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}

fn set_protoc_env(path: &std::path::Path) {
    // `set_var` is unsafe in edition 2024 only because of other threads; a
    // build script has none, and prost-build offers no other way to pass it.
    unsafe {
        std::env::set_var("PROTOC", path);
    }
}
