//! A sandbox as a Pod, both ways: the Pod made for a sandbox ([`spec`]), and the sandbox's record read back
//! from a Pod ([`info`]): its state, its end, why it could not start.

use super::KubernetesConfig;
use crate::{Error, Result, SandboxConfig, SandboxEnding, SandboxInfo, SandboxState};
use hangar_agent_protocol::{EndRecord, PodConfig, StartReport, Workload, POD_AGENT_PORT, POD_ARG, POD_CONFIG_ENV};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerState, EmptyDirVolumeSource, EnvVar, Pod, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

/// The label every sandbox's Pod has: its sandbox id.
pub(super) const SANDBOX_LABEL: &str = "hangar.dev/sandbox";
/// The label holding a digest of the tenant and request id of the create that made the Pod (which is named
/// after it too, so that retries find it).
pub(super) const REQUEST_LABEL: &str = "hangar.dev/request";
/// The annotation holding the sandbox's record as created (JSON); its state is read from the Pod's status.
const INFO_ANNOTATION: &str = "hangar.dev/info";
/// The annotation set once the sandbox's agent first answered: it runs, whatever the kubelet has reported yet
/// (the kubelet notices a started container within a second; the agent answers within milliseconds).
pub(super) const RUNNING_ANNOTATION: &str = "hangar.dev/running";
/// The annotation set ([`Ended`], JSON) once the sandbox's agent said it stopped the sandbox: it ended then,
/// so, whatever the kubelet has reported yet.
pub(super) const ENDED_ANNOTATION: &str = "hangar.dev/ended";

/// When and how a sandbox ended, as its agent answered a stop.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Ended {
    /// Unix milliseconds.
    pub(super) at_ms: u64,
    /// What the agent recorded.
    #[serde(flatten)]
    pub(super) end: EndRecord,
}
/// The container the user's image runs in.
pub(super) const SANDBOX_CONTAINER: &str = "sandbox";
/// Where the agent and its state live in the sandbox container (an `emptyDir`).
const AGENT_DIR: &str = "/.hangar";

