//! Separate log files: stdout and stderr written to two local files as they arrive.
//!
//! `cargo build -p hangar-cli && cargo run -p hangar --example separate_logs`

use hangar::Sandbox;
use std::fs::File;
use std::io::Write;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir();
    let (out_path, err_path) = (dir.join("hangar-example.stdout.log"), dir.join("hangar-example.stderr.log"));
    let (mut out, mut err) = (File::create(&out_path)?, File::create(&err_path)?);
    let script = "import sys\nfor i in range(5):\n    print('result', i)\n    print('debug', i, file=sys.stderr)";
    Sandbox::builder()
        .run(async |sb| {
            sb.exec(["python3", "-c", script])
                .on_stdout(|c| out.write_all(c).expect("write stdout log"))
                .on_stderr(|c| err.write_all(c).expect("write stderr log"))
                .capture(false)
                .await
        })
        .await?;
    for p in [&out_path, &err_path] {
        println!("{}: {} bytes", p.display(), std::fs::metadata(p)?.len());
    }
    Ok(())
}
