//! Pulling images over the OCI distribution API: manifests (OCI and Docker v2, indexes and manifest lists
//! resolved to this machine's platform), bearer-token auth (anonymous or with docker `config.json`
//! credentials), digest-verified blobs with resumed retries, registry mirrors with a fallback order.
//!
//! HTTPS (rustls, Mozilla's roots, or the CA file in `HANGAR_REGISTRY_CA`) everywhere except registries
//! configured as insecure, which are reached over plain HTTP.

use crate::{Error, ImageRecord, ImageStore, Reference};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.docker.distribution.manifest.v2+json";
const RETRIES: u32 = 3;

/// Where to pull from: mirrors per registry (tried in order before the registry itself) and registries
/// reached over plain HTTP. Read from `$HANGAR_STATE_DIR/registries.json` and the environment
/// (`HANGAR_REGISTRY_MIRRORS="docker.io=http://127.0.0.1:5000,http://b;quay.io=..."`,
/// `HANGAR_INSECURE_REGISTRIES="127.0.0.1:5000,localhost:5000"`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RegistryConfig {
    /// Registry host → mirror base URLs, in fallback order.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registry hosts reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Whether to try the registry itself after its mirrors.
    #[serde(default = "yes")]
    pub fallback_to_origin: bool,
    /// PEM file of CA certificates to trust instead of Mozilla's roots (an internal registry's CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl RegistryConfig {
    /// The configuration file (if any) merged with the environment.
    pub fn load(file: Option<&std::path::Path>) -> Self {
        let mut cfg: RegistryConfig = file
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| RegistryConfig { fallback_to_origin: true, ..Default::default() });
        if let Ok(m) = std::env::var("HANGAR_REGISTRY_MIRRORS") {
            for entry in m.split(';').filter(|e| !e.trim().is_empty()) {
                if let Some((reg, urls)) = entry.split_once('=') {
                    cfg.mirrors.insert(reg.trim().into(), urls.split(',').map(|u| u.trim().to_string()).collect());
                }
            }
        }
        if let Some(ca) = std::env::var_os("HANGAR_REGISTRY_CA") {
            cfg.ca_file = Some(PathBuf::from(ca));
        }
        if let Ok(i) = std::env::var("HANGAR_INSECURE_REGISTRIES") {
            cfg.insecure.extend(i.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
        }
        cfg
    }

    fn endpoints(&self, registry: &str) -> Vec<String> {
        let mut out = self.mirrors.get(registry).cloned().unwrap_or_default();
        if self.fallback_to_origin || out.is_empty() {
            let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
            // An entry without a port (e.g. `127.0.0.1`) covers every port of that host.
            let hostname = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
            let insecure = self.insecure.iter().any(|h| h == registry || h == hostname);
            let scheme = if insecure { "http" } else { "https" };
            out.push(format!("{scheme}://{host}"));
        }
        out
    }
}

/// One registry endpoint with the token it earned.
struct Endpoint {
    agent: ureq::Agent,
    base: String,
    repo: String,
    token: Option<String>,
    registry: String,
}

fn pull_err(reference: &str, message: String) -> Error {
    Error::Pull { reference: reference.to_string(), message }
}

