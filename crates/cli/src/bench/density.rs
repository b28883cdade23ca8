//! `hangar bench --density N`: N idle sandboxes at once — how long they take to make, what each costs in
//! memory (the PSS of its agent and helpers, and the kernel's slab growth), how long they take to stop and
//! remove, and what is left after.

use super::{ms, summarize};
use anyhow::{Context, Result};
use hangar::Sandbox;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A `/proc/meminfo` field, in KiB.
fn meminfo(field: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let line = text.lines().find(|l| l.starts_with(field)).with_context(|| format!("{field} in /proc/meminfo"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("a number")
}

/// The processes running `binary` (agents and their exec helpers), and their PSS in KiB.
fn processes_of(binary: &Path) -> (usize, u64) {
    let (mut count, mut pss) = (0, 0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        if std::fs::read_link(dir.join("exe")).ok().as_deref() != Some(binary) {
            continue;
        }
        count += 1;
        let rollup = std::fs::read_to_string(dir.join("smaps_rollup")).unwrap_or_default();
        let kib = rollup.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1));
        pss += kib.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    (count, pss)
}

pub(super) async fn measure(n: usize) -> Result<()> {
    let cfg = hangar::EngineConfig::from_env()?;
    let agent: PathBuf = std::fs::canonicalize(&cfg.agent_bin).context("the agent binary")?;
    let (procs_before, _) = processes_of(&agent);
    let (slab0, avail0) = (meminfo("Slab:")?, meminfo("MemAvailable:")?);
    let tables0 = meminfo("KernelStack:")? + meminfo("PageTables:")?;
    let started = Instant::now();
    let mut creates = Vec::with_capacity(n);
    let mut sandboxes = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        sandboxes.push(Sandbox::builder().create().await?);
        creates.push(t.elapsed());
    }
    let made_in = started.elapsed();
    // Let the agents settle (their spare exec helpers are prepared in the background).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (procs, pss) = processes_of(&agent);
    let (slab1, avail1) = (meminfo("Slab:")?, meminfo("MemAvailable:")?);
    let tables1 = meminfo("KernelStack:")? + meminfo("PageTables:")?;
    let per = |kib: u64| kib as f64 / n as f64;
    let created = summarize(creates);
    crate::outln!(
        "{:<24} {n} idle sandboxes in {:.1} s (create p50 {}, p99 {}); {} agent/helper processes",
        "density",
        made_in.as_secs_f64(),
        ms(created.p50),
        ms(created.p99),
        procs - procs_before
    );
    crate::outln!(
        "{:<24} {:>8.0} KiB PSS + {:>6.0} KiB slab per sandbox (MemAvailable fell {:.0} KiB per sandbox)",
        "  memory per sandbox",
        per(pss),
        per(slab1.saturating_sub(slab0)),
        per(avail0.saturating_sub(avail1))
    );
    // Kernel memory per process that is neither PSS nor slab: what an all-in figure adds to the line above.
    crate::outln!(
        "{:<24} {:>8.0} KiB kernel stacks and page tables per sandbox (besides the PSS and slab above)",
        "",
        per(tables1.saturating_sub(tables0))
    );
    let t = Instant::now();
    for sb in sandboxes {
        let id = sb.id().to_string();
        sb.delete().await.with_context(|| format!("delete {id}"))?;
    }
    let removed_in = t.elapsed();
    let (left, _) = processes_of(&agent);
    let dirs = std::fs::read_dir(cfg.state_dir.join("sandboxes"))
        .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
        .unwrap_or(0);
    crate::outln!(
        "{:<24} {:.1} s ({:.1} ms each); left: {} processes, {} sandbox directories",
        "  stop + remove all",
        removed_in.as_secs_f64(),
        removed_in.as_secs_f64() * 1e3 / n as f64,
        left.saturating_sub(procs_before),
        dirs
    );
    Ok(())
}
