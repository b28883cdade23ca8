//! A TCP proxy on 127.0.0.1 that breaks connections on purpose: all at once on demand (a flaky network, a
//! load balancer restarting), or whenever one has been idle for too long (a proxy's idle timeout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub url: String,
    cut: watch::Sender<u64>,
    /// Connections closed by [`Proxy::cut_all`] or the idle timeout.
    pub cuts: Arc<AtomicU64>,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|g| *g += 1);
    }
}

impl Proxy {
    /// Forwards 127.0.0.1:<ephemeral> to `upstream` (host:port); `idle` closes a connection that carried no
    /// byte in either direction for that long.
    pub async fn start(upstream: &str, idle: Option<Duration>) -> Proxy {
        Self::failover(&[upstream], idle).await
    }

    /// Like [`Proxy::start`], each new connection going to the first of `upstreams` that accepts it (a load
    /// balancer in front of replicas).
    pub async fn failover(upstreams: &[&str], idle: Option<Duration>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, _) = watch::channel(0u64);
        let cuts = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let upstreams: Vec<String> = upstreams.iter().map(|u| u.trim_start_matches("http://").to_string()).collect();
        let task = {
            let (cut, cuts, accepted) = (cut.clone(), cuts.clone(), accepted.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else { return };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let mut server = None;
                    for upstream in &upstreams {
                        if let Ok(s) = TcpStream::connect(upstream).await {
                            server = Some(s);
                            break;
                        }
                    }
                    let Some(server) = server else { continue };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::spawn(pipe(client, server, cut.subscribe(), cuts.clone(), idle));
                }
            })
        };
        Proxy { url, cut, cuts, accepted, task }
    }

    /// Breaks every open connection now.
    pub fn cut_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mut cut: watch::Receiver<u64>,
    cuts: Arc<AtomicU64>,
    idle: Option<Duration>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (mut a, mut b) = (vec![0u8; 256 * 1024], vec![0u8; 256 * 1024]);
    cut.borrow_and_update();
    let idle = idle.unwrap_or(Duration::from_secs(24 * 3600));
    loop {
        let moved = tokio::select! {
            r = cr.read(&mut a) => match r { Ok(n) if n > 0 => sw.write_all(&a[..n]).await.is_ok(), _ => false },
            r = sr.read(&mut b) => match r { Ok(n) if n > 0 => cw.write_all(&b[..n]).await.is_ok(), _ => false },
            _ = cut.changed() => { cuts.fetch_add(1, Ordering::Relaxed); false }
            _ = tokio::time::sleep(idle) => { cuts.fetch_add(1, Ordering::Relaxed); false }
        };
        if !moved {
            return; // dropping both sockets closes them: the peers see a broken connection
        }
    }
}
