//! A sandbox's network: its own network namespace with one veth pair to the host (a routed /31: no bridge,
//! so sandboxes share no link), and its policy as nftables rules in Hangar's own table, `inet hangar`.
//!
//! The namespace is made before the agent is spawned (the agent joins it, [`SandboxSpec::netns`]), so the
//! network is complete before any sandbox process runs, and it lives exactly as long as the sandbox's
//! processes: when the last one is gone the kernel removes the namespace and both ends of the veth pair. What
//! outlives it, the sandbox's rules, is removed by [`remove`] and found by [`installed`] after a crash.
//!
//! The table's base chains send each sandbox's traffic, by its host-side interface, to chains of its own
//! (verdict maps: one lookup however many sandboxes there are):
//! - forwarded from a sandbox: refused to another sandbox and for IPv6; replies accepted; else its policy
//!   ([`hangar_types::NetworkPolicy`]): denied addresses, allowed addresses (and those its resolver answered
//!   for allowed names, with their TTL), [`hangar_types::DEFAULT_DENIED`], then all or nothing;
//! - addressed to the host from a sandbox: only DNS to its own gateway address (its resolver), else refused;
//! - towards a sandbox: only replies (nothing can connect into a sandbox);
//! - leaving the host: masqueraded.
//!
//! Refusals answer at once (a TCP reset, or ICMP administratively prohibited), so a refused connection fails in
//! milliseconds rather than timing out.
//!
//! [`SandboxSpec::netns`]: crate::SandboxSpec

use crate::{Error, Result};
use hangar_types::{NetTarget, NetworkPolicy, DEFAULT_DENIED};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

/// Hangar's nftables table (family `inet`).
pub const TABLE: &str = "hangar";
/// Host-side interfaces of sandboxes are named this and 13 hex digits of the sandbox id.
pub const IF_PREFIX: &str = "hg";
/// The interface inside the sandbox.
pub const SANDBOX_IF: &str = "eth0";

/// The address range sandboxes get their /31s from (default `10.213.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// First address.
    pub base: Ipv4Addr,
    /// Prefix length (at most 30).
    pub prefix: u8,
}

impl Default for Subnet {
    fn default() -> Self {
        Self { base: Ipv4Addr::new(10, 213, 0, 0), prefix: 16 }
    }
}

impl Subnet {
    /// Parses `A.B.C.D/N`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = s.split_once('/')?;
        let (base, prefix): (Ipv4Addr, u8) = (a.parse().ok()?, p.parse().ok()?);
        (prefix <= 30 && u32::from(base) & !(u32::MAX << (32 - prefix)) == 0).then_some(Self { base, prefix })
    }

    fn pairs(self) -> u32 {
        1 << (31 - self.prefix as u32)
    }

    fn pair(self, i: u32) -> (Ipv4Addr, Ipv4Addr) {
        let a = u32::from(self.base) + 2 * i;
        (a.into(), (a + 1).into())
    }

    fn index_of(self, ip: Ipv4Addr) -> Option<u32> {
        let off = u32::from(ip).checked_sub(u32::from(self.base))?;
        (off / 2 < self.pairs()).then_some(off / 2)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// One sandbox's network, as its resolver and its cleanup need to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNet {
    /// Names its rules in the table (`f_KEY`, `i_KEY`, sets `a_KEY`, `d_KEY`, `n_KEY`): the sandbox id's hex.
    pub key: String,
    /// Its host-side interface.
    pub host_if: String,
    /// The host end's address: the sandbox's default route and resolver.
    pub gateway: Ipv4Addr,
    /// The sandbox's address.
    pub address: Ipv4Addr,
}

impl SandboxNet {
    /// The names of sandbox `id` (`sb-` and hex digits).
    fn named(id: &str) -> Self {
        let key = key_of(id);
        let tail = &key[key.len().saturating_sub(13)..];
        let any = Ipv4Addr::UNSPECIFIED;
        Self { host_if: format!("{IF_PREFIX}{tail}"), key, gateway: any, address: any }
    }
}

