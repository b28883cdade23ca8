//! Hangar's public wire API, `hangar.v1`, as `.proto` files (under `proto/`) and the tonic/prost code
//! generated from them. The server implements [`v1::sandbox_service_server::SandboxService`]; the SDK
//! uses [`v1::sandbox_service_client::SandboxServiceClient`].

/// Package `hangar.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("hangar.v1");
}
