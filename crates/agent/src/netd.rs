//! The network helper (`hangar-agent netd DIR`): one per sandbox with a network, in the host's network
//! namespace, the sandbox's resolver on its gateway address (UDP and TCP port 53).
//!
//! It answers by the sandbox's policy: a name the policy does not resolve gets REFUSED (so a sandbox limited to
//! some names cannot use DNS for anything else); any other question is forwarded to the upstream resolvers, and
//! the addresses in an answer for an explicitly allowed name are added to the sandbox's allowed addresses
//! before the answer is sent, so the connection that follows is allowed. It reads its configuration again on
//! SIGHUP, and leaves when the sandbox's interface is gone (the sandbox ended).

use hangar_agent_protocol::NetdConfig;
use simple_dns::{rdata::RData, Packet, PacketFlag, RCODE};
use std::cell::RefCell;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// How long an upstream resolver has to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the helper for the sandbox whose state directory is `dir`. Never returns.
pub fn run(dir: &Path) -> ! {
    let code = match serve(dir) {
        Ok(()) => 0,
        Err(e) => {
            crate::log!("netd: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve(dir: &Path) -> Result<(), String> {
    let cfg = NetdConfig::load(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let at = SocketAddr::new(cfg.net.gateway.into(), 53);
        let udp = Rc::new(UdpSocket::bind(at).await.map_err(|e| format!("bind udp {at}: {e}"))?);
        let tcp = TcpListener::bind(at).await.map_err(|e| format!("bind tcp {at}: {e}"))?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("SIGHUP: {e}"))?;
        let host_if = cfg.net.host_if.clone();
        let cfg = Rc::new(RefCell::new(cfg));
        // Serving: the engine may start the sandbox.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ok").and_then(|()| out.flush());
        // SAFETY: stdout is ours; closing it tells the engine nothing more comes.
        unsafe { libc::close(1) };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                got = udp.recv_from(&mut buf) => {
                    let Ok((n, from)) = got else { continue };
                    let (query, udp, cfg) = (buf[..n].to_vec(), udp.clone(), cfg.clone());
                    tokio::task::spawn_local(async move {
                        if let Some(reply) = answer(&query, &cfg, false).await {
                            let _ = udp.send_to(&reply, from).await;
                        }
                    });
                }
                conn = tcp.accept() => {
                    if let Ok((stream, _)) = conn {
                        tokio::task::spawn_local(serve_tcp(stream, cfg.clone()));
                    }
                }
                _ = hup.recv() => match NetdConfig::load(dir) {
                    Ok(new) => *cfg.borrow_mut() = new,
                    Err(e) => crate::log!("netd: keeping the old policy: {e}"),
                },
                // By the interface's index in this namespace (sysfs may show another's).
                _ = tick.tick() => if nix::net::if_::if_nametoindex(host_if.as_str()).is_err() {
                    return Ok(());
                },
            }
        }
    })
}

/// DNS over TCP: two-byte lengths before each message.
async fn serve_tcp(mut stream: TcpStream, cfg: Rc<RefCell<NetdConfig>>) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(Duration::from_secs(10), stream.read_u16()).await else { return };
        let mut query = vec![0u8; len as usize];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = answer(&query, &cfg, true).await else { return };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The reply to one question: REFUSED by the policy, the upstream's answer (its addresses allowed first
/// when the name is allowed explicitly), or SERVFAIL when no upstream answered; `None` for what is not a
/// question, and when the answer's addresses could not be allowed.
async fn answer(query: &[u8], cfg: &RefCell<NetdConfig>, tcp: bool) -> Option<Vec<u8>> {
    let packet = Packet::parse(query).ok()?;
    if packet.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let name = packet.questions.first()?.qname.to_string();
    let (policy, upstreams, net) = {
        let c = cfg.borrow();
        (c.policy.clone(), c.upstreams.clone(), c.net.clone())
    };
    if !policy.resolves(&name) {
        return failure(&packet, RCODE::Refused);
    }
    let mut reply = None;
    for up in upstreams {
        let asked = if tcp { forward_tcp(query, up).await } else { forward_udp(query, up).await };
        if let Some(r) = asked {
            reply = Some(r);
            break;
        }
    }
    // No upstream answered: say so at once rather than leave the client to time out.
    let Some(reply) = reply else { return failure(&packet, RCODE::ServerFailure) };
    if policy.allows_name(&name) {
        let addrs: Vec<(Ipv4Addr, u32)> = Packet::parse(&reply)
            .map(|p| {
                p.answers
                    .iter()
                    .filter_map(|rr| match &rr.rdata {
                        RData::A(a) => Some((Ipv4Addr::from(a.address), rr.ttl)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let allowed = tokio::task::spawn_blocking(move || hangar_runtime::net::allow_resolved(&net, &addrs)).await;
        if !matches!(allowed, Ok(Ok(()))) {
            // An answer the sandbox could not use would fail later and obscurely: fail the lookup instead.
            crate::log!("netd: cannot allow the addresses of {name}: {allowed:?}");
            return None;
        }
    }
    Some(reply)
}

/// An answer with no records and this code, to the question `query`.
fn failure(query: &Packet<'_>, rcode: RCODE) -> Option<Vec<u8>> {
    let mut reply = Packet::new_reply(query.id());
    reply.questions = query.questions.clone();
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    *reply.rcode_mut() = rcode;
    reply.build_bytes_vec().ok()
}

async fn forward_udp(query: &[u8], up: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let sock = UdpSocket::bind(local).await.ok()?;
    sock.connect(up).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf)).await.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

async fn forward_tcp(query: &[u8], up: SocketAddr) -> Option<Vec<u8>> {
    let asked = async {
        let mut s = TcpStream::connect(up).await.ok()?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        s.write_all(&framed).await.ok()?;
        let len = s.read_u16().await.ok()?;
        let mut reply = vec![0u8; len as usize];
        s.read_exact(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, asked).await.ok()?
}

/// A published port's proxy (`hangar-agent publish AGENT_PID AGENT_START PORT`, its listening socket on
/// stdin): joins the sandbox's network namespace, so that every connection it makes is the sandbox's own
/// `127.0.0.1:PORT`, and copies bytes both ways. Leaves when the agent is gone. Never returns.
pub fn publish(args: &[String]) -> ! {
    let code = match proxy(args) {
        Ok(()) => 0,
        Err(e) => {
            crate::log!("publish: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn proxy(args: &[String]) -> Result<(), String> {
    let [pid, start, port] = args else { return Err("usage: publish AGENT_PID AGENT_START PORT".into()) };
    let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("{s:?} is not a number"));
    let (pid, start, port) = (parse(pid)? as i32, parse(start)?, parse(port)? as u16);
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| format!("the sandbox's namespace: {e}"))?;
    // Opened first, checked after: the namespace is the agent's, not a later process's with its pid.
    if !hangar_runtime::process::process_alive(pid, start) {
        return Err("the sandbox has ended".into());
    }
    // SAFETY: descriptor 0 is the listening socket the engine gave us; nothing else owns it.
    let listener = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(0) };
    listener.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    drop(ns);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let Ok((mut outside, _)) = conn else { continue };
                    tokio::task::spawn_local(async move {
                        // Made on this (the only) thread, so in the sandbox's namespace.
                        match TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await {
                            Ok(mut inside) => {
                                let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                            }
                            // The client sees its connection closed: nothing listens on the port (yet).
                            Err(_) => drop(outside),
                        }
                    });
                }
                _ = tick.tick() => if !hangar_runtime::process::process_alive(pid, start) {
                    return Ok(());
                },
            }
        }
    })
}
