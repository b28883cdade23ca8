//! Images imported from archives (OCI layout), against real sandboxes: layers stacked with whiteouts and
//! opaque directories, the image config honoured, bad archives refused with nothing half-written.

mod common;

/// Which backend `common::client()` gives.
pub const BACKEND: common::Backend = common::Backend::Embedded;

use common::images::*;
use common::*;
use hangar::{Error, Sandbox, SandboxState};
use std::path::Path;

fn store() -> hangar_images::ImageStore {
    hangar_images::ImageStore::new(state_dir().join("images"))
}

fn half_written(dir: &Path) -> Vec<String> {
    walk(dir).into_iter().filter(|p| p.contains(".tmp") || p.contains(".import")).collect()
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path().display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_oci_image_runs_with_its_layers_and_config() {
    let _ = client();
    let archive = test_image_archive("localhost/hangar-test:1");
    let records = store().import(&archive).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reference, "localhost/hangar-test:1");
    assert_eq!(records[0].config.cmd, ["/bin/sleep", "1000"]);
    assert_eq!(store().import(&archive).unwrap()[0].id, records[0].id, "re-import is idempotent");

    // Without a command a sandbox idles, whatever the image's own command would do; asked for, it runs that.
    let idle = Sandbox::builder().client(&client()).image("localhost/hangar-test:1").create().await.unwrap();
    assert_eq!(idle.info().await.unwrap().command, Vec::<String>::new());
    let sb =
        Sandbox::builder().client(&client()).image("localhost/hangar-test:1").image_command().create().await.unwrap();
    let info = sb.info().await.unwrap();
    assert_eq!(info.command, ["/bin/sleep", "1000"], "the image's Cmd is the main command when asked for");
    assert_eq!(info.state, SandboxState::Running);
    idle.stop().await.unwrap();
    assert_eq!(idle.info().await.unwrap().state, SandboxState::Terminated);
    let script = "echo $GREETING; pwd; cat /etc/motd; test -e /etc/removed-later || echo gone; for f in /data/*; do echo $f; done";
    let r = sb.exec(["sh", "-c", script]).check(true).await.unwrap();
    assert_eq!(r.stdout_text(), "hello from config\n/data\nfrom layer 2\ngone\n/data/new\n");
    // Writes land in the sandbox's upper layer, never in the shared layer directories.
    sb.exec(["sh", "-c", "echo changed > /etc/motd"]).check(true).await.unwrap();
    let other = Sandbox::builder().client(&client()).image("localhost/hangar-test:1").create().await.unwrap();
    assert_eq!(other.exec(["cat", "/etc/motd"]).await.unwrap().stdout_text(), "from layer 2\n");
    // While sandboxes use the image, pruning keeps its layers even once the reference is gone.
    let engine = hangar_engine::Engine::open(engine_config()).unwrap();
    store().remove("localhost/hangar-test:1").unwrap();
    engine.prune_images().await.unwrap();
    assert_eq!(other.exec(["cat", "/data/new"]).await.unwrap().stdout_text(), "new", "layers in use survive a prune");
    for s in [&sb, &other] {
        s.stop().await.unwrap();
        assert_eq!(leftovers(s.id()), Vec::<String>::new());
    }
    // Names, not counts: the other tests of this binary import layers meanwhile.
    let layer_dirs = || -> std::collections::HashSet<String> {
        std::fs::read_dir(state_dir().join("images/layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".tmp-"))
            .collect()
    };
    let before = layer_dirs();
    let (layers, _) = engine.prune_images().await.unwrap();
    assert!(layers >= 2, "the unreferenced layers go once no sandbox uses them: {layers}");
    let gone = before.difference(&layer_dirs()).count();
    assert!(gone >= 2 && gone <= layers, "{gone} of the {layers} pruned layers were there before");
    store().import(&archive).unwrap();
    match Sandbox::builder().client(&client()).image("localhost/hangar-test:2").create().await {
        Err(Error::SandboxFailed { message }) => assert!(message.contains("localhost/hangar-test:2"), "{message}"),
        other => panic!("expected an unknown image error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_are_refused_and_leave_nothing_half_written() {
    let _ = client();
    let layer = tar_of(&[("etc/".into(), None), ("etc/x".into(), Some(b"x".to_vec()))]);
    let config = serde_json::json!({"config": {"Cmd": ["/bin/true"]}});
    let corrupt = oci_archive(
        "localhost/corrupt:1",
        &[(layer.clone(), "application/vnd.oci.image.layer.v1.tar")],
        config.clone(),
        true,
    );
    let err = store().import(&corrupt).unwrap_err().to_string();
    assert!(err.contains("does not match its digest"), "{err}");
    let evil = tar_of(&[("../../escaped".into(), Some(b"x".to_vec()))]);
    let evil = oci_archive("localhost/evil:1", &[(evil, "application/vnd.oci.image.layer.v1.tar")], config, false);
    match store().import(&evil) {
        Err(hangar_images::Error::UnsafeLayer { message, .. }) => assert!(message.contains("escapes"), "{message}"),
        other => panic!("expected UnsafeLayer, got {other:?}"),
    }
    assert!(!state_dir().join("images/escaped").exists() && !state_dir().join("escaped").exists());
    let refs: Vec<_> = store().list().unwrap().into_iter().map(|r| r.reference).collect();
    assert!(!refs.iter().any(|r| r.contains("corrupt") || r.contains("evil")), "{refs:?}");
    assert_eq!(half_written(&state_dir().join("images")), Vec::<String>::new());
    let missing = store().import(Path::new("/nonexistent/image.tar")).unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/image.tar"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_user_runs_the_main_command_and_execs() {
    let _ = client();
    let mut base = userland();
    base.push(("etc/passwd".into(), Some(b"root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n".to_vec())));
    base.push(("etc/group".into(), Some(b"root:x:0:\nstaff:x:50:\n".to_vec())));
    let archive = oci_archive(
        "localhost/user-test:1",
        &[(tar_of(&base), "application/vnd.oci.image.layer.v1.tar")],
        serde_json::json!({"config": {"User": "app:staff", "Cmd": ["/bin/sleep", "1000"]}}),
        false,
    );
    store().import(&archive).unwrap();
    let sb =
        Sandbox::builder().client(&client()).image("localhost/user-test:1").image_command().create().await.unwrap();
    let status = sb.exec(["cat", "/proc/self/status"]).check(true).await.unwrap().stdout_text().into_owned();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!((line("Uid:"), line("Gid:")), ("1234".to_string(), "50".to_string()), "{status}");
    sb.stop().await.unwrap();
    // A user the image does not define is a clear start failure.
    let archive = oci_archive(
        "localhost/user-test:2",
        &[(tar_of(&userland()), "application/vnd.oci.image.layer.v1.tar")],
        serde_json::json!({"config": {"User": "ghost", "Cmd": ["/bin/sleep", "1000"]}}),
        false,
    );
    store().import(&archive).unwrap();
    match Sandbox::builder().client(&client()).image("localhost/user-test:2").create().await {
        Err(Error::SandboxFailed { message }) => assert!(message.contains("ghost"), "{message}"),
        other => panic!("expected a start failure naming the user, got {other:?}"),
    }
}
