//! The suite against the embedded engine.

mod common;
mod suite;

/// Which backend `common::client()` gives.
pub const BACKEND: common::Backend = common::Backend::Embedded;

/// An engine whose state directory is a small tmpfs of its own, which a test can fill to the last byte.
struct SmallDisk {
    dir: std::path::PathBuf,
    client: hangar::Client,
}

impl SmallDisk {
    fn new(tag: &str, size: &str) -> Self {
        common::require_root();
        let dir = std::env::temp_dir().join(format!("hangar-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = format!("size={size}");
        nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
            .unwrap();
        let client =
            hangar::Client::with_config(hangar::EngineConfig::new(dir.join("state"), common::agent_bin())).unwrap();
        Self { dir, client }
    }

    async fn sandbox(&self) -> hangar::Sandbox {
        hangar::Sandbox::builder().client(&self.client).command("sleep").args(["infinity"]).create().await.unwrap()
    }

    /// Fills the disk to the last byte; dropping the file (and removing it) gives the room back.
    fn fill(&self) -> std::fs::File {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        for len in [4096, 512, 1] {
            while f.write_all(&block[..len]).is_ok() {}
        }
        f
    }

    fn unfill(&self, f: std::fs::File) {
        drop(f);
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }

    fn remove(self) {
        drop(self.client);
        nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
        std::fs::remove_dir(&self.dir).unwrap();
    }
}

/// When the host's disk is full, a command's output is held, not lost: the command waits (its pipe is not
/// read) until the journal can be written again, then every byte arrives. Embedded only: it needs an engine
/// whose state directory is a small tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_command_instead_of_losing_output() {
    use sha2::{Digest, Sha256};
    let disk = SmallDisk::new("diskfull", "32m");
    let sb = disk.sandbox().await;
    let f = disk.fill();
    let n = "2000000"; // 14.9 MB of numbered lines
    let h = sb.exec(["seq", "1", n]).start().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let held = sb.execs().await.unwrap().remove(0);
    assert!(held.end.is_none() && held.written[0] < 1 << 20, "the command is held while the disk is full: {held:?}");
    disk.unfill(f);
    let r = h.wait().await.expect("every byte arrives once the disk has room");
    let want = std::process::Command::new("seq").args(["1", n]).output().unwrap().stdout;
    assert_eq!((r.stdout.len(), Sha256::digest(&r.stdout)), (want.len(), Sha256::digest(&want)));
    assert_eq!(r.returncode, 0);
    sb.stop().await.unwrap();
    disk.remove();
}

/// When the host's disk stays full past the command's end, what could not be journaled is reported as lost
/// (exact ranges), and the command's real exit code still arrives with what was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_stays_full_loses_output_explicitly_and_keeps_the_exit_code() {
    let disk = SmallDisk::new("diskfull2", "16m");
    let sb = disk.sandbox().await;
    let f = disk.fill();
    match sb.write_file("/tmp/upload", vec![1u8; 1 << 20]).await {
        Err(hangar::Error::File { kind: hangar::FileErrorKind::NoSpace, message, .. }) => {
            assert!(message.contains("/tmp/upload") && message.contains("no space"), "{message}")
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    match sb.exec(["sh", "-c", "echo hi; echo err >&2; exit 3"]).await {
        Err(hangar::Error::IncompleteOutput { result, detail, .. }) => {
            assert_eq!(result.returncode, 3, "the real exit code: {result:?}");
            assert!(detail.contains("Stdout bytes 0..3") && detail.contains("Stderr bytes 0..4"), "{detail}");
            assert!(detail.contains("disk"), "{detail}");
        }
        other => panic!("expected IncompleteOutput naming the lost bytes, got {other:?}"),
    }
    // Stopped on the full disk: the agent still records how the sandbox ended (its record's room was
    // reserved at start); the engine's store may have to wait for room to say so.
    if let Err(e) = sb.stop().await {
        assert!(e.to_string().contains("full"), "{e}");
    }
    disk.unfill(f);
    let info = sb.info().await.unwrap();
    assert_eq!((info.state, info.end_reason.as_deref()), (hangar::SandboxState::Terminated, Some("stopped")));
    // With room again, output is whole again.
    let again = disk.sandbox().await;
    assert_eq!(again.exec(["echo", "back"]).await.unwrap().stdout, b"back\n");
    again.stop().await.unwrap();
    disk.remove();
}

/// With a disk budget, each sandbox's writable layers live in a subvolume of their own with a quota: a workload that writes past its budget gets "Disk quota exceeded" (a flood of files too), an upload
/// past it is a typed NoSpace, another sandbox keeps its own room, and nothing is left after a stop.
/// Embedded: the engine has a state directory (and volume) of its own, unmounted at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_budgets_hold_per_sandbox() {
    let (dir, client) = own_engine("budget", |cfg| cfg.disk_budget_bytes = Some(64 << 20));
    let volume = dir.join("state/sandboxes");
    let result = async {
        let new = || hangar::Sandbox::builder().client(&client).command("sleep").args(["infinity"]).create();
        let (sb, other) = (new().await?, new().await?);
        let dd = sb.exec(["sh", "-c", "dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>&1; echo rc=$?"]).await?;
        assert!(dd.stdout_text().contains("Disk quota exceeded"), "{}", dd.stdout_text());
        assert!(!dd.stdout_text().contains("rc=0"), "{}", dd.stdout_text());
        let du = sb.exec(["du", "-sm", "/tmp/fill"]).await?;
        let mib: u64 = du.stdout_text().split_whitespace().next().unwrap_or("0").parse().unwrap_or(0);
        assert!(mib <= 64, "the sandbox kept {mib} MiB past its 64 MiB budget");
        match sb.write_file("/tmp/upload", vec![1u8; 8 << 20]).await {
            Err(hangar::Error::File { kind: hangar::FileErrorKind::NoSpace, .. }) => {}
            other => panic!("expected NoSpace, got {other:?}"),
        }
        let ok = other.exec(["sh", "-c", "dd if=/dev/zero of=/tmp/f bs=1M count=20 2>/dev/null && echo fine"]).await?;
        assert_eq!(ok.stdout_text(), "fine\n", "the other sandbox has its own budget");
        let files = "import os\nn = 0\ntry:\n    while n < 2000000:\n        open(f'/tmp/i{n}', 'w').write('x'); n += 1\nexcept OSError as e:\n    print(n, e.strerror)";
        let r = other.exec(["python3", "-c", files]).timeout(std::time::Duration::from_secs(120)).await?;
        assert!(r.stdout_text().contains("Disk quota exceeded"), "a flood of files ends at the budget: {r:?}");
        // A sandbox may ask for less than the engine's budget, never more.
        let small = hangar::Sandbox::builder().client(&client).command("sleep").args(["infinity"]).disk_mb(16);
        let small = small.create().await?;
        let dd16 = small.exec(["sh", "-c", "dd if=/dev/zero of=/tmp/f bs=1M count=40 2>&1"]).await?;
        assert!(dd16.stdout_text().contains("Disk quota exceeded"), "{}", dd16.stdout_text());
        small.stop().await?;
        let big = hangar::Sandbox::builder().client(&client).command("sleep").args(["infinity"]).disk_mb(1024);
        match big.create().await {
            Err(hangar::Error::InvalidArgument(m)) => assert!(m.contains("disk_bytes"), "{m}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        sb.exec(["rm", "/tmp/fill"]).check(true).await?;
        assert_eq!(sb.exec(["sh", "-c", "echo again > /tmp/again && cat /tmp/again"]).await?.stdout, b"again\n");
        for s in [sb, other] {
            let id = s.id().to_string();
            s.stop().await?;
            assert!(!volume.join(&id).exists(), "sandbox {id}'s subvolume is left");
        }
        Ok::<(), hangar::Error>(())
    }
    .await;
    drop(client);
    // The volume belongs to the state directory; a test that made one unmounts it.
    let _ = nix::mount::umount2(&volume, nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_dir_all(&dir).unwrap();
    result.unwrap();
}

/// Ended sandboxes are kept for the engine's retention, then forgotten: `list` no longer shows them, `get`
/// says not found, and nothing of them is left. Running ones are never expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_records_expire_after_the_retention() {
    common::require_root();
    let dir = std::env::temp_dir().join(format!("hangar-retention-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two engines over one state directory: one that keeps ended records, one that keeps them for 1 s (a
    // teardown may take longer than that on a busy host, so the first one checks that they are kept).
    let engine = |retention| {
        let mut cfg = hangar::EngineConfig::new(dir.join("state"), common::agent_bin());
        cfg.ended_retention = retention;
        hangar::Client::with_config(cfg).unwrap()
    };
    let (keeping, client) = (engine(None), engine(Some(std::time::Duration::from_secs(1))));
    let new = || hangar::Sandbox::builder().client(&keeping).command("sleep").args(["infinity"]).create();
    let (ended, running) = (new().await.unwrap(), new().await.unwrap());
    ended.stop().await.unwrap();
    let ids = |l: Vec<hangar::SandboxInfo>| l.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert!(ids(keeping.list().await.unwrap()).contains(&ended.id().to_string()), "kept without a retention");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let listed = ids(client.list().await.unwrap());
    assert!(!listed.contains(&ended.id().to_string()), "expired: {listed:?}");
    assert!(listed.contains(&running.id().to_string()), "a running sandbox is never expired: {listed:?}");
    match hangar::Sandbox::from_id_with(&client, ended.id()).await {
        Err(hangar::Error::NotFound { id }) => assert_eq!(id, ended.id()),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!dir.join("state/sandboxes").join(ended.id()).exists());
    running.stop().await.unwrap();
    drop((client, keeping));
    let _ = std::fs::remove_dir_all(&dir);
}

/// 1,000 sandboxes, each created with a main command, given an exec, stopped and removed, one after another,
/// leave nothing of any of them: no process, mount, cgroup, directory, kept log or record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_create_exec_stop_cycles_leave_nothing() {
    let mut ids = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let sb = common::sandbox().await;
        sb.exec(["true"]).check(true).await.unwrap();
        ids.push(sb.id().to_string());
        sb.stop().await.unwrap();
        sb.delete().await.unwrap();
    }
    let listed: std::collections::HashSet<String> =
        common::client().list().await.unwrap().into_iter().map(|i| i.id).collect();
    let logs = common::state_dir().join("sandboxes/.logs");
    for id in &ids {
        assert_eq!(common::leftovers(id), Vec::<String>::new(), "sandbox {id}");
        assert!(!listed.contains(id), "{id} is still listed");
        assert!(!logs.join(id).exists(), "{id}'s log is kept");
    }
}

/// Every memory cgroup costs the kernel 1 KiB per 64 filesystems mounted on the host (~170 KiB each with
/// 1,000 sandboxes), so a sandbox has as few as it can: none of its own without a memory limit (its main
/// command's and its execs' sit in the shared parent, named after it), one with a limit (its processes' below
/// it; the agent is never in it). On a v2 host: the sandbox's, its workload's and its agent's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_has_as_few_memory_cgroups_as_it_can() {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory/hangar");
    let memory_cgroups = |id: &str| -> Vec<String> {
        let root = if v1.exists() { v1.to_path_buf() } else { "/sys/fs/cgroup/hangar".into() };
        let mut found = vec![];
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten().filter(|e| e.file_type().unwrap().is_dir()) {
                let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
                if rel.starts_with(id) {
                    found.push(rel);
                }
                dirs.push(e.path());
            }
        }
        found.sort();
        found
    };
    let plain = common::sandbox().await;
    let limited = common::builder().memory_mb(256).create().await.unwrap();
    let running = plain.exec(["sleep", "60"]).id("held").start().await.unwrap();
    let (plain_id, limited_id) = (plain.id().to_string(), limited.id().to_string());
    if v1.exists() {
        // Its main command's and its exec's (or the spare helper's it ran in): each its own, none the sandbox's.
        let of_plain = memory_cgroups(&plain_id);
        assert!(of_plain.len() >= 2, "{of_plain:?}");
        assert!(of_plain.iter().all(|c| c.starts_with(&format!("{plain_id}.")) && !c.contains('/')), "{of_plain:?}");
        let of_limited = memory_cgroups(&limited_id);
        assert_eq!(of_limited[0], limited_id);
        assert!(of_limited[1..].iter().all(|c| c.starts_with(&format!("{limited_id}/"))), "{of_limited:?}");
        let procs = std::fs::read_to_string(v1.join(&limited_id).join("cgroup.procs")).unwrap();
        assert_eq!(procs, "", "the limited sandbox's memory cgroup holds no process itself (its agent is outside)");
    } else {
        let own = |id: &str| ["", "/agent", "/workload"].map(|s| format!("{id}{s}")).to_vec();
        assert_eq!(memory_cgroups(&limited_id), own(&limited_id));
    }
    plain.signal_exec("held", 9).await.unwrap();
    drop(running);
    for sb in [plain, limited] {
        let id = sb.id().to_string();
        sb.stop().await.unwrap();
        sb.delete().await.unwrap();
        assert_eq!(memory_cgroups(&id), Vec::<String>::new());
        assert_eq!(common::leftovers(&id), Vec::<String>::new());
    }
}

/// A kept log whose sandbox record is gone (an older engine that crashed between the two) is removed by the
/// next listing; the logs of ended sandboxes that are still listed stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_removes_kept_logs_without_a_record_and_keeps_the_others() {
    let logs = common::state_dir().join("sandboxes/.logs");
    let ended = common::sandbox().await;
    ended.stop().await.unwrap();
    assert!(logs.join(ended.id()).is_dir(), "an ended sandbox's log is kept");
    let orphan = logs.join("sb-0rphan0000000001");
    std::fs::create_dir_all(orphan.join("x")).unwrap();
    let listed = common::client().list().await.unwrap();
    assert!(listed.iter().any(|i| i.id == ended.id()));
    assert!(!orphan.exists(), "the orphaned log is removed");
    assert!(logs.join(ended.id()).is_dir(), "a listed sandbox keeps its log");
    let id = ended.id().to_string();
    ended.delete().await.unwrap();
    assert!(!logs.join(id).exists(), "removing the sandbox removes its log");
}

