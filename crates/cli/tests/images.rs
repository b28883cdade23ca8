//! Images imported from archives (OCI layout), against real sandboxes: layers stacked with whiteouts and
//! opaque directories, the image config honoured, bad archives refused with nothing half-written.

mod common;

/// Which backend `common::client()` gives.
pub const REMOTE: bool = false;

use common::*;
use hangar::{Error, Sandbox, SandboxState};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn digest(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// A tar from (path, content) pairs; `None` content makes a directory.
fn tar_of(files: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                h.set_size(d.len() as u64);
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
            }
        }
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, data.as_deref().unwrap_or(&[])).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, b).unwrap();
    gz.finish().unwrap()
}

/// Host binaries and the shared libraries `ldd` says they need, at the same paths.
fn userland() -> Vec<(String, Option<Vec<u8>>)> {
    let bins = ["/usr/bin/dash", "/usr/bin/sleep", "/usr/bin/cat"];
    let ldd = std::process::Command::new("ldd").args(bins).output().unwrap();
    let mut libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/') && w.contains(".so"))
        .map(str::to_string)
        .collect();
    libs.sort();
    libs.dedup();
    let mut files: Vec<(String, Option<Vec<u8>>)> = ["bin", "etc", "data", "lib", "lib/x86_64-linux-gnu", "lib64"]
        .iter()
        .map(|d| (format!("{d}/"), None))
        .collect();
    for (name, host) in [("bin/sh", bins[0]), ("bin/sleep", bins[1]), ("bin/cat", bins[2])] {
        files.push((name.into(), Some(std::fs::read(host).unwrap())));
    }
    for lib in libs {
        let inside = lib.trim_start_matches('/').replacen("usr/", "", 1);
        files.push((inside, Some(std::fs::read(std::fs::canonicalize(&lib).unwrap()).unwrap())));
    }
    files
}

/// Writes an OCI image layout archive with the given layers (already encoded) and config; returns its path.
fn oci_archive(name: &str, layers: &[(Vec<u8>, &str)], config: serde_json::Value, corrupt: bool) -> PathBuf {
    let config = serde_json::to_vec(&config).unwrap();
    let mut blobs: Vec<(String, Vec<u8>)> = vec![(digest(&config), config.clone())];
    let mut layer_descs = vec![];
    for (bytes, media) in layers {
        layer_descs.push(serde_json::json!({"mediaType": media, "digest": digest(bytes), "size": bytes.len()}));
        blobs.push((digest(bytes), bytes.clone()));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest),
                       "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": name}}],
    }))
    .unwrap();
    blobs.push((digest(&manifest), manifest));
    if corrupt {
        let last = blobs.len() - 2;
        blobs[last].1.push(0); // a layer whose bytes no longer match its digest
    }
    let mut files = vec![
        ("oci-layout".to_string(), Some(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())),
        ("index.json".to_string(), Some(index)),
        ("blobs/".to_string(), None),
        ("blobs/sha256/".to_string(), None),
    ];
    for (d, b) in blobs {
        files.push((format!("blobs/sha256/{}", &d[7..]), Some(b)));
    }
    let path = state_dir().join(format!("{}.oci.tar", name.replace(['/', ':'], "_")));
    std::fs::create_dir_all(state_dir()).unwrap();
    std::fs::write(&path, tar_of(&files)).unwrap();
    path
}

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
    let mut base = userland();
    base.push(("etc/removed-later".into(), Some(b"x".to_vec())));
    base.push(("data/old".into(), Some(b"old".to_vec())));
    let top = vec![
        ("etc/motd".to_string(), Some(b"from layer 2\n".to_vec())),
        ("etc/.wh.removed-later".to_string(), Some(vec![])),
        ("data/".to_string(), None),
        ("data/.wh..wh..opq".to_string(), Some(vec![])),
        ("data/new".to_string(), Some(b"new".to_vec())),
    ];
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["GREETING=hello from config"], "WorkingDir": "/data", "Cmd": ["/bin/sleep", "1000"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let archive = oci_archive(
        "localhost/hangar-test:1",
        &[
            (gzip(&tar_of(&base)), "application/vnd.oci.image.layer.v1.tar+gzip"),
            (tar_of(&top), "application/vnd.oci.image.layer.v1.tar"),
        ],
        config,
        false,
    );
    let records = store().import(&archive).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reference, "localhost/hangar-test:1");
    assert_eq!(records[0].config.cmd, ["/bin/sleep", "1000"]);
    assert_eq!(store().import(&archive).unwrap()[0].id, records[0].id, "re-import is idempotent");

    let sb = Sandbox::builder().client(&client()).image("localhost/hangar-test:1").create().await.unwrap();
    let info = sb.info().await.unwrap();
    assert_eq!(info.command, ["/bin/sleep", "1000"], "the image's Cmd is the default main command");
    assert_eq!(info.state, SandboxState::Running);
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
    let layer_dirs = || std::fs::read_dir(state_dir().join("images/layers")).unwrap().count();
    let before = layer_dirs();
    let (layers, _) = engine.prune_images().await.unwrap();
    assert!(layers >= 2, "the unreferenced layers go once no sandbox uses them: {layers}");
    assert_eq!(layer_dirs(), before - layers);
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
