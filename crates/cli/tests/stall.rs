//! A reader that stalls for 30 s loses nothing, and neither the engine (embedded, this process) nor the
//! server (a `hangar serve` process) nor the sandbox's agent grows its memory meanwhile: the command is held
//! back instead. Alone in its binary so that the memory figures belong to this test only.

mod common;

/// `common::client()` is not used here; both backends are driven explicitly.
pub const BACKEND: common::Backend = common::Backend::Embedded;

use common::*;
use hangar::{Client, ExecEvent, Sandbox};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Resident memory of a host process, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn seq(n: u64) -> Vec<u8> {
    (1..=n).flat_map(|i| format!("{i}\n").into_bytes()).collect()
}

/// Stalls a reader of 240 MB of output for 30 s; `engine` is the process that reads the journal for it. Both
/// stalls of the test run in this one process (the embedded engine and the server's client), so memory is
/// measured once both have settled (`settled`): their commands held back, every buffer on the way full.
async fn stall(client: Client, engine: i32, in_flight: u64, settled: std::sync::Arc<tokio::sync::Barrier>) {
    let sb = Sandbox::builder().client(&client).command("sleep").args(["infinity"]).create().await.unwrap();
    let cap = 32u64 << 20;
    let n = 28_000_000;
    let mut h = sb.exec(["seq", "1", &n.to_string()]).journal_cap(cap).start().await.unwrap();
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while got == 0 {
        if let Some(ExecEvent::Output { data, .. }) = h.next_event().await.unwrap() {
            hasher.update(&data);
            got += data.len() as u64;
        }
    }
    let agent = agent_pid(sb.id());
    let written = |sb: Sandbox| async move { sb.execs().await.unwrap()[0].written[0] };
    let (mut last, mut still) = (written(sb.clone()).await, 0);
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = written(sb.clone()).await;
        (last, still) = (now, if now == last { still + 1 } else { 0 });
        if still == 8 {
            break;
        }
    }
    settled.wait().await;
    let before = (rss(engine), rss(agent), written(sb.clone()).await);
    tokio::time::sleep(Duration::from_secs(28)).await;
    let after = (rss(engine), rss(agent), written(sb.clone()).await);
    eprintln!("stalled 30 s: (engine rss, agent rss, journaled) {before:?} → {after:?}");
    assert_eq!(before.2, after.2, "the command is held back (its output is not read) while the reader stalls");
    assert!(after.2 <= got + cap + in_flight, "at most the cap (and what is in flight) is journaled: {after:?}");
    assert!(after.0 < before.0 + (16 << 20), "the engine's memory grew: {before:?} → {after:?}");
    assert!(after.1 < before.1 + (4 << 20), "the agent's memory grew: {before:?} → {after:?}");
    while let Some(ev) = h.next_event().await.unwrap() {
        if let ExecEvent::Output { data, .. } = ev {
            hasher.update(&data);
            got += data.len() as u64;
        }
    }
    let want = seq(n);
    assert_eq!((got, hasher.finalize()), (want.len() as u64, Sha256::digest(&want)), "every byte, once, in order");
    sb.stop().await.unwrap();
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_loses_nothing_and_memory_stays_flat() {
    require_root();
    let serve = ServeProcess::start();
    let remote = Client::connect(&serve.url, Some(TOKEN_A)).unwrap();
    let embedded = Client::with_config(engine_config()).unwrap();
    // Through a server, what is in flight (its 16-message buffer, HTTP/2 windows) has been read from the
    // journal too.
    let settled = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    tokio::join!(
        stall(embedded, std::process::id() as i32, 2 << 20, settled.clone()),
        stall(remote, serve.child.id() as i32, 48 << 20, settled)
    );
}
