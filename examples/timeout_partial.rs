//! Timeout with partial output: the whole process tree is killed, and what it printed is kept.
//!
//! `cargo build -p hangar-cli && cargo run -p hangar --example timeout_partial`

use hangar::{Error, Sandbox};
use std::time::Duration;

#[tokio::main]
async fn main() -> hangar::Result<()> {
    let script = "import time\nfor i in range(3):\n    print('working', i, flush=True)\nprint('now hanging...', flush=True)\ntime.sleep(3600)";
    let outcome = Sandbox::builder()
        .run(async |sb| sb.exec(["python3", "-c", script]).timeout(Duration::from_secs(2)).await)
        .await;
    match outcome {
        Err(Error::Timeout { timeout, result, .. }) => {
            println!("timed out after {timeout:?}; partial stdout:\n{}", result.stdout_text());
            Ok(())
        }
        Ok(r) => panic!("expected a timeout, got exit {}", r.returncode),
        Err(e) => Err(e),
    }
}
