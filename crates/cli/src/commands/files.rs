//! `hangar cp`: files in and out of sandboxes, streamed.

use anyhow::{bail, Context, Result};
use hangar::Sandbox;

/// `ID:PATH` → (id, path); anything else is a local path.
fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.starts_with("sb-") && !path.is_empty()).then_some((id, path))
}

pub(crate) async fn copy(src: &str, dst: &str) -> Result<u8> {
    match (remote(src), remote(dst)) {
        // Both ways streamed in chunks: memory stays small whatever the file's size.
        (Some((id, path)), None) => {
            let sb = Sandbox::from_id(id).await?;
            let mut out = tokio::fs::File::create(dst).await.with_context(|| format!("create {dst}"))?;
            if let Err(e) = sb.read_file_to(path, &mut out).await {
                // No partial file is left to be mistaken for the whole (only a regular file: `dst` may be
                // /dev/null or a FIFO).
                if tokio::fs::metadata(dst).await.is_ok_and(|m| m.is_file()) {
                    let _ = tokio::fs::remove_file(dst).await;
                }
                return Err(e.into());
            }
        }
        (None, Some((id, path))) => {
            let mut file = tokio::fs::File::open(src).await.with_context(|| format!("open {src}"))?;
            let meta = file.metadata().await.with_context(|| format!("stat {src}"))?;
            if !meta.is_file() {
                bail!("{src} is not a regular file");
            }
            Sandbox::from_id(id).await?.write_file_from(path, &mut file, meta.len()).await?;
        }
        (Some(_), Some(_)) => {
            bail!("copying between two sandboxes is not supported: copy through a local file")
        }
        (None, None) => bail!("one of {src:?} and {dst:?} must be SANDBOX_ID:PATH"),
    }
    Ok(0)
}
