//! What a sandbox may reach on the network: its mode and its egress policy.

use crate::Invalid;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Whether a sandbox has a network beyond its own loopback.
///
/// ```
/// use hangar_types::NetworkMode;
/// assert_eq!(NetworkMode::parse("egress"), Some(NetworkMode::Egress));
/// assert_eq!(NetworkMode::default().as_str(), "none");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only: no interface, no route out, DNS fails at once.
    #[default]
    None,
    /// Outgoing connections as the policy allows, through an interface of its own, with a resolver Hangar runs.
    Egress,
}

impl NetworkMode {
    /// The mode's name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Egress => "egress",
        }
    }

    /// The mode named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::None, Self::Egress].into_iter().find(|m| m.as_str() == s)
    }
}

/// One entry of an allow- or deny-list: addresses (`10.1.0.0/16`, `192.0.2.7`) or a domain name
/// (`pypi.org`, or `*.example.com` for every name under it but not the name itself).
///
/// A name is enforced by address: the sandbox's resolver adds the addresses it answers for an allowed name to
/// the sandbox's allowed addresses, so a literal address that no allowed name resolved to stays refused.
///
/// ```
/// use hangar_types::NetTarget;
/// let t = NetTarget::parse("10.1.0.0/16").unwrap();
/// assert!(t.contains_addr("10.1.2.3".parse().unwrap()));
/// assert!(NetTarget::parse("*.example.com").unwrap().matches_name("files.example.com"));
/// assert!(!NetTarget::parse("*.example.com").unwrap().matches_name("example.com"));
/// assert_eq!(NetTarget::parse("10.1.0.0/33").unwrap_err().to_string(), "network: \"10.1.0.0/33\": the prefix length is above 32");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NetTarget {
    /// An address range: its first address (host bits cleared) and prefix length.
    Cidr(IpAddr, u8),
    /// A domain name, lower case, without a trailing dot; `*.` first for the names under it.
    Name(String),
}

impl NetTarget {
    /// Parses an address, a CIDR range or a domain name.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| Invalid::new("network", format!("{s:?}: {why}"));
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        if let Ok(ip) = addr.parse::<IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match prefix {
                None => max,
                Some(p) => p.parse::<u8>().map_err(|_| bad("the prefix length is not a number"))?,
            };
            if len > max {
                return Err(bad(&format!("the prefix length is above {max}")));
            }
            return Ok(Self::Cidr(mask(ip, len), len));
        }
        if prefix.is_some() {
            return Err(bad("not an IP address range"));
        }
        let name = s.trim_end_matches('.').to_ascii_lowercase();
        let labels = name.strip_prefix("*.").unwrap_or(&name);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.len() > 253 || !labels.split('.').all(label_ok) || labels.parse::<IpAddr>().is_ok() {
            return Err(bad("neither an IP address, a CIDR range nor a domain name"));
        }
        if labels.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad("not a valid IP address"));
        }
        Ok(Self::Name(name))
    }

    /// Whether `ip` is in this range (never, for a name).
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        match self {
            Self::Cidr(net, len) => net.is_ipv4() == ip.is_ipv4() && mask(ip, *len) == *net,
            Self::Name(_) => false,
        }
    }

    /// Whether the domain name `name` is this one (or under it, for `*.`). Case and a trailing dot are ignored.
    pub fn matches_name(&self, name: &str) -> bool {
        let Self::Name(pattern) = self else { return false };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(parent) => name.strip_suffix(parent).is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => name == *pattern,
        }
    }
}

/// `ip` with every bit after the first `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - len as u32) };
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

