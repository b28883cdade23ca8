//! The Kubernetes backend: every sandbox is a Pod, scheduled by Kubernetes, with Hangar's agent as the first
//! process of its sandbox container; the cluster is the record.
//!
//! - **The Pod** ([`pod::spec`]): an init container copies the statically linked agent from the agent image
//!   into an `emptyDir`; the sandbox container runs the user's image with that agent as its command
//!   (`hangar-agent pod`), so any image works unchanged. Limits are the container's resources (requests =
//!   limits), the lifetime is the agent's (with `activeDeadlineSeconds` as the cluster's backstop).
//! - **The record** is the Pod: labels name the sandbox and its request id, annotations hold its record as
//!   created; its state, end and start failures are read from the Pod's status (the agent leaves the end in
//!   the container's termination message, and a copy of the sandbox's log on its standard output). Several
//!   servers can serve the same sandboxes: they share nothing but the cluster (and the key in a Secret).
//! - **The agent** is reached through the API server's port-forward: one per sandbox and server, kept open and
//!   carrying every agent connection (`hangar_agent_protocol::remote`), after a handshake with the sandbox's
//!   token (an HMAC of its id under the servers' shared key; the Pod holds only its digest). The journals stay
//!   in the Pod and travel inline.
//!
//! See docs/kubernetes.md for the design, its limits and what was measured.

mod pod;

use crate::backend::AgentLink;
use crate::{now_ms, EngineConfig, Error, Result, SandboxConfig, SandboxEnding, SandboxInfo, SandboxState};
use hangar_agent_protocol::remote::Mux;
use hangar_agent_protocol::{EndRecord, Request, Response, StartReport, POD_AGENT_PORT};
use hangar_images::ImageStore;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How a server reaches its cluster and makes sandboxes there.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// A kubeconfig file; `None`: the Pod's service account when running in a cluster, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The namespace sandboxes live in.
    pub namespace: String,
    /// The image holding the statically linked agent at `/hangar-agent` (`scripts/agent-image` makes it).
    pub agent_image: String,
    /// The image a sandbox gets when it asks for the built-in one (which exists on the local backend only).
    pub default_image: String,
    /// The Pods' `imagePullPolicy` (`Always`, `IfNotPresent`, `Never`); the cluster's default when `None`.
    pub image_pull_policy: Option<String>,
}

/// How long a new Pod may take to run its agent (scheduling and pulling included).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The Secret holding the key sandbox tokens are derived from, shared by every server of the namespace.
const KEY_SECRET: &str = "hangar-agent-key";

/// The backend: a namespace of a cluster.
pub(crate) struct Cluster {
    pub(crate) cfg: EngineConfig,
    kube: KubernetesConfig,
    pods: Api<Pod>,
    /// Sandbox tokens are HMAC-SHA256(key, sandbox id).
    key: Vec<u8>,
    /// For `image_command` (an image's entrypoint and cmd, which the kubelet does not tell), and the images API.
    pub(crate) images: ImageStore,
    /// One stream per sandbox to its agent, opened on first use.
    links: Links,
}

/// This server's streams to agents, by sandbox id.
type Links = Arc<tokio::sync::Mutex<HashMap<String, Mux>>>;

