//! `check`: a non-zero exit becomes an error that carries the complete result.
//!
//! `cargo build -p hangar-cli && cargo run -p hangar --example check_errors`

use hangar::{Error, Sandbox};

#[tokio::main]
async fn main() -> hangar::Result<()> {
    let outcome = Sandbox::builder()
        .run(async |sb| {
            sb.exec(["sh", "-c", "echo 'loading data'; echo 'error: dataset not found' >&2; exit 1"]).check(true).await
        })
        .await;
    match outcome {
        Err(Error::ExecutionFailed { command, result }) => {
            println!("{command:?} failed with code {}", result.returncode);
            println!("stdout: {}", result.stdout_text().trim());
            println!("stderr: {}", result.stderr_text().trim());
            Ok(())
        }
        Ok(_) => panic!("expected a failure"),
        Err(e) => Err(e),
    }
}
