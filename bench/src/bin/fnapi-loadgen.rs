//! `fnapi-loadgen`: a Rust stand-in for a Beam runner that loads a worker pool.
//!
//! It calls `StartWorker` on the pool, serves the control, data and logging
//! endpoints the workers connect to, streams KV bundles through one stage,
//! checks that every output byte equals the input, and reports throughput,
//! bundle latency, connect latency and (with `--pool-pid`) the pool's CPU and
//! memory. Exits non-zero when any bundle failed or came back different.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use beam_bench::driver::{self, RunConfig, TargetConfig, TargetKind};
use beam_bench::workload::WorkloadSpec;
use beam_integration::DataOrder;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stream synthetic KV elements through one stage and measure.
    Run(RunArgs),
    /// Bridge Kafka topics through a worker, as Flink with KafkaIO does:
    /// consume records, send them in bundles, produce the results.
    Kafka(KafkaArgs),
    /// Run the worker's fused Kafka read → kv_echo → Kafka write stage once:
    /// every record of the input topic to the output topic, inside the worker.
    KafkaStage(KafkaStageArgs),
}

/// Which pool to drive and how to reach it.
#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Address of the worker pool (BeamFnExternalWorkerPool), or of the
    /// `grpc-echo` server for --target echo (not dialed for --target loopback).
    #[arg(long)]
    pool: SocketAddr,

    /// kv-echo: a pool running this project's KV echo transform;
    /// python-map: Beam's Python worker pool running a pickled Map(identity)
    /// (needs --python-descriptor); echo: the bare gRPC echo server;
    /// loopback: no pool (--pool is not dialed), the driver reads its own
    /// data stream back: the bound no target can pass.
    #[arg(long, value_enum, default_value_t = TargetKind::KvEcho)]
    target: TargetKind,

    /// ProcessBundleDescriptor file written by bench/python/make_python_stage.py
    /// (use its --nullable variant with --nullable or the kafka mode).
    #[arg(long)]
    python_descriptor: Option<PathBuf>,

    /// Workers to start (StartWorker calls); bundles go to them in turn.
    #[arg(long, default_value_t = 1)]
    workers: usize,

    /// request-first: ProcessBundle, then the data (Flink);
    /// data-first: all data, then ProcessBundle (Beam's Python runner).
    #[arg(long, value_enum, default_value_t = Order::RequestFirst)]
    order: Order,

    /// Seconds a bundle (or starting a worker) may take before the run fails.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,

    /// Seconds to wait for the pool's port to accept connections (a pool
    /// started just before may still be importing).
    #[arg(long, default_value_t = 60)]
    pool_wait_secs: u64,

    /// PID of the pool process: report its (and its children's) CPU seconds
    /// and peak RSS from /proc. Start a fresh pool per run for a per-run peak.
    #[arg(long)]
    pool_pid: Option<u32>,

    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Order {
    RequestFirst,
    DataFirst,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// Name of the scenario, copied into the results.
    #[arg(long, default_value = "run")]
    label: String,

    /// Elements to send in total.
    #[arg(long, default_value_t = 1_000_000)]
    elements: u64,

    /// Bytes per key.
    #[arg(long, default_value_t = 10)]
    key_size: usize,

    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,

    /// Elements per bundle; 0 sends everything as one bundle.
    #[arg(long, default_value_t = 1000)]
    bundle_elements: u64,

    /// Bytes per runner Data chunk (rounded down to whole elements, at least
    /// one); 0 sends each bundle as a single chunk like Beam's Python runner.
    /// Flink's runner flushes at 1 MB.
    #[arg(long, default_value_t = 1_000_000)]
    chunk_bytes: usize,

    /// Bundles in flight at once, across all workers.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,

    /// Encode elements with KafkaIO's kv(nullable(bytes), nullable(bytes))
    /// coder instead of kv(bytes, bytes).
    #[arg(long)]
    nullable: bool,

    /// Have the worker write KafkaIO's nullable KV coder whatever the input
    /// coder (kv-echo only): it decodes and re-encodes every element, and the
    /// output is checked against the same elements in that coder.
    #[arg(long)]
    output_nullable: bool,

    /// Stop sending new bundles after this many seconds (the report says so);
    /// 0 = no limit.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,

    /// MB of distinct element data generated up front; longer runs reuse it.
    #[arg(long, default_value_t = 256)]
    max_generated_mb: usize,

    /// Seconds between progress lines on stderr; 0 = none.
    #[arg(long, default_value_t = 5.0)]
    progress_secs: f64,
}

