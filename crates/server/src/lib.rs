//! The Hangar server: the engine behind the `hangar.v1` gRPC API.
//!
//! Every request carries a bearer token; each token is a tenant, and a tenant sees and touches only its own
//! sandboxes (another tenant's ids answer NOT_FOUND, exactly like unknown ones). Errors map to standard gRPC
//! codes plus a machine-readable reason in the `hangar-reason` metadata. A small HTTP listener beside the
//! gRPC one answers `/healthz` and `/metrics` (Prometheus text format).
//!
//! Not for: sandbox logic (the engine) or client conveniences (the SDK).

mod auth;
mod coreweave;
mod metrics;
mod service;
mod status;
mod stream;

pub use auth::{Tenant, Tokens};
pub use hangar_proto::convert::{PATH_KEY, REASON_KEY};
pub use metrics::Metrics;
pub use service::SandboxApi;

/// The gRPC status an engine error travels as: its code, its message, and its reason (with the path or state
/// it names) in the metadata. What the SDK maps back is the same error the embedded engine gives.
///
/// ```
/// let s = hangar_server::status_of(hangar_engine::Error::NotFound("sb-1".into()));
/// assert_eq!(s.code(), tonic::Code::NotFound);
/// ```
pub fn status_of(e: hangar_engine::Error) -> tonic::Status {
    status::from_engine(e)
}

use hangar_engine::Engine;
use hangar_proto::v1::sandbox_service_server::SandboxServiceServer;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest gRPC message accepted or sent (file chunks and output frames are far smaller).
const MAX_MESSAGE: usize = 16 << 20;
/// HTTP/2 flow-control window per stream.
const WINDOW: u32 = 8 << 20;

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The Unix socket could not be bound.
    #[error("listen on {path}: {source}")]
    ListenUnix {
        /// The socket's path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file could not be read or parsed.
    #[error("tokens: {0}")]
    Tokens(String),
    /// The gRPC transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Where the server listens: gRPC on `grpc`, and also on a Unix socket at `socket` when given (the same APIs
/// and tokens, for clients on this machine: `unix:PATH` URLs; no TCP stack, so output streams faster), and
/// health and metrics over HTTP on `http` when given.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// A Unix socket to serve gRPC on as well (made with mode 0600, replacing a stale one).
    pub socket: Option<std::path::PathBuf>,
    /// The `/healthz` and `/metrics` address.
    pub http: Option<SocketAddr>,
}

/// Binds the gRPC listeners (and the health/metrics listener when given); returns the gRPC and HTTP addresses
/// and a future that serves until `shutdown` resolves, then stops accepting, lets in-flight calls finish for
/// up to `drain`, and cancels the rest (their execs are killed; sandboxes keep running for the next server).
pub async fn bind(
    engine: Arc<Engine>,
    tokens: Tokens,
    listen: Listen,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, Option<SocketAddr>, impl Future<Output = Result<(), Error>>), Error> {
    let Listen { grpc: listen, socket, http: http_listen } = listen;
    let grpc = tokio::net::TcpListener::bind(listen).await.map_err(|source| Error::Listen { addr: listen, source })?;
    let grpc_addr = grpc.local_addr().map_err(|source| Error::Listen { addr: listen, source })?;
    let unix = match &socket {
        Some(path) => Some(bind_unix(path).map_err(|source| Error::ListenUnix { path: path.clone(), source })?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let tokens = Arc::new(tokens);
    let http = match http_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr, source })?;
            let bound = l.local_addr().map_err(|source| Error::Listen { addr, source })?;
            tokio::spawn(metrics::serve_http(l, engine.clone(), metrics.clone(), tokens.clone()));
            Some(bound)
        }
        None => None,
    };
    let engine_for_cw = engine.clone();
    let api = SandboxApi::new(engine, metrics.clone());
    let svc =
        SandboxServiceServer::new(api).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
    let cw = coreweave::CoreWeaveApi::new(engine_for_cw);
    // Its files travel whole in one message: as large as its client accepts.
    let cw = hangar_proto::coreweave::sandbox_service_server::SandboxServiceServer::new(cw)
        .max_decoding_message_size(coreweave::MAX_FILE + (1 << 20))
        .max_encoding_message_size(coreweave::MAX_FILE + (1 << 20));
    let cw =
        tonic::service::interceptor::InterceptedService::new(cw, auth::interceptor(tokens.clone(), metrics.clone()));
    let svc = tonic::service::interceptor::InterceptedService::new(svc, auth::interceptor(tokens, metrics));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serve = async move {
        let router = || {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                // Output streams are bulk data: HTTP/2's default 64 KiB windows would cap throughput.
                .initial_stream_window_size(WINDOW)
                .initial_connection_window_size(WINDOW * 4)
                .max_frame_size(1 << 20)
                .add_service(svc.clone())
                // CoreWeave's API on the same port, tokens and tenants (`cwsandbox` clients).
                .add_service(cw.clone())
        };
        let stopped = || {
            let mut stopped = stop_rx.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        // Small frames (ready, a short output, exit) must not wait on Nagle and delayed ACKs.
        let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
        let tcp = router().serve_with_incoming_shutdown(incoming, stopped());
        let server = async {
            match unix {
                Some(l) => {
                    let unix = router()
                        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(l), stopped());
                    tokio::try_join!(tcp, unix).map(|_| ())
                }
                None => tcp.await,
            }
        };
        tokio::pin!(server);
        let served = async {
            tokio::select! {
                r = &mut server => return r.map_err(Error::from),
                _ = shutdown => {
                    tracing::info!("shutting down: no new calls; draining in-flight calls for up to {drain:?}");
                    let _ = stop_tx.send(true);
                }
            }
            match tokio::time::timeout(drain, &mut server).await {
                Ok(r) => r.map_err(Error::from),
                Err(_) => {
                    tracing::warn!("in-flight calls still running after {drain:?}: cancelling them");
                    Ok(())
                }
            }
        }
        .await;
        // The socket goes with the server that made it.
        if let Some(path) = &socket {
            let _ = std::fs::remove_file(path);
        }
        served
    };
    Ok((grpc_addr, http, serve))
}

/// A listening Unix socket at `path`, only for its owner (the server's user); a socket file left by a server
/// that is gone is replaced, anything else at the path is an error.
fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && std::os::unix::net::UnixStream::connect(path).is_err()
    {
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
