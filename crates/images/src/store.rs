//! Imported images: a content-addressed blob store, layers unpacked once and shared, and image records by
//! reference. `import` reads a `docker save` archive or an OCI image layout (tar, optionally gzip).

use crate::{unpack_layer, Error, ImageLayout, ImageStore, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The file whose flock orders prunes against imports, pulls and sandbox starts.
const LOCK_FILE: &str = ".lock";

/// A shared hold on an image store (see [`ImageStore::hold`]); released on drop.
#[derive(Debug)]
pub struct StoreHold(#[allow(dead_code)] fs::File);

/// What Hangar keeps about an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Full reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// Digest of the image's config blob (its identity).
    pub id: String,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    /// The image's runtime defaults.
    pub config: ImageConfig,
}

/// The parts of an OCI image config that Hangar honours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default arguments (or command).
    pub cmd: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// User (recorded; sandboxes run as root for now).
    pub user: String,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigSection>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConfigSection {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default, rename = "mediaType")]
    media_type: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn bad_archive(archive: &Path, message: impl Into<String>) -> Error {
    Error::Layer { layer: archive.display().to_string(), message: message.into() }
}

impl ImageStore {
    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(digest.replace(':', "/"))
    }

    fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest.replace(':', "-"))
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        let escaped: String =
            reference.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        self.root.join("refs").join(format!("{escaped}.json"))
    }

    /// Imports every image in a `docker save` archive or an OCI image layout archive; returns their records.
    /// Blobs are verified against their digests and each layer is unpacked once; on any error nothing
    /// half-written is left in the store.
    pub fn import(&self, archive: &Path) -> Result<Vec<ImageRecord>, Error> {
        let _hold = self.hold()?;
        let work = self.root.join(format!(".import-{}-{}", std::process::id(), crate::unique()));
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        let result = self.import_from(archive, &work);
        let _ = fs::remove_dir_all(&work);
        result
    }

    fn import_from(&self, archive: &Path, work: &Path) -> Result<Vec<ImageRecord>, Error> {
        let file = fs::File::open(archive).map_err(io_err(archive))?;
        // The archive itself is unpacked with the same guards as a layer: it comes from elsewhere too.
        unpack_layer(file, work, &archive.display().to_string())?;
        let read_json = |p: PathBuf| -> Result<serde_json::Value, Error> {
            let b = fs::read(&p).map_err(|e| bad_archive(archive, format!("{}: {e}", p.display())))?;
            serde_json::from_slice(&b).map_err(|e| bad_archive(archive, format!("{}: {e}", p.display())))
        };
        let mut images = vec![];
        if work.join("index.json").exists() {
            let index: OciIndex = serde_json::from_value(read_json(work.join("index.json"))?)
                .map_err(|e| bad_archive(archive, format!("index.json: {e}")))?;
            for m in index.manifests {
                if m.media_type.contains("index") || m.media_type.contains("manifest.list") {
                    return Err(bad_archive(archive, "nested image indexes are not supported yet"));
                }
                let name = m
                    .annotations
                    .get("io.containerd.image.name")
                    .or_else(|| m.annotations.get("org.opencontainers.image.ref.name"))
                    .cloned()
                    .ok_or_else(|| {
                        bad_archive(archive, format!("manifest {} has no image name annotation", m.digest))
                    })?;
                let manifest_path = self.verified_blob_in(work, &m.digest, archive)?;
                let manifest: OciManifest = serde_json::from_value(read_json(manifest_path)?)
                    .map_err(|e| bad_archive(archive, format!("manifest {}: {e}", m.digest)))?;
                let config = self.verified_blob_in(work, &manifest.config.digest, archive)?;
                let layers = manifest
                    .layers
                    .iter()
                    .map(|l| self.verified_blob_in(work, &l.digest, archive).map(|p| (l.digest.clone(), p)))
                    .collect::<Result<Vec<_>, _>>()?;
                images.push((vec![name], config, layers));
            }
        } else if work.join("manifest.json").exists() {
            let entries: Vec<DockerManifestEntry> = serde_json::from_value(read_json(work.join("manifest.json"))?)
                .map_err(|e| bad_archive(archive, format!("manifest.json: {e}")))?;
            for e in entries {
                let layers = e
                    .layers
                    .iter()
                    .map(|l| {
                        let p =
                            crate::safe_join(work, l).ok_or_else(|| bad_archive(archive, format!("layer path {l}")))?;
                        Ok((sha256_file(&p)?, p))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let config = crate::safe_join(work, &e.config).ok_or_else(|| bad_archive(archive, "config path"))?;
                images.push((e.repo_tags.unwrap_or_default(), config, layers));
            }
        } else {
            return Err(bad_archive(
                archive,
                "neither an OCI layout (index.json) nor a docker save archive (manifest.json)",
            ));
        }
        let mut records = vec![];
        for (names, config_path, layers) in images {
            let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
            let id = format!("sha256:{:x}", Sha256::digest(&config_bytes));
            let config = parse_config(&config_bytes).map_err(|e| bad_archive(archive, format!("image config: {e}")))?;
            let mut digests = vec![];
            for (digest, path) in layers {
                self.store_layer(&digest, &path)?;
                digests.push(digest);
            }
            for name in if names.is_empty() { vec![format!("imported/{}", &id[7..19])] } else { names } {
                let reference = Reference::parse(&name).map_err(|e| bad_archive(archive, e.to_string()))?.to_string();
                let rec = ImageRecord { reference, id: id.clone(), layers: digests.clone(), config: config.clone() };
                self.write_record(&rec)?;
                records.push(rec);
            }
        }
        Ok(records)
    }

    /// The path of blob `digest` inside an unpacked OCI layout, after checking its content matches.
    fn verified_blob_in(&self, work: &Path, digest: &str, archive: &Path) -> Result<PathBuf, Error> {
        let (algo, hex) = digest.split_once(':').ok_or_else(|| bad_archive(archive, format!("bad digest {digest}")))?;
        if algo != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad_archive(archive, format!("unsupported digest {digest}")));
        }
        let p = work.join("blobs").join(algo).join(hex);
        let actual = sha256_file(&p).map_err(|_| bad_archive(archive, format!("blob {digest} is missing")))?;
        if actual != digest {
            return Err(bad_archive(archive, format!("blob {digest} does not match its digest (content is {actual})")));
        }
        Ok(p)
    }

    /// Copies a layer blob into the store and unpacks it once (in a temporary directory renamed into place).
    pub(crate) fn store_layer(&self, digest: &str, blob: &Path) -> Result<(), Error> {
        let dest = self.blob_path(digest);
        if !dest.exists() {
            let parent = dest.parent().unwrap_or(&self.root);
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), crate::unique()));
            fs::copy(blob, &tmp).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        }
        let dir = self.layer_dir(digest);
        if dir.exists() {
            return Ok(());
        }
        let layers = self.root.join("layers");
        fs::create_dir_all(&layers).map_err(io_err(&layers))?;
        let tmp = layers.join(format!(".tmp-{}-{}", std::process::id(), crate::unique()));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let unpacked = fs::File::open(&dest).map_err(io_err(&dest)).and_then(|f| unpack_layer(f, &tmp, digest));
        match unpacked.and_then(|()| {
            fs::rename(&tmp, &dir).or_else(|e| if dir.exists() { Ok(()) } else { Err(e) }).map_err(io_err(&dir))
        }) {
            Ok(()) => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn lock_file(&self) -> Result<fs::File, Error> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let path = self.root.join(LOCK_FILE);
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))
    }

    /// A shared hold on the store: [`ImageStore::prune`] waits until every hold is dropped. Imports and
    /// pulls hold one while they write; whoever resolves an image for a sandbox should hold one until the
    /// sandbox's mounts name its layers. Holds never wait for each other.
    pub fn hold(&self) -> Result<StoreHold, Error> {
        let f = self.lock_file()?;
        f.lock_shared().map_err(io_err(&self.root.join(LOCK_FILE)))?;
        Ok(StoreHold(f))
    }

    pub(crate) fn has_layer(&self, digest: &str) -> bool {
        self.layer_dir(digest).exists()
    }

    pub(crate) fn write_record(&self, rec: &ImageRecord) -> Result<(), Error> {
        let p = self.record_path(&rec.reference);
        let dir = p.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = p.with_extension(format!("tmp{}", crate::unique()));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&serde_json::to_vec_pretty(rec).unwrap_or_default()).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    /// All image records, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>, Error> {
        let dir = self.root.join("refs");
        let mut out = vec![];
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(rec) = fs::read(e.path()).map(|b| serde_json::from_slice::<ImageRecord>(&b)) {
                out.extend(rec.ok());
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Forgets an image reference (its layers stay until pruned).
    pub fn remove(&self, reference: &str) -> Result<(), Error> {
        let full = Reference::parse(reference).map_err(|_| Error::UnknownImage(reference.into()))?.to_string();
        fs::remove_file(self.record_path(&full)).map_err(|_| Error::UnknownImage(reference.into()))
    }

    /// Removes layers and blobs that no image record references and that are not in `in_use` (lower
    /// directories of running sandboxes: deleting a live overlay's lower layer is undefined). Returns the
    /// number of layers and blobs removed.
    ///
    /// Prune waits for every [`StoreHold`] (imports, pulls, sandboxes being created) and asks `in_use` only
    /// once it holds the store alone, so no layer is removed between being unpacked and being recorded or
    /// mounted.
    pub fn prune<E: From<Error>>(
        &self,
        in_use: impl FnOnce() -> Result<std::collections::HashSet<PathBuf>, E>,
    ) -> Result<(usize, usize), E> {
        let lock = self.lock_file()?;
        lock.lock().map_err(io_err(&self.root.join(LOCK_FILE)))?;
        let in_use = in_use()?;
        let referenced: std::collections::HashSet<String> = self.list()?.into_iter().flat_map(|r| r.layers).collect();
        let (mut layers, mut blobs) = (0, 0);
        for e in fs::read_dir(self.root.join("layers")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().replace('-', ":");
            // Dot-names are imports in progress: never pull a layer out from under one.
            if !name.starts_with('.') && !referenced.contains(&name) && !in_use.contains(&e.path()) {
                fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
                layers += 1;
            }
        }
        for e in fs::read_dir(self.root.join("blobs").join("sha256")).into_iter().flatten().flatten() {
            let digest = format!("sha256:{}", e.file_name().to_string_lossy());
            if !digest.contains(":.") && !referenced.contains(&digest) && !self.layer_dir(&digest).exists() {
                fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
                blobs += 1;
            }
        }
        Ok((layers, blobs))
    }

    /// The layout of an imported image.
    pub(crate) fn imported(&self, reference: &str) -> Result<ImageLayout, Error> {
        let full = Reference::parse(reference).map_err(|_| Error::UnknownImage(reference.into()))?.to_string();
        let rec: ImageRecord = fs::read(self.record_path(&full))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Error::UnknownImage(reference.into()))?;
        let env = rec
            .config
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let command = rec.config.entrypoint.iter().chain(&rec.config.cmd).cloned().collect();
        let workdir = if rec.config.working_dir.is_empty() { "/".to_string() } else { rec.config.working_dir.clone() };
        Ok(ImageLayout {
            name: rec.reference.clone(),
            root_layers: rec.layers.iter().rev().map(|d| self.layer_dir(d)).collect(),
            overlays: vec![],
            tmpfs: vec![],
            env,
            workdir,
            command,
            user: rec.config.user.clone(),
        })
    }
}