impl Endpoint {
    /// GET `path` (under /v2/<repo>/), answering a bearer challenge once.
    fn get(&mut self, path: &str, accept: &str, range_from: u64) -> Result<ureq::http::Response<ureq::Body>, String> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repo);
        for attempt in 0..2 {
            let mut req = self.agent.get(&url).header("Accept", accept);
            if let Some(t) = &self.token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            if range_from > 0 {
                req = req.header("Range", &format!("bytes={range_from}-"));
            }
            let resp = req.call().map_err(|e| format!("{url}: {e}"))?;
            if resp.status() == 401 && attempt == 0 {
                let challenge =
                    resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                self.token = Some(self.fetch_token(&challenge).map_err(|e| format!("{url}: authentication: {e}"))?);
                continue;
            }
            return Ok(resp);
        }
        Err(format!("{url}: unauthorized"))
    }

    fn fetch_token(&self, challenge: &str) -> Result<String, String> {
        let rest = challenge.strip_prefix("Bearer ").ok_or_else(|| format!("unsupported challenge {challenge:?}"))?;
        let mut params = BTreeMap::new();
        for part in rest.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                params.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        let realm = params.get("realm").ok_or("no realm in the challenge")?;
        let mut url = format!("{realm}?");
        for k in ["service", "scope"] {
            if let Some(v) = params.get(k) {
                url.push_str(&format!("{k}={}&", v.replace(' ', "%20")));
            }
        }
        let mut req = self.agent.get(&url);
        if let Some(basic) = docker_credentials(&self.registry) {
            req = req.header("Authorization", &format!("Basic {basic}"));
        }
        let mut resp = req.call().map_err(|e| format!("{url}: {e}"))?;
        if resp.status() != 200 {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let body: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().map_err(|e| e.to_string())?)
                .map_err(|e| format!("token response: {e}"))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| "no token in the response".into())
    }

    fn manifest(&mut self, reference: &str) -> Result<(String, Vec<u8>), String> {
        let mut resp = self.get(&format!("manifests/{reference}"), ACCEPT, 0)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(format!("manifest {reference} not found in {}/{}", self.base, self.repo)),
            s => return Err(format!("manifest {reference}: HTTP {s}")),
        }
        let media = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = resp.body_mut().with_config().limit(16 << 20).read_to_vec().map_err(|e| e.to_string())?;
        if reference.starts_with("sha256:") && format!("sha256:{:x}", Sha256::digest(&body)) != reference {
            return Err(format!("manifest {reference} does not match its digest"));
        }
        Ok((media, body))
    }

    /// Downloads blob `digest` into `dest`, verifying it; resumes with a Range request after a failure.
    fn blob(&mut self, digest: &str, dest: &std::path::Path, mut progress: impl FnMut(u64)) -> Result<(), String> {
        let mut file = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        let mut last_err = String::new();
        for _ in 0..=RETRIES {
            let mut resp = match self.get(&format!("blobs/{digest}"), "*/*", have) {
                Ok(r) => r,
                Err(e) => {
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            match resp.status().as_u16() {
                200 if have > 0 => {
                    // The server ignored the range: start over.
                    file = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                    hasher = Sha256::new();
                    have = 0;
                }
                200 | 206 => {}
                404 => return Err(format!("blob {digest} not found")),
                s => {
                    last_err = format!("blob {digest}: HTTP {s}");
                    continue;
                }
            }
            let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 256 * 1024];
            let done = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        file.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", dest.display()))?;
                        have += n as u64;
                        progress(have);
                    }
                    Err(e) => {
                        last_err = format!("blob {digest}: download broke after {have} bytes: {e}");
                        break false;
                    }
                }
            };
            if done {
                let actual = format!("sha256:{:x}", hasher.finalize());
                return if actual == digest {
                    Ok(())
                } else {
                    Err(format!("blob {digest} does not match its digest (got {actual})"))
                };
            }
        }
        Err(last_err)
    }
}

/// Base64-encoded `user:password` for `registry` from `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
fn docker_credentials(registry: &str) -> Option<String> {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?
        .join("config.json");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let auths = cfg.get("auths")?.as_object()?;
    let keys = if registry == "docker.io" {
        vec!["https://index.docker.io/v1/", "docker.io", "index.docker.io"]
    } else {
        vec![registry]
    };
    keys.iter().find_map(|k| auths.get(*k)).and_then(|a| a.get("auth")).and_then(|a| a.as_str()).map(str::to_string)
}

fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

