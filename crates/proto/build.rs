fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from the system (Debian: protobuf-compiler), installed by .ci/run.
    // `bytes` fields decode as `Bytes`: output and file chunks are sliced out of the receive buffer, not copied.
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/hangar/v1/sandbox.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
