//! Imported images: a content-addressed blob store, layers unpacked once and shared, and image records by
//! reference. `import` reads a `docker save` archive or an OCI image layout (tar, optionally gzip).

use crate::archive::{Archive, MAX_BLOB_BYTES, MAX_JSON_BYTES};
use crate::{unpack_layer, Error, ImageLayout, ImageStore, Reference};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file whose flock orders prunes against imports, pulls and sandbox starts.
const LOCK_FILE: &str = ".lock";
/// Name prefix of an import's work directory (in the store's root).
const IMPORT_PREFIX: &str = ".import-";
/// Name prefix of a blob or layer directory being written (in `blobs/sha256/` and `layers/`).
const TMP_PREFIX: &str = ".tmp-";
/// Name prefix of a blob being downloaded (in `blobs/`, by `registry.rs`).
pub(crate) const PULL_PREFIX: &str = ".pull-";

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
    #[serde(default)]
    size: Option<u64>,
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

fn parse<T: serde::de::DeserializeOwned>(archive: &Path, what: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| bad_archive(archive, format!("{what}: {e}")))
}

/// The archive entry of OCI blob `d` and the most that may be read of it, after checking it: a regular
/// file of at most `max` bytes, with the content its digest names, and (when its descriptor declares a
/// size) of that size. The declared size then bounds every later read of it.
fn oci_blob(archive: &Archive, path: &Path, d: &Descriptor, max: u64) -> Result<(String, u64), Error> {
    let digest = &d.digest;
    let (algo, hex) = digest.split_once(':').ok_or_else(|| bad_archive(path, format!("bad digest {digest}")))?;
    if algo != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_archive(path, format!("unsupported digest {digest}")));
    }
    let entry = format!("blobs/{algo}/{hex}");
    let blob = archive.open(&entry, max)?.ok_or_else(|| bad_archive(path, format!("blob {digest} is missing")))?;
    // The digest first: for a corrupt blob, "does not match its digest" is the error that says what is wrong.
    if blob.digest != *digest {
        let actual = &blob.digest;
        return Err(bad_archive(path, format!("blob {digest} does not match its digest (content is {actual})")));
    }
    match d.size {
        Some(declared) if blob.size > declared => {
            Err(Error::ArchiveEntryTooLarge { archive: path.to_path_buf(), entry, limit: declared })
        }
        Some(declared) if blob.size < declared => {
            Err(bad_archive(path, format!("blob {digest} is {} bytes; its descriptor says {declared}", blob.size)))
        }
        _ => Ok((entry, blob.size)),
    }
}

/// The content of OCI blob `d` (a manifest or a config, parsed in memory), checked as [`oci_blob`] does.
fn oci_small_blob(archive: &Archive, path: &Path, d: &Descriptor) -> Result<Vec<u8>, Error> {
    let (entry, limit) = oci_blob(archive, path, d, MAX_JSON_BYTES)?;
    let missing = || bad_archive(path, format!("blob {} is missing", d.digest));
    Ok(archive.read_small(&entry, limit)?.ok_or_else(missing)?.0)
}

