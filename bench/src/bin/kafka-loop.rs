//! `kafka-loop`: the reference for the fused Kafka stage. Moves every record of
//! one topic to another with a bare rdkafka consumer feeding an rdkafka
//! producer (the worker's client settings, nothing in between) and reports
//! records per second from before the clients start to the last
//! acknowledgement, as `fnapi-loadgen kafka-stage` does for the worker.

use std::path::PathBuf;

use anyhow::{Context, Result};
use beam_bench::kafka_stage::{TopicArgs, run_loop};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    topics: TopicArgs,

    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let report = run_loop(&cli.topics.into()).await?;
    println!("{report}");
    if let Some(path) = cli.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
