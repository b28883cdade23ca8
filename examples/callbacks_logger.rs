//! Custom callbacks: forward raw output chunks, and whole lines, into a logger as they arrive.
//!
//! `cargo build -p hangar-cli && cargo run -p hangar --example callbacks_logger`

use hangar::Sandbox;
use std::time::Instant;

#[tokio::main]
async fn main() -> hangar::Result<()> {
    let start = Instant::now();
    // The "logger": timestamped lines on stderr. Any logging crate slots in here.
    let log = |level: &str, msg: &str| eprintln!("[{:>7.3}s {level}] {msg}", start.elapsed().as_secs_f64());
    let script = "import sys,time\nfor i in range(3):\n    print('step', i, flush=True)\n    print('warn', i, file=sys.stderr, flush=True)\n    time.sleep(0.3)";
    Sandbox::builder()
        .run(async |sb| {
            // Raw chunks: a chunk may end in the middle of a line.
            sb.exec(["python3", "-c", script])
                .on_stdout(|chunk| log("INFO", String::from_utf8_lossy(chunk).trim_end()))
                .on_stderr(|chunk| log("WARN", String::from_utf8_lossy(chunk).trim_end()))
                .await?;
            // Line-buffered: each callback gets one whole line.
            sb.exec(["python3", "-c", script])
                .on_stdout_line(|line| log("INFO", line))
                .on_stderr_line(|line| log("WARN", line))
                .await
        })
        .await?;
    Ok(())
}
