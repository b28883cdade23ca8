//! The suite against the embedded engine.

mod common;
mod suite;

/// Which backend `common::client()` gives.
pub const REMOTE: bool = false;

/// When the host's disk is full, a command's output is held, not lost: the command waits (its pipe is not
/// read) until the journal can be written again, then every byte arrives. Embedded only: it needs an engine
/// whose state directory is a small tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_command_instead_of_losing_output() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use sha2::{Digest, Sha256};
    use std::io::Write;
    common::require_root();
    let dir = std::env::temp_dir().join(format!("hangar-diskfull-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::empty(), Some("size=32m")).unwrap();
    let client =
        hangar::Client::with_config(hangar::EngineConfig::new(dir.join("state"), common::agent_bin())).unwrap();
    let sb = hangar::Sandbox::builder().client(&client).command("sleep").args(["infinity"]).create().await.unwrap();
    // Fill the disk to the last byte.
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![7u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    for len in [4096, 512, 1] {
        while f.write_all(&block[..len]).is_ok() {}
    }
    let n = "2000000"; // 14.9 MB of numbered lines
    let h = sb.exec(["seq", "1", n]).start().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let held = sb.execs().await.unwrap().remove(0);
    assert!(held.end.is_none() && held.written[0] < 1 << 20, "the command is held while the disk is full: {held:?}");
    drop(f);
    std::fs::remove_file(&filler).unwrap();
    let r = h.wait().await.expect("every byte arrives once the disk has room");
    let want = std::process::Command::new("seq").args(["1", n]).output().unwrap().stdout;
    assert_eq!((r.stdout.len(), Sha256::digest(&r.stdout)), (want.len(), Sha256::digest(&want)));
    assert_eq!(r.returncode, 0);
    sb.stop().await.unwrap();
    drop(client);
    umount2(&dir, MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

/// When the host's disk stays full past the command's end, what could not be journaled is reported as lost
/// (exact ranges), and the command's real exit code still arrives with what was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_stays_full_loses_output_explicitly_and_keeps_the_exit_code() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use std::io::Write;
    common::require_root();
    let dir = std::env::temp_dir().join(format!("hangar-diskfull2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::empty(), Some("size=16m")).unwrap();
    let client =
        hangar::Client::with_config(hangar::EngineConfig::new(dir.join("state"), common::agent_bin())).unwrap();
    let sb = hangar::Sandbox::builder().client(&client).command("sleep").args(["infinity"]).create().await.unwrap();
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![7u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    for len in [4096, 512, 1] {
        while f.write_all(&block[..len]).is_ok() {}
    }
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
    drop(f);
    std::fs::remove_file(dir.join("filler")).unwrap();
    let info = sb.info().await.unwrap();
    assert_eq!((info.state, info.end_reason.as_deref()), (hangar::SandboxState::Terminated, Some("stopped")));
    // With room again, output is whole again.
    let again = hangar::Sandbox::builder().client(&client).command("sleep").args(["infinity"]).create().await.unwrap();
    assert_eq!(again.exec(["echo", "back"]).await.unwrap().stdout, b"back\n");
    again.stop().await.unwrap();
    drop(client);
    umount2(&dir, MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}