/// The label value for a create's tenant and request id (label values are short and plain: a digest).
pub(super) fn request_key(tenant: &str, request_id: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{tenant}\0{request_id}").as_bytes());
    d.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// The Pod for sandbox `info` made from `c`, whose agent accepts the token with digest `token_digest` and
/// keeps its exec journals within `journal_budget` ([`crate::EngineConfig::journal_budget`]).
pub(super) fn spec(
    kube: &KubernetesConfig,
    info: &SandboxInfo,
    c: &SandboxConfig,
    token_digest: &str,
    journal_budget: Option<u64>,
) -> Result<Pod> {
    let id = &info.id;
    let pod_config = PodConfig {
        workload: Workload {
            main: c.command.clone(),
            // The environment is the container's (the image's, then the Pod's, which holds `c.env`).
            env: vec![],
            workdir: c.workdir.clone().unwrap_or_default(),
            lifetime_ms: c.max_lifetime.as_millis() as u64,
            stop_grace_ms: c.stop_grace.as_millis() as u64,
            user: String::new(),
            journal_budget,
        },
        token_digest: token_digest.to_string(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], POD_AGENT_PORT)),
        state_dir: format!("{AGENT_DIR}/state").into(),
        termination_log: "/dev/termination-log".into(),
    };
    let encoded = |what: &str, e: serde_json::Error| Error::Internal(format!("sandbox {id}: encoding its {what}: {e}"));
    let mut env = vec![EnvVar {
        name: POD_CONFIG_ENV.into(),
        value: Some(serde_json::to_string(&pod_config).map_err(|e| encoded("agent's configuration", e))?),
        ..Default::default()
    }];
    env.extend(c.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() }));
    env.push(EnvVar { name: "HOSTNAME".into(), value: Some(id.clone()), ..Default::default() });
    // Requests equal limits: the Pod is Guaranteed, as a sandbox's limits are on the local backend.
    let mut limits = BTreeMap::new();
    if let Some(cpus) = c.cpus {
        limits.insert("cpu".to_string(), Quantity(format!("{}m", (cpus * 1000.0).ceil() as u64)));
    }
    if let Some(mem) = c.memory_bytes {
        limits.insert("memory".to_string(), Quantity(mem.to_string()));
    }
    let resources = (!limits.is_empty()).then(|| ResourceRequirements {
        limits: Some(limits.clone()),
        requests: Some(limits),
        ..Default::default()
    });
    let mount = VolumeMount { name: "hangar".into(), mount_path: AGENT_DIR.into(), ..Default::default() };
    let agent = format!("{AGENT_DIR}/hangar-agent");
    let install = Container {
        name: "hangar-agent".into(),
        image: Some(kube.agent_image.clone()),
        image_pull_policy: kube.image_pull_policy.clone(),
        command: Some(vec!["/hangar-agent".into(), hangar_agent_protocol::INSTALL_ARG.into(), agent.clone()]),
        volume_mounts: Some(vec![mount.clone()]),
        ..Default::default()
    };
    let sandbox = Container {
        name: SANDBOX_CONTAINER.into(),
        image: Some(c.image.clone()),
        image_pull_policy: kube.image_pull_policy.clone(),
        command: Some(vec![agent, POD_ARG.into()]),
        env: Some(env),
        working_dir: c.workdir.clone(),
        resources,
        volume_mounts: Some(vec![mount]),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        // As on the local backend: the runtime's default capabilities less MKNOD, no privilege gained through
        // setuid files (no_new_privs), the runtime's default seccomp filter.
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities { drop: Some(vec!["MKNOD".into()]), add: None }),
            allow_privilege_escalation: Some(false),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The lifetime is the agent's; this is the cluster's backstop should the agent be wedged.
    let deadline = (c.max_lifetime + c.stop_grace).as_secs() + 60;
    let mut labels = BTreeMap::from([(SANDBOX_LABEL.to_string(), id.clone())]);
    if let Some(rid) = &c.request_id {
        labels.insert(REQUEST_LABEL.into(), request_key(&c.tenant, rid));
    }
    let annotations =
        BTreeMap::from([(INFO_ANNOTATION.to_string(), serde_json::to_string(info).map_err(|e| encoded("record", e))?)]);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(id.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(vec![install]),
            containers: vec![sandbox],
            volumes: Some(vec![Volume {
                name: "hangar".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(deadline as i64),
            termination_grace_period_seconds: Some(c.stop_grace.as_secs().max(1) as i64),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            hostname: Some(id.clone()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Whether `pod` is a sandbox's.
pub(super) fn is_sandbox(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key(SANDBOX_LABEL))
}

/// The sandbox id of a sandbox's Pod.
pub(super) fn id_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The sandbox container's state.
fn sandbox_state(pod: &Pod) -> Option<&ContainerState> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find(|s| s.name == SANDBOX_CONTAINER)?.state.as_ref()
}

/// Whether the kubelet has reported the sandbox container's end.
pub(super) fn container_ended(pod: &Pod) -> bool {
    sandbox_state(pod).is_some_and(|s| s.terminated.is_some())
}

/// The sandbox container's termination message, once it ended.
fn termination_message(pod: &Pod) -> Option<&str> {
    sandbox_state(pod)?.terminated.as_ref()?.message.as_deref()
}

/// How the sandbox ended, as its agent recorded it.
pub(super) fn end_record(pod: &Pod) -> Option<EndRecord> {
    serde_json::from_str(termination_message(pod)?).ok()
}

/// Why the main command could not start, as its agent reported it.
pub(super) fn start_report(pod: &Pod) -> Option<StartReport> {
    StartReport::parse(termination_message(pod)?.trim())
}

/// Why a container of the Pod waits, if it does (`ErrImagePull: ...`).
pub(super) fn waiting_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let all = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    all.filter_map(|s| s.state.as_ref()?.waiting.as_ref())
        .find_map(|w| {
            let reason = w.reason.clone()?;
            Some(match &w.message {
                Some(m) => format!("{reason}: {m}"),
                None => reason,
            })
        })
        .or_else(|| {
            let c = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
            Some(format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
        })
}

/// Kubernetes' reason a Pod will not start, when it is one that waiting does not cure: it cannot be scheduled,
/// or an image cannot be pulled.
pub(super) fn start_blocked(pod: &Pod) -> Option<String> {
    const FATAL: [&str; 6] = [
        "Unschedulable",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
    ];
    let why = waiting_reason(pod)?;
    FATAL.iter().any(|r| why.starts_with(r)).then_some(why)
}

fn millis(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> u64 {
    t.0.as_millisecond().max(0) as u64
}

/// The sandbox's record: as created (the Pod's annotation), brought up to date from the Pod's status.
pub(super) fn info(pod: &Pod) -> Result<SandboxInfo> {
    let id = id_of(pod);
    let recorded = pod.metadata.annotations.as_ref().and_then(|a| a.get(INFO_ANNOTATION));
    let mut info: SandboxInfo = recorded
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| Error::Internal(format!("Pod {id} has no readable {INFO_ANNOTATION} annotation")))?;
    let state = sandbox_state(pod);
    if let Some(ended) = state.and_then(|s| s.terminated.as_ref()) {
        info.ended_at_ms = Some(ended.finished_at.as_ref().map_or_else(crate::now_ms, millis));
        match (end_record(pod), start_report(pod)) {
            (Some(end), _) => SandboxEnding::of(Some(&end)).apply(&mut info),
            (None, Some(report)) => {
                let mut ending = SandboxEnding::of(None);
                (ending.state, ending.reason, ending.error) =
                    (SandboxState::Failed, "start_failed", Some(report_text(&report)));
                ending.apply(&mut info);
            }
            // Ended without a word from the agent: the container never ran it (the runtime says why), or it
            // was killed (the Pod's deadline, an eviction, a deletion).
            (None, None) => {
                let mut ending = SandboxEnding::of(None);
                if pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded") {
                    ending.reason = "lifetime_exceeded";
                }
                if let Some(why) = ended.message.as_ref().filter(|_| ended.reason.as_deref() == Some("StartError")) {
                    (ending.state, ending.reason, ending.error) =
                        (SandboxState::Failed, "start_failed", Some(format!("StartError: {why}")));
                }
                ending.code = Some(ended.exit_code);
                ending.apply(&mut info);
            }
        }
        return Ok(info);
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) || pod.metadata.deletion_timestamp.is_some() {
        // Ended (or being deleted) before its container ever ran or reported.
        let mut ending = SandboxEnding::of(None);
        if pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded") {
            ending.reason = "lifetime_exceeded";
        }
        ending.apply(&mut info);
        info.ended_at_ms = Some(pod.metadata.deletion_timestamp.as_ref().map_or_else(crate::now_ms, millis));
        return Ok(info);
    }
    let annotation = |key: &str| pod.metadata.annotations.as_ref().and_then(|a| a.get(key));
    if let Some(ended) = annotation(ENDED_ANNOTATION).and_then(|j| serde_json::from_str::<Ended>(j).ok()) {
        SandboxEnding::of(Some(&ended.end)).apply(&mut info);
        info.ended_at_ms = Some(ended.at_ms);
        return Ok(info);
    }
    let answered = annotation(RUNNING_ANNOTATION).is_some();
    if answered || state.is_some_and(|s| s.running.is_some()) {
        info.state = SandboxState::Running;
    } else {
        info.progress = waiting_reason(pod);
    }
    Ok(info)
}

fn report_text(r: &StartReport) -> String {
    match r {
        StartReport::CommandFailed(f) => f.message.clone(),
        StartReport::Failed(m) => m.clone(),
        StartReport::Ready { .. } => String::new(),
    }
}

/// Makes sure the namespace's sandboxes are closed to the pod network both ways (a NetworkPolicy selecting
/// them, with no rule that allows anything): enforced where the cluster's network plugin enforces policies.
/// The engine reaches agents through the API server's port-forward, which such policies do not cover.
pub(super) async fn ensure_isolation(client: &kube::Client, namespace: &str) -> Result<()> {
    use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let api: kube::Api<NetworkPolicy> = kube::Api::namespaced(client.clone(), namespace);
    let policy = NetworkPolicy {
        metadata: ObjectMeta { name: Some("hangar-sandboxes-isolated".into()), ..Default::default() },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: SANDBOX_LABEL.into(),
                    operator: "Exists".into(),
                    values: None,
                }]),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..Default::default()
        }),
    };
    match api.create(&Default::default(), &policy).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(super::k8s("create the sandboxes' NetworkPolicy", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's journal budget reaches a Pod's agent, as it reaches a local one.
    #[test]
    fn the_pods_agent_gets_the_engines_journal_budget() {
        let kube = KubernetesConfig {
            kubeconfig: None,
            namespace: "default".into(),
            agent_image: "hangar-agent:test".into(),
            default_image: "python:3.11".into(),
            image_pull_policy: None,
        };
        let c = SandboxConfig { image: "python:3.11".into(), ..SandboxConfig::default() };
        let info = SandboxInfo::new("sb-1".into(), &c, SandboxState::Creating, None, Default::default());
        let budget_of = |budget| {
            let pod = spec(&kube, &info, &c, "digest", budget).unwrap();
            let containers = pod.spec.unwrap().containers;
            let sandbox = containers.iter().find(|c| c.name == SANDBOX_CONTAINER).expect("the sandbox container");
            let env = sandbox.env.as_ref().unwrap().iter().find(|e| e.name == POD_CONFIG_ENV).unwrap();
            let cfg: PodConfig = serde_json::from_str(env.value.as_ref().unwrap()).unwrap();
            cfg.workload.journal_budget
        };
        assert_eq!(budget_of(Some(48 << 20)), Some(48 << 20));
        assert_eq!(budget_of(None), None, "unset: the agent's default");
    }
}
