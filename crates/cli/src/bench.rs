//! `hangar bench`: placeholder replaced below.
use anyhow::Result;

#[derive(clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<u8> {
    Ok(0)
}
