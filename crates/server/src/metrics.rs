//! Counters for Prometheus, and the small HTTP listener that serves them with `/healthz`.

use hangar_engine::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What the server counts.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) execs_started: AtomicU64,
    pub(crate) execs_failed_to_start: AtomicU64,
    pub(crate) stdout_bytes: AtomicU64,
    pub(crate) stderr_bytes: AtomicU64,
    pub(crate) exec_seconds: Histogram,
    pub(crate) create_seconds: Histogram,
    pub(crate) unauthenticated: AtomicU64,
    pub(crate) exec_attaches: AtomicU64,
    pub(crate) gap_bytes: AtomicU64,
    pub(crate) keepalives: AtomicU64,
    /// Output bytes that went through clients' own pipes instead of frames (see `LocalPipes`).
    pub(crate) piped_bytes: AtomicU64,
}

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

const BOUNDS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0];

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, bound) in self.buckets.iter().zip(BOUNDS) {
            if s <= bound {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, bound) in self.buckets.iter().zip(BOUNDS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", b.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Metrics {
    /// The Prometheus text exposition of the counters and of sandboxes by state.
    pub async fn render(&self, engine: &Engine) -> String {
        let mut out = String::new();
        let mut by_state = std::collections::BTreeMap::new();
        for s in ["pulling", "creating", "running", "completed", "failed", "terminated"] {
            by_state.insert(s, 0u64);
        }
        if let Ok(all) = engine.list().await {
            for i in all {
                *by_state.entry(i.state.as_str()).or_default() += 1;
            }
        }
        let _ = writeln!(out, "# HELP hangar_sandboxes Sandboxes by state.\n# TYPE hangar_sandboxes gauge");
        for (state, n) in by_state {
            let _ = writeln!(out, "hangar_sandboxes{{state=\"{state}\"}} {n}");
        }
        let counters = [
            ("hangar_execs_started_total", "Execs started.", &self.execs_started),
            ("hangar_execs_failed_to_start_total", "Execs refused or failed to start.", &self.execs_failed_to_start),
            ("hangar_exec_attaches_total", "Streams that attached to an existing exec (resumes).", &self.exec_attaches),
            ("hangar_exec_gap_bytes_total", "Output bytes reported lost to the journal cap.", &self.gap_bytes),
            ("hangar_exec_keepalives_total", "Keepalive frames sent on quiet exec streams.", &self.keepalives),
            (
                "hangar_exec_piped_bytes_total",
                "Output bytes written into the pipes of clients on this machine instead of frames.",
                &self.piped_bytes,
            ),
            (
                "hangar_requests_unauthenticated_total",
                "Requests refused for a missing or wrong token.",
                &self.unauthenticated,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        }
        let _ = writeln!(out, "# HELP hangar_exec_output_bytes_total Bytes streamed from execs.\n# TYPE hangar_exec_output_bytes_total counter");
        let _ =
            writeln!(out, "hangar_exec_output_bytes_total{{stream=\"stdout\"}} {}", self.stdout_bytes.load(Relaxed));
        let _ =
            writeln!(out, "hangar_exec_output_bytes_total{{stream=\"stderr\"}} {}", self.stderr_bytes.load(Relaxed));
        self.exec_seconds.render(&mut out, "hangar_exec_duration_seconds", "Exec wall time, start to exit.");
        self.create_seconds.render(&mut out, "hangar_sandbox_create_seconds", "Sandbox create to running.");
        out
    }
}

/// Serves `GET /healthz` (200 `ok` while the engine's store answers; open, for load balancers) and
/// `GET /metrics`, which needs a tenant's bearer token like the gRPC API (it counts every tenant's sandboxes).
pub(crate) async fn serve_http(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    tokens: Arc<crate::Tokens>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (engine, metrics, tokens) = (engine.clone(), metrics.clone(), tokens.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (engine, metrics, tokens) = (engine.clone(), metrics.clone(), tokens.clone());
                async move {
                    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
                    let (code, body) = match req.uri().path() {
                        "/metrics" if tokens.authenticate(auth).is_err() => {
                            metrics.unauthenticated.fetch_add(1, Relaxed);
                            (401, "unauthenticated: /metrics needs authorization: Bearer TOKEN\n".to_string())
                        }
                        "/healthz" => match engine.list().await {
                            Ok(_) => (200, "ok\n".to_string()),
                            Err(e) => (503, format!("unhealthy: {e}\n")),
                        },
                        "/metrics" => (200, metrics.render(&engine).await),
                        _ => (404, "not found\n".to_string()),
                    };
                    hyper::Response::builder()
                        .status(code)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}
