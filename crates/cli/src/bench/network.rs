//! `hangar bench --network`: what networking costs. A test host of the bench's own (a network namespace
//! linked to this host by a veth pair, with no route anywhere else) runs an iperf3 server and a TCP accept
//! loop; the bench measures, interleaved: create → running with `none` vs `egress`, TCP connection setup
//! and iperf3 throughput from a sandbox vs from the host itself to that test host.

use super::{ms, summarize};
use anyhow::{bail, Context, Result};
use hangar::{NetworkPolicy, Sandbox};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEST_HOST: &str = "10.251.0.2";

/// The test host: its namespace, its link, its servers; all removed on drop, by name and by pid.
struct TestHost {
    ns: String,
    link: String,
    servers: Vec<Child>,
}

impl TestHost {
    fn start() -> Result<TestHost> {
        let pid = std::process::id();
        let mut t = TestHost { ns: format!("hgbench{pid}"), link: format!("hb{pid}"), servers: vec![] };
        let ip = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output().context("ip")?;
            if !out.status.success() {
                bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        ip(&["netns", "add", &t.ns])?;
        ip(&["link", "add", &t.link, "type", "veth", "peer", "name", "eth0", "netns", &t.ns])?;
        ip(&["addr", "add", "10.251.0.1/30", "dev", &t.link])?;
        ip(&["link", "set", &t.link, "up"])?;
        ip(&["-n", &t.ns, "addr", "add", &format!("{TEST_HOST}/30"), "dev", "eth0"])?;
        ip(&["-n", &t.ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &t.ns, "link", "set", "lo", "up"])?;
        let accept = format!(
            "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{TEST_HOST}', 5300))\ns.listen(1024)\nwhile True:\n    s.accept()[0].close()\n"
        );
        for argv in [vec!["iperf3", "-s", "-B", TEST_HOST, "-p", "5201"], vec!["python3", "-c", &accept]] {
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", t.ns))
                .args(&argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("{} in the test host", argv[0]))?;
            t.servers.push(child);
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(t)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.link]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// 200 TCP connects to the test host, one after another: the median, in microseconds.
const CONNECTS: &str = "import socket, time\nts = []\nfor _ in range(200):\n    t = time.perf_counter()\n    \
    socket.create_connection(('10.251.0.2', 5300)).close()\n    ts.append(time.perf_counter() - t)\n\
    ts.sort()\nprint(ts[100] * 1e6)\n";

fn number(out: &[u8], what: &str) -> Result<f64> {
    String::from_utf8_lossy(out).trim().parse().with_context(|| format!("{what}: {}", String::from_utf8_lossy(out)))
}

/// iperf3's received bits per second, from its JSON.
fn iperf_bps(json: &[u8]) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_slice(json).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3's received bits per second")
}

pub(super) async fn measure(n: usize) -> Result<()> {
    let host = TestHost::start()?;
    let policy = NetworkPolicy::egress().allow(&format!("{TEST_HOST}/32"));
    crate::outln!("hangar bench --network: test host {TEST_HOST} in namespace {}, {n} rounds\n", host.ns);
    let (mut none, mut egress) = (vec![], vec![]);
    for _ in 0..n {
        for (with, into) in [(None, &mut none), (Some(policy.clone()), &mut egress)] {
            let mut b = Sandbox::builder().network(with.unwrap_or_default());
            b = b.command("sleep").args(["infinity"]);
            let t = Instant::now();
            let sb = b.create().await?;
            into.push(t.elapsed());
            sb.delete().await?;
        }
    }
    let (none, egress) = (summarize(none), summarize(egress));
    crate::outln!(
        "create → running, egress   p50 {:>9}  p99 {:>9}  | none (loopback only)       p50 {:>9}  p99 {:>9}  | +{}",
        ms(egress.p50),
        ms(egress.p99),
        ms(none.p50),
        ms(none.p99),
        ms(egress.p50.saturating_sub(none.p50))
    );
    let sb = Sandbox::builder().network(policy).command("sleep").args(["infinity"]).create().await?;
    let outcome = async {
        let (mut from_sb, mut from_host) = (vec![], vec![]);
        for _ in 0..3 {
            let r = sb.exec(["python3", "-c", CONNECTS]).check(true).await?;
            from_sb.push(number(&r.stdout, "connects from the sandbox")?);
            let out = Command::new("python3").args(["-c", CONNECTS]).output()?;
            from_host.push(number(&out.stdout, "connects from the host")?);
        }
        let (s, h) = (super::median(from_sb), super::median(from_host));
        crate::outln!(
            "TCP connect, sandbox → test host p50 {s:>7.0} µs  | host → test host p50 {h:>7.0} µs  | ratio {:.2}x",
            s / h
        );
        let iperf = ["iperf3", "-c", TEST_HOST, "-p", "5201", "-t", "3", "-J"];
        let (mut from_sb, mut from_host) = (vec![], vec![]);
        for _ in 0..2 {
            from_sb.push(iperf_bps(&sb.exec(iperf).check(true).await?.stdout)?);
            from_host.push(iperf_bps(&Command::new(iperf[0]).args(&iperf[1..]).output()?.stdout)?);
        }
        let (s, h) = (super::median(from_sb) / 1e9, super::median(from_host) / 1e9);
        crate::outln!(
            "TCP throughput, sandbox → test host {s:>6.2} Gbit/s | host → test host {h:>6.2} Gbit/s | ratio {:.2}",
            s / h
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    sb.delete().await?;
    outcome
}
