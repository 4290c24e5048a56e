//! Compiles the service-node protocol with the protoc shipped in `protoc-bin-vendored`,
//! so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/node.proto"], &["proto"])?;
    Ok(())
}
