//! `hangar bench`: what Hangar costs, next to what the kernel charges for the same work, measured in the
//! same run (the machine is shared and noisy: compare ratios, not absolute times).
//!
//! Runs through the SDK's default client, so with `HANGAR_URL` set it measures the server path.

use anyhow::{Context, Result};
use hangar::Sandbox;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `hangar bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Samples for each latency figure.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// MiB streamed per throughput run.
    #[arg(long, default_value_t = 1024)]
    stream_mib: usize,
    /// Throughput runs.
    #[arg(long, default_value_t = 3)]
    stream_runs: usize,
    /// Also measure pulling this image (vs `skopeo copy`), unpacking its layers (vs `tar -x`) and creating
    /// sandboxes from it once cached. Plain-HTTP registries must be listed in HANGAR_INSECURE_REGISTRIES.
    #[arg(long)]
    pull: Option<String>,
    /// Also measure the Python SDK: this interpreter (with `hangar-sandbox` installed) runs the same exec
    /// round trips and stream in the same sandbox, in rounds interleaved with the Rust SDK's.
    #[arg(long)]
    python: Option<String>,
    /// Also measure CoreWeave's client: this interpreter (with `cwsandbox` installed) drives a `hangar serve`
    /// the bench starts on loopback, against the Rust SDK through the same server (round trips, and
    /// `--cwsandbox-mib` MiB of text streamed), in interleaved rounds.
    #[arg(long)]
    cwsandbox: Option<String>,
    /// MiB streamed per run of the `--cwsandbox` comparison.
    #[arg(long, default_value_t = 100)]
    cwsandbox_mib: usize,
    /// Only this: N idle sandboxes at once (time, memory per sandbox, teardown, leftovers).
    #[arg(long, value_name = "N")]
    density: Option<usize>,
    /// Only this: what networking costs (create with and without egress, TCP connect and iperf3 throughput
    /// from a sandbox vs the host), against a test host in a network namespace of the bench's own.
    #[arg(long)]
    network: bool,
    /// Only this: the Kubernetes backend on the cluster of this kubeconfig next to the local backend (create,
    /// exec round trip, streaming, an idle sandbox's cost), each behind a `hangar serve` the bench starts.
    #[arg(long, value_name = "KUBECONFIG", requires = "agent_image")]
    kubernetes: Option<std::path::PathBuf>,
    /// With `--kubernetes`: the agent image, present on the cluster's nodes (`scripts/agent-image`).
    #[arg(long)]
    agent_image: Option<String>,
    /// Only this: Hangar next to the container tools installed here (crun, runc, bubblewrap), on the same work
    /// in interleaved rounds with the floors: `run` of `true`, `exec` of `true`, `--stream-mib` MiB out.
    #[arg(long)]
    peers: bool,
}

mod cwsandbox;
mod density;
mod kubernetes;
mod network;
mod peers;

/// The Python side of `--python`: round trips and a stream through `on_stdout`, in the sandbox the Rust
/// side made, reported as one JSON line.
const PYTHON_BENCH: &str = r#"
import asyncio, json, sys, time
from hangar_sandbox import Sandbox
async def main(sid, n, mib):
    sb = await Sandbox.from_id(sid)
    for _ in range(20):  # a fresh process: warm its engine's connection and caches as the Rust side's are
        await sb.exec(["true"])
    rtt = []
    for _ in range(n):
        t = time.perf_counter()
        await sb.exec(["true"], check=True)
        rtt.append(time.perf_counter() - t)
    if mib == 0:
        print(json.dumps({"rtt": rtt, "stream_mbs": 0}))
        return
    total = 0
    def count(b):
        nonlocal total
        total += len(b)
    t = time.perf_counter()
    await sb.exec(["dd", "if=/dev/zero", "bs=1M", f"count={mib}", "status=none"], on_stdout=count, capture=False, check=True)
    rate = total / (time.perf_counter() - t) / 1e6
    assert total == mib << 20, total
    print(json.dumps({"rtt": rtt, "stream_mbs": rate}))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"#;

/// Runs [`PYTHON_BENCH`]: (round-trip samples, MB/s).
fn python_round(python: &str, sandbox: &str, n: usize, mib: usize) -> Result<(Vec<Duration>, f64)> {
    let mut cmd = Command::new(python);
    // Embedded: the interpreter opens an engine of its own over the same state directory, with the same agent.
    if std::env::var_os("HANGAR_URL").is_none() {
        cmd.env("HANGAR_AGENT_BIN", hangar::EngineConfig::from_env()?.agent_bin);
    }
    cmd.args(["-c", PYTHON_BENCH, sandbox, &n.to_string(), &mib.to_string()]);
    script_report(cmd, "the Python SDK's bench")
}

/// Runs a benchmark script that prints one JSON line `{"rtt": [seconds...], "stream_mbs": rate}`.
fn script_report(mut cmd: Command, what: &str) -> Result<(Vec<Duration>, f64)> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("run {what}"))?;
    anyhow::ensure!(out.status.success(), "{what} failed: {}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{what}'s report"))?;
    let rtt = v["rtt"].as_array().context("rtt")?.iter().filter_map(|x| x.as_f64()).map(Duration::from_secs_f64);
    Ok((rtt.collect(), v["stream_mbs"].as_f64().context("stream_mbs")?))
}

/// Python SDK vs Rust SDK vs raw pipe, in the same sandbox: round trips in ten interleaved rounds (the
/// machine's speed drifts), then streams in interleaved runs.
async fn measure_python(sb: &Sandbox, python: &str, n: usize, args: &BenchArgs) -> Result<()> {
    let (mut rust_rtt, mut py_rtt) = (vec![], vec![]);
    for _ in 0..10 {
        for _ in 0..n.div_ceil(10) {
            let t = Instant::now();
            sb.exec(["true"]).check(true).await?;
            rust_rtt.push(t.elapsed());
        }
        py_rtt.extend(python_round(python, sb.id(), n.div_ceil(10), 0)?.0);
    }
    let (mut rust_mbs, mut py_mbs, mut raw_mbs) = (vec![], vec![], vec![]);
    for _ in 0..args.stream_runs.max(1) {
        rust_mbs.push(sandbox_stream(sb, args.stream_mib).await?);
        py_mbs.push(python_round(python, sb.id(), 1, args.stream_mib)?.1);
        raw_mbs.push(raw_pipe(args.stream_mib)?);
    }
    let (rust_rtt, py_rtt) = (summarize(rust_rtt), summarize(py_rtt));
    line("Python exec `true`", &py_rtt, "Rust SDK exec `true`", &rust_rtt)?;
    crate::outln!(
        "{:<24} {:>+8.3} ms per round trip (p50)",
        "Python SDK adds",
        (py_rtt.p50.as_secs_f64() - rust_rtt.p50.as_secs_f64()) * 1e3
    );
    let (py, rust, raw) = (median(py_mbs), median(rust_mbs), median(raw_mbs));
    crate::outln!(
        "{:<24} {:>8.0} MB/s (median of {})          | Rust SDK on_stdout {:>8.0} MB/s, raw pipe {:>6.0} MB/s | ratio {:.2} of Rust, {:.2} of raw",
        format!("Python on_stdout {} MiB", args.stream_mib),
        py,
        args.stream_runs.max(1),
        rust,
        raw,
        py / rust,
        py / raw
    );
    Ok(())
}

/// `hangar serve` on a free loopback port over this bench's state directory (with `args`: its backend's, say),
/// stopped (by its PID) on drop.
struct Server {
    child: std::process::Child,
    url: String,
    token: String,
}

impl Server {
    fn start(args: &[&str]) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let token = format!("bench-{:016x}", rand_u64());
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("HANGAR_SERVER_TOKENS", format!("bench={token}"))
            .env("HANGAR_AGENT_BIN", hangar::EngineConfig::from_env()?.agent_bin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start hangar serve")?;
        let server = Server { child, url: format!("http://127.0.0.1:{port}"), token };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "hangar serve did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u64::from_le_bytes(b)
}

/// p50 and p99 of a sample.
struct Summary {
    p50: Duration,
    p99: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Summary { p50: at(0.5), p99: at(0.99) }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn line(what: &str, ours: &Summary, base_name: &str, base: &Summary) -> Result<()> {
    crate::outln!(
        "{what:<24} p50 {:>9}  p99 {:>9}  | {base_name:<26} p50 {:>9}  p99 {:>9}  | ratio {:.1}x",
        ms(ours.p50),
        ms(ours.p99),
        ms(base.p50),
        ms(base.p99),
        ours.p50.as_secs_f64() / base.p50.as_secs_f64()
    );
    Ok(())
}

fn fork_exec_true(n: usize) -> Result<Summary> {
    Ok(summarize(fork_exec_samples(n)?))
}

fn fork_exec_samples(n: usize) -> Result<Vec<Duration>> {
    (0..n).map(|_| fork_exec_true_once()).collect()
}

fn fork_exec_true_once() -> Result<Duration> {
    let t = Instant::now();
    Command::new("/bin/true").status().context("run /bin/true")?;
    Ok(t.elapsed())
}

/// The quiet spell before each paced sample.
const PACE: Duration = Duration::from_millis(300);

/// `work` `n` times, each after [`PACE`] of quiet, interleaved with as many fork+execs of `/bin/true` after the
/// same quiet: a host that idles between requests (a VM's CPU in a deep idle state, cold caches) makes the
/// first work after a pause slower by itself (fork+exec here: 1.1 ms back to back, 4.1 ms after 300 ms), so
/// the paced floor is measured the same way. Returns (work, floor).
async fn paced<F, Fut>(n: usize, mut work: F) -> Result<(Summary, Summary)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Duration>>,
{
    let (mut ours, mut floor) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        tokio::time::sleep(PACE).await;
        floor.push(fork_exec_true_once()?);
        tokio::time::sleep(PACE).await;
        ours.push(work().await?);
    }
    Ok((summarize(ours), summarize(floor)))
}

/// Time from spawning `sh -c 'printf x'` on the host to reading its first byte.
fn raw_first_byte(n: usize) -> Result<Summary> {
    let mut s = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut child = Command::new("sh").args(["-c", "printf x"]).stdout(Stdio::piped()).spawn()?;
        let mut b = [0u8; 1];
        child.stdout.take().context("stdout")?.read_exact(&mut b)?;
        s.push(t.elapsed());
        child.wait()?;
    }
    Ok(summarize(s))
}

/// MB/s reading `mib` MiB from `dd` through a plain pipe.
fn raw_pipe(mib: usize) -> Result<f64> {
    let mut dd = Command::new("dd");
    dd.args(["if=/dev/zero", "bs=1M", &format!("count={mib}"), "status=none"]);
    stream_rate(dd, mib)
}

/// MB/s of reading everything `c` writes to its standard output, which must be `mib` MiB and a success.
fn stream_rate(mut c: Command, mib: usize) -> Result<f64> {
    let t = Instant::now();
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    // Same pipe size as the agent gives exec pipes, so the comparison is of the paths, not the buffers.
    let _ = nix::fcntl::fcntl(&out, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        match out.read(&mut buf)? {
            0 => break,
            n => total += n,
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success() && total == mib << 20, "{c:?}: {status}, {total} bytes");
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// MB/s of writing `mib` MiB into a new file in the state directory (then deleted), round the ring of a
/// journal with the default cap as an exec's journal goes round it: the page-cache ceiling of a journal
/// there.
fn page_cache_write(mib: usize) -> Result<f64> {
    let ring = (hangar_engine::DEFAULT_JOURNAL_CAP >> 20) as usize;
    use std::os::unix::fs::FileExt;
    let dir = hangar::EngineConfig::from_env()?.state_dir;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench-journal-ceiling");
    let file = std::fs::File::create(&path)?;
    let block = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..mib {
        file.write_all_at(&block, ((i % ring) as u64) << 20)?;
    }
    let rate = (mib << 20) as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// MB/s streaming `mib` MiB out of a sandbox, counted in a callback and not kept. The journal is dropped as
/// soon as the exec ends (retention 0), as a client that needs no re-attach would ask.
async fn sandbox_stream(sb: &Sandbox, mib: usize) -> Result<f64> {
    let count = format!("count={mib}");
    let mut total = 0usize;
    let t = Instant::now();
    sb.exec(["dd", "if=/dev/zero", "bs=1M", &count, "status=none"])
        .on_stdout(|c| total += c.len())
        .capture(false)
        .check(true)
        .retain(Duration::ZERO)
        .await?;
    let rate = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    anyhow::ensure!(total == mib << 20, "sandbox stream moved {total} bytes");
    Ok(rate)
}

pub async fn run(args: BenchArgs) -> Result<u8> {
    if let Some(n) = args.density {
        density::measure(n.max(1)).await?;
        return Ok(0);
    }
    let n = args.iterations.max(1);
    if args.network {
        network::measure(n.min(20)).await?;
        return Ok(0);
    }
    if args.peers {
        peers::measure(n, args.stream_mib, args.stream_runs.max(1)).await?;
        return Ok(0);
    }
    if let (Some(kubeconfig), Some(agent_image)) = (&args.kubernetes, &args.agent_image) {
        let cluster = kubernetes::Cluster { kubeconfig, agent_image };
        kubernetes::measure(cluster, n, args.stream_mib, args.stream_runs.max(1)).await?;
        return Ok(0);
    }
    crate::outln!("hangar bench: {n} samples per latency figure; baselines measured in this run\n");

    let base_true = fork_exec_true(n)?;
    let create = || async {
        let t = Instant::now();
        let sb = Sandbox::builder().create().await?;
        let took = t.elapsed();
        sb.stop_with_grace(Duration::from_secs(1)).await?;
        anyhow::Ok(took)
    };
    let mut creates = Vec::with_capacity(n);
    for _ in 0..n {
        creates.push(create().await?);
    }
    line("create → running", &summarize(creates), "fork+exec /bin/true", &base_true)?;
    // Isolated: on cgroup v1 a process's first cgroup migration after a quiet spell waits for an RCU grace
    // period, which back-to-back runs do not show.
    let (ours, floor) = paced(n / 5 + 1, create).await?;
    line("create, 1 per 300 ms", &ours, "fork+exec, 1 per 300 ms", &floor)?;

    let sb = Sandbox::builder().create().await?;
    let mut outcome = measure_teardown(args.stream_runs.max(3)).await;
    if outcome.is_ok() {
        outcome = measure_in(&sb, n, &args).await;
    }
    if let (Ok(()), Some(python)) = (&outcome, &args.python) {
        outcome = measure_python(&sb, python, n, &args).await;
    }
    sb.stop_with_grace(Duration::from_secs(1)).await?;
    outcome?;
    if let Some(python) = &args.cwsandbox {
        cwsandbox::measure(python, n, args.cwsandbox_mib, args.stream_runs.max(1)).await?;
    }
    if let Some(image) = &args.pull {
        measure_images(image, n).await?;
    }
    Ok(0)
}

/// Teardown of a sandbox that wrote 10 MB, on a quiet host and while another process has 1 GiB of dirty page
/// cache on the same filesystem (the state directory's), interleaved: a teardown that syncs the filesystem
/// below waits for all of it.
async fn measure_teardown(rounds: usize) -> Result<()> {
    let dirty_file = hangar::EngineConfig::from_env()?.state_dir.join("bench-unrelated-dirty-data");
    let (mut clean, mut dirty) = (vec![], vec![]);
    for _ in 0..rounds {
        for with_dirty in [false, true] {
            let sb = Sandbox::builder().create().await?;
            sb.exec(["sh", "-c", "head -c 10000000 /dev/zero > /tmp/written"]).check(true).await?;
            if with_dirty {
                std::fs::create_dir_all(dirty_file.parent().context("state dir")?)?;
                std::fs::write(&dirty_file, vec![0u8; 1 << 30])?; // no fsync: it stays dirty
            }
            let t = Instant::now();
            sb.delete().await?;
            let took = t.elapsed();
            if with_dirty {
                std::fs::remove_file(&dirty_file)?;
                dirty.push(took);
            } else {
                clean.push(took);
            }
        }
    }
    line("remove, 1 GiB dirty host", &summarize(dirty), "remove, quiet host", &summarize(clean))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Pull (fresh store each run) vs skopeo, unpack vs tar, and create→running from the cached image.
async fn measure_images(image: &str, n: usize) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("hangar-bench-images-{}", std::process::id()));
    let registries = hangar_images::RegistryConfig::load(None);
    let (mut ours, mut skopeo) = (vec![], vec![]);
    let mut last_store = None;
    for run in 0..3 {
        let dir = scratch.join(format!("store-{run}"));
        let store = hangar_images::ImageStore::new(&dir);
        let t = Instant::now();
        let (store, image_owned, reg) = (store.clone(), image.to_string(), registries.clone());
        tokio::task::spawn_blocking(move || store.pull(&image_owned, &reg, |_, _, _| {})).await??;
        ours.push(t.elapsed().as_secs_f64());
        let oci = scratch.join(format!("skopeo-{run}"));
        let t = Instant::now();
        let status = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{image}"),
                &format!("oci:{}:x", oci.display()),
            ])
            .status()
            .context("run skopeo (apt-get install skopeo)")?;
        anyhow::ensure!(status.success(), "skopeo copy {image} failed");
        skopeo.push(t.elapsed().as_secs_f64());
        last_store = Some(dir);
    }
    let (ours, skopeo) = (median(ours), median(skopeo));
    crate::outln!(
        "{:<24} {:>8.3} s (median of 3)            | skopeo copy to an OCI dir  {:>8.3} s             | ratio {:.2}",
        "pull (store + unpack)",
        ours,
        skopeo,
        ours / skopeo
    );

    let blobs = last_store.context("no pull")?.join("blobs/sha256");
    let (mut ours_s, mut tar_s, mut bytes) = (0.0, 0.0, 0u64);
    for blob in std::fs::read_dir(&blobs)?.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')) {
        let path = blob.path();
        let head = std::fs::read(&path).map(|b| b.len() as u64)?;
        let is_layer = Command::new("tar")
            .args(["-tf", path.to_str().unwrap_or_default()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if !is_layer {
            continue; // the config blob
        }
        bytes += head;
        let a = scratch.join(format!("ours-{}", blob.file_name().to_string_lossy()));
        std::fs::create_dir_all(&a)?;
        let t = Instant::now();
        hangar_images::unpack_layer(std::fs::File::open(&path)?, &a, "bench")?;
        ours_s += t.elapsed().as_secs_f64();
        let b = scratch.join(format!("tar-{}", blob.file_name().to_string_lossy()));
        std::fs::create_dir_all(&b)?;
        let t = Instant::now();
        Command::new("tar")
            .args(["-xf", path.to_str().unwrap_or_default(), "-C", b.to_str().unwrap_or_default()])
            .status()?;
        tar_s += t.elapsed().as_secs_f64();
    }
    crate::outln!(
        "{:<24} {:>8.0} MB/s of layer blobs        | tar -x of the same blobs   {:>8.0} MB/s          | ratio {:.2}",
        "unpack",
        bytes as f64 / ours_s / 1e6,
        bytes as f64 / tar_s / 1e6,
        tar_s / ours_s
    );
    let _ = std::fs::remove_dir_all(&scratch);

    // The default engine pulls the image on first use; after that, creation reads only the cached layers.
    Sandbox::builder()
        .image(image)
        .command("sleep")
        .args(["infinity"])
        .create()
        .await?
        .stop_with_grace(Duration::from_secs(1))
        .await?;
    let (mut cached, mut builtin) = (vec![], vec![]);
    for _ in 0..n {
        let t = Instant::now();
        let sb = Sandbox::builder().image(image).command("sleep").args(["infinity"]).create().await?;
        cached.push(t.elapsed());
        sb.stop_with_grace(Duration::from_secs(1)).await?;
        let t = Instant::now();
        let sb = Sandbox::builder().create().await?;
        builtin.push(t.elapsed());
        sb.stop_with_grace(Duration::from_secs(1)).await?;
    }
    line("create from cached image", &summarize(cached), "create from built-in image", &summarize(builtin))?;
    Ok(())
}

async fn measure_in(sb: &Sandbox, n: usize, args: &BenchArgs) -> Result<()> {
    sb.exec(["true"]).await?; // warm the page cache and the connection

    // Interleaved with its floor in ten rounds: this machine's fork+exec alone swings by half between minutes,
    // which a floor measured before would put into the ratio. (Rounds, not alternate samples: each taken
    // right after the other's ran 0.3-0.5 ms slower, both of them, measured.)
    let (mut rtt, mut floor) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for round in 0..10 {
        let samples = (n * (round + 1)) / 10 - (n * round) / 10;
        floor.extend(fork_exec_samples(samples)?);
        for _ in 0..samples {
            let t = Instant::now();
            sb.exec(["true"]).check(true).await?;
            rtt.push(t.elapsed());
        }
    }
    line("exec `true` round trip", &summarize(rtt), "fork+exec /bin/true", &summarize(floor))?;

    // One at a time with pauses, as an agent or CI step issues them: kernel work that back-to-back calls
    // amortize (cgroup migrations wait for an RCU grace period when none is under way) shows here.
    let (ours, floor) = paced(n / 5 + 1, || async {
        let t = Instant::now();
        sb.exec(["true"]).check(true).await?;
        anyhow::Ok(t.elapsed())
    })
    .await?;
    line("exec `true`, 1 per 300 ms", &ours, "fork+exec, 1 per 300 ms", &floor)?;

    let mut first = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut at = None;
        sb.exec(["sh", "-c", "printf x"]).on_stdout(|_| at = at.or(Some(t.elapsed()))).await?;
        first.push(at.context("no output")?);
    }
    line("first byte", &summarize(first), "host sh -c 'printf x'", &raw_first_byte(n)?)?;

    let (mut ours, mut raw, mut ceiling) = (vec![], vec![], vec![]);
    for _ in 0..args.stream_runs.max(1) {
        raw.push(raw_pipe(args.stream_mib)?);
        ceiling.push(page_cache_write(args.stream_mib)?);
        ours.push(sandbox_stream(sb, args.stream_mib).await?);
    }
    let (ours, raw, ceiling) = (median(ours), median(raw), median(ceiling));
    crate::outln!(
        "{:<24} {:>8.0} MB/s (median of {})          | raw pipe from dd          {:>8.0} MB/s           | ratio {:.2}",
        format!("stream {} MiB", args.stream_mib),
        ours,
        args.stream_runs.max(1),
        raw,
        ours / raw
    );
    crate::outln!(
        "{:<24} {:>8.0} MB/s                          | journaled stream above    {:>8.0} MB/s           | ratio {:.2}",
        "journal write ceiling",
        ceiling,
        ours,
        ours / ceiling
    );

    // Re-attach: a finished exec's 100 MiB, replayed from its journal to a client that attaches late.
    let (mut ours, mut raw) = (vec![], vec![]);
    for _ in 0..args.stream_runs.max(1) {
        raw.push(100.0 * 1.048576 / raw_pipe(100)?);
        ours.push(catch_up(sb, 100).await?);
    }
    let (ours, raw) = (median(ours), median(raw));
    crate::outln!(
        "{:<24} {:>8.1} ms (median of {})            | raw pipe of 100 MiB       {:>8.1} ms             | ratio {:.2}",
        "reattach + catch up 100 MiB",
        ours * 1e3,
        args.stream_runs.max(1),
        raw * 1e3,
        ours / raw
    );
    Ok(())
}

/// Seconds from attaching to a finished exec to having received all of its `mib` MiB of output.
async fn catch_up(sb: &Sandbox, mib: usize) -> Result<f64> {
    let count = format!("count={mib}");
    let h = sb.exec(["dd", "if=/dev/zero", "bs=1M", &count, "status=none"]).start().await?;
    let id = h.id().to_string();
    drop(h); // detach: the command finishes into its journal
    while sb.execs().await?.iter().any(|x| x.id == id && x.end.is_none()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut total = 0usize;
    let t = Instant::now();
    sb.attach(&id).on_stdout(|c| total += c.len()).capture(false).check(true).await?;
    let took = t.elapsed().as_secs_f64();
    anyhow::ensure!(total == mib << 20, "catch-up moved {total} bytes");
    Ok(took)
}