impl ImageStore {
    /// Pulls `reference` (trying its mirrors, then the registry), stores its blobs and layers, and records
    /// it. `progress` hears `(layer digest, bytes so far, total bytes)`.
    pub fn pull(
        &self,
        reference: &str,
        cfg: &RegistryConfig,
        mut progress: impl FnMut(&str, u64, u64),
    ) -> Result<ImageRecord, Error> {
        let r = Reference::parse(reference).map_err(|e| pull_err(reference, e.to_string()))?;
        // Concurrent pulls of one image in this process download it once: the second waits for the first
        // and then finds the layers already unpacked.
        let lock = {
            static PULLS: std::sync::Mutex<BTreeMap<String, std::sync::Arc<std::sync::Mutex<()>>>> =
                std::sync::Mutex::new(BTreeMap::new());
            let mut pulls = PULLS.lock().unwrap_or_else(|p| p.into_inner());
            pulls.entry(r.to_string()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        let _hold = self.hold()?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| pull_err(reference, format!("CA file {}: {e}", ca.display())))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                return Err(pull_err(reference, format!("CA file {} holds no certificate", ca.display())));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .tls_config(tls.build())
            .build()
            .into();
        let mut failures = vec![];
        for base in cfg.endpoints(&r.registry) {
            let mut ep = Endpoint {
                agent: agent.clone(),
                base: base.trim_end_matches('/').to_string(),
                repo: r.repository.clone(),
                token: None,
                registry: r.registry.clone(),
            };
            match self.pull_from(&mut ep, &r, &mut progress) {
                Ok(rec) => return Ok(rec),
                Err(e) => failures.push(e),
            }
        }
        Err(pull_err(&r.to_string(), failures.join("; ")))
    }

    fn pull_from(
        &self,
        ep: &mut Endpoint,
        r: &Reference,
        progress: &mut impl FnMut(&str, u64, u64),
    ) -> Result<ImageRecord, String> {
        let want = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
        let (mut media, mut body) = ep.manifest(&want)?;
        let mut doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("manifest: {e}"))?;
        if media.contains("index") || media.contains("manifest.list") || doc.get("manifests").is_some() {
            let (os, arch) = platform();
            let digest = doc["manifests"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["platform"]["os"] == os && m["platform"]["architecture"] == arch))
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| format!("no {os}/{arch} image in the index"))?
                .to_string();
            (media, body) = ep.manifest(&digest)?;
            let _ = media;
            doc = serde_json::from_slice(&body).map_err(|e| format!("manifest: {e}"))?;
        }
        let config_digest = doc["config"]["digest"].as_str().ok_or("manifest has no config")?.to_string();
        let layers: Vec<(String, u64)> = doc["layers"]
            .as_array()
            .ok_or("manifest has no layers")?
            .iter()
            .map(|l| {
                Ok((l["digest"].as_str().ok_or("layer without digest")?.to_string(), l["size"].as_u64().unwrap_or(0)))
            })
            .collect::<Result<_, String>>()?;
        let tmp_dir = self.root.join("blobs");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| e.to_string())?;
        let fetch = |ep: &mut Endpoint,
                     digest: &str,
                     size: u64,
                     progress: &mut dyn FnMut(&str, u64, u64)|
         -> Result<PathBuf, String> {
            let tmp = tmp_dir.join(format!("{}{}-{}", crate::store::PULL_PREFIX, std::process::id(), crate::unique()));
            let got = ep.blob(digest, &tmp, |n| progress(digest, n, size));
            if got.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            got.map(|()| tmp)
        };
        let config_tmp = fetch(ep, &config_digest, 0, &mut |_, _, _| {})?;
        let config_bytes = std::fs::read(&config_tmp).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&config_tmp);
        let config = crate::store::parse_config(&config_bytes?).map_err(|e| e.to_string())?;
        for (digest, size) in &layers {
            if self.has_layer(digest) {
                progress(digest, *size, *size);
                continue;
            }
            let blob = fetch(ep, digest, *size, progress)?;
            let stored = self.store_layer(digest, &blob).map_err(|e| e.to_string());
            let _ = std::fs::remove_file(&blob);
            stored?;
        }
        let rec = ImageRecord {
            reference: r.to_string(),
            id: config_digest,
            layers: layers.into_iter().map(|(d, _)| d).collect(),
            config,
        };
        self.write_record(&rec).map_err(|e| e.to_string())?;
        Ok(rec)
    }
}
