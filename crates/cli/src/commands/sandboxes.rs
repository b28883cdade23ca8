//! Commands about sandboxes themselves: `create`, `ls`, `stop`, `rm`.

use crate::{json_lines, outln, SandboxArgs};
use anyhow::{anyhow, Result};
use hangar::{Client, Sandbox};
use std::time::Duration;

/// `hangar create`: prints the new sandbox's id.
pub(crate) async fn create(
    sandbox: SandboxArgs,
    tags: Vec<(String, String)>,
    image_command: bool,
    command: Vec<String>,
) -> Result<u8> {
    let mut b = sandbox.builder()?;
    if image_command {
        b = b.image_command();
    }
    for (k, v) in tags {
        b = b.tag(k, v);
    }
    if let Some((program, args)) = command.split_first() {
        b = b.command(program.clone()).args(args.iter().cloned());
    }
    outln!("{}", b.create().await?.id());
    Ok(0)
}

/// `hangar ls`: every sandbox.
pub(crate) async fn ls(json: bool) -> Result<u8> {
    let all = Client::from_env()?.list().await?;
    if json {
        return json_lines(&all);
    }
    use std::io::Write as _;
    let mut out = crate::listing();
    let header = ["ID", "STATE", "IMAGE", "EXIT", "ENDED BY"];
    writeln!(out, "{:<20} {:<11} {:<8} {:<6} {:<18} COMMAND", header[0], header[1], header[2], header[3], header[4])
        .map_err(crate::stdout_error)?;
    for i in all {
        let exit = match (i.exit_code, i.exit_signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        let ended = i.end_reason.as_deref().unwrap_or("-");
        // No main command: the sandbox idles.
        let command = if i.command.is_empty() { "-".to_string() } else { i.command.join(" ") };
        writeln!(out, "{:<20} {:<11} {:<8} {:<6} {:<18} {command}", i.id, i.state, i.image, exit, ended)
            .map_err(crate::stdout_error)?;
    }
    out.flush().map_err(crate::stdout_error)?;
    Ok(0)
}

/// `hangar network`: prints the sandbox's policy (after replacing it, when one is given), one rule per line.
pub(crate) async fn network(id: String, policy: Option<hangar::NetworkPolicy>) -> Result<u8> {
    let sb = Sandbox::from_id(&id).await?;
    let info = match policy {
        Some(p) => sb.set_network(p).await?,
        None => sb.info().await?,
    };
    let p = info.network;
    outln!("mode {}", p.mode.as_str());
    for t in &p.allow {
        outln!("allow {t}");
    }
    for t in &p.deny {
        outln!("deny {t}");
    }
    Ok(0)
}

/// `hangar port`: prints where the port is published; through a server, keeps the tunnel open until SIGINT
/// or SIGTERM.
pub(crate) async fn port(id: String, port: u16) -> Result<u8> {
    let client = Client::from_env()?;
    let address = Sandbox::from_id_with(&client, &id).await?.publish_port(port).await?;
    outln!("{address}");
    if client.is_remote() {
        eprintln!("hangar: forwarding {address} to port {port} of {id} through the server; Ctrl-C to stop");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    Ok(0)
}

/// `hangar stop`: SIGTERM, then SIGKILL after the grace.
pub(crate) async fn stop(ids: Vec<String>, grace: f64) -> Result<u8> {
    let grace = Duration::try_from_secs_f64(grace).map_err(|_| anyhow!("--grace {grace}: not a number of seconds"))?;
    for id in ids {
        let info = Sandbox::from_id(&id).await?.stop_with_grace(grace).await?;
        outln!("{id} {}", info.state);
    }
    Ok(0)
}

/// `hangar rm`: removes sandboxes.
pub(crate) async fn rm(ids: Vec<String>) -> Result<u8> {
    for id in ids {
        Sandbox::from_id(&id).await?.delete().await?;
        outln!("{id}");
    }
    Ok(0)
}
