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

fn line(what: &str, ours: &Summary, base_name: &str, base: &Summary) {
    println!(
        "{what:<24} p50 {:>9}  p99 {:>9}  | {base_name:<26} p50 {:>9}  p99 {:>9}  | ratio {:.1}x",
        ms(ours.p50),
        ms(ours.p99),
        ms(base.p50),
        ms(base.p99),
        ours.p50.as_secs_f64() / base.p50.as_secs_f64()
    );
}

fn fork_exec_true(n: usize) -> Result<Summary> {
    let mut s = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        Command::new("/bin/true").status().context("run /bin/true")?;
        s.push(t.elapsed());
    }
    Ok(summarize(s))
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
    let t = Instant::now();
    let mut child = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", &format!("count={mib}"), "status=none"])
        .stdout(Stdio::piped())
        .spawn()?;
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
    child.wait()?;
    anyhow::ensure!(total == mib << 20, "raw pipe moved {total} bytes");
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// MB/s streaming `mib` MiB out of a sandbox, counted in a callback and not kept.
async fn sandbox_stream(sb: &Sandbox, mib: usize) -> Result<f64> {
    let count = format!("count={mib}");
    let mut total = 0usize;
    let t = Instant::now();
    sb.exec(["dd", "if=/dev/zero", "bs=1M", &count, "status=none"])
        .on_stdout(|c| total += c.len())
        .capture(false)
        .check(true)
        .await?;
    let rate = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    anyhow::ensure!(total == mib << 20, "sandbox stream moved {total} bytes");
    Ok(rate)
}

pub async fn run(args: BenchArgs) -> Result<u8> {
    let n = args.iterations.max(1);
    println!("hangar bench: {n} samples per latency figure; baselines measured in this run\n");

    let mut creates = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let sb = Sandbox::builder().create().await?;
        creates.push(t.elapsed());
        sb.stop_with_grace(Duration::from_secs(1)).await?;
    }
    let base_true = fork_exec_true(n)?;
    line("create → running", &summarize(creates), "fork+exec /bin/true", &base_true);

    let sb = Sandbox::builder().create().await?;
    let outcome = measure_in(&sb, n, &args, &base_true).await;
    sb.stop_with_grace(Duration::from_secs(1)).await?;
    outcome?;
    Ok(0)
}

async fn measure_in(sb: &Sandbox, n: usize, args: &BenchArgs, base_true: &Summary) -> Result<()> {
    sb.exec(["true"]).await?; // warm the page cache and the connection
    let mut rtt = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        sb.exec(["true"]).check(true).await?;
        rtt.push(t.elapsed());
    }
    line("exec `true` round trip", &summarize(rtt), "fork+exec /bin/true", base_true);

    let mut first = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut at = None;
        sb.exec(["sh", "-c", "printf x"]).on_stdout(|_| at = at.or(Some(t.elapsed()))).await?;
        first.push(at.context("no output")?);
    }
    line("first byte", &summarize(first), "host sh -c 'printf x'", &raw_first_byte(n)?);

    let (mut ours, mut raw) = (vec![], vec![]);
    for _ in 0..args.stream_runs.max(1) {
        raw.push(raw_pipe(args.stream_mib)?);
        ours.push(sandbox_stream(sb, args.stream_mib).await?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ours, raw) = (median(ours), median(raw));
    println!(
        "{:<24} {:>8.0} MB/s (median of {})          | raw pipe from dd          {:>8.0} MB/s           | ratio {:.2}",
        format!("stream {} MiB", args.stream_mib),
        ours,
        args.stream_runs.max(1),
        raw,
        ours / raw
    );
    Ok(())
}
