//! `hangar bench --cwsandbox PYTHON`: CoreWeave's `cwsandbox` client against `hangar serve`
//! (`coreweave.sandbox.v1`) vs the Rust SDK against the same server (`hangar.v1`), in one sandbox, rounds
//! interleaved: exec round trips, and a text stream read line by line as the client delivers it.

use super::{line, median, script_report, summarize, Server};
use anyhow::Result;
use hangar::Sandbox;
use std::process::Command;
use std::time::{Duration, Instant};

/// The client's side: round trips and a stream through `Process.stdout`, reported as one JSON line.
const CW_BENCH: &str = r#"
import json, sys, time
from cwsandbox import Sandbox
sid, n, mib, cmd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sb = Sandbox.from_id(sid).result()
for _ in range(10):  # a fresh process: warm its channel as the Rust side's is
    sb.exec(["true"]).result()
rtt = []
for _ in range(n):
    t = time.perf_counter()
    sb.exec(["true"], check=True).result()
    rtt.append(time.perf_counter() - t)
rate = 0
if mib:
    t = time.perf_counter()
    p = sb.exec(["sh", "-c", cmd])
    total = sum(len(chunk) for chunk in p.stdout)
    assert p.result().returncode == 0 and total == mib << 20, total
    rate = total / (time.perf_counter() - t) / 1e6
print(json.dumps({"rtt": rtt, "stream_mbs": rate}))
"#;

/// The text both sides stream: lines of 64 bytes, `mib` MiB in all.
fn text_command(mib: usize) -> String {
    format!("yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_- | head -c {}", mib << 20)
}

fn cw_round(python: &str, server: &Server, sandbox: &str, n: usize, mib: usize) -> Result<(Vec<Duration>, f64)> {
    let mut cmd = Command::new(python);
    cmd.args(["-c", CW_BENCH, sandbox, &n.to_string(), &mib.to_string(), &text_command(mib)])
        .env("CWSANDBOX_BASE_URL", &server.url)
        .env("CWSANDBOX_API_KEY", &server.token)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    script_report(cmd, "the cwsandbox bench")
}

async fn rust_stream(sb: &Sandbox, mib: usize) -> Result<f64> {
    let mut total = 0usize;
    let t = Instant::now();
    sb.exec(["sh", "-c", &text_command(mib)]).on_stdout(|c| total += c.len()).capture(false).check(true).await?;
    anyhow::ensure!(total == mib << 20, "the Rust SDK's stream moved {total} bytes");
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// Ten interleaved rounds of round trips, then `runs` interleaved streams of `mib` MiB.
pub(super) async fn measure(python: &str, n: usize, mib: usize, runs: usize) -> Result<()> {
    let server = Server::start(&[])?;
    let client = hangar::Client::connect(&server.url, Some(&server.token))?;
    let sb = Sandbox::builder().client(&client).create().await?;
    let measured = async {
        for _ in 0..10 {
            sb.exec(["true"]).await?;
        }
        let (mut rust_rtt, mut cw_rtt) = (vec![], vec![]);
        for _ in 0..10 {
            for _ in 0..n.div_ceil(10) {
                let t = Instant::now();
                sb.exec(["true"]).check(true).await?;
                rust_rtt.push(t.elapsed());
            }
            cw_rtt.extend(cw_round(python, &server, sb.id(), n.div_ceil(10), 0)?.0);
        }
        let (mut rust_mbs, mut cw_mbs) = (vec![], vec![]);
        for _ in 0..runs {
            rust_mbs.push(rust_stream(&sb, mib).await?);
            cw_mbs.push(cw_round(python, &server, sb.id(), 1, mib)?.1);
        }
        line("cwsandbox exec `true`", &summarize(cw_rtt), "Rust SDK, same server", &summarize(rust_rtt))?;
        let (cw, rust) = (median(cw_mbs), median(rust_mbs));
        crate::outln!(
            "{:<24} {:>8.0} MB/s (median of {runs})          | Rust SDK via hangar.v1 {:>8.0} MB/s | ratio {:.2}",
            format!("cwsandbox {mib} MiB text"),
            cw,
            rust,
            cw / rust
        );
        anyhow::Ok(())
    }
    .await;
    sb.delete().await?;
    measured
}