/// A temporary file or directory of the store, removed when dropped (on every error path, and when a
/// panic unwinds) unless [`TempPath::keep`] says it has been renamed into place.
#[derive(Debug)]
struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    fn new(path: PathBuf) -> Self {
        Self { path, keep: false }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Best effort: a drop cannot report, and whatever stays is removed by the next prune.
        match fs::symlink_metadata(&self.path) {
            Ok(md) if md.is_dir() => {
                let _ = fs::remove_dir_all(&self.path);
            }
            Ok(_) => {
                let _ = fs::remove_file(&self.path);
            }
            Err(_) => {}
        }
    }
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
    /// Of the archive's own structure only regular files are read (see `archive.rs`), each within a size
    /// limit; blobs are verified against their digests and each layer is unpacked once. On any error nothing
    /// half-written is left in the store, and the work directory is removed however the import ends.
    pub fn import(&self, archive: &Path) -> Result<Vec<ImageRecord>, Error> {
        // Declared before the work directory, so dropped after it: the directory is gone before the hold
        // is released, which is what lets prune treat every `.import-*` it finds as stale.
        let _hold = self.hold()?;
        let work = self.root.join(format!("{IMPORT_PREFIX}{}-{}", std::process::id(), crate::unique()));
        fs::create_dir(&work).map_err(io_err(&work))?;
        let work = TempPath::new(work);
        self.import_from(archive, work.path())
    }

    fn import_from(&self, path: &Path, work: &Path) -> Result<Vec<ImageRecord>, Error> {
        let archive = Archive::scan(path, work)?;
        let bad = |message: String| bad_archive(path, message);
        // Everything is checked before anything is stored: (names, config id, config, layers as
        // (digest, archive entry, size limit)).
        let mut images = vec![];
        if archive.has("index.json") {
            if archive.has("oci-layout") {
                // Not needed to import, but part of the structure: it is held to the same rules.
                let (layout, _) = archive.read_small("oci-layout", MAX_JSON_BYTES)?.unwrap_or_default();
                parse::<serde_json::Value>(path, "oci-layout", &layout)?;
            }
            let (bytes, _) = archive.read_small("index.json", MAX_JSON_BYTES)?.unwrap_or_default();
            let index: OciIndex = parse(path, "index.json", &bytes)?;
            for m in index.manifests {
                if m.media_type.contains("index") || m.media_type.contains("manifest.list") {
                    return Err(bad("nested image indexes are not supported yet".into()));
                }
                let name = m
                    .annotations
                    .get("io.containerd.image.name")
                    .or_else(|| m.annotations.get("org.opencontainers.image.ref.name"))
                    .cloned()
                    .ok_or_else(|| bad(format!("manifest {} has no image name annotation", m.digest)))?;
                let bytes = oci_small_blob(&archive, path, &m)?;
                let manifest: OciManifest = parse(path, &format!("manifest {}", m.digest), &bytes)?;
                let bytes = oci_small_blob(&archive, path, &manifest.config)?;
                let config = parse_config(&bytes).map_err(|e| bad(format!("image config: {e}")))?;
                let layers = manifest
                    .layers
                    .iter()
                    .map(|l| {
                        oci_blob(&archive, path, l, MAX_BLOB_BYTES)
                            .map(|(entry, limit)| (l.digest.clone(), entry, limit))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                images.push((vec![name], manifest.config.digest.clone(), config, layers));
            }
        } else if archive.has("manifest.json") {
            let (bytes, _) = archive.read_small("manifest.json", MAX_JSON_BYTES)?.unwrap_or_default();
            let entries: Vec<DockerManifestEntry> = parse(path, "manifest.json", &bytes)?;
            for e in entries {
                let layers = e
                    .layers
                    .iter()
                    .map(|l| {
                        // No digest to check against: a docker save layer is named by the digest of its content.
                        let blob =
                            archive.open(l, MAX_BLOB_BYTES)?.ok_or_else(|| bad(format!("layer {l} is missing")))?;
                        Ok((blob.digest, l.clone(), MAX_BLOB_BYTES))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let (bytes, id) = archive
                    .read_small(&e.config, MAX_JSON_BYTES)?
                    .ok_or_else(|| bad(format!("config {} is missing", e.config)))?;
                let config = parse_config(&bytes).map_err(|e| bad(format!("image config: {e}")))?;
                images.push((e.repo_tags.unwrap_or_default(), id, config, layers));
            }
        } else {
            return Err(bad("neither an OCI layout (index.json) nor a docker save archive (manifest.json)".into()));
        }
        let mut records = vec![];
        for (names, id, config, layers) in images {
            let mut digests = vec![];
            for (digest, entry, limit) in layers {
                let blob = archive.open(&entry, limit)?.ok_or_else(|| bad(format!("layer {entry} is missing")))?;
                self.store_layer_from(&digest, blob.file)?;
                digests.push(digest);
            }
            for name in if names.is_empty() { vec![format!("imported/{}", &id[7..19])] } else { names } {
                let reference = Reference::parse(&name).map_err(|e| bad(e.to_string()))?.to_string();
                let rec = ImageRecord { reference, id: id.clone(), layers: digests.clone(), config: config.clone() };
                self.write_record(&rec)?;
                records.push(rec);
            }
        }
        Ok(records)
    }

    /// Copies a layer blob into the store and unpacks it once (in a temporary directory renamed into place).
    pub(crate) fn store_layer(&self, digest: &str, blob: &Path) -> Result<(), Error> {
        let file = fs::File::open(blob).map_err(io_err(blob))?;
        self.store_layer_from(digest, file)
    }

    /// [`ImageStore::store_layer`] from an open blob. The temporaries it makes go however it ends.
    fn store_layer_from(&self, digest: &str, mut blob: fs::File) -> Result<(), Error> {
        let dest = self.blob_path(digest);
        if !dest.exists() {
            let parent = dest.parent().unwrap_or(&self.root);
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            let tmp = parent.join(format!("{TMP_PREFIX}{}-{}", std::process::id(), crate::unique()));
            // Guarded only once it is ours: create_new fails rather than take over an existing name.
            let mut out = fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
            let tmp = TempPath::new(tmp);
            std::io::copy(&mut blob, &mut out).map_err(io_err(tmp.path()))?;
            fs::rename(tmp.path(), &dest).map_err(io_err(&dest))?;
            tmp.keep();
        }
        let dir = self.layer_dir(digest);
        if dir.exists() {
            return Ok(());
        }
        let layers = self.root.join("layers");
        fs::create_dir_all(&layers).map_err(io_err(&layers))?;
        let tmp = layers.join(format!("{TMP_PREFIX}{}-{}", std::process::id(), crate::unique()));
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let tmp = TempPath::new(tmp);
        let unpacked = fs::File::open(&dest).map_err(io_err(&dest))?;
        unpack_layer(unpacked, tmp.path(), digest)?;
        match fs::rename(tmp.path(), &dir) {
            Ok(()) => tmp.keep(),
            // Another import or pull unpacked it first: theirs serves, ours goes with the guard.
            Err(_) if dir.exists() => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        Ok(())
    }

    /// Removes what imports and pulls that never got to clean up (killed, or the machine went down) left:
    /// `.import-*` work directories and `.tmp-*`/`.pull-*` blobs and layer directories. Only called with
    /// the store held exclusively; see [`ImageStore::prune`] for why that makes every one of them stale.
    fn remove_stale_temporaries(&self) -> Result<(), Error> {
        let blobs = self.root.join("blobs");
        let places = [
            (self.root.clone(), IMPORT_PREFIX),
            (self.root.join("layers"), TMP_PREFIX),
            (blobs.join("sha256"), TMP_PREFIX),
            (blobs, PULL_PREFIX),
        ];
        for (dir, prefix) in places {
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
                    continue;
                }
                let path = e.path();
                // The entry's own type (lstat): a symlink is removed itself, never followed.
                let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match removed {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&path)(err)),
                    _ => {}
                }
            }
        }
        Ok(())
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
    /// mounted. Temporaries left by imports and pulls that died midway go too (they are not counted).
    pub fn prune<E: From<Error>>(
        &self,
        in_use: impl FnOnce() -> Result<std::collections::HashSet<PathBuf>, E>,
    ) -> Result<(usize, usize), E> {
        let lock = self.lock_file()?;
        lock.lock().map_err(io_err(&self.root.join(LOCK_FILE)))?;
        // Every import and pull makes and removes its temporaries while it holds the store (a shared flock
        // on LOCK_FILE, which the kernel also releases when its process dies, however it dies). Holding it
        // exclusively, we know no live import or pull in any process owns one now: whatever is left is from
        // one that died, and is removed. (An age threshold would be weaker: importing a large archive can
        // outlast any threshold, and a hold is exactly "still running".)
        self.remove_stale_temporaries()?;
        let in_use = in_use()?;
        let referenced: std::collections::HashSet<String> = self.list()?.into_iter().flat_map(|r| r.layers).collect();
        let (mut layers, mut blobs) = (0, 0);
        for e in fs::read_dir(self.root.join("layers")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().replace('-', ":");
            // Dot-names are temporaries (stale ones are gone by now), never layers.
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

    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    use tar::EntryType::{self, *};

    /// One archive entry: name, type, content, link target.
    type Entry = (String, EntryType, Vec<u8>, Option<String>);

    fn file(name: &str, data: impl Into<Vec<u8>>) -> Entry {
        (name.to_string(), Regular, data.into(), None)
    }

    fn special(name: &str, kind: EntryType, target: &str) -> Entry {
        (name.to_string(), kind, vec![], Some(target.to_string()).filter(|t| !t.is_empty()))
    }

    fn digest(b: &[u8]) -> String {
        format!("sha256:{:x}", Sha256::digest(b))
    }

    /// A tar of `entries`, names written raw (no builder checks), as a hostile archive would be. Owned by
    /// whoever runs the test, so layers unpack without root.
    fn tar_of(entries: &[Entry]) -> Vec<u8> {
        // A file this process makes is owned by its user and group.
        let probe =
            std::env::temp_dir().join(format!("hangar-import-owner-{}-{}", std::process::id(), crate::unique()));
        fs::write(&probe, b"").unwrap();
        let me = fs::metadata(&probe).unwrap();
        fs::remove_file(&probe).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == Directory { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_uid(me.uid().into());
            h.set_gid(me.gid().into());
            h.set_mtime(0);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// The test layer: a file, and a symlink to an absolute path (ordinary image content).
    fn layer() -> Vec<u8> {
        tar_of(&[
            special("etc/", Directory, ""),
            file("etc/motd", "hello from the layer\n"),
            special("bin/sh", Symlink, "/usr/bin/dash"),
        ])
    }

    fn config() -> Vec<u8> {
        br#"{"config":{"Cmd":["/bin/sh"],"Env":["A=1"],"WorkingDir":"/etc"}}"#.to_vec()
    }

    /// An OCI image layout for `name`: oci-layout, index.json, and the manifest, config and layer blobs.
    fn oci_entries(name: &str, layers: &[&[u8]], config: &[u8]) -> Vec<Entry> {
        oci_entries_declaring(name, layers, config, |l| l.len())
    }

    /// [`oci_entries`], with each layer's descriptor declaring `size(layer)` bytes.
    fn oci_entries_declaring(name: &str, layers: &[&[u8]], config: &[u8], size: fn(&[u8]) -> usize) -> Vec<Entry> {
        let descs: Vec<_> = layers
            .iter()
            .map(|l| {
                let media = "application/vnd.oci.image.layer.v1.tar";
                serde_json::json!({"mediaType": media, "digest": digest(l), "size": size(l)})
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                       "size": config.len()},
            "layers": descs,
        }))
        .unwrap();
        let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest),
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": name}}]}))
        .unwrap();
        let mut out = vec![
            file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
            file("index.json", index),
            special("blobs/", Directory, ""),
            special("blobs/sha256/", Directory, ""),
        ];
        for b in [&manifest[..], config].into_iter().chain(layers.iter().map(|l| &l[..])) {
            out.push(file(&blob_name(&digest(b)), b));
        }
        out
    }

    fn blob_name(digest: &str) -> String {
        format!("blobs/sha256/{}", &digest[7..])
    }

    /// A `docker save` archive for `tag`: manifest.json, config.json and `<n>/layer.tar`.
    fn docker_entries(tag: &str, layers: &[&[u8]], config: &[u8]) -> Vec<Entry> {
        let names: Vec<String> = (0..layers.len()).map(|i| format!("{i}/layer.tar")).collect();
        let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": names}]);
        let mut out = vec![file("manifest.json", serde_json::to_vec(&manifest).unwrap()), file("config.json", config)];
        out.extend(names.iter().zip(layers).map(|(n, l)| file(n, &l[..])));
        out
    }

    /// A fresh store and a directory beside it for archives and "host" files.
    fn setup(name: &str) -> (ImageStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("hangar-import-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("host")).unwrap();
        (ImageStore::new(dir.join("store")), dir)
    }

    fn write_archive(dir: &Path, name: &str, entries: &[Entry], gzip: bool) -> PathBuf {
        let mut bytes = tar_of(entries);
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            bytes = gz.finish().unwrap();
        }
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Every path under `dir` (symlinks not followed).
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
        out
    }

    /// Temporaries left in the store: there must be none once an import has returned, however it ended.
    fn leftovers(store: &ImageStore) -> Vec<PathBuf> {
        walk(&store.root)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".import") || n.starts_with(".tmp"))
            })
            .collect()
    }

    /// Asserts `err` is the typed refusal of `entry` as a `kind`, with the message users see.
    fn assert_not_regular(err: Result<Vec<ImageRecord>, Error>, want_entry: &str, want_kind: &str) {
        match err {
            Err(e @ Error::ArchiveEntryNotRegular { .. }) => {
                let msg = e.to_string();
                let Error::ArchiveEntryNotRegular { entry, kind, .. } = e else { unreachable!() };
                assert_eq!((entry.as_str(), kind.as_str()), (want_entry, want_kind));
                let want = format!("archive entry {want_entry} is a {want_kind}; only regular files are read");
                assert!(msg.contains(&want), "{msg}");
            }
            other => panic!("expected {want_entry} refused as a {want_kind}, got {other:?}"),
        }
    }

    #[test]
    fn normal_archives_still_import_with_symlinks_inside_their_layers() {
        let (store, dir) = setup("ok");
        let (layer, config) = (layer(), config());
        let oci = write_archive(&dir, "oci.tar.gz", &oci_entries("localhost/ok:1", &[&layer], &config), true);
        let recs = store.import(&oci).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].reference, "localhost/ok:1");
        assert_eq!(recs[0].id, digest(&config));
        assert_eq!(recs[0].layers, [digest(&layer)]);
        assert_eq!(
            (recs[0].config.cmd.clone(), recs[0].config.working_dir.clone()),
            (vec!["/bin/sh".into()], "/etc".into())
        );
        let unpacked = store.layer_dir(&digest(&layer));
        assert_eq!(fs::read_to_string(unpacked.join("etc/motd")).unwrap(), "hello from the layer\n");
        assert_eq!(fs::read_link(unpacked.join("bin/sh")).unwrap(), Path::new("/usr/bin/dash"));
        assert_eq!(fs::read(store.blob_path(&digest(&layer))).unwrap(), layer);

        let saved = write_archive(&dir, "docker.tar", &docker_entries("localhost/ok:2", &[&layer], &config), false);
        let recs = store.import(&saved).unwrap();
        assert_eq!((recs[0].reference.as_str(), &recs[0].layers[..]), ("localhost/ok:2", &[digest(&layer)][..]));
        assert_eq!(recs[0].config.env, ["A=1"]);
        let refs: Vec<_> = store.list().unwrap().into_iter().map(|r| r.reference).collect();
        assert_eq!(refs, ["localhost/ok:1", "localhost/ok:2"]);
        assert_eq!(leftovers(&store), Vec::<PathBuf>::new());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn structure_files_that_are_not_regular_files_are_refused_by_name() {
        let (store, dir) = setup("links");
        let started = std::time::Instant::now();
        let (layer, config) = (layer(), config());
        let docker = docker_entries("localhost/evil:1", &[&layer], &config);
        let oci = oci_entries("localhost/evil:2", &[&layer], &config);
        // Replaces the entry named `name` (or adds it) with `with`.
        let swap = |entries: &[Entry], name: &str, with: Entry| -> Vec<Entry> {
            let mut out: Vec<Entry> = entries.iter().filter(|e| e.0 != name).cloned().collect();
            out.push(with);
            out
        };
        let index: serde_json::Value =
            serde_json::from_slice(&oci.iter().find(|e| e.0 == "index.json").unwrap().2).unwrap();
        let manifest_blob = blob_name(index["manifests"][0]["digest"].as_str().unwrap());
        let cases: Vec<(Vec<Entry>, &str, &str)> = vec![
            // Followed, this would never end: /dev/zero has no end, and a whole manifest is read into memory.
            (
                swap(&docker, "manifest.json", special("manifest.json", Symlink, "/dev/zero")),
                "manifest.json",
                "symlink",
            ),
            (swap(&oci, "index.json", special("index.json", Symlink, "/dev/zero")), "index.json", "symlink"),
            (swap(&oci, "oci-layout", special("oci-layout", Symlink, "/dev/zero")), "oci-layout", "symlink"),
            (swap(&docker, "config.json", special("config.json", Symlink, "/dev/zero")), "config.json", "symlink"),
            (swap(&oci, &manifest_blob, special(&manifest_blob, Symlink, "/dev/zero")), &manifest_blob, "symlink"),
            (swap(&docker, "manifest.json", special("manifest.json", Link, "/dev/zero")), "manifest.json", "hard link"),
            (swap(&oci, "index.json", special("index.json", Fifo, "")), "index.json", "FIFO"),
            (swap(&docker, "manifest.json", special("manifest.json", Char, "")), "manifest.json", "character device"),
            (swap(&docker, "manifest.json", special("manifest.json/", Directory, "")), "manifest.json", "directory"),
            // A later entry of the same name wins, as on unpacking: a regular file first does not help.
            (
                [docker.clone(), vec![special("./manifest.json", Symlink, "/dev/zero")]].concat(),
                "manifest.json",
                "symlink",
            ),
        ];
        for (i, (entries, entry, kind)) in cases.iter().enumerate() {
            let archive = write_archive(&dir, &format!("case{i}.tar"), entries, i % 2 == 0);
            assert_not_regular(store.import(&archive), entry, kind);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "nothing was read without end");
        assert_eq!(store.list().unwrap(), vec![], "no image was recorded");
        assert!(!store.layer_dir(&digest(&layer)).exists(), "refused before any layer was stored");
        assert_eq!(leftovers(&store), Vec::<PathBuf>::new());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_layer_linked_to_a_host_file_is_refused_and_the_file_is_not_imported() {
        let (store, dir) = setup("stolen");
        // The "host file" is a valid layer: were it followed, it would import cleanly.
        let secret = b"hangar-test-secret-3f9a1c";
        let stolen = tar_of(&[file("stolen", &secret[..])]);
        let host = dir.join("host/shadow");
        fs::write(&host, &stolen).unwrap();
        let host = host.to_str().unwrap();
        let config = config();
        let oci = oci_entries("localhost/stolen:1", &[&stolen], &config);
        let blob = blob_name(&digest(&stolen));
        let mut oci_link: Vec<Entry> = oci.iter().filter(|e| e.0 != blob).cloned().collect();
        oci_link.push(special(&blob, Symlink, host));
        let docker = docker_entries("localhost/stolen:2", &[&stolen], &config);
        let docker_link = |kind| -> Vec<Entry> {
            let mut out: Vec<Entry> = docker.iter().filter(|e| e.0 != "0/layer.tar").cloned().collect();
            out.push(special("0/layer.tar", kind, host));
            out
        };
        // A symlinked directory on the way is not followed either: the layer is simply not in the archive.
        fs::write(dir.join("host/layer.tar"), &stolen).unwrap();
        let mut dir_link: Vec<Entry> = docker.iter().filter(|e| e.0 != "0/layer.tar").cloned().collect();
        dir_link.push(special("0", Symlink, dir.join("host").to_str().unwrap()));
        let archive = write_archive(&dir, "oci.tar", &oci_link, false);
        assert_not_regular(store.import(&archive), &blob, "symlink");
        let archive = write_archive(&dir, "docker.tar.gz", &docker_link(Symlink), true);
        assert_not_regular(store.import(&archive), "0/layer.tar", "symlink");
        let archive = write_archive(&dir, "docker-hardlink.tar", &docker_link(Link), false);
        assert_not_regular(store.import(&archive), "0/layer.tar", "hard link");
        let archive = write_archive(&dir, "docker-dir.tar", &dir_link, false);
        let err = store.import(&archive).unwrap_err().to_string();
        assert!(err.contains("layer 0/layer.tar is missing"), "{err}");
        for p in walk(&store.root) {
            let content = fs::read(&p).unwrap_or_default();
            assert!(!content.windows(secret.len()).any(|w| w == secret), "{} holds the host file", p.display());
        }
        assert!(!store.blob_path(&digest(&stolen)).exists() && !store.layer_dir(&digest(&stolen)).exists());
        assert_eq!(store.list().unwrap(), vec![]);
        assert_eq!(leftovers(&store), Vec::<PathBuf>::new());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oversized_entries_are_refused() {
        let (store, dir) = setup("big");
        let (layer, config) = (layer(), config());
        let too_large = |r: Result<Vec<ImageRecord>, Error>, want_entry: &str, want_limit: u64| match r {
            Err(Error::ArchiveEntryTooLarge { entry, limit, .. }) => {
                assert_eq!((entry.as_str(), limit), (want_entry, want_limit))
            }
            other => panic!("expected {want_entry} refused as over {want_limit} bytes, got {other:?}"),
        };
        // manifest.json one byte over the limit (valid JSON, so only its size is wrong).
        let mut big = b"[".to_vec();
        big.resize(MAX_JSON_BYTES as usize - 1, b' ');
        big.extend(b"]\n");
        let mut entries = docker_entries("localhost/big:1", &[&layer], &config);
        entries[0] = file("manifest.json", big.clone());
        too_large(
            store.import(&write_archive(&dir, "manifest.tar.gz", &entries, true)),
            "manifest.json",
            MAX_JSON_BYTES,
        );
        // A config is only known to be one once manifest.json names it: refused on reading.
        let mut entries = docker_entries("localhost/big:2", &[&layer], &config);
        entries[1] = file("config.json", big);
        too_large(store.import(&write_archive(&dir, "config.tar", &entries, false)), "config.json", MAX_JSON_BYTES);
        // A layer blob bigger than its descriptor declares (its digest matching: only its size is wrong).
        let entries = oci_entries_declaring("localhost/big:3", &[&layer], &config, |l| l.len() - 512);
        let blob = blob_name(&digest(&layer));
        let declared = layer.len() as u64 - 512;
        too_large(store.import(&write_archive(&dir, "layer.tar", &entries, false)), &blob, declared);
        // One whose bytes were changed is a digest mismatch, whatever its size.
        let mut entries = oci_entries("localhost/big:4", &[&layer], &config);
        let at = entries.iter().position(|e| e.0 == blob).unwrap();
        entries[at].2.extend([0u8; 512]);
        let err = store.import(&write_archive(&dir, "corrupt.tar", &entries, false)).unwrap_err().to_string();
        assert!(err.contains(&format!("blob {} does not match its digest", digest(&layer))), "{err}");
        // An entry claiming more than any layer may be is refused on its header, before a byte is copied (the
        // archive is truncated right after it: reading on would fail differently).
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(Regular);
        h.set_size(MAX_BLOB_BYTES + 1);
        h.set_path("0/layer.tar").unwrap();
        h.set_cksum();
        let mut huge = tar_of(&docker_entries("localhost/big:5", &[], &config)[..2]);
        huge.truncate(huge.len() - 1024); // the end-of-archive blocks
        huge.extend(h.as_bytes());
        fs::write(dir.join("huge.tar"), huge).unwrap();
        too_large(store.import(&dir.join("huge.tar")), "0/layer.tar", MAX_BLOB_BYTES);
        assert_eq!(store.list().unwrap(), vec![]);
        assert_eq!(leftovers(&store), Vec::<PathBuf>::new());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_imports_clean_up_and_prune_removes_what_crashed_ones_left() {
        let (store, dir) = setup("cleanup");
        let config = config();
        // Fails late: after the archive is copied into the work directory, while unpacking the layer.
        let escaping = tar_of(&[file("../../escaped", "x")]);
        let archive = write_archive(&dir, "escape.tar", &oci_entries("localhost/bad:1", &[&escaping], &config), false);
        match store.import(&archive) {
            Err(Error::UnsafeLayer { message, .. }) => assert!(message.contains("escapes"), "{message}"),
            other => panic!("expected UnsafeLayer, got {other:?}"),
        }
        assert!(!store.layer_dir(&digest(&escaping)).exists());
        // Fails early: not an image archive at all; and not an archive.
        let archive = write_archive(&dir, "empty.tar", &[file("README", "hi")], false);
        assert!(store.import(&archive).unwrap_err().to_string().contains("neither an OCI layout"));
        fs::write(dir.join("junk.tar"), [7u8; 1000]).unwrap();
        assert!(store.import(&dir.join("junk.tar")).is_err());
        assert_eq!(leftovers(&store), Vec::<PathBuf>::new());

        // What a killed import or pull leaves behind; and things that are not theirs, which stay.
        let stale = [
            store.root.join(".import-999999-0/blobs"),
            store.root.join("layers/.tmp-999999-1/etc"),
            store.root.join("blobs/sha256/.tmp-999999-2"),
            store.root.join("blobs/.pull-999999-3"),
        ];
        for p in &stale[..2] {
            fs::create_dir_all(p).unwrap();
        }
        for p in &stale[2..] {
            fs::write(p, b"partial").unwrap();
        }
        fs::write(dir.join("host/keep"), b"not the store's").unwrap();
        std::os::unix::fs::symlink(dir.join("host"), store.root.join(".import-999999-9")).unwrap();
        let builtin_tmp = store.root.join(".builtin-v1.999999.0");
        fs::create_dir_all(&builtin_tmp).unwrap();
        let (layers, blobs) = store.prune(|| Ok::<_, Error>(Default::default())).unwrap();
        // The one blob is the escaping layer's, stored before its unpacking failed: complete, unreferenced.
        assert_eq!((layers, blobs), (0, 1), "temporaries are not counted as layers or blobs");
        for p in &stale {
            assert!(!p.exists(), "{} was left", p.display());
        }
        assert!(fs::symlink_metadata(store.root.join(".import-999999-9")).is_err(), "a stale symlink goes");
        assert_eq!(fs::read(dir.join("host/keep")).unwrap(), b"not the store's", "what it pointed to stays");
        assert!(builtin_tmp.exists(), "only the store's own temporary names are removed");
        assert_eq!(leftovers(&store), Vec::<PathBuf>::new());
        fs::remove_dir_all(&dir).unwrap();
    }
}