/// A sandbox's exec journals stay within the engine's journal budget: past it, the journal of an ended exec
/// nobody reads is expired early, oldest first (an attach says so, as after its retention), and newer ones
/// stay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_journals_stay_within_the_sandboxes_budget() {
    let (dir, client) = own_engine("journal-budget", |cfg| cfg.journal_budget = Some(48 << 20));
    let sb = hangar::Sandbox::builder().client(&client).command("sleep").args(["infinity"]).create().await.unwrap();
    let size = 30u64 << 20;
    for id in ["first", "second"] {
        // Detached: nobody reads it, so its journal keeps all of it.
        drop(sb.exec(["head", "-c", &size.to_string(), "/dev/zero"]).id(id).start().await.unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while sb.execs().await.unwrap().iter().any(|x| x.id == id && x.end.is_none()) {
            assert!(std::time::Instant::now() < deadline, "{id} did not end");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let journals = dir.join("state/sandboxes").join(sb.id()).join("execs");
    match sb.attach("first").await {
        Err(hangar::Error::ExecExpired { message }) => assert!(message.contains("first"), "{message}"),
        other => panic!(
            "60 MiB of journals in a 48 MiB budget: the older should be gone, got {:?}",
            other.map(|r| r.exec_id)
        ),
    }
    assert!(!journals.join("first").exists(), "its files are gone");
    let second = sb.attach("second").await.unwrap();
    assert_eq!(second.stdout.len() as u64, size, "the newer journal is whole");
    sb.stop().await.unwrap();
    drop(client);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An engine of its own over a fresh state directory (`$TMPDIR/hangar-NAME-PID/state`), configured by `tweak`;
/// also the directory, which the test removes.
fn own_engine(name: &str, tweak: impl FnOnce(&mut hangar::EngineConfig)) -> (std::path::PathBuf, hangar::Client) {
    common::require_root();
    let dir = std::env::temp_dir().join(format!("hangar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = hangar::EngineConfig::new(dir.join("state"), common::agent_bin());
    tweak(&mut cfg);
    (dir, hangar::Client::with_config(cfg).unwrap())
}
