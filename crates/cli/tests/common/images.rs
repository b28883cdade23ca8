//! Builders for test images: OCI image layout archives made from this host's own binaries.

use super::state_dir;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// A tar from (path, content) pairs; `None` content makes a directory.
pub fn tar_of(files: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
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

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, b).unwrap();
    gz.finish().unwrap()
}

/// Host binaries and the shared libraries `ldd` says they need, at the same paths.
pub fn userland() -> Vec<(String, Option<Vec<u8>>)> {
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
pub fn oci_archive(name: &str, layers: &[(Vec<u8>, &str)], config: serde_json::Value, corrupt: bool) -> PathBuf {
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

/// The standard two-layer test image: dash, sleep and cat with their libraries, then a layer that adds
/// /etc/motd, whites out /etc/removed-later and makes /data opaque; config env, workdir and cmd set.
pub fn test_image_archive(name: &str) -> PathBuf {
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
    oci_archive(
        name,
        &[
            (gzip(&tar_of(&base)), "application/vnd.oci.image.layer.v1.tar+gzip"),
            (tar_of(&top), "application/vnd.oci.image.layer.v1.tar"),
        ],
        config,
        false,
    )
}