impl Cluster {
    /// Connects to the cluster, and makes (or finds) the namespace's token key and its network policy.
    pub(crate) async fn open(cfg: EngineConfig, kube: KubernetesConfig) -> Result<Self> {
        let config = match &kube.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| Error::InvalidArgument(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| Error::InvalidArgument(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| Error::InvalidArgument(format!("Kubernetes configuration from the environment: {e}")))?,
        };
        let client = client(config)?;
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| Error::io("create state directory", cfg.state_dir.display(), e))?;
        let registries = hangar_images::RegistryConfig::load(Some(&cfg.state_dir.join("registries.json")));
        let images = ImageStore::new(cfg.state_dir.join("images")).with_registries(registries);
        let key = shared_key(&Api::namespaced(client.clone(), &kube.namespace)).await?;
        pod::ensure_isolation(&client, &kube.namespace).await?;
        let pods = Api::namespaced(client, &kube.namespace);
        let links = Links::default();
        tokio::spawn(follow_pods(pods.clone(), Arc::downgrade(&links), cfg.ended_retention));
        Ok(Self { cfg, kube, pods, key, images, links })
    }

    /// Sandbox `id`'s token: what its agent's handshake asks for.
    fn token(&self, id: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) async fn create(&self, mut c: SandboxConfig) -> Result<SandboxInfo> {
        c.validate()?;
        use crate::backend::local_only;
        if c.disk_bytes.is_some() {
            return Err(local_only("disk_bytes (a disk budget)"));
        }
        if c.pids.is_some() {
            return Err(local_only("pids (Kubernetes 1.20 limits processes per node, not per Pod)"));
        }
        if c.network.as_ref().is_some_and(|n| n.mode != hangar_types::NetworkMode::None) {
            return Err(local_only("network egress (a Pod's network is the cluster's, closed by a NetworkPolicy)"));
        }
        if c.image == hangar_types::BUILTIN_IMAGE || c.image.is_empty() {
            c.image = self.kube.default_image.clone();
        }
        if std::mem::take(&mut c.image_command) {
            let (images, image) = (self.images.clone(), c.image.clone());
            let layout = tokio::task::spawn_blocking(move || images.resolve(&image))
                .await
                .map_err(|e| Error::Internal(format!("resolving image {}: {e}", c.image)))??;
            if layout.command.is_empty() {
                return Err(Error::InvalidArgument(format!("image_command: image {} has no default command", c.image)));
            }
            c.command = layout.command;
        }
        // With a request id the id is derived from it, so that concurrent retries make one Pod between them
        // (the cluster refuses a second Pod of the same name).
        let id = match &c.request_id {
            Some(rid) => format!("sb-{}", &pod::request_key(&c.tenant, rid)[..16]),
            None => crate::new_id("sb"),
        };
        let (none, state) = (hangar_types::NetworkPolicy::default(), SandboxState::Creating);
        let info = SandboxInfo::new(id.clone(), &c, state, None, none);
        let digest = hangar_agent_protocol::remote::token_digest(&self.token(&id));
        let spec = pod::spec(&self.kube, &info, &c, &digest, self.cfg.journal_budget)?;
        match self.pods.create(&PostParams::default(), &spec).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 && c.request_id.is_some() => {
                return self.await_running(&id).await
            }
            Err(e) => return Err(k8s(&format!("create Pod {id}"), e)),
        }
        match self.await_running(&id).await {
            Ok(info) => Ok(info),
            Err(e) => {
                // A sandbox that never ran keeps nothing: its Pod (pending for good, say) goes.
                if !matches!(e, Error::CommandNotFound { .. } | Error::StartFailed { .. }) {
                    let _ = self.pods.delete(&id, &DeleteParams::default().grace_period(0)).await;
                }
                Err(e)
            }
        }
    }

    /// Waits until sandbox `id`'s agent answers, or why it will not: Kubernetes' own reason for a Pod that
    /// cannot be scheduled or pulled, the agent's for a main command that could not start.
    async fn await_running(&self, id: &str) -> Result<SandboxInfo> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut delay = Duration::from_millis(20);
        loop {
            let pod = self.get_pod(id).await?;
            let Some(pod) = pod else { return Err(Error::NotFound(id.to_string())) };
            let info = pod::info(&pod)?;
            if let Some(why) = pod::start_blocked(&pod) {
                return Err(Error::SandboxFailed { id: id.to_string(), reason: why });
            }
            let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            match info.state {
                // Once the agent answers the sandbox runs, as soon as its port can be forwarded (the Pod's network
                // exists before its container starts), well before the kubelet reports it.
                SandboxState::Creating | SandboxState::Running if scheduled && self.ping(id).await => {
                    if info.state != SandboxState::Running {
                        self.annotate(id, pod::RUNNING_ANNOTATION, "true").await?;
                    }
                    return self.get(id).await;
                }
                // It ran and ended already (a short main command): a sandbox like any other.
                state if state.is_final() && pod::end_record(&pod).is_some() => return Ok(info),
                state if state.is_final() => {
                    return Err(match pod::start_report(&pod) {
                        Some(StartReport::CommandFailed(f)) => {
                            Error::from_start_failure(id, &crate::Ending::FailedToStart(f)).expect("a start failure")
                        }
                        Some(StartReport::Failed(reason)) => Error::SandboxFailed { id: id.to_string(), reason },
                        _ => Error::SandboxFailed {
                            id: id.to_string(),
                            reason: info.error.unwrap_or_else(|| {
                                format!("it ended as it started ({})", info.end_reason.unwrap_or_default())
                            }),
                        },
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let reason = pod::waiting_reason(&pod).unwrap_or_else(|| "no reason given".into());
                return Err(Error::SandboxFailed {
                    id: id.to_string(),
                    reason: format!("its Pod did not run within {START_TIMEOUT:?} ({reason})"),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Whether sandbox `id`'s agent answers (within a second).
    async fn ping(&self, id: &str) -> bool {
        let answered = async {
            let mut link = self.connect_running(id).await.ok()?;
            link.conn.send(&Request::Ping).await.ok()?;
            link.conn.recv::<Response>().await.ok().flatten()
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), answered).await, Ok(Some(Response::Pong { .. })))
    }

    /// Sets an annotation of sandbox `id`'s Pod (what every server reads from then on).
    async fn annotate(&self, id: &str, key: &str, value: &str) -> Result<()> {
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        let params = kube::api::PatchParams::default();
        let patched = self.pods.patch(id, &params, &kube::api::Patch::Merge(&patch)).await;
        patched.map_err(|e| k8s(&format!("annotate Pod {id}"), e))?;
        Ok(())
    }

    /// Pod `id`, if there is one.
    async fn get_pod(&self, id: &str) -> Result<Option<Pod>> {
        read_retried(|| self.pods.get_opt(id)).await.map_err(|e| k8s(&format!("get Pod {id}"), e))
    }

    pub(crate) async fn get(&self, id: &str) -> Result<SandboxInfo> {
        let pod = self.get_pod(id).await?;
        let info = pod.as_ref().filter(|p| pod::is_sandbox(p)).map(pod::info).transpose()?;
        let info = info.ok_or_else(|| Error::NotFound(id.to_string()))?;
        if self.expired(&info) {
            self.forget(id).await;
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(info)
    }

    pub(crate) async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let sandboxes = ListParams::default().labels(pod::SANDBOX_LABEL);
        let pods = read_retried(|| self.pods.list(&sandboxes)).await.map_err(|e| k8s("list Pods", e))?;
        let mut out = vec![];
        for pod in &pods.items {
            let info = pod::info(pod)?;
            if self.expired(&info) {
                self.forget(&info.id).await;
            } else {
                out.push(info);
            }
        }
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    /// Whether an ended sandbox's record is past the retention time.
    fn expired(&self, info: &SandboxInfo) -> bool {
        expired(info, self.cfg.ended_retention)
    }

    /// Deletes sandbox `id`'s Pod at once (idempotent) and closes this server's stream to it.
    async fn forget(&self, id: &str) {
        close_link(&self.links, id).await;
        match self.pods.delete(id, &DeleteParams::default().grace_period(0)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(sandbox = id, "deleting its Pod: {e}"),
        }
    }

    pub(crate) async fn stop(&self, id: &str, grace: Duration) -> Result<SandboxInfo> {
        let info = self.get(id).await?;
        if info.state.is_final() {
            return Ok(info);
        }
        // The agent stops its sandbox itself (SIGTERM, the grace, SIGKILL) and records how it ended; a Pod
        // whose agent cannot be reached is deleted with the same grace.
        let asked = async {
            let mut link = self.connect_running(id).await.ok()?;
            link.conn.send(&Request::Stop { grace_ms: grace.as_millis() as u64 }).await.ok()?;
            link.conn.recv::<Response>().await.ok().flatten()
        };
        let stopped = tokio::time::timeout(grace + Duration::from_secs(5), asked).await;
        close_link(&self.links, id).await;
        if let Ok(Some(Response::Stopped(end))) = stopped {
            // Ended, as the agent says: recorded now for every server, whenever the kubelet notices.
            let ended = pod::Ended { at_ms: now_ms(), end };
            let value = serde_json::to_string(&ended).map_err(|e| Error::Internal(format!("encoding an end: {e}")))?;
            self.annotate(id, pod::ENDED_ANNOTATION, &value).await?;
            return self.get(id).await;
        }
        let delete = DeleteParams::default().grace_period(grace.as_secs().max(1) as u32);
        let _ = self.pods.delete(id, &delete).await;
        // Until the kubelet has seen the container end (or the Pod is gone).
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(30);
        loop {
            match self.get(id).await {
                Ok(info) if info.state.is_final() => return Ok(info),
                Err(Error::NotFound(_)) => {
                    let mut info = info.clone();
                    (info.state, info.end_reason, info.ended_at_ms) =
                        (SandboxState::Terminated, Some("stopped".into()), Some(now_ms()));
                    return Ok(info);
                }
                Err(e) => return Err(e),
                Ok(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::Internal(format!("sandbox {id}: its Pod did not end after the stop")))
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<()> {
        self.stop(id, crate::DEFAULT_STOP_GRACE).await?;
        self.forget(id).await;
        Ok(())
    }

    /// The log of an ended sandbox: its container's log (the agent's copy of the main command's output), with
    /// the end the agent recorded; bytes the kubelet's log rotation dropped are a gap at the start.
    pub(crate) async fn kept_log(&self, id: &str, from: [u64; 2]) -> Result<crate::ExecStream> {
        // A sandbox its agent ended is final before the kubelet has noticed: its log is complete once it has.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let pod = loop {
            let pod = self.get_pod(id).await?;
            let pod = pod.ok_or_else(|| Error::NotFound(id.to_string()))?;
            if pod::container_ended(&pod) || tokio::time::Instant::now() >= deadline {
                break pod;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let info = pod::info(&pod)?;
        let end = match (pod::end_record(&pod), pod::start_report(&pod)) {
            (Some(EndRecord { log: Some(end), .. }), _) => end,
            (_, Some(StartReport::CommandFailed(f))) => hangar_types::ExecEnd::failed_to_start(f),
            _ => hangar_types::ExecEnd::sandbox_gone([0, 0]),
        };
        let (data, times) = match end.bytes[0] {
            0 => (vec![], vec![]),
            _ => {
                let data = self.container_log(id, false).await?;
                let stamped = self.container_log(id, true).await?;
                let times = line_times(&data, &stamped);
                (data, times)
            }
        };
        Ok(crate::ExecStream::kept_copy(&info, data.into(), times, end, from))
    }

    /// The sandbox container's log as the kubelet keeps it (its newest file), byte for byte; `timestamps`:
    /// each record led by the time it was written.
    async fn container_log(&self, id: &str, timestamps: bool) -> Result<Vec<u8>> {
        use futures_util::AsyncReadExt;
        let params =
            kube::api::LogParams { container: Some(pod::SANDBOX_CONTAINER.into()), timestamps, ..Default::default() };
        let mut log =
            std::pin::pin!(self.pods.log_stream(id, &params).await.map_err(|e| k8s(&format!("log of Pod {id}"), e))?);
        let mut data = vec![];
        log.read_to_end(&mut data).await.map_err(|e| Error::io("read the log of Pod", id, e))?;
        Ok(data)
    }

    /// A connection to running sandbox `id`'s agent.
    pub(crate) async fn connect(&self, id: &str) -> Result<AgentLink> {
        // Over a stream this server holds, the sandbox runs (the Pod watch closes the streams of ended Pods):
        // no lookup of the Pod on every exec.
        if let Some(conn) = self.open_held(id).await {
            return Ok(link(conn));
        }
        let info = self.get(id).await?;
        if info.state != SandboxState::Running {
            return Err(Error::NotRunning { id: id.to_string(), state: info.state });
        }
        self.connect_running(id).await
    }

    /// A connection over the stream this server holds to sandbox `id`'s agent, if it holds one that works.
    async fn open_held(&self, id: &str) -> Option<hangar_agent_protocol::codec::Conn> {
        let mux = self.links.lock().await.get(id).filter(|m| !m.is_closed()).cloned()?;
        mux.open().await.ok()
    }

    /// A connection over this server's stream to the agent (opened now if there is none, or it broke; without
    /// holding the other sandboxes' streams up meanwhile).
    async fn connect_running(&self, id: &str) -> Result<AgentLink> {
        if let Some(conn) = self.open_held(id).await {
            return Ok(link(conn));
        }
        let mut forward =
            self.pods.portforward(id, &[POD_AGENT_PORT]).await.map_err(|e| gone_or(id, "port-forward", e))?;
        let stream = forward
            .take_stream(POD_AGENT_PORT)
            .ok_or_else(|| Error::Internal("port-forward without its port".into()))?;
        let mux = Mux::dial(stream, &self.token(id))
            .await
            .map_err(|e| Error::SandboxGone { id: id.to_string(), detail: format!("greeting its agent: {e}") })?;
        let conn = mux.open().await.map_err(|e| Error::io("open agent connection of", id, e))?;
        // Kept for the next connections, unless another task opened one that works meanwhile (this one then
        // lives as long as its connection).
        let mut links = self.links.lock().await;
        match links.get(id) {
            Some(held) if !held.is_closed() => {}
            _ => {
                links.insert(id.to_string(), mux);
            }
        }
        Ok(link(conn))
    }
}

/// Closes this server's stream to sandbox `id`'s agent, if it has one: every connection over it ends.
async fn close_link(links: &Links, id: &str) {
    if let Some(mux) = links.lock().await.remove(id) {
        mux.close();
    }
}

/// Whether ended sandbox `info` is past the retention time `keep` (`None`: kept until removed).
fn expired(info: &SandboxInfo, keep: Option<Duration>) -> bool {
    let keep = keep.map(|d| d.as_millis() as u64);
    info.ended_at_ms.zip(keep).is_some_and(|(at, keep)| now_ms().saturating_sub(at) > keep)
}

/// What a server does as sandbox Pods change, for as long as its backend lives, from one watch on the
/// namespace's sandbox Pods (started again from a fresh list whenever it ends, every 290 s at least):
/// - closes its streams to agents whose container ended or whose Pod went: a stream through the API server may
///   not notice for minutes, and a reader must learn of the end at once;
/// - on each list, deletes the Pods of sandboxes that ended longer ago than the retention `keep` (whichever
///   server comes first; deleting twice is harmless).
async fn follow_pods(
    pods: Api<Pod>,
    links: std::sync::Weak<tokio::sync::Mutex<HashMap<String, Mux>>>,
    keep: Option<Duration>,
) {
    use futures_util::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let ended = |p: &Pod| pod::info(p).map_or(true, |i| i.state.is_final());
    loop {
        let Some(held) = links.upgrade() else { return };
        let list = match pods.list(&ListParams::default().labels(pod::SANDBOX_LABEL)).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("watching sandbox Pods: {e}");
                drop(held);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let live: std::collections::HashSet<String> = list.items.iter().filter(|p| !ended(p)).map(pod::id_of).collect();
        for info in list.items.iter().filter_map(|p| pod::info(p).ok()).filter(|i| expired(i, keep)) {
            let _ = pods.delete(&info.id, &DeleteParams::default().grace_period(0)).await;
        }
        let gone: Vec<String> = held.lock().await.keys().filter(|id| !live.contains(*id)).cloned().collect();
        for id in gone {
            close_link(&held, &id).await;
        }
        drop(held);
        let version = list.metadata.resource_version.unwrap_or_default();
        let params = WatchParams::default().labels(pod::SANDBOX_LABEL).timeout(290);
        let Ok(events) = pods.watch(&params, &version).await else { continue };
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let Some(held) = links.upgrade() else { return };
            match event {
                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) if ended(&p) => {
                    close_link(&held, &pod::id_of(&p)).await
                }
                Ok(WatchEvent::Deleted(p)) => close_link(&held, &pod::id_of(&p)).await,
                Ok(WatchEvent::Error(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// A link to a Pod's agent: its journals travel inline, and its log is kept by the cluster.
fn link(conn: hangar_agent_protocol::codec::Conn) -> AgentLink {
    AgentLink { conn, protocol: hangar_agent_protocol::VERSION, journals: None, kept_log: None, ahead: None }
}

/// When each line of a container log began, as (offset in `plain`, Unix ms): the time of the first record of
/// each line of `stamped` (the same log with `timestamps=true`, each record led by an RFC 3339 time and a
/// space; a line longer than the runtime's records is several records, the first one's time counts). Lines
/// are matched by their number, both being the same file read twice; a line without a readable time is left
/// out.
fn line_times(plain: &[u8], stamped: &[u8]) -> Vec<(u64, u64)> {
    let starts = std::iter::once(0).chain(plain.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1));
    let firsts = stamped.split(|b| *b == b'\n').map(|line| {
        let token = line.split(|b| *b == b' ').next().unwrap_or_default();
        let ts: Option<k8s_openapi::jiff::Timestamp> = std::str::from_utf8(token).ok()?.parse().ok();
        ts.map(|t| t.as_millisecond().max(0) as u64)
    });
    starts.zip(firsts).filter(|(at, _)| *at < plain.len()).filter_map(|(at, ms)| Some((at as u64, ms?))).collect()
}

/// A client of the API server whose connections send small writes at once (`TCP_NODELAY`): an agent's stream
/// is a port-forward over one of them, carrying small request and reply frames, which Nagle's algorithm
/// would hold back for the peer's delayed ACK (40 ms per round trip, measured). kube-rs's default stack
/// leaves the option off; this is that stack (TLS, the API server's address, its authentication) with it on.
fn client(config: kube::Config) -> Result<kube::Client> {
    use kube::client::ConfigExt;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(connector).map_err(|e| k8s("TLS", e))?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(|e| k8s("authentication", e))?)
        .map_err(|e: hyper_util::client::legacy::Error| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// The namespace's token key: read from its Secret, or made (by whichever server comes first).
async fn shared_key(secrets: &Api<Secret>) -> Result<Vec<u8>> {
    const FIELD: &str = "key";
    for _ in 0..3 {
        if let Some(s) = secrets.get_opt(KEY_SECRET).await.map_err(|e| k8s("get the token key", e))? {
            return s
                .data
                .and_then(|d| d.get(FIELD).map(|b| b.0.clone()))
                .filter(|k| k.len() >= 32)
                .ok_or_else(|| Error::Internal(format!("Secret {KEY_SECRET} has no {FIELD} of 32 bytes or more")));
        }
        let mut key = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .map_err(|e| Error::io("read", "/dev/urandom", e))?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some(KEY_SECRET.into()), ..Default::default() },
            data: Some([(FIELD.to_string(), k8s_openapi::ByteString(key))].into()),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            // Made here, or by another server just now: either way it is read back.
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(k8s("create the token key", e)),
        }
    }
    Err(Error::Internal(format!("Secret {KEY_SECRET} could not be read or made")))
}

/// A read of the API server, tried again (twice, 50 then 200 ms later) when it failed on the way rather than
/// being answered: an API server may close a kept-alive connection just as a request goes out on it, which the
/// client reports as a failure to send (seen here once in a CI run, as `client error (SendRequest)`). Reads
/// only: they are safe to repeat.
async fn read_retried<T, F, Fut>(mut read: F) -> std::result::Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, kube::Error>>,
{
    for delay in [50, 200] {
        match read().await {
            Err(kube::Error::Service(_) | kube::Error::HyperError(_)) => {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            other => return other,
        }
    }
    read().await
}

/// A Kubernetes API failure as the engine's error, naming what was asked.
fn k8s(what: &str, e: kube::Error) -> Error {
    Error::Internal(format!("Kubernetes: {what}: {e}"))
}

/// A failure to reach a Pod: the sandbox is gone when the Pod is.
fn gone_or(id: &str, what: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Error::NotFound(id.to_string()),
        _ => Error::SandboxGone { id: id.to_string(), detail: format!("{what}: {e}") },
    }
}

impl SandboxEnding {
    fn apply(self, info: &mut SandboxInfo) {
        info.state = self.state;
        info.exit_code = self.code;
        info.exit_signal = self.signal;
        info.end_reason = Some(self.reason.to_string());
        info.error = self.error;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_of_a_container_log_get_their_first_records_time() {
        let plain = b"one\ntwo\nthree-long-line\npartial";
        let stamped = b"2026-12-06T11:00:00.5Z one\n2026-12-06T11:00:01Z two\n\
2026-12-06T11:00:02.25Z three-2026-12-06T11:00:03Z long-line\n2026-12-06T11:00:04.000000001Z partial";
        let base = 1_796_554_800_000u64; // 2026-12-06T11:00:00Z
        assert_eq!(
            super::line_times(plain, stamped),
            vec![(0, base + 500), (4, base + 1000), (8, base + 2250), (24, base + 4000)]
        );
        assert_eq!(super::line_times(b"", b""), vec![]);
        assert_eq!(super::line_times(b"x\n", b"garbage x\n"), vec![], "a line without a time is left out");
    }
}
