//! `hangar bench --peers`: Hangar next to the container tools installed here (crun, runc, bubblewrap), on the
//! same work, in interleaved rounds (one sample of each in turn, so a drifting machine moves all of them
//! alike), with the floors measured in every round too: a whole `run` of `true` (create, run, remove), `exec`
//! of `true` in a running container, and 1 GiB of output read by the caller, each as a ratio to its floor.
//!
//! Each command is a process, Hangar's too (`hangar run`, `hangar exec`: the CLI on the embedded engine), so
//! every tool pays its own start. The peers run a static busybox root (a bundle the bench makes); crun refuses
//! hosts with hybrid cgroups, so it runs in a mount namespace without the cgroup2 mount, whose cost (an
//! `unshare` and an `umount`) is measured in the same rounds and taken off its figures.
//!
//! Every sample starts after the same pause ([`QUIET`]). Moving a process into a cgroup waits for an RCU grace
//! period unless another move happened a few milliseconds before (see `hangar_runtime::cgroups`), so without
//! it each tool measured right after one that moved processes would ride that tool's move: crun, run right
//! after Hangar, took 7.8 ms (p50) that way and ~25 ms on its own.

use super::summarize;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The wrapper crun runs in on a hybrid-cgroup host: a private mount namespace without the cgroup2 mount.
const NO_CGROUP2: &str = "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"";

/// The pause before every sample: longer than a grace period, so that no sample rides another's cgroup move.
const QUIET: Duration = Duration::from_millis(50);

/// A command line, made when it is run.
type Line<A> = Box<dyn Fn(A) -> Command>;

/// A tool measured, and how it runs each piece of work.
struct Tool {
    name: &'static str,
    /// `true` in a fresh container (created, run, removed; the round's number names it).
    run_true: Line<usize>,
    /// `true` in its running container (Hangar's is the sandbox of the id given).
    exec_true: Option<Line<String>>,
    /// `dd` of the bench's MiB to standard output in a fresh container.
    stream: Line<usize>,
    /// A wrapper the tool runs in, whose time is taken off its samples (crun's, on this host).
    wrapper: Option<Line<()>>,
}

fn cmd(prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args).stdin(Stdio::null());
    c
}

/// `prog args` in crun's wrapper when the host has cgroups in hybrid mode.
fn crun(hybrid: bool, args: &[&str]) -> Command {
    match hybrid {
        true => {
            let mut c = cmd("unshare", &["-m", "--propagation", "private", "sh", "-c", NO_CGROUP2, "sh", "crun"]);
            c.args(args);
            c
        }
        false => cmd("crun", args),
    }
}

/// A bundle (static busybox as its root, read-only, `true` as its process) for crun and runc.
fn make_bundle(dir: &Path) -> Result<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("the peers run a static busybox root: apt-get install busybox-static")?;
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in ["sh", "true", "dd", "sleep"] {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    let status = Command::new("runc").arg("spec").current_dir(&bundle).status().context("runc spec")?;
    anyhow::ensure!(status.success(), "runc spec failed");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["root"]["readonly"] = true.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

/// The bundle's config with `args` as its process (written as `config.json` of a bundle of its own that
/// shares the root).
fn bundle_with(bundle: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    let dir = bundle.with_file_name(name);
    std::fs::create_dir_all(&dir)?;
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    spec["process"]["args"] = serde_json::json!(args);
    spec["root"]["path"] = bundle.join("rootfs").display().to_string().into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(dir)
}

fn installed(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// Time of one run of `c` (its output discarded), or its failure.
fn time(c: Command) -> Result<Duration> {
    Ok(time_with_phases(c)?.0)
}

/// How long `c` took, and the phases it said it went through (`hangar run` with `$HANGAR_PHASES`).
fn time_with_phases(mut c: Command) -> Result<(Duration, Vec<(String, Duration)>)> {
    std::thread::sleep(QUIET);
    let t = Instant::now();
    let out = c.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "{c:?}: {}", stderr.trim());
    let phases = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("hangar: phases: "))
        .flat_map(|l| l.split(' '))
        .filter_map(|kv| {
            let (k, ms) = kv.split_once('=')?;
            Some((k.to_string(), Duration::from_secs_f64(ms.parse::<f64>().ok()? / 1e3)))
        })
        .collect();
    Ok((took, phases))
}

