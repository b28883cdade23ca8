//! The backend suite a third time, against the Kubernetes backend on a real cluster (the one `scripts/test`
//! starts with `scripts/k8s-cluster`, in a network namespace with no route out), through a real server on
//! loopback; plus what only a cluster has: replicas that share nothing but the cluster, Pods deleted under a
//! running exec, scheduling failures, the Pod a sandbox is.
//!
//! Built only with `--features kubernetes-tests` (`scripts/test` passes it once the cluster runs); without
//! the cluster's variables every test fails and says how to start one.

mod common;
mod suite;

/// Which backend `common::client()` gives.
pub const BACKEND: common::Backend = common::Backend::Kubernetes;

use common::{client, kubernetes_config, proxy, ServeProcess, TOKEN_A, TOKEN_B};
use hangar::{Client, Error, Sandbox};
use k8s_openapi::api::core::v1::Pod;
use std::time::{Duration, Instant};

/// The test cluster's Pods, as an administrator sees them.
async fn pods() -> kube::Api<Pod> {
    let k = kubernetes_config();
    let file = kube::config::Kubeconfig::read_from(k.kubeconfig.unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await.unwrap();
    kube::Api::namespaced(kube::Client::try_from(config).unwrap(), &k.namespace)
}

/// A sandbox is a Pod made from the user's image with the agent injected, its limits as the container's
/// resources, its lifetime backed by the Pod's deadline, its record in the Pod; removing it deletes the Pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_is_a_pod_with_the_agent_injected_and_its_limits() {
    let sb = Sandbox::builder()
        .client(&client())
        .command("sleep")
        .args(["infinity"])
        .cpu(0.5)
        .memory_bytes(256 << 20)
        .max_lifetime(Duration::from_secs(600))
        .tag("team", "ml")
        .create()
        .await
        .unwrap();
    let pod = pods().await.get(sb.id()).await.unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some(kubernetes_config().agent_image.as_str()));
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("python:3.11"), "the built-in image is the backend's default image");
    assert_eq!(c.command.as_ref().unwrap(), &["/.hangar/hangar-agent", "pod"]);
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!((limits["cpu"].0.as_str(), limits["memory"].0.as_str()), ("500m", "268435456"));
    assert_eq!(c.resources.as_ref().unwrap().requests.as_ref(), Some(limits), "Guaranteed: requests = limits");
    assert!(spec.active_deadline_seconds.unwrap() >= 600);
    assert_eq!(spec.automount_service_account_token, Some(false), "no cluster credentials in a sandbox");
    assert_eq!(pod.metadata.labels.as_ref().unwrap()["hangar.dev/sandbox"], sb.id());
    // The record round-trips through the Pod.
    let info = sb.info().await.unwrap();
    assert_eq!((info.cpus, info.memory_bytes, info.tags["team"].as_str()), (Some(0.5), Some(256 << 20), "ml"));
    // Inside, the cgroup limit the kubelet set is the one asked for.
    let r = sb.exec(["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"]).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), (256u64 << 20).to_string());
    let id = sb.id().to_string();
    sb.delete().await.unwrap();
    assert!(pods().await.get_opt(&id).await.unwrap().is_none(), "the Pod went with the sandbox");
}

/// Two servers share nothing but the cluster: a client streaming through one (behind a load balancer) that is
/// killed mid-stream resumes through the other and gets every byte once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_is_resumed_through_another() {
    use sha2::Digest;
    let (mut a, b) = (ServeProcess::kubernetes(), ServeProcess::kubernetes());
    let lb = proxy::Proxy::failover(&[&a.url, &b.url], None).await;
    let client = Client::connect(&lb.url, Some(TOKEN_A)).unwrap();
    let sb = Sandbox::builder().client(&client).command("sleep").args(["infinity"]).create().await.unwrap();
    // About 4 s of numbered lines.
    let script = "import sys, time\nfor i in range(400):\n    print(str(i) * 2000, flush=True); time.sleep(0.01)";
    let mut h = sb.exec(["python3", "-c", script]).start().await.unwrap();
    let (mut got, mut killed) = (Vec::new(), false);
    let end = loop {
        match h.next_event().await.expect("the stream resumes through the other replica") {
            Some(hangar::ExecEvent::Output { data, offset, .. }) => {
                assert_eq!(offset, got.len() as u64, "resumed exactly where it stopped");
                got.extend_from_slice(&data);
                if !killed && got.len() > 100_000 {
                    a.child.kill().unwrap();
                    a.child.wait().unwrap();
                    killed = true;
                }
            }
            Some(hangar::ExecEvent::Gap { .. }) => panic!("a gap in a stream nobody dropped"),
            Some(hangar::ExecEvent::Exit(end)) => break end,
            None => panic!("the stream ended without its exit"),
        }
    };
    assert!(killed, "the replica was killed mid-stream");
    let want: String = (0..400).map(|i| i.to_string().repeat(2000) + "\n").collect();
    assert_eq!(got.len(), want.len());
    assert!(sha2::Sha256::digest(&got) == sha2::Sha256::digest(want.as_bytes()), "every byte, once, in order");
    assert_eq!(end.code, Some(0));
    // The other replica serves the sandbox on its own.
    let direct = Client::connect(&b.url, Some(TOKEN_A)).unwrap();
    let again = Sandbox::from_id_with(&direct, sb.id()).await.unwrap();
    assert_eq!(again.exec(["echo", "still here"]).await.unwrap().stdout, b"still here\n");
    again.delete().await.unwrap();
}

