//! Progress tracking: count lines as they arrive and show progress live.
//!
//! `cargo build -p hangar-cli && cargo run -p hangar --example progress`

use hangar::Sandbox;

const TOTAL: usize = 20;

#[tokio::main]
async fn main() -> hangar::Result<()> {
    let script =
        format!("import time\nfor i in range({TOTAL}):\n    print('item', i, flush=True)\n    time.sleep(0.05)");
    let mut done = 0;
    Sandbox::builder()
        .run(async |sb| {
            sb.exec(["python3", "-c", &script])
                .on_stdout_line(|_| {
                    done += 1;
                    eprint!("\rprogress: {done}/{TOTAL}");
                })
                .check(true)
                .await
        })
        .await?;
    eprintln!();
    println!("processed {done} items");
    Ok(())
}
