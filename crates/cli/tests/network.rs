//! Sandbox networking against test hosts this test builds itself, in network namespaces with no route out.
//!
//! Every test makes its own small world: a namespace `H` that plays the host (Hangar's engine, or its server,
//! runs there through `nsenter`, so its nftables table and its sandboxes' interfaces are H's), and two
//! test hosts `A` (an HTTP server and the DNS server Hangar forwards to) and `B` (an HTTP server), each linked
//! to H by a veth pair. H has no default route and no link to the real host's network: nothing a sandbox does,
//! even with Hangar's rules missing, can leave the machine. Everything is removed by PID and by name at the end.

mod common;

/// Which backend `common::client()` gives (unused here: the CLI drives everything).
pub const BACKEND: common::Backend = common::Backend::Embedded;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const A: &str = "10.250.1.2";
const B: &str = "10.250.2.2";
/// H's own address on its link to A: a "host address" with a service on it.
const H_ON_A: &str = "10.250.1.1";

struct World {
    ns: [String; 3],
    servers: Vec<Child>,
    state: PathBuf,
    serve: Option<common::ServeProcess>,
}

/// A command run in network namespace `ns` (only: `ip netns exec` would also remount /sys, hiding the
/// cgroup hierarchies mounted under it).
fn netns(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--");
    c
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl World {
    /// The namespaces, links and servers; with `remote`, a `hangar serve` in H that the CLI talks to.
    fn new(remote: bool) -> World {
        common::require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let ns = ["h", "a", "b"].map(|r| format!("hgt{r}{tag}"));
        let state = std::env::temp_dir().join(format!("hangar-net-{tag}"));
        let mut w = World { ns, servers: vec![], state, serve: None };
        for n in &w.ns {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        for (i, (name, addr)) in [("va", A), ("vb", B)].into_iter().enumerate() {
            let (h, peer) = (&w.ns[0], &w.ns[i + 1]);
            ip(&["-n", h, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", peer]);
            let host_end = format!("10.250.{}.1/30", i + 1);
            ip(&["-n", h, "addr", "add", &host_end, "dev", name]);
            ip(&["-n", h, "link", "set", name, "up"]);
            ip(&["-n", peer, "addr", "add", &format!("{addr}/30"), "dev", "eth0"]);
            ip(&["-n", peer, "link", "set", "eth0", "up"]);
        }
        let dns = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/net/dns_server.py");
        let (h, a, b) = (w.ns[0].clone(), w.ns[1].clone(), w.ns[2].clone());
        w.spawn(&a, &["python3", dns, A, &format!("a.test={A}"), &format!("b.test={B}")], Some("ready"));
        w.spawn(&a, &["python3", "-m", "http.server", "--bind", A, "8080"], None);
        w.spawn(&b, &["python3", "-m", "http.server", "--bind", B, "8080"], None);
        // The host's own services: one on its loopback, one on an address of it.
        w.spawn(&h, &["python3", "-m", "http.server", "--bind", "127.0.0.1", "9090"], None);
        w.spawn(&h, &["python3", "-m", "http.server", "--bind", H_ON_A, "9091"], None);
        for (ns, url) in [(&a, format!("http://{A}:8080/")), (&b, format!("http://{B}:8080/"))] {
            w.wait_http(ns, &url);
        }
        w.wait_http(&h, &format!("http://{H_ON_A}:9091/"));
        if remote {
            let mut c = w.in_ns(&h, env!("CARGO_BIN_EXE_hangar"));
            c.args(["serve", "--listen", "127.0.0.1:0", "--drain", "1"]);
            w.serve = Some(common::ServeProcess::spawn(c));
        }
        w
    }

    /// `prog` run in namespace `ns` with the engine's environment.
    fn in_ns(&self, ns: &str, prog: &str) -> Command {
        let mut c = netns(ns);
        c.arg(prog)
            .env("HANGAR_STATE_DIR", &self.state)
            .env("HANGAR_AGENT_BIN", common::agent_bin())
            .env("HANGAR_DNS", A)
            .env_remove("HANGAR_URL")
            .env_remove("HANGAR_NETWORK");
        c.env("HANGAR_SERVER_TOKENS", format!("a={},b={}", common::TOKEN_A, common::TOKEN_B));
        if let Some(serve) = &self.serve {
            c.env("HANGAR_URL", &serve.url).env("HANGAR_TOKEN", common::TOKEN_A);
        }
        c
    }

    fn spawn(&mut self, ns: &str, argv: &[&str], ready: Option<&str>) {
        let mut c = netns(ns);
        c.args(argv).stdin(Stdio::null()).stderr(Stdio::null());
        c.stdout(if ready.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = c.spawn().unwrap();
        if let Some(word) = ready {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
            assert_eq!(line.trim(), word, "{argv:?} did not start");
        }
        self.servers.push(child);
    }

    fn wait_http(&self, ns: &str, url: &str) {
        for _ in 0..100 {
            if netns(ns).args(["curl", "-sf", "-m", "1", "-o", "/dev/null", url]).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{url} never answered in {ns}");
    }

    /// `hangar ARGS` in H; panics with its stderr unless it succeeds.
    fn hangar(&self, args: &[&str]) -> String {
        let out = self.hangar_out(args);
        assert!(out.status.success(), "hangar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn hangar_out(&self, args: &[&str]) -> Output {
        self.in_ns(&self.ns[0], env!("CARGO_BIN_EXE_hangar")).args(args).output().unwrap()
    }

    fn create(&self, net: &[&str]) -> String {
        let mut args = vec!["create"];
        args.extend_from_slice(net);
        self.hangar(&args).trim().to_string()
    }

    /// Runs a shell script in sandbox `id`; its stdout (and stderr after it).
    fn sh(&self, id: &str, script: &str) -> String {
        let out = self.hangar_out(&["exec", id, "--", "sh", "-c", script]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// curl's verdict on `url` from sandbox `id`: `200`, or `refused` (connection refused at once), `no-name`
    /// (the name did not resolve), `timeout`.
    fn reach(&self, id: &str, url: &str) -> String {
        let out = self.sh(id, &format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' {url}; echo \" $?\""));
        match out.split_whitespace().collect::<Vec<_>>()[..] {
            ["200", "0"] => "200".into(),
            ["000", "7"] => "refused".into(),
            ["000", "6"] => "no-name".into(),
            ["000", "28"] => "timeout".into(),
            _ => format!("unexpected: {out}"),
        }
    }

    /// What H holds that a sandbox could leave: interfaces, addresses, rules, processes of the resolver.
    fn host_state(&self) -> String {
        let h = &self.ns[0];
        let run = |args: &[&str]| {
            let out = netns(h).args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let links = run(&["ip", "-o", "link", "show"]);
        let links: Vec<&str> = links.lines().map(|l| l.split_whitespace().nth(1).unwrap_or("")).collect();
        let rules = run(&["nft", "list", "ruleset"]);
        // Hangar's table and base chains stay (made once, like a container runtime's); a sandbox's own
        // chains, sets and map entries must go.
        let rules: Vec<&str> =
            rules.lines().filter(|l| l.contains("_sb") || l.contains("\"hg") && !l.contains("\"hg*\"")).collect();
        let netd = common::host_processes_mentioning(&self.state.display().to_string());
        format!("links {links:?}\nrules {rules:?}\nprocesses {netd:?}")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.serve.take());
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn policy_is_enforced(remote: bool) {
    let w = World::new(remote);
    // Loopback only: no route, no resolver.
    let none = w.create(&[]);
    assert_eq!(w.sh(&none, "ip -4 route; ip -o link | grep -v ' lo:' | wc -l").trim(), "0");
    assert!(w.sh(&none, "cat /etc/resolv.conf").contains("no resolver"));
    assert_eq!(w.reach(&none, &format!("http://{A}:8080/")), "refused", "no route: fails at once");
    assert_eq!(w.reach(&none, "http://a.test:8080/"), "no-name");

    // Egress allowing A by name.
    let sb = w.create(&["--network", "egress", "--allow", "a.test"]);
    assert_eq!(w.reach(&sb, "http://a.test:8080/"), "200", "by name, through the policy's resolver");
    assert_eq!(w.reach(&sb, &format!("http://{A}:8080/")), "200", "the address the allowed name resolved to");
    assert_eq!(w.reach(&sb, "http://b.test:8080/"), "no-name", "a name that is not allowed does not resolve");
    assert_eq!(w.reach(&sb, &format!("http://{B}:8080/")), "refused", "a literal address no allowed name gave");
    assert_eq!(w.reach(&sb, "http://169.254.169.254/"), "refused", "cloud metadata");
    // The host: its address on A's link (whose service A itself reaches), and the sandbox's gateway.
    let from_a = netns(&w.ns[1])
        .args(["curl", "-sf", "-m", "2", "-o", "/dev/null"])
        .arg(format!("http://{H_ON_A}:9091/"))
        .status()
        .unwrap();
    assert!(from_a.success(), "the host's service answers A");
    assert_eq!(w.reach(&sb, &format!("http://{H_ON_A}:9091/")), "refused", "a host address");
    let gateway = w.sh(&sb, "ip -4 route show default").split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(w.reach(&sb, &format!("http://{gateway}:9090/")), "refused", "the host's loopback service");

    // Another sandbox, serving on all its addresses, with A's address allowed by range.
    let other = w.create(&["--network", "egress", "--allow", &format!("{A}/32")]);
    assert_eq!(w.reach(&other, &format!("http://{A}:8080/")), "200", "by address, allowed as a range");
    assert_eq!(w.reach(&other, "http://a.test:8080/"), "200", "names resolve when the allow-list has none");
    w.hangar(&["exec", "-d", &other, "--", "python3", "-m", "http.server", "--bind", "0.0.0.0", "8000"]);
    let other_ip = w.sh(&other, "ip -4 -o addr show eth0").split_whitespace().nth(3).unwrap().to_string();
    let other_ip = other_ip.split('/').next().unwrap();
    assert!(w
        .sh(
            &other,
            "for i in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8000/ && echo up && break; sleep 0.1; done"
        )
        .contains("up"));
    assert_eq!(w.reach(&sb, &format!("http://{other_ip}:8000/")), "refused", "another sandbox");

    // A policy changed while running: the next connection follows it.
    let shown = w.hangar(&["network", &sb, "--allow", "b.test", "--deny", &format!("{A}/32")]);
    assert_eq!(shown, format!("mode egress\nallow b.test\ndeny {A}\n"));
    assert_eq!(w.reach(&sb, "http://b.test:8080/"), "200");
    assert_eq!(w.reach(&sb, &format!("http://{A}:8080/")), "refused", "denied now");
    assert_eq!(w.reach(&sb, "http://a.test:8080/"), "no-name", "no longer allowed");
    assert_eq!(w.hangar(&["network", &sb]), shown, "the record holds the new policy");
    let mode_change = w.hangar_out(&["network", &none, "--allow", "b.test"]);
    assert!(!mode_change.status.success());
    assert!(String::from_utf8_lossy(&mode_change.stderr).contains("mode none; its mode cannot change"));
    let bad = w.hangar_out(&["create", "--allow", "10.0.0.0/40"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the prefix length is above 32"), "{bad:?}");

    let ids = [none, sb, other];
    w.hangar(&[&["rm"][..], &ids.iter().map(String::as_str).collect::<Vec<_>>()].concat());
    let left = w.host_state();
    assert!(!left.contains("\"hg") && !left.contains("_sb"), "leftovers after rm: {left}");
    for id in &ids {
        assert_eq!(common::leftovers(id).len(), 0, "{:?}", common::leftovers(id));
    }
}

#[test]
fn egress_policy_is_enforced_embedded() {
    policy_is_enforced(false);
}

#[test]
fn egress_policy_is_enforced_through_the_server() {
    policy_is_enforced(true);
}

/// 50 create/stop cycles with egress on leave H as it was, and a sandbox killed under the engine (its agent
/// SIGKILLed, nobody told) has its rules and resolver removed when the engine next looks.
#[test]
fn networks_leave_nothing_behind() {
    let w = World::new(false);
    let before = w.host_state();
    for _ in 0..50 {
        let id = w.create(&["--network", "egress"]);
        w.hangar(&["rm", &id]);
    }
    assert_eq!(w.host_state(), before, "after 50 egress sandboxes");
    let id = w.create(&["--network", "egress", "--allow", "a.test"]);
    assert_ne!(w.host_state(), before, "a running egress sandbox has rules and a resolver");
    let agent = common::host_processes_mentioning(&id)
        .into_iter()
        .find(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"hangar-agent\0sb-")))
        .expect("the sandbox's agent");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut state = String::new();
    for _ in 0..100 {
        w.hangar(&["ls"]);
        state = w.host_state();
        if state == before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(state, before, "after the agent was killed");
}

/// Engines with other state directories share the host's rules table: a second one starting (a server, which
/// reconciles the rules of sandboxes that ended unwatched) leaves the first one's running sandboxes their network.
#[test]
fn a_second_engine_leaves_the_networks_of_another_alone() {
    let w = World::new(false);
    let sb = w.create(&["--network", "egress", "--allow", "a.test"]);
    assert_eq!(w.reach(&sb, "http://a.test:8080/"), "200");
    let other_state = w.state.with_extension("other");
    let mut other = w.in_ns(&w.ns[0], env!("CARGO_BIN_EXE_hangar"));
    other.env("HANGAR_STATE_DIR", &other_state).args(["serve", "--listen", "127.0.0.1:0", "--drain", "1"]);
    // Listening: its reconciliation is done.
    let serve = common::ServeProcess::spawn(other);
    assert_eq!(w.reach(&sb, "http://a.test:8080/"), "200", "the other engine took this sandbox's network away");
    drop(serve);
    w.hangar(&["rm", &sb]);
    let _ = std::fs::remove_dir_all(&other_state);
}

/// A python http.server bound to the loopback of a sandbox (with no network at all) answers curl on this
/// machine at the address `hangar port` prints; through the server, only for the tenant that owns it.
fn ports_are_published(remote: bool) {
    let w = World::new(remote);
    let sb = w.create(&[]);
    w.hangar(&["exec", "-d", &sb, "--", "python3", "-m", "http.server", "--bind", "127.0.0.1", "8000"]);
    w.sh(&sb, "echo published > /tmp/marker.txt");
    let wait = "for i in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.1; done";
    w.sh(&sb, wait);
    let mut port = w.in_ns(&w.ns[0], env!("CARGO_BIN_EXE_hangar"));
    port.args(["port", &sb, "8000"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = port.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let address = line.trim().to_string();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let get = |path: &str| {
        let out = netns(&w.ns[0]).args(["curl", "-sf", "-m", "5"]).arg(format!("http://{address}{path}")).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    if !remote {
        assert!(child.wait().unwrap().success(), "embedded, the command returns; the port stays published");
        let again = w.hangar(&["port", &sb, "8000"]);
        assert_eq!(again.trim(), address, "publishing again gives the same address");
    }
    assert!(get("/").contains("Directory listing"), "the sandbox's server answers");
    if remote {
        let stranger = w
            .in_ns(&w.ns[0], env!("CARGO_BIN_EXE_hangar"))
            .args(["port", &sb, "8000"])
            .env("HANGAR_TOKEN", common::TOKEN_B)
            .output()
            .unwrap();
        assert!(!stranger.status.success());
        assert!(String::from_utf8_lossy(&stranger.stderr).contains("not found"), "{stranger:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
    w.hangar(&["rm", &sb]);
    assert_eq!(common::leftovers(&sb).len(), 0, "{:?}", common::leftovers(&sb));
    if !remote {
        assert_eq!(get("/"), "", "the port went with the sandbox");
    }
}

#[test]
fn ports_are_published_embedded() {
    ports_are_published(false);
}

#[test]
fn ports_are_published_through_the_server() {
    ports_are_published(true);
}
