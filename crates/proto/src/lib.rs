//! Hangar's public wire API, `hangar.v1`, as `.proto` files (under `proto/`), the tonic/prost code
//! generated from them, and the one translation between it and the shared types ([`convert`]). The server
//! implements [`v1::sandbox_service_server::SandboxService`]; the SDK uses
//! [`v1::sandbox_service_client::SandboxServiceClient`].

pub mod convert;

/// Package `coreweave.sandbox.v1` (feature `coreweave`): CoreWeave's sandbox API, server side, generated from
/// the descriptors in the `cwsandbox` 1.22.0 wheel (Apache-2.0; `scripts/cwsandbox-protos`).
#[cfg(feature = "coreweave")]
#[allow(missing_docs, clippy::all)]
pub mod coreweave {
    tonic::include_proto!("coreweave.sandbox.v1");
}

/// Package `hangar.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("hangar.v1");
}