/// A Pod deleted under a running exec (a node drained, an operator's kubectl) ends the exec as the sandbox's
/// end, with what it wrote so far, never as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_under_a_running_exec_ends_it_as_sandbox_terminated() {
    let sb = common::sandbox().await;
    let mut h = sb.exec(["sh", "-c", "echo started; sleep 600"]).start().await.unwrap();
    match h.next_event().await.unwrap() {
        Some(hangar::ExecEvent::Output { data, .. }) => assert_eq!(&data[..], b"started\n"),
        other => panic!("{other:?}"),
    }
    pods().await.delete(sb.id(), &Default::default()).await.unwrap();
    let t = Instant::now();
    match h.wait().await {
        Err(Error::SandboxTerminated { id, .. }) => assert_eq!(id, sb.id()),
        other => panic!("a deleted Pod must end the exec as SandboxTerminated: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(40), "the end took {:?}", t.elapsed());
}

/// The sandbox id a message names (`sandbox sb-… failed to start: …`).
fn named_sandbox(message: &str) -> String {
    let id = message.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).find(|w| w.starts_with("sb-"));
    id.unwrap_or_else(|| panic!("no sandbox named in {message:?}")).to_string()
}

/// A sandbox the cluster cannot place is a typed error at once, naming Kubernetes' reason, and leaves no Pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_sandbox_is_a_typed_error_naming_the_reason() {
    let t = Instant::now();
    let r = Sandbox::builder().client(&client()).command("sleep").args(["infinity"]).cpu(512.0).create().await;
    let unschedulable = match r {
        Err(Error::SandboxFailed { message: reason }) => {
            assert!(reason.contains("Unschedulable") && reason.contains("cpu"), "{reason}");
            named_sandbox(&reason)
        }
        other => panic!("{other:?}"),
    };
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // An image the node does not have (and may not pull): the image's error, with the kubelet's reason.
    let r = Sandbox::builder().client(&client()).image("hangar.local/no-such-image:1").create().await;
    let no_image = match r {
        Err(Error::SandboxFailed { message: reason }) => {
            assert!(reason.contains("ErrImageNeverPull"), "{reason}");
            named_sandbox(&reason)
        }
        other => panic!("{other:?}"),
    };
    // (Only these two: other tests' Pods may be pending at this moment.)
    let names: Vec<String> = pods()
        .await
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    for id in [unschedulable, no_image] {
        assert!(!names.contains(&id), "the failed sandbox's Pod {id} was left behind");
    }
}

/// Tenants stay apart through the cluster: another tenant neither sees nor reaches a tenant's sandbox, and
/// a sandbox's agent refuses a client without its token (here: tenant B's own sandbox, reaching for A's agent
/// over the pod network).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_through_the_cluster() {
    let sb = common::sandbox().await;
    let other = Client::connect(&common::server().url, Some(TOKEN_B)).unwrap();
    assert!(other.list().await.unwrap().iter().all(|i| i.id != sb.id()), "tenant b lists tenant a's sandbox");
    match Sandbox::from_id_with(&other, sb.id()).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("tenant b reached tenant a's sandbox: {:?}", other.map(|s| s.id().to_string())),
    }
    let theirs = Sandbox::builder().client(&other).command("sleep").args(["infinity"]).create().await.unwrap();
    // (Once the kubelet has reported it: the sandbox runs as soon as its agent answers, maybe before.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let ip = loop {
        let pod = pods().await.get(sb.id()).await.unwrap();
        if let Some(ip) = pod.status.and_then(|s| s.pod_ip) {
            break ip;
        }
        assert!(Instant::now() < deadline, "the Pod got no address");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Without the token, A's agent closes the connection after a refusal; with a guessed one too.
    let probe = format!(
        "import socket, struct, json\ns = socket.create_connection(('{ip}', 7070), timeout=5)\n\
         hello = json.dumps({{'token': 'guess'}}).encode()\ns.sendall(struct.pack('<I', len(hello)) + hello)\n\
         print(s.recv(4096)[4:].decode())"
    );
    let r = theirs.exec(["python3", "-c", &probe]).await.unwrap();
    let text = String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
    // Either the pod network does not reach it at all, or the agent refuses (it listens on loopback only).
    assert!(text.contains("wrong sandbox token") || text.contains("refused") || text.contains("timed out"), "{text}");
    assert!(!text.contains("\"op\":\"done\""), "the agent let a guessed token in: {text}");
    theirs.delete().await.unwrap();
    sb.delete().await.unwrap();
}