/// The key that names sandbox `id`'s rules ([`SandboxNet::key`], as [`installed`] lists them): the id's
/// letters and digits.
///
/// ```
/// assert_eq!(hangar_runtime::net::key_of("sb-0a1b"), "sb0a1b");
/// ```
pub fn key_of(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

/// Makes sandbox `id`'s network namespace, with loopback up and a veth pair to the engine's own namespace,
/// addressed from `subnet` and routed, and installs `policy`. Returns the namespace (for the agent to join:
/// nothing else holds it) and the network. Serialised across processes by `lock` (a file every engine sharing
/// the subnet uses), since addresses are picked from what the host's interfaces hold.
pub fn create(
    id: &str,
    subnet: Subnet,
    policy: &NetworkPolicy,
    lock: &std::path::Path,
) -> Result<(OwnedFd, SandboxNet)> {
    let _held = hold(lock)?;
    let mut net = SandboxNet::named(id);
    let used = used_pairs(subnet)?;
    let i = (1..subnet.pairs())
        .find(|i| !used.contains(i))
        .ok_or_else(|| Error::Unsupported(format!("network: every address of {subnet} is in use")))?;
    (net.gateway, net.address) = subnet.pair(i);
    let host_pid = std::process::id();
    let inside = format!(
        "link set lo up\n\
         link add {SANDBOX_IF} type veth peer name {host_if} netns {host_pid}\n\
         addr add {address}/31 dev {SANDBOX_IF}\n\
         link set {SANDBOX_IF} up\n\
         route add default via {gateway} dev {SANDBOX_IF}\n",
        host_if = net.host_if,
        address = net.address,
        gateway = net.gateway,
    );
    // A thread of its own enters the new namespace (and ends with it); `ip`, spawned from it, works in it.
    let netns = std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::sys("unshare", "network namespace", e))?;
            let fd = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(|e| Error::io("open", "/proc/thread-self/ns/net", e))?;
            for conf in ["all", "default"] {
                sysctl(&format!("net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
            run("ip", &["-batch", "-"], &inside)?;
            Ok(fd.into())
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Unsupported("network: the namespace thread panicked".into())))
    })?;
    sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", net.host_if), "1");
    let host = format!("addr add {}/31 dev {h}\nlink set {h} up\n", net.gateway, h = net.host_if);
    // On failure the pair goes with the namespace, which nothing holds once `netns` is dropped.
    run("ip", &["-batch", "-"], &host)?;
    sysctl("net/ipv4/ip_forward", "1");
    install(&net, policy, subnet)?;
    Ok((netns, net))
}

/// Holds the exclusive lock on file `path` (made if missing) until the guard is dropped: how engines sharing
/// a state directory take turns at what the host holds (addresses, published ports).
pub fn hold(path: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::sys("flock", path.display(), e))
}

/// Replaces the policy of a sandbox's network (addresses its resolver allowed are forgotten: they are allowed
/// again when it next answers for them, if the new policy allows their name). Atomic: a connection sees the
/// old rules or the new ones.
pub fn set_policy(net: &SandboxNet, policy: &NetworkPolicy) -> Result<()> {
    nft(&policy_script(net, policy))
}

/// Allows the addresses the sandbox's resolver answered for an allowed name, each for its TTL (at least a
/// minute: clients cache answers beyond their TTL).
pub fn allow_resolved(net: &SandboxNet, addrs: &[(Ipv4Addr, u32)]) -> Result<()> {
    if addrs.is_empty() {
        return Ok(());
    }
    let elems: Vec<String> = addrs.iter().map(|(ip, ttl)| format!("{ip} timeout {}s", (*ttl).max(60))).collect();
    nft(&format!("add element inet {TABLE} n_{} {{ {} }}\n", net.key, elems.join(", ")))
}

/// Removes a sandbox's rules (its interfaces went with its namespace). Idempotent: removing what is not
/// there is not an error.
/// `id` may also be a key from [`installed`] (the names are made from its letters and digits alone).
pub fn remove(id: &str) -> Result<()> {
    let net = SandboxNet::named(id);
    let (k, h) = (&net.key, &net.host_if);
    // `delete` fails on what is missing, and older nft has no `destroy`: every object is first added (a
    // no-op when it exists), then deleted, in one transaction.
    let script = format!(
        "add chain inet {TABLE} f_{k}\nadd chain inet {TABLE} i_{k}\n{sets}\
         add element inet {TABLE} egress_of {{ \"{h}\" : jump f_{k} }}\nadd element inet {TABLE} host_of {{ \"{h}\" : jump i_{k} }}\n\
         delete element inet {TABLE} egress_of {{ \"{h}\" }}\ndelete element inet {TABLE} host_of {{ \"{h}\" }}\n\
         flush chain inet {TABLE} f_{k}\nflush chain inet {TABLE} i_{k}\n\
         delete chain inet {TABLE} f_{k}\ndelete chain inet {TABLE} i_{k}\n\
         delete set inet {TABLE} a_{k}\ndelete set inet {TABLE} d_{k}\ndelete set inet {TABLE} n_{k}\n",
        sets = sets(k),
    );
    let removed = match nft(&script) {
        Err(_) if !table_exists() => Ok(()),
        other => other,
    };
    // The veth pair goes with the sandbox's network namespace, but the kernel frees a namespace later, on a
    // work queue of its own: deleted here, it is gone when the sandbox's removal returns.
    // (Missing already is fine. /sys/class/net would not tell: it shows the namespace /sys was mounted in.)
    let _ = output("ip", &["link", "delete", h]);
    removed
}