fn target_config(args: &TargetArgs, nullable: bool, output_nullable: bool) -> TargetConfig {
    TargetConfig {
        kind: args.target,
        pool: args.pool,
        python_descriptor: args.python_descriptor.clone(),
        workers: args.workers,
        order: match args.order {
            Order::RequestFirst => DataOrder::RequestFirst,
            Order::DataFirst => DataOrder::DataFirst,
        },
        nullable,
        output_nullable,
        timeout: Duration::from_secs(args.timeout_secs),
        pool_wait: Duration::from_secs(args.pool_wait_secs),
    }
}

fn seconds(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    // Nullable input is echoed as nullable unless asked otherwise.
    let output_nullable = args.nullable || args.output_nullable;
    let config = RunConfig {
        label: args.label,
        target: target_config(&args.target, args.nullable, output_nullable),
        workload: WorkloadSpec {
            elements: args.elements,
            key_size: args.key_size,
            value_size: args.value_size,
            bundle_elements: args.bundle_elements,
            chunk_bytes: args.chunk_bytes,
            nullable: args.nullable,
            output_nullable,
            max_generated_bytes: args.max_generated_mb.max(1) << 20,
        },
        in_flight: args.in_flight,
        pool_pid: args.target.pool_pid,
        max_duration: seconds(args.max_seconds),
        progress_every: seconds(args.progress_secs),
    };
    let report = driver::run(config).await?;
    println!("{report}");
    write_json(&args.target.json, &report)?;
    if !report.ok() {
        bail!("{} bundle(s) failed or differed", report.errors);
    }
    Ok(())
}

#[derive(Args, Debug)]
struct KafkaArgs {
    #[command(flatten)]
    target: TargetArgs,

    /// Kafka bootstrap servers (host:port).
    #[arg(long)]
    brokers: String,

    /// Topic to consume.
    #[arg(long, default_value = "echo-input")]
    input_topic: String,

    /// Topic to produce the worker's output to.
    #[arg(long, default_value = "echo-output")]
    output_topic: String,

    /// Records to bridge; the run ends when this many went through.
    #[arg(long)]
    records: u64,

    /// A bundle closes at this many records (Flink's streaming maxBundleSize)...
    #[arg(long, default_value_t = 1000)]
    bundle_records: usize,

    /// ...or this many milliseconds after its first record (maxBundleTimeMills).
    #[arg(long, default_value_t = 1000)]
    bundle_millis: u64,

    /// Bundles in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,

    /// Give up when no record arrived for this many seconds (the topic holds
    /// fewer than --records).
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
}

async fn kafka(args: KafkaArgs) -> Result<()> {
    use beam_bench::kafka::{self, KafkaConfig};
    let config = KafkaConfig {
        target: target_config(&args.target, true, true),
        brokers: args.brokers,
        input_topic: args.input_topic,
        output_topic: args.output_topic,
        records: args.records,
        bundle_records: args.bundle_records,
        bundle_time: Duration::from_millis(args.bundle_millis),
        in_flight: args.in_flight,
        idle: Duration::from_secs(args.idle_secs),
        pool_pid: args.target.pool_pid,
    };
    let report = kafka::run(config).await?;
    println!("{report}");
    write_json(&args.target.json, &report)?;
    if !report.ok() {
        bail!("{} bundle(s) failed or differed", report.errors);
    }
    Ok(())
}

/// The topics of a fused-stage run.
#[derive(Args, Debug)]
struct KafkaStageArgs {
    #[command(flatten)]
    target: TargetArgs,

    #[command(flatten)]
    topics: beam_bench::kafka_stage::TopicArgs,
}

async fn kafka_stage(args: KafkaStageArgs) -> Result<()> {
    use beam_bench::kafka_stage;
    let target = target_config(&args.target, true, true);
    let report = kafka_stage::run_stage(&target, args.target.pool_pid, &args.topics.into()).await?;
    println!("{report}");
    write_json(&args.target.json, &report)
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Kafka(args) => kafka(args).await,
        Command::KafkaStage(args) => kafka_stage(args).await,
    }
}
