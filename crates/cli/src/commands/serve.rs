//! `hangar serve`: the gRPC server over an engine on this machine.

use crate::seconds;
use anyhow::{bail, Result};

pub(crate) async fn serve(
    listen: std::net::SocketAddr,
    http_listen: Option<std::net::SocketAddr>,
    token_file: Option<std::path::PathBuf>,
    drain: f64,
) -> Result<u8> {
    let tokens = match (token_file, std::env::var("HANGAR_SERVER_TOKENS")) {
        (Some(path), _) => hangar_server::Tokens::from_file(&path)?,
        (None, Ok(list)) => hangar_server::Tokens::parse(&list)?,
        (None, Err(_)) => bail!("no tokens: pass --token-file FILE (TENANT=TOKEN lines) or set HANGAR_SERVER_TOKENS"),
    };
    let drain = seconds(drain, "--drain")?;
    let engine = hangar_engine::Engine::open(hangar_engine::EngineConfig::from_env()?)?;
    // The rules of sandboxes that ended while no engine watched (a crash) go before anything is served.
    engine.reconcile_networks().await;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let (grpc, http, serving) = hangar_server::bind(engine, tokens, listen, http_listen, drain, shutdown).await?;
    eprintln!("hangar: listening on {grpc}");
    if let Some(http) = http {
        eprintln!("hangar: health and metrics on http://{http}/healthz and /metrics");
    }
    serving.await?;
    eprintln!("hangar: stopped");
    Ok(0)
}
