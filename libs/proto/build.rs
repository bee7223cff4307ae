//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler), so a
//! fresh machine needs nothing beyond cargo, and writes the file descriptor set
//! that the servers hand to gRPC reflection.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../..");
    let contract = root.join("proto");
    let third_party = root.join("third_party/proto");
    println!("cargo:rerun-if-changed={}", contract.display());
    println!("cargo:rerun-if-changed={}", third_party.display());

    let mut files = Vec::new();
    collect_protos(&contract, &mut files)?;
    files.sort();

    let mut compiler = protox::Compiler::new([&contract, &third_party])?;
    compiler
        .include_imports(true)
        // Source info carries the proto comments: `grpcurl describe` shows them.
        .include_source_info(true)
        .open_files(&files)?;
    let descriptors = compiler.file_descriptor_set();

    // Encoded by protox itself, which keeps the methods' options (the
    // `google.api.http` rules the edge routes by); prost's own types would
    // drop them as unknown fields.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("agentmesh_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Messages and servers: a request the server cannot decode is the
    // caller's mistake, so servers decode with `crate::codec::RequestCodec`
    // (INVALID_ARGUMENT) instead of tonic's codec (INTERNAL).
    tonic_prost_build::configure()
        // google.rpc.Status and its details come from tonic-types, so our
        // messages and tonic's richer-error helpers share one type.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .compile_fds(descriptors.clone())?;

    // Clients, in their own directory, over the messages above: a response
    // a client cannot decode is the server's fault, and stays INTERNAL
    // (`crate::codec::ResponseCodec`: tonic's codec, smaller buffers).
    let clients = out_dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    let mut client_build = tonic_prost_build::configure()
        .extern_path(".google.rpc", "::tonic_types::pb")
        .build_server(false)
        .codec_path("crate::codec::ResponseCodec")
        .out_dir(&clients);
    for package in AREAS {
        client_build = client_build.extern_path(
            format!(".agentmesh.{package}.v1"),
            format!("crate::{package}::v1"),
        );
    }
    client_build.compile_fds(descriptors)?;
    Ok(())
}

/// The contract's packages (`agentmesh.<area>.v1`), which are also the
/// crate's modules.
const AREAS: [&str; 5] = ["orchestrator", "llm", "tools", "audit", "alerting"];

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
