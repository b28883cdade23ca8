//! Pulling from a real registry on loopback: Debian's `docker-registry`, started by the test on 127.0.0.1,
//! filled with `skopeo` from an OCI archive the test builds, then pulled through Hangar — directly, and as
//! `docker.io/...` through a configured mirror.

mod common;

/// Which backend `common::client()` gives.
pub const BACKEND: common::Backend = common::Backend::Embedded;

use common::images::test_image_archive;
use common::*;
use hangar_images::{ImageStore, RegistryConfig};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Registry {
    child: Child,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loopback registries are plain HTTP: tell the test client's engine before it first opens.
fn client_with_loopback_registries() -> hangar::Client {
    std::fs::create_dir_all(state_dir()).unwrap();
    std::fs::write(state_dir().join("registries.json"), r#"{"insecure": ["127.0.0.1"], "fallback_to_origin": true}"#)
        .unwrap();
    client()
}

/// A TCP proxy to `target` that sends the registry's answers slowly (about 1 MB/s), so a pull takes long
/// enough to be watched.
fn slow_proxy(target: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let upstream = std::net::TcpStream::connect(&target).unwrap();
            let (mut c_read, mut u_write) = (conn.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_read, &mut u_write));
            let (mut u_read, mut c_write) = (upstream, conn);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match std::io::Read::read(&mut u_read, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if std::io::Write::write_all(&mut c_write, &buf[..n]).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(15));
                        }
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_registry() -> Registry {
    let bin = "/usr/bin/docker-registry";
    assert!(std::path::Path::new(bin).exists(), "{bin} is missing: install Debian's docker-registry (.ci/run does)");
    let dir = state_dir().join(format!("registry-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", dir.join("data").display()),
    )
    .unwrap();
    let child = Command::new(bin)
        .args(["serve", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry { child, addr }
}

/// Pushes an OCI archive to the registry with skopeo.
fn push(archive: &std::path::Path, dest: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{dest}"),
        ])
        .output()
        .expect("skopeo runs (.ci/run installs it)");
    assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_loopback_registry_directly_and_through_a_mirror() {
    let _ = client_with_loopback_registries();
    let registry = start_registry();
    let archive = test_image_archive("localhost/pull-test:1");
    push(&archive, &format!("{}/hangar/pull-test:1", registry.addr));

    let direct =
        RegistryConfig { insecure: vec![registry.addr.clone()], fallback_to_origin: true, ..Default::default() };
    let store = ImageStore::new(state_dir().join("images")).with_registries(direct.clone());
    let mut seen = vec![];
    let rec = store
        .pull(&format!("{}/hangar/pull-test:1", registry.addr), &direct, |d, n, total| {
            seen.push((d.to_string(), n, total))
        })
        .unwrap();
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(rec.config.cmd, ["/bin/sleep", "1000"]);
    assert!(seen.iter().any(|(_, n, total)| n == total && *total > 0), "progress reached each layer's size: {seen:?}");

    // `docker.io/hangar/pull-test:1` resolves through the mirror; the origin is never tried (no fallback).
    let mirrored = RegistryConfig {
        mirrors: [("docker.io".to_string(), vec![format!("http://{}", registry.addr)])].into(),
        fallback_to_origin: false,
        ..Default::default()
    };
    let store = ImageStore::new(state_dir().join("images")).with_registries(mirrored.clone());
    let rec = store.pull("hangar/pull-test:1", &mirrored, |_, _, _| {}).unwrap();
    assert_eq!(rec.reference, "docker.io/hangar/pull-test:1");

    // Sandboxes from the pulled image run its layers and config.
    let image = format!("{}/hangar/pull-test:1", registry.addr);
    let sb = hangar::Sandbox::builder().client(&client()).image(image).create().await.unwrap();
    let r = sb.exec(["sh", "-c", "echo $GREETING; cat /etc/motd"]).check(true).await.unwrap();
    assert_eq!(r.stdout_text(), "hello from config\nfrom layer 2\n");
    sb.stop().await.unwrap();

    // Two concurrent pulls of a new tag download each layer once: only one of them sees partial progress.
    let fresh: Vec<u8> =
        (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ std::process::id() as u8).collect();
    let fresh = common::images::tar_of(&[("blob".into(), Some(fresh))]);
    let fresh = common::images::oci_archive(
        "localhost/pull-test:2",
        &[(fresh, "application/vnd.oci.image.layer.v1.tar")],
        serde_json::json!({"config": {"Cmd": ["/bin/true"]}}),
        false,
    );
    push(&fresh, &format!("{}/hangar/pull-test:2", registry.addr));
    let partial = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let pullers: Vec<_> = (0..2)
        .map(|i| {
            let (store, direct, partial, image) =
                (store.clone(), direct.clone(), partial.clone(), format!("{}/hangar/pull-test:2", registry.addr));
            std::thread::spawn(move || {
                store
                    .pull(&image, &direct, |_, n, total| {
                        if n < total {
                            partial.lock().unwrap().insert(i);
                        }
                    })
                    .unwrap()
            })
        })
        .collect();
    let ids: Vec<_> = pullers.into_iter().map(|p| p.join().unwrap().id).collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(partial.lock().unwrap().len(), 1, "exactly one of the two pulls downloaded the new layer");

    // Unknown tags and a registry that is down are clear errors naming the image.
    let err = store.pull("hangar/pull-test:nope", &mirrored, |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("docker.io/hangar/pull-test:nope") && err.contains("not found"), "{err}");
    let down = RegistryConfig { insecure: vec!["127.0.0.1:9".into()], ..Default::default() };
    let err = store.pull("127.0.0.1:9/x/y:1", &down, |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("127.0.0.1:9/x/y:1") && err.contains("http://127.0.0.1:9"), "{err}");
}

#[test]
fn docker_save_archives_import_too() {
    let _ = client_with_loopback_registries();
    let oci = test_image_archive("localhost/save-test:1");
    let saved = state_dir().join("save-test.docker.tar");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci-archive:{}", oci.display()),
            &format!("docker-archive:{}:localhost/save-test:7", saved.display()),
        ])
        .output()
        .expect("skopeo runs (.ci/run installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = ImageStore::new(state_dir().join("images")).import(&saved).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].reference, "localhost/save-test:7");
    assert_eq!(recs[0].layers.len(), 2);
    assert_eq!(recs[0].config.working_dir, "/data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_shows_pulling_with_progress_while_its_image_downloads() {
    let client = client_with_loopback_registries();
    let registry = start_registry();
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i.wrapping_mul(2246822519) >> 11) as u8).collect();
    let layer = common::images::tar_of(&[("payload".into(), Some(data))]);
    let base = common::images::tar_of(&common::images::userland());
    let archive = common::images::oci_archive(
        "localhost/slow:1",
        &[(base, "application/vnd.oci.image.layer.v1.tar"), (layer, "application/vnd.oci.image.layer.v1.tar")],
        serde_json::json!({"config": {"Cmd": ["/bin/sleep", "1000"]}}),
        false,
    );
    push(&archive, &format!("{}/hangar/slow:1", registry.addr));
    let proxy = slow_proxy(registry.addr.clone());
    let image = format!("{proxy}/hangar/slow:1");
    let creating = {
        let (client, image) = (client.clone(), image.clone());
        tokio::spawn(
            async move { hangar::Sandbox::builder().client(&client).image(image).image_command().create().await },
        )
    };
    let mut seen = None;
    for _ in 0..500 {
        let pulling = client
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.image == image && i.state == hangar::SandboxState::Pulling);
        if let Some(info) = pulling.filter(|i| i.progress.is_some()) {
            seen = Some(info);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.expect("the sandbox was listed as pulling, with progress, while its image downloaded");
    assert!(seen.progress.as_deref().unwrap().starts_with("pulled "), "{:?}", seen.progress);
    let sb = creating.await.unwrap().unwrap();
    assert_eq!(sb.id(), seen.id);
    let info = sb.info().await.unwrap();
    assert_eq!(
        (info.state, info.progress, info.command),
        (hangar::SandboxState::Running, None, vec!["/bin/sleep".to_string(), "1000".into()])
    );
    sb.stop().await.unwrap();
}

/// A registry front that demands a bearer token from its own token endpoint, which demands the basic
/// credentials of a docker `config.json` — the flow Docker Hub and most registries use.
const AUTH_FRONT: &str = r#"
import base64, http.server, json, sys, urllib.request, urllib.error
upstream, expected_basic, token = sys.argv[1], sys.argv[2], "tok-" + sys.argv[2][:8]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        host = self.headers["Host"]
        if self.path.startswith("/token"):
            ok = self.headers.get("Authorization") == "Basic " + expected_basic and "scope=repository" in self.path
            body = json.dumps({"token": token}).encode() if ok else b"{}"
            self.send_response(200 if ok else 401); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body); return
        if self.headers.get("Authorization") != "Bearer " + token:
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",service="test",scope="repository:hangar/auth:pull"')
            self.send_header("Content-Length", "0"); self.end_headers(); return
        req = urllib.request.Request("http://" + upstream + self.path, headers={k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")})
        try:
            r = urllib.request.urlopen(req)
        except urllib.error.HTTPError as e:
            r = e
        body = r.read()
        self.send_response(r.status)
        for k in ("Content-Type", "Docker-Content-Digest"):
            if r.headers.get(k): self.send_header(k, r.headers[k])
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_uses_docker_config_credentials() {
    let _ = client_with_loopback_registries();
    let registry = start_registry();
    push(&test_image_archive("localhost/auth:1"), &format!("{}/hangar/auth:1", registry.addr));
    let basic = "dXNlcjpzZWNyZXQ="; // user:secret
    struct Front(Child);
    impl Drop for Front {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut front = Front(
        Command::new("python3").args(["-c", AUTH_FRONT, &registry.addr, basic]).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut port = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(front.0.stdout.take().unwrap()), &mut port).unwrap();
    let addr = format!("127.0.0.1:{}", port.trim());
    // Without credentials the token endpoint refuses, and the error says so.
    let docker_dir = state_dir().join("docker-config");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let image = format!("{addr}/hangar/auth:1");
    let pull = || {
        let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(["images", "pull", &image])
            .env("HANGAR_STATE_DIR", state_dir().join("auth-state"))
            .env("HANGAR_AGENT_BIN", agent_bin())
            .env("HANGAR_INSECURE_REGISTRIES", "127.0.0.1")
            .env("DOCKER_CONFIG", &docker_dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = pull();
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("authentication"), "{err}");
    std::fs::write(docker_dir.join("config.json"), format!(r#"{{"auths": {{"{addr}": {{"auth": "{basic}"}}}}}}"#))
        .unwrap();
    let (code, out, err) = pull();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("{addr}/hangar/auth:1 sha256:")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registries_are_verified_against_the_configured_ca() {
    let _ = client_with_loopback_registries();
    let dir = state_dir().join(format!("tls-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    let (ca, ca_key, cert, key) = (dir.join("ca.pem"), dir.join("ca.key"), dir.join("cert.pem"), dir.join("key.pem"));
    let (csr, ext) = (dir.join("leaf.csr"), dir.join("ext.cnf"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let steps: [Vec<String>; 3] = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hangar-test-ca"]
            .map(String::from)
            .into_iter()
            .chain(["-keyout".into(), p(&ca_key), "-out".into(), p(&ca)])
            .collect(),
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
            .map(String::from)
            .into_iter()
            .chain(["-keyout".into(), p(&key), "-out".into(), p(&csr)])
            .collect(),
        ["x509", "-req", "-CAcreateserial", "-days", "1"]
            .map(String::from)
            .into_iter()
            .chain([
                "-in".into(),
                p(&csr),
                "-CA".into(),
                p(&ca),
                "-CAkey".into(),
                p(&ca_key),
                "-out".into(),
                p(&cert),
                "-extfile".into(),
                p(&ext),
            ])
            .collect(),
    ];
    for args in steps {
        let out = Command::new("openssl").args(&args).output().expect("openssl runs (.ci/run installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("config.yml");
    let yaml = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n",
        dir.join("data").display(),
        cert.display(),
        key.display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .args(["serve", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry { child, addr: addr.clone() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&registry.addr).is_err() {
        assert!(Instant::now() < deadline, "the TLS registry did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", test_image_archive("localhost/tls:1").display()))
        .arg(format!("docker://{addr}/hangar/tls:1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = ImageStore::new(state_dir().join("images-tls"));
    let image = format!("{addr}/hangar/tls:1");
    // Mozilla's roots do not know this CA: refused, naming the endpoint.
    let err = store.pull(&image, &RegistryConfig::default(), |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains(&format!("https://{addr}")) && err.contains("certificate"), "{err}");
    // Trusting the CA, the pull goes through over HTTPS.
    let trusting = RegistryConfig { ca_file: Some(ca), fallback_to_origin: true, ..Default::default() };
    let rec = store.pull(&image, &trusting, |_, _, _| {}).unwrap();
    assert_eq!(rec.layers.len(), 2);
}
