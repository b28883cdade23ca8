//! `hangar images`: the image store.

use crate::{outln, ImagesCmd};
use anyhow::Result;

pub(crate) async fn images(cmd: ImagesCmd) -> Result<u8> {
    let engine = hangar_engine::Engine::open(hangar_engine::EngineConfig::from_env()?)?;
    if let ImagesCmd::Prune = cmd {
        let (layers, blobs) = engine.prune_images().await?;
        outln!("removed {layers} layers and {blobs} blobs");
        return Ok(0);
    }
    let store = engine.images().clone();
    tokio::task::spawn_blocking(move || -> Result<u8> {
        match cmd {
            ImagesCmd::Import { archive } => {
                for rec in store.import(&archive)? {
                    outln!("{} {}", rec.reference, rec.id);
                }
            }
            ImagesCmd::Ls => {
                outln!("{:<50} {:<20} {:>6}  COMMAND", "REFERENCE", "ID", "LAYERS");
                for rec in store.list()? {
                    let cmd: Vec<_> = rec.config.entrypoint.iter().chain(&rec.config.cmd).cloned().collect();
                    outln!(
                        "{:<50} {:<20} {:>6}  {}",
                        rec.reference,
                        &rec.id[..rec.id.len().min(19)],
                        rec.layers.len(),
                        cmd.join(" ")
                    );
                }
            }
            ImagesCmd::Prune => unreachable!("handled above"),
            ImagesCmd::Pull { reference } => {
                let registries = store.registries().clone();
                let mut last = String::new();
                let rec = store.pull(&reference, &registries, |digest, n, total| {
                    let short = &digest[digest.len().min(7)..digest.len().min(19)];
                    // One line per layer as it completes, so the output stays readable in logs too.
                    if n == total && last != digest {
                        eprintln!("{short}: {:.1} MB done", total as f64 / 1e6);
                        last = digest.to_string();
                    }
                })?;
                outln!("{} {}", rec.reference, rec.id);
            }
            ImagesCmd::Rm { references } => {
                for r in references {
                    store.remove(&r)?;
                    outln!("{r}");
                }
            }
        }
        Ok(0)
    })
    .await?
}
