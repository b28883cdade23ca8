//! Quick start: run a training script in a fresh sandbox and watch its output live.
//!
//! `cargo build -p hangar-cli && cargo run -p hangar --example quickstart` (as root, or with `HANGAR_URL`).

use hangar::Sandbox;

const TRAIN: &str = r#"
import time
for epoch in range(1, 4):
    print(f"epoch {epoch}/3: training...", flush=True)
    time.sleep(0.5)
print("done")
"#;

#[tokio::main]
async fn main() -> hangar::Result<()> {
    let r = Sandbox::builder()
        .command("sleep")
        .args(["infinity"])
        .run(async |sb| {
            sb.write_file("train.py", TRAIN).await?;
            sb.exec(["python3", "train.py"]).stream_output(true).await
        })
        .await?;
    println!("returncode: {}", r.returncode);
    Ok(())
}