impl std::fmt::Display for NetTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cidr(ip, len) if (ip.is_ipv4() && *len == 32) || *len == 128 => write!(f, "{ip}"),
            Self::Cidr(ip, len) => write!(f, "{ip}/{len}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

impl TryFrom<String> for NetTarget {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

impl From<NetTarget> for String {
    fn from(t: NetTarget) -> String {
        t.to_string()
    }
}

/// Address ranges a sandbox never reaches unless a policy allows them by name or range: private networks
/// (RFC 1918, carrier-grade NAT, benchmarking), loopback, link-local (with cloud metadata at 169.254.169.254),
/// multicast and reserved. The host itself and other sandboxes are refused apart from these, always.
pub const DEFAULT_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// A sandbox's network: its mode and, for `egress`, what it may reach.
///
/// Rules, in order: an address in `deny` (or resolved from a name in it) is refused; one in `allow` (or
/// resolved from an allowed name) is reached; [`DEFAULT_DENIED`] ranges are refused; anything else is reached
/// when `allow` is empty (the whole internet) and refused otherwise. Names that match neither list resolve only
/// when `allow` holds no name, so a sandbox with a list of names cannot use DNS to reach anything else.
///
/// ```
/// use hangar_types::{NetworkPolicy, NetTarget, NetworkMode};
/// let p = NetworkPolicy::egress().allow("pypi.org").allow("10.8.0.0/16").deny("10.8.9.0/24");
/// assert_eq!(p.mode, NetworkMode::Egress);
/// assert!(p.validate().is_ok());
/// assert!(p.resolves("pypi.org") && !p.resolves("example.com"));
/// assert!(NetworkPolicy::default().validate().is_ok());
/// assert_eq!(NetworkPolicy { allow: vec![NetTarget::parse("1.2.3.4").unwrap()], ..NetworkPolicy::default() }
///     .validate().unwrap_err().to_string(), "network: allow and deny lists need mode egress");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Loopback only, or egress.
    pub mode: NetworkMode,
    /// Ranges and names the sandbox may reach; empty: every public address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<NetTarget>,
    /// Ranges and names it may never reach, whatever `allow` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<NetTarget>,
}

/// Most entries an allow- or deny-list may hold.
pub const MAX_NET_TARGETS: usize = 1024;

impl NetworkPolicy {
    /// Egress to every public address.
    pub fn egress() -> Self {
        Self { mode: NetworkMode::Egress, ..Self::default() }
    }

    /// This policy with `target` (an address, a range or a name) allowed. Panics on a target that does not
    /// parse; use [`NetTarget::parse`] for input from users.
    pub fn allow(mut self, target: &str) -> Self {
        self.allow.push(NetTarget::parse(target).expect("a valid network target"));
        self
    }

    /// This policy with `target` denied (see [`NetworkPolicy::allow`]).
    pub fn deny(mut self, target: &str) -> Self {
        self.deny.push(NetTarget::parse(target).expect("a valid network target"));
        self
    }

    /// Checks the policy's rules, naming what breaks one.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.mode == NetworkMode::None && !(self.allow.is_empty() && self.deny.is_empty()) {
            return Err(Invalid::new("network", "allow and deny lists need mode egress"));
        }
        if self.allow.len() > MAX_NET_TARGETS || self.deny.len() > MAX_NET_TARGETS {
            return Err(Invalid::new("network", format!("a list holds more than {MAX_NET_TARGETS} entries")));
        }
        Ok(())
    }

    /// Whether the sandbox's resolver answers for `name`: never for a denied name; with names in `allow`, only
    /// for those.
    pub fn resolves(&self, name: &str) -> bool {
        if self.deny.iter().any(|t| t.matches_name(name)) {
            return false;
        }
        let mut names = self.allow.iter().filter(|t| matches!(t, NetTarget::Name(_))).peekable();
        names.peek().is_none() || names.any(|t| t.matches_name(name))
    }

    /// Whether addresses resolved for `name` are allowed explicitly (they then pass [`DEFAULT_DENIED`] and an
    /// allow-list of ranges).
    pub fn allows_name(&self, name: &str) -> bool {
        self.resolves(name) && self.allow.iter().any(|t| t.matches_name(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() {
        for (s, printed) in [
            ("10.1.2.3/16", "10.1.0.0/16"),
            ("192.0.2.7", "192.0.2.7"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("PyPI.org.", "pypi.org"),
            ("*.example.com", "*.example.com"),
        ] {
            assert_eq!(NetTarget::parse(s).unwrap().to_string(), printed);
        }
        for bad in ["", "10.0.0.0/x", "a..b", "-a.com", "1.2.3.999", "*.", "a b", "300.1.1.1/8"] {
            assert!(NetTarget::parse(bad).is_err(), "{bad} parsed");
        }
        let json = serde_json::to_string(&NetworkPolicy::egress().allow("10.0.0.0/8")).unwrap();
        assert_eq!(json, r#"{"mode":"egress","allow":["10.0.0.0/8"]}"#);
        let back: NetworkPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, NetworkPolicy::egress().allow("10.0.0.0/8"));
        assert!(serde_json::from_str::<NetworkPolicy>(r#"{"mode":"egress","allow":["a..b"]}"#).is_err());
    }

    #[test]
    fn names_resolve_by_the_lists() {
        let open = NetworkPolicy::egress().deny("evil.test");
        assert!(open.resolves("anything.test") && !open.resolves("EVIL.test.") && !open.allows_name("x.test"));
        let listed = NetworkPolicy::egress().allow("*.corp.test").allow("10.0.0.0/8");
        assert!(listed.resolves("a.corp.test") && listed.allows_name("a.corp.test"));
        assert!(!listed.resolves("corp.test") && !listed.resolves("other.test"));
        let ranges_only = NetworkPolicy::egress().allow("10.0.0.0/8");
        assert!(ranges_only.resolves("anything.test") && !ranges_only.allows_name("anything.test"));
    }
}
