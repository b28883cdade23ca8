fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox is a protobuf compiler in Rust: a fresh machine with only the Rust toolchain builds the API, no
    // system protoc needed. `bytes` fields decode as `Bytes`: output and file chunks are sliced out of the
    // receive buffer, not copied.
    let descriptors = protox::compile(["hangar/v1/sandbox.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(descriptors)?;
    // CoreWeave's API (`cwsandbox` clients), for the server only: no client code, and nothing of it in the SDK.
    if std::env::var_os("CARGO_FEATURE_COREWEAVE").is_some() {
        let descriptors = protox::compile(["coreweave/sandbox/v1/sandbox.proto"], ["proto"])?;
        tonic_prost_build::configure().build_client(false).bytes(".").compile_fds(descriptors)?;
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
