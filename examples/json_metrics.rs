//! Parse JSON training metrics from stdout live, as each line arrives.
//!
//! `cargo build -p hangar-cli && cargo run -p hangar --example json_metrics`

use hangar::Sandbox;

const TRAIN: &str = r#"
import json, time
loss = 1.0
for epoch in range(1, 6):
    loss *= 0.7
    print(json.dumps({"epoch": epoch, "loss": round(loss, 4)}), flush=True)
    time.sleep(0.2)
"#;

#[tokio::main]
async fn main() -> hangar::Result<()> {
    let mut losses: Vec<f64> = vec![];
    Sandbox::builder()
        .run(async |sb| {
            sb.exec(["python3", "-c", TRAIN])
                .on_stdout_line(|line| match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(m) => {
                        let loss = m["loss"].as_f64().unwrap_or(f64::NAN);
                        let trend = match losses.last() {
                            Some(prev) if loss < *prev => "↓",
                            Some(_) => "↑",
                            None => " ",
                        };
                        println!("epoch {} loss {loss:.4} {trend}", m["epoch"]);
                        losses.push(loss);
                    }
                    Err(_) => println!("(not a metric) {line}"),
                })
                .check(true)
                .await
        })
        .await?;
    println!("{} metrics parsed live", losses.len());
    Ok(())
}