/// The sandbox ids (as keys: the id's letters and digits) that have rules installed.
pub fn installed() -> Result<Vec<String>> {
    if !table_exists() {
        return Ok(vec![]);
    }
    let out = output("nft", &["list", "table", "inet", TABLE])?;
    Ok(out.lines().filter_map(|l| l.trim().strip_prefix("chain f_")?.strip_suffix(" {")).map(str::to_string).collect())
}

fn sets(k: &str) -> String {
    format!(
        "add set inet {TABLE} a_{k} {{ type ipv4_addr; flags interval; auto-merge; }}\n\
         add set inet {TABLE} d_{k} {{ type ipv4_addr; flags interval; auto-merge; }}\n\
         add set inet {TABLE} n_{k} {{ type ipv4_addr; flags timeout; }}\n"
    )
}

/// The rules of one sandbox, replacing whatever it had.
fn policy_script(net: &SandboxNet, policy: &NetworkPolicy) -> String {
    let (k, t) = (&net.key, TABLE);
    let v4 = |list: &[NetTarget]| -> Vec<String> {
        list.iter()
            .filter_map(|x| match x {
                NetTarget::Cidr(IpAddr::V4(ip), len) => Some(format!("{ip}/{len}")),
                _ => None,
            })
            .collect()
    };
    let mut s = format!("add chain inet {t} f_{k}\nadd chain inet {t} i_{k}\n{}", sets(k));
    for x in ["a", "d", "n"] {
        s += &format!("flush set inet {t} {x}_{k}\n");
    }
    s += &format!("flush chain inet {t} f_{k}\nflush chain inet {t} i_{k}\n");
    for (set, list) in [("a", v4(&policy.allow)), ("d", v4(&policy.deny))] {
        if !list.is_empty() {
            s += &format!("add element inet {t} {set}_{k} {{ {} }}\n", list.join(", "));
        }
    }
    let rule = |chain: &str, r: &str| format!("add rule inet {t} {chain}_{k} {r}\n");
    // Sandboxes keep CAP_NET_RAW (Docker's default set): a forged source address goes nowhere.
    let own = net.address;
    s += &rule("f", &format!("ip saddr != {own} drop"));
    s += &rule("i", &format!("ip saddr != {own} drop"));
    s += &rule("f", &format!("ip daddr @d_{k} goto refuse"));
    s += &rule("f", &format!("ip daddr @a_{k} accept"));
    s += &rule("f", &format!("ip daddr @n_{k} accept"));
    s += &rule("f", &format!("ip daddr {{ {} }} goto refuse", DEFAULT_DENIED.join(", ")));
    s += &rule("f", if policy.allow.is_empty() { "accept" } else { "goto refuse" });
    let gw = net.gateway;
    s += &rule("i", &format!("ip daddr {gw} udp dport 53 accept"));
    s += &rule("i", &format!("ip daddr {gw} tcp dport 53 accept"));
    s += &rule("i", "goto refuse");
    s
}

/// The whole script of a new sandbox: the table (when it is missing), its rules, and its entries in the maps.
fn install(net: &SandboxNet, policy: &NetworkPolicy, subnet: Subnet) -> Result<()> {
    let (k, h, t) = (&net.key, &net.host_if, TABLE);
    let mut s = String::new();
    if !table_exists() {
        s += &table_script(subnet);
    }
    s += &policy_script(net, policy);
    s += &format!("add element inet {t} egress_of {{ \"{h}\" : jump f_{k} }}\nadd element inet {t} host_of {{ \"{h}\" : jump i_{k} }}\n");
    nft(&s)
}

