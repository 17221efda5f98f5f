//! Compiles `proto/*.proto` with a pure-Rust protobuf compiler (protox), so the build never
//! needs a system `protoc`; gRPC services get tonic clients and servers.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/zds.proto",
        "proto/citadel.proto",
        "proto/envoy/service/discovery/v3/discovery.proto",
        "proto/workload.proto",
        "proto/authorization.proto",
    ];
    // The whole directory: imported files (envoy/config, google/rpc) count too.
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps make encoding deterministic, so a resource's bytes (and the version
        // the control plane derives from them) change only when its content does.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