pub(super) async fn measure(n: usize, mib: usize, runs: usize) -> Result<()> {
    let hangar = std::env::current_exe()?;
    let scratch = std::env::temp_dir().join(format!("hangar-bench-peers-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let measured = measure_in(&hangar, &scratch, n, mib, runs).await;
    let _ = std::fs::remove_dir_all(&scratch);
    measured
}

async fn measure_in(hangar: &Path, scratch: &Path, n: usize, mib: usize, runs: usize) -> Result<()> {
    let hybrid =
        Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() && Path::new("/sys/fs/cgroup/memory").is_dir();
    let bundle = make_bundle(scratch)?;
    let count = format!("count={mib}");
    let dd = ["dd", "if=/dev/zero", "bs=1M", &count];
    let stream_bundle = bundle_with(&bundle, "stream", &["/bin/dd", "if=/dev/zero", "bs=1M", &count])?;
    let sleeper = bundle_with(&bundle, "sleeper", &["/bin/sleep", "100000"])?;
    let h = hangar.to_path_buf();
    let mut tools: Vec<Tool> = vec![];
    {
        let (h1, h2, h3) = (h.clone(), h.clone(), h.clone());
        let dd: Vec<String> = dd.iter().map(|s| s.to_string()).collect();
        tools.push(Tool {
            name: "hangar",
            run_true: Box::new(move |_| {
                let mut c = Command::new(&h1);
                c.args(["run", "--", "true"]).stdin(Stdio::null()).env("HANGAR_PHASES", "1");
                c
            }),
            exec_true: Some(Box::new(move |id: String| {
                let mut c = Command::new(&h2);
                c.args(["exec", &id, "--", "true"]).stdin(Stdio::null());
                c
            })),
            stream: Box::new(move |_| {
                let mut c = Command::new(&h3);
                c.args(["run", "--"]).args(&dd).stdin(Stdio::null());
                c
            }),
            wrapper: None,
        });
    }
    if installed("crun") {
        let (b1, b2) = (bundle.clone(), stream_bundle.clone());
        tools.push(Tool {
            name: "crun",
            run_true: Box::new(move |i| {
                crun(hybrid, &["run", "-b", b1.to_str().unwrap_or(""), &format!("hb-crun-{i}")])
            }),
            exec_true: Some(Box::new(move |_| crun(hybrid, &["exec", "hb-crun-sleeper", "/bin/true"]))),
            stream: Box::new(move |i| {
                crun(hybrid, &["run", "-b", b2.to_str().unwrap_or(""), &format!("hb-crun-s{i}")])
            }),
            wrapper: hybrid.then(|| {
                Box::new(|()| cmd("unshare", &["-m", "--propagation", "private", "sh", "-c", NO_CGROUP2, "sh", "true"]))
                    as Line<()>
            }),
        });
    }
    if installed("runc") {
        let (b1, b2) = (bundle.clone(), stream_bundle.clone());
        tools.push(Tool {
            name: "runc",
            run_true: Box::new(move |i| {
                cmd("runc", &["run", "-b", b1.to_str().unwrap_or(""), &format!("hb-runc-{i}")])
            }),
            exec_true: Some(Box::new(|_| cmd("runc", &["exec", "hb-runc-sleeper", "/bin/true"]))),
            stream: Box::new(move |i| cmd("runc", &["run", "-b", b2.to_str().unwrap_or(""), &format!("hb-runc-s{i}")])),
            wrapper: None,
        });
    }
    if installed("bwrap") {
        let root = bundle.join("rootfs").display().to_string();
        let base = move |args: &[&str]| {
            let mut c = cmd("bwrap", &["--ro-bind", &root, "/", "--proc", "/proc", "--dev", "/dev"]);
            c.args(["--unshare-all", "--die-with-parent"]).args(args);
            c
        };
        let (b1, b2) = (base.clone(), base);
        let count = count.clone();
        tools.push(Tool {
            name: "bwrap",
            run_true: Box::new(move |_| b1(&["/bin/true"])),
            exec_true: None,
            stream: Box::new(move |_| b2(&["/bin/dd", "if=/dev/zero", "bs=1M", &count])),
            wrapper: None,
        });
    }
    let missing: Vec<&str> =
        ["crun", "runc", "bwrap"].into_iter().filter(|t| !tools.iter().any(|x| x.name == *t)).collect();
    crate::outln!(
        "hangar bench --peers: {n} rounds, one sample of each tool per round, each after {} ms idle{}{}\n",
        QUIET.as_millis(),
        if missing.is_empty() { String::new() } else { format!("; not installed: {}", missing.join(", ")) },
        if hybrid { "; crun in a mount namespace without cgroup2 (its cost measured and taken off)" } else { "" }
    );

    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    crate::outln!(
        "cgroup moves: {}\n",
        match (hangar_engine::migrations_are_cheap(), v2) {
            (Some(true), _) => "cheap for all (the cgroup2 mount has favordynmods)",
            (_, false) => {
                "Hangar's cheap (v1: each process moves itself through `tasks`); a whole process's move (the \
                 peers') waits for an RCU grace period after a quiet moment"
            }
            _ => "each waits for an RCU grace period after a quiet moment (HANGAR_CGROUP_FAVORDYNMODS=1)",
        }
    );
    crate::outln!("run `true` (create, run, remove), p50, one process each:");
    rounds(&tools, n, |tool, i| Some((tool.run_true)(i)))?;

    // `exec true` in a running container.
    let created = Command::new(&h).args(["create"]).stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(created.status.success(), "hangar create failed");
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    // (Detached, the container keeps whatever it was given as stdio: nothing the bench waits on.)
    let started = |tool: &str| -> Result<()> {
        let b = sleeper.to_str().unwrap_or("");
        let mut c = match tool {
            "crun" => crun(hybrid, &["run", "-d", "-b", b, "hb-crun-sleeper"]),
            "runc" => cmd("runc", &["run", "-d", "-b", b, "hb-runc-sleeper"]),
            _ => return Ok(()),
        };
        let status = c.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "{tool}: starting a container to exec in failed");
        Ok(())
    };
    let stopped = |tool: &str| {
        let c = match tool {
            "crun" => crun(hybrid, &["delete", "-f", "hb-crun-sleeper"]),
            "runc" => cmd("runc", &["delete", "-f", "hb-runc-sleeper"]),
            _ => return,
        };
        let _ = { c }.stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    for tool in &tools {
        started(tool.name)?;
    }
    crate::outln!("\nexec `true` in a running container, p50, one process each:");
    let exec_measured = rounds(&tools, n, |tool, _| tool.exec_true.as_ref().map(|exec| exec(id.clone())));
    for tool in &tools {
        stopped(tool.name);
    }
    let _ = Command::new(&h).args(["rm", &id]).output();
    exec_measured?;

    // `mib` MiB out, read by the caller, interleaved with raw pipes from the same `dd`s on the host (Hangar's
    // built-in image runs the host's coreutils `dd`, the peers' root busybox's, which is slower).
    let busybox = bundle.join("rootfs/bin/busybox");
    let (mut raw, mut raw_busybox) = (vec![], vec![]);
    let mut rates: Vec<Vec<f64>> = tools.iter().map(|_| vec![]).collect();
    for i in 0..runs.max(1) {
        raw.push(super::raw_pipe(mib)?);
        let mut c = Command::new(&busybox);
        c.args(["dd", "if=/dev/zero", "bs=1M", &count]).stdin(Stdio::null());
        raw_busybox.push(super::stream_rate(c, mib)?);
        for (k, tool) in tools.iter().enumerate() {
            rates[k].push(super::stream_rate((tool.stream)(i), mib)?);
        }
    }
    let (raw, raw_busybox) = (super::median(raw), super::median(raw_busybox));
    crate::outln!("\n{mib} MiB to the caller (a fresh container each), median of {}:", runs.max(1));
    crate::outln!("  {:<8} {:>8.0} MB/s (host dd) | {:>8.0} MB/s (busybox dd)", "raw pipe", raw, raw_busybox);
    for (tool, r) in tools.iter().zip(rates) {
        let (r, base) = (super::median(r), if tool.name == "hangar" { raw } else { raw_busybox });
        crate::outln!("  {:<8} {:>8.0} MB/s  ratio {:.2} of the raw pipe of its dd", tool.name, r, r / base);
    }
    Ok(())
}

/// `n` rounds of one sample of each tool (the command `line` gives it for the round, if any; its wrapper too)
/// with the floor, fork+exec of `true`, in every round; then one line per tool: its p50 (less its wrapper's),
/// p99, and ratios to the floor and to Hangar.
fn rounds(tools: &[Tool], n: usize, line: impl Fn(&Tool, usize) -> Option<Command>) -> Result<()> {
    let mut floor = vec![];
    let mut samples: Vec<Vec<Duration>> = tools.iter().map(|_| vec![]).collect();
    let mut wrappers: Vec<Vec<Duration>> = tools.iter().map(|_| vec![]).collect();
    // Hangar's phases, when its command says them: each phase's samples, in the order said.
    let mut phases: Vec<(String, Vec<Duration>)> = vec![];
    for i in 0..n {
        floor.push(time(cmd("/bin/true", &[]))?);
        for (k, tool) in tools.iter().enumerate() {
            let Some(c) = line(tool, i) else { continue };
            let (took, mut said) = time_with_phases(c)?;
            samples[k].push(took);
            if !said.is_empty() {
                let rest = took.saturating_sub(said.iter().map(|(_, d)| *d).sum());
                said.push(("process start and exit".into(), rest));
            }
            for (name, d) in said {
                match phases.iter_mut().find(|(p, _)| *p == name) {
                    Some((_, v)) => v.push(d),
                    None => phases.push((name, vec![d])),
                }
            }
            if let Some(w) = &tool.wrapper {
                wrappers[k].push(time(w(()))?);
            }
        }
    }
    let floor = summarize(floor);
    crate::outln!("  {:<8} p50 {:>9}  p99 {:>9}", "fork+exec", super::ms(floor.p50), super::ms(floor.p99));
    let mut hangar_p50 = None;
    for ((tool, s), w) in tools.iter().zip(samples).zip(&wrappers) {
        if s.is_empty() {
            continue;
        }
        let s = summarize(s);
        let less = if w.is_empty() { Duration::ZERO } else { summarize(w.clone()).p50 };
        let (p50, p99) = (s.p50.saturating_sub(less), s.p99.saturating_sub(less));
        let base = *hangar_p50.get_or_insert(p50);
        crate::outln!(
            "  {:<8} p50 {:>9}  p99 {:>9}  | {:>5.1}x the floor, {:>4.2}x hangar{}",
            tool.name,
            super::ms(p50),
            super::ms(p99),
            p50.as_secs_f64() / floor.p50.as_secs_f64(),
            p50.as_secs_f64() / base.as_secs_f64(),
            if less.is_zero() { String::new() } else { format!(" (its wrapper's {} taken off)", super::ms(less)) }
        );
    }
    if !phases.is_empty() {
        let each: Vec<String> =
            phases.into_iter().map(|(p, v)| format!("{p} {}", super::ms(summarize(v).p50).trim())).collect();
        crate::outln!("  hangar by phase, p50: {}", each.join(" · "));
    }
    Ok(())
}
