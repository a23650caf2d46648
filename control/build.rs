//! Generates the gRPC code for `proto/nham/v1/nham.proto` (protoc is
//! installed by scripts/setup.sh) and the descriptor set for reflection,
//! and the prost messages of CRIU's RPC (`proto/criu/rpc.proto`).

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("nham_v1_descriptor.bin"))
        // (nhamctl prints answers and events as JSON and YAML, keyed by
        // the proto's field names; a oneof by its field's name.)
        .type_attribute(".nham.v1", "#[derive(serde::Serialize)]")
        // Maps in key order: a request encodes to the same bytes each time
        // (a retry's digest must equal the first call's: api::idempotency).
        .btree_map(".")
        .type_attribute(
            ".nham.v1.WatchEventsResponse.event",
            "#[serde(rename_all = \"snake_case\")]",
        )
        .compile_protos(&["../proto/nham/v1/nham.proto"], &["../proto"])
        .unwrap_or_else(|e| {
            panic!("compiling nham.proto: {e} (is protobuf-compiler installed? scripts/setup.sh)")
        });
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&["../proto/criu/rpc.proto"], &["../proto/criu"])
        .unwrap_or_else(|e| panic!("compiling CRIU's rpc.proto: {e}"));
    println!("cargo:rerun-if-changed=../proto/nham/v1/nham.proto");
    println!("cargo:rerun-if-changed=../proto/criu/rpc.proto");
}
