//! A StartWorker storm against a running pool, and what it does to the pool's
//! memory: `--workers` native workers are started (at most `--concurrency` at
//! a time) by an in-process runner, held until every one has connected its
//! control stream, then all released at once (the runner goes away, as at a
//! job's end). The pool's resident memory (`/proc/PID/status` of `--pool-pid`)
//! is printed before, at the peak, and at intervals after the release, as
//! one JSON object per line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use beam_integration::{RunnerOptions, TestRunner};
use clap::Parser;
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(
    about = "StartWorker storm against a pool; prints the pool's RSS before, at the peak and after"
)]
struct Args {
    /// The pool's address (host:port).
    #[arg(long)]
    pool: SocketAddr,
    /// The pool's process id, whose memory is sampled.
    #[arg(long)]
    pool_pid: u32,
    /// Workers started in the storm.
    #[arg(long, default_value_t = 2000)]
    workers: usize,
    /// StartWorkers in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Storms run one after the other (each followed by the samples).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds after the release at which memory is sampled.
    #[arg(long, value_delimiter = ',', default_value = "1,3,5,10")]
    after: Vec<u64>,
    /// A label for the output lines (e.g. the build measured).
    #[arg(long, default_value = "")]
    label: String,
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the memory of process {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// One sample; `nominal_s` is the `--after` value a post-release sample is for.
fn emit(args: &Args, round: usize, at: &str, secs: f64, nominal_s: u64) -> anyhow::Result<()> {
    let (rss, hwm) = memory(args.pool_pid)?;
    println!(
        "{}",
        serde_json::json!({"label": args.label, "round": round, "at": at, "t_s": secs,
                           "nominal_s": nominal_s, "rss_kib": rss, "hwm_kib": hwm})
    );
    Ok(())
}

/// Starts every worker and waits until each has connected; returns how long
/// that took and the runner holding them.
async fn storm(args: &Args) -> anyhow::Result<(Duration, TestRunner)> {
    let runner = Arc::new(
        TestRunner::start_with(RunnerOptions {
            timeout: Duration::from_secs(120),
            ..RunnerOptions::default()
        })
        .await?,
    );
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.workers {
        let (runner, gate, pool) = (runner.clone(), gate.clone(), args.pool);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            runner
                .start_worker(pool, &format!("storm_{i}"))
                .await
                .map_err(anyhow::Error::from)
        });
    }
    let mut handles = Vec::with_capacity(args.workers);
    while let Some(done) = tasks.join_next().await {
        handles.push(done??);
    }
    let elapsed = started.elapsed();
    if handles.len() != args.workers {
        bail!("{} of {} workers connected", handles.len(), args.workers);
    }
    drop(handles);
    let runner = Arc::into_inner(runner).context("the runner is still shared")?;
    Ok((elapsed, runner))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    emit(&args, 0, "before", 0.0, 0)?;
    for round in 1..=args.rounds {
        let (took, runner) = storm(&args).await?;
        emit(&args, round, "peak", took.as_secs_f64(), 0)?;
        // Ends every control stream: the pool releases all the workers.
        runner.shutdown().await;
        let released = Instant::now();
        for secs in &args.after {
            let due = Duration::from_secs(*secs);
            tokio::time::sleep(due.saturating_sub(released.elapsed())).await;
            emit(
                &args,
                round,
                "after_release",
                released.elapsed().as_secs_f64(),
                *secs,
            )?;
        }
    }
    Ok(())
}
