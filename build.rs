//! Compiles `proto/kluis/v1/*.proto` with protox (a protobuf compiler in Rust), so that building
//! kluis needs no system `protoc`. Also writes the file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

#[allow(
    clippy::disallowed_methods,
    reason = "build scripts read OUT_DIR from the environment"
)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kluis/v1/vault.proto",
        "proto/kluis/v1/admin.proto",
        "proto/kluis/v1/operator.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("kluis_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // The messages and the servers. A request that does not decode is the client's error, not
    // kluis's (`api::codec`).
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::api::codec::Codec")
        .skip_debug([
            ".kluis.v1.FieldValue",
            ".kluis.v1.PutRecordRequest",
            ".kluis.v1.GetRecordResponse",
            ".kluis.v1.UpdateRecordRequest",
            ".kluis.v1.FindRecordsRequest",
            ".kluis.v1.RectifyRecordRequest",
            ".kluis.v1.IssueTokenResponse",
            ".kluis.v1.RotateRootRequest",
            ".kluis.v1.ExportLine",
            ".kluis.v1.AuditWatchEntry",
            ".kluis.v1.EvidenceChunk",
            ".kluis.v1.EvidenceStart",
            ".kluis.v1.EvidenceData",
            ".kluis.v1.EvidenceInfo",
            ".kluis.v1.UnsealRequest",
            ".kluis.v1.ReplaceSharesRequest",
            ".kluis.v1.ShareSet",
        ])
        .bytes(".kluis.v1.EvidenceChunk.data")
        .bytes(".kluis.v1.EvidenceData.data")
        .compile_fds(fds.clone())?;
    // The clients (the CLI's, the tests'), over the same messages, with tonic's own codec: an
    // answer that does not decode is a fault of the server or of a version between them
    // (`INTERNAL`), not a refusal of what the client sent.
    let clients = out_dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".kluis.v1", "crate::pb")
        .out_dir(&clients)
        .compile_fds(fds)?;
    // The bare services the benchmarks measure kluis against.
    let echo = "proto/kluis/bench/v1/echo.proto";
    println!("cargo:rerun-if-changed={echo}");
    tonic_prost_build::configure()
        .bytes(".kluis.bench.v1.Chunk.data")
        .compile_fds(protox::compile([echo], ["proto"])?)?;
    Ok(())
}
