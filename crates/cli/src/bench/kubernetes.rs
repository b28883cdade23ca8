//! `hangar bench --kubernetes KUBECONFIG --agent-image IMAGE`: the Kubernetes backend next to the local one,
//! each behind a `hangar serve` on loopback that the bench starts, in interleaved rounds: create → running,
//! exec round trip, streaming throughput; then what one idle sandbox costs the cluster (its Pod object, the
//! memory of its Pod's cgroup, its runtime shim).

use super::{line, median, summarize, Server};
use anyhow::{Context, Result};
use hangar::Sandbox;
use std::time::{Duration, Instant};

/// Where the cluster is: a kubeconfig and the agent image imported into it (the test cluster has no registry,
/// so its images are never pulled).
pub(super) struct Cluster<'a> {
    pub(super) kubeconfig: &'a std::path::Path,
    pub(super) agent_image: &'a str,
}

pub(super) async fn measure(cluster: Cluster<'_>, n: usize, mib: usize, runs: usize) -> Result<()> {
    let kubeconfig = cluster.kubeconfig.to_str().context("the kubeconfig's path is not UTF-8")?;
    let kube_args = [
        "--backend",
        "kubernetes",
        "--kubeconfig",
        kubeconfig,
        "--agent-image",
        cluster.agent_image,
        "--image-pull-policy",
        "Never",
    ];
    let (local, kube) = (Server::start(&[])?, Server::start(&kube_args)?);
    let (lc, kc) = (
        hangar::Client::connect(&local.url, Some(&local.token))?,
        hangar::Client::connect(&kube.url, Some(&kube.token))?,
    );
    crate::outln!("hangar bench --kubernetes: both backends behind `hangar serve` on loopback, interleaved\n");

    let creates = n.min(10);
    let (mut lcreate, mut kcreate, mut lrm, mut krm) = (vec![], vec![], vec![], vec![]);
    for _ in 0..creates {
        for (client, create, rm) in [(&lc, &mut lcreate, &mut lrm), (&kc, &mut kcreate, &mut krm)] {
            let t = Instant::now();
            let sb = Sandbox::builder().client(client).create().await?;
            create.push(t.elapsed());
            let t = Instant::now();
            sb.delete().await?;
            rm.push(t.elapsed());
        }
    }
    line("Kubernetes create", &summarize(kcreate), "local create", &summarize(lcreate))?;
    line("Kubernetes remove", &summarize(krm), "local remove", &summarize(lrm))?;

    let (lsb, ksb) = (Sandbox::builder().client(&lc).create().await?, Sandbox::builder().client(&kc).create().await?);
    let measured = async {
        for sb in [&lsb, &ksb] {
            for _ in 0..5 {
                sb.exec(["true"]).check(true).await?;
            }
        }
        let (mut lrtt, mut krtt) = (vec![], vec![]);
        for _ in 0..10 {
            for (sb, rtt) in [(&lsb, &mut lrtt), (&ksb, &mut krtt)] {
                for _ in 0..n.div_ceil(10) {
                    let t = Instant::now();
                    sb.exec(["true"]).check(true).await?;
                    rtt.push(t.elapsed());
                }
            }
        }
        line("Kubernetes exec `true`", &summarize(krtt), "local exec `true`", &summarize(lrtt))?;
        let (mut lmbs, mut kmbs) = (vec![], vec![]);
        for _ in 0..runs {
            lmbs.push(super::sandbox_stream(&lsb, mib).await?);
            kmbs.push(super::sandbox_stream(&ksb, mib).await?);
        }
        let (l, k) = (median(lmbs), median(kmbs));
        crate::outln!(
            "{:<24} {:>8.0} MB/s (median of {runs})          | local {:>8.0} MB/s | ratio {:.2}",
            format!("Kubernetes {mib} MiB out"),
            k,
            l,
            k / l
        );
        idle_cost(cluster.kubeconfig, ksb.id()).await
    }
    .await;
    lsb.delete().await?;
    ksb.delete().await?;
    measured
}

/// What an idle sandbox's Pod costs: its object (as the API server stores it, in JSON), the memory its
/// cgroup holds (the agent, the pause container), and the runtime shim that watches it.
async fn idle_cost(kubeconfig: &std::path::Path, id: &str) -> Result<()> {
    // A second idle, so what is measured has settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let file = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::default_namespaced(kube::Client::try_from(config)?);
    let pod = pods.get(id).await?;
    let object = serde_json::to_vec(&pod)?.len();
    let uid = pod.metadata.uid.context("the Pod has no uid")?;
    let cgroup = find_dir(std::path::Path::new("/sys/fs/cgroup/memory"), &format!("pod{uid}"), 6);
    let (memory, containers) = match &cgroup {
        Some(dir) => {
            let usage = std::fs::read_to_string(dir.join("memory.usage_in_bytes")).unwrap_or_default();
            let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            // Without the page cache (the image's files, shared with every Pod of the image).
            let cache = stat.lines().find_map(|l| l.strip_prefix("total_cache ")?.trim().parse::<u64>().ok());
            let ids: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            (usage.trim().parse::<u64>().ok().zip(cache).map(|(u, c)| u.saturating_sub(c)), ids)
        }
        None => (None, vec![]),
    };
    let shim = shim_pss(&containers);
    let kib = |b: Option<u64>| b.map_or("unknown".into(), |b| format!("{} KiB", b / 1024));
    crate::outln!(
        "{:<24} Pod object {} bytes (1 API object); Pod cgroup {} (agent + pause, no page cache); runtime shim PSS {}",
        "idle sandbox on cluster",
        object,
        kib(memory),
        kib(shim)
    );
    Ok(())
}

/// The first directory named `name` under `root`, at most `depth` levels down.
fn find_dir(root: &std::path::Path, name: &str, depth: usize) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == name {
            return Some(path);
        }
        if depth > 0 {
            if let Some(found) = find_dir(&path, name, depth - 1) {
                return Some(found);
            }
        }
    }
    None
}

/// The proportional set size of the containerd shim whose `-id` is one of the Pod's containers (the shim of a
/// Pod is started for its sandbox, the pause container).
fn shim_pss(containers: &[String]) -> Option<u64> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        let id = args.windows(2).find(|w| w[0] == b"-id").map(|w| String::from_utf8_lossy(w[1]).into_owned());
        if is_shim && id.is_some_and(|id| containers.contains(&id)) {
            let rollup = std::fs::read_to_string(entry.path().join("smaps_rollup")).ok()?;
            return rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                .map(|k| k * 1024);
        }
    }
    None
}