/// Hangar's table: the base chains and the maps they look sandboxes up in.
fn table_script(subnet: Subnet) -> String {
    let p = IF_PREFIX;
    format!(
        "table inet {TABLE} {{
  map egress_of {{ type ifname : verdict; }}
  map host_of {{ type ifname : verdict; }}
  chain refuse {{
    meta l4proto tcp reject with tcp reset
    reject with icmpx type admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    oifname \"{p}*\" ct state established,related accept
    oifname \"{p}*\" goto refuse
    iifname \"{p}*\" meta nfproto ipv6 goto refuse
    iifname \"{p}*\" ct state established,related accept
    iifname vmap @egress_of
    iifname \"{p}*\" goto refuse
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname \"{p}*\" ct state established,related accept
    iifname vmap @host_of
    iifname \"{p}*\" goto refuse
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat - 10; policy accept;
    ip saddr {subnet} oifname != \"{p}*\" masquerade
  }}
}}
"
    )
}

fn table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pairs of `subnet` that an interface of this host holds an address of.
fn used_pairs(subnet: Subnet) -> Result<std::collections::HashSet<u32>> {
    let out = output("ip", &["-o", "-4", "addr", "show"])?;
    let mut toks = out.split_whitespace();
    let mut used = std::collections::HashSet::new();
    while let Some(t) = toks.next() {
        if t == "inet" {
            let addr = toks.next().and_then(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok());
            used.extend(addr.and_then(|a| subnet.index_of(a)));
        }
    }
    Ok(used)
}

fn nft(script: &str) -> Result<()> {
    run("nft", &["-f", "-"], script)
}

/// Runs `prog args` with `input` on its stdin; its stderr is the error when it fails.
fn run(prog: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| missing(prog, e))?;
    let _ = child.stdin.take().expect("piped").write_all(input.as_bytes());
    let out = child.wait_with_output().map_err(|e| Error::io("wait for", prog, e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Unsupported(format!("network: {prog} {}: {}", args.join(" "), err.trim())));
    }
    Ok(())
}

fn output(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog).args(args).stderr(Stdio::null()).output().map_err(|e| missing(prog, e))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing(prog: &str, e: std::io::Error) -> Error {
    let pkg = if prog == "nft" { "nftables" } else { "iproute2" };
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::Unsupported(format!("network mode egress needs the {prog} command (Debian package {pkg})"))
        }
        _ => Error::io("run", prog, e),
    }
}

/// Writes a sysctl of the calling thread's network namespace; a missing one (no IPv6) is fine.
fn sysctl(name: &str, value: &str) {
    let _ = std::fs::write(format!("/proc/sys/{name}"), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_hand_out_pairs() {
        let s = Subnet::parse("10.213.0.0/16").unwrap();
        assert_eq!(s.pairs(), 32768);
        assert_eq!(s.pair(1), (Ipv4Addr::new(10, 213, 0, 2), Ipv4Addr::new(10, 213, 0, 3)));
        assert_eq!(s.index_of(Ipv4Addr::new(10, 213, 1, 1)), Some(128));
        assert_eq!(s.index_of(Ipv4Addr::new(10, 214, 0, 1)), None);
        assert!(Subnet::parse("10.213.0.1/16").is_none() && Subnet::parse("10.0.0.0/31").is_none());
    }

    #[test]
    fn names_come_from_the_id() {
        let n = SandboxNet::named("sb-0123456789abcdef");
        assert_eq!((n.key.as_str(), n.host_if.as_str()), ("sb0123456789abcdef", "hg3456789abcdef"));
        assert!(n.host_if.len() <= 15);
    }

    #[test]
    fn a_policy_becomes_rules_in_order() {
        let net = SandboxNet {
            gateway: Ipv4Addr::new(10, 213, 0, 2),
            address: Ipv4Addr::new(10, 213, 0, 3),
            ..SandboxNet::named("sb-1")
        };
        let s = policy_script(&net, &NetworkPolicy::egress().allow("10.9.0.0/16").deny("10.9.9.9"));
        let order = [
            "add element inet hangar a_sb1 { 10.9.0.0/16 }",
            "d_sb1 { 10.9.9.9/32 }",
            "f_sb1 ip saddr != 10.213.0.3 drop",
            "@d_sb1 goto refuse",
        ];
        let pos: Vec<usize> = order.iter().map(|o| s.find(o).unwrap_or_else(|| panic!("{o} in {s}"))).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{s}");
        assert!(s.contains("add rule inet hangar f_sb1 goto refuse\n"), "an allow-list refuses the rest: {s}");
        assert!(policy_script(&net, &NetworkPolicy::egress()).contains("add rule inet hangar f_sb1 accept\n"));
    }
}
