fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox is a protobuf compiler in Rust: a fresh machine with only the Rust toolchain builds the API, no
    // system protoc needed. `bytes` fields decode as `Bytes`: output and file chunks are sliced out of the
    // receive buffer, not copied.
    let descriptors = protox::compile(["hangar/v1/sandbox.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