/// The runtime defaults from an image config blob.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfig, serde_json::Error> {
    let section = serde_json::from_slice::<ConfigFile>(bytes)?.config.unwrap_or_default();
    Ok(ImageConfig {
        entrypoint: section.entrypoint.unwrap_or_default(),
        cmd: section.cmd.unwrap_or_default(),
        env: section.env.unwrap_or_default(),
        working_dir: section.working_dir.unwrap_or_default(),
        user: section.user.unwrap_or_default(),
    })
}

fn sha256_file(p: &Path) -> Result<String, Error> {
    let mut f = fs::File::open(p).map_err(io_err(p))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf).map_err(io_err(p))? {
            0 => return Ok(format!("sha256:{:x}", h.finalize())),
            n => h.update(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_waits_for_holds_and_removes_only_unreferenced_layers() {
        let dir = std::env::temp_dir().join(format!("hangar-prune-{}", std::process::id()));
        let store = ImageStore::new(&dir);
        // A layer that is unpacked but not yet recorded: exactly what an import in flight looks like.
        let layer = store.layer_dir("sha256:abc");
        fs::create_dir_all(layer.join("etc")).unwrap();
        let hold = store.hold().unwrap();
        let second = store.hold().expect("holds do not wait for each other");
        let pruner = {
            let store = store.clone();
            std::thread::spawn(move || store.prune(|| Ok::<_, Error>(Default::default())))
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!pruner.is_finished(), "prune must wait while the store is held");
        assert!(layer.exists());
        drop((hold, second));
        assert_eq!(pruner.join().unwrap().unwrap(), (1, 0));
        assert!(!layer.exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
