//! `hangar serve`: the gRPC server over an engine, with sandboxes on this machine or in a Kubernetes cluster.

use crate::seconds;
use anyhow::{bail, Result};

/// Where the Kubernetes backend puts sandboxes (with `--backend kubernetes`).
#[derive(clap::Args)]
pub(crate) struct KubernetesArgs {
    /// The cluster's kubeconfig (default: the Pod's service account in a cluster, else $KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The namespace sandboxes' Pods live in.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The image Pods get the agent from (`scripts/agent-image` makes it).
    #[arg(long, env = "HANGAR_AGENT_IMAGE")]
    agent_image: Option<String>,
    /// The image of sandboxes that ask for the built-in one.
    #[arg(long, default_value = "python:3.11")]
    default_image: String,
    /// The Pods' imagePullPolicy (Always, IfNotPresent, Never); the cluster's default unless set.
    #[arg(long)]
    image_pull_policy: Option<String>,
}

pub(crate) async fn serve(
    listen: hangar_server::Listen,
    token_file: Option<std::path::PathBuf>,
    drain: f64,
    kubernetes: Option<KubernetesArgs>,
) -> Result<u8> {
    let tokens = match (token_file, std::env::var("HANGAR_SERVER_TOKENS")) {
        (Some(path), _) => hangar_server::Tokens::from_file(&path)?,
        (None, Ok(list)) => hangar_server::Tokens::parse(&list)?,
        (None, Err(_)) => bail!("no tokens: pass --token-file FILE (TENANT=TOKEN lines) or set HANGAR_SERVER_TOKENS"),
    };
    let drain = seconds(drain, "--drain")?;
    let engine = match kubernetes {
        None => hangar_engine::Engine::open(hangar_engine::EngineConfig::from_env()?)?,
        Some(k) => {
            let Some(agent_image) = k.agent_image else { bail!("--backend kubernetes needs --agent-image IMAGE") };
            let kube = hangar_engine::KubernetesConfig {
                kubeconfig: k.kubeconfig,
                namespace: k.namespace,
                agent_image,
                default_image: k.default_image,
                image_pull_policy: k.image_pull_policy,
            };
            hangar_engine::Engine::kubernetes(hangar_engine::EngineConfig::from_env()?, kube).await?
        }
    };
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
    let socket = listen.socket.clone();
    let (grpc, http, serving) = hangar_server::bind(engine, tokens, listen, drain, shutdown).await?;
    eprintln!("hangar: listening on {grpc}");
    if let Some(path) = &socket {
        eprintln!("hangar: and on unix:{}", path.display());
    }
    if let Some(http) = http {
        eprintln!("hangar: health and metrics on http://{http}/healthz and /metrics");
    }
    serving.await?;
    eprintln!("hangar: stopped");
    Ok(0)
}
