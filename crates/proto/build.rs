fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from the system (Debian: protobuf-compiler), installed by .ci/run.
    tonic_prost_build::configure().compile_protos(&["proto/hangar/v1/sandbox.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
