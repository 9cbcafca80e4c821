//! `beam-rust-worker`: the command-line shell around the pool and the expansion service.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use beam_rust_worker::config::{ConnectionLimits, HarnessConfig, PoolConfig};
use beam_rust_worker::delegate::DelegateConfig;
use beam_rust_worker::{admin, expansion, log_format, logging, pool};
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Opt-in (`--features mimalloc`): the load driver showed a gain only for very
/// large bundles, and more memory in the streaming shape (bench/README.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Opt-in (`--features jemalloc`), for allocator comparisons only.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A native Apache Beam worker pool: runners start workers here with
/// `--environment_type=EXTERNAL --environment_config=HOST:PORT`, and the
/// workers run stages of this project's transforms (the key/value echo,
/// `beam:transform:rust_worker:kv_echo:v1`) in this process.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Port of the worker pool (BeamFnExternalWorkerPool); the runner's
    /// --environment_config points here.
    #[arg(long, default_value_t = 50000, env = "BEAM_RUST_WORKER_PORT")]
    port: u16,

    /// Address to listen on. The default, 127.0.0.1, suits a pool running next to
    /// its runner (a Flink TaskManager sidecar). Use 0.0.0.0 only on a trusted
    /// network: whoever can reach the pool port can make this process dial any
    /// address it names as a control, data or logging endpoint.
    #[arg(long, default_value = "127.0.0.1", env = "BEAM_RUST_WORKER_BIND")]
    bind: IpAddr,

    /// Port of the expansion service that lets pipelines use our transforms
    /// (org.apache.beam.model.expansion.v1.ExpansionService); 0 disables it.
    /// The default is the port the seed's tutorial gives Beam's Java expansion
    /// service, so `expansion_service="localhost:8096"` reaches this one; it
    /// also stays clear of Flink's job server (8097-8099).
    #[arg(long, default_value_t = 8096, env = "BEAM_RUST_WORKER_EXPANSION_PORT")]
    expansion_port: u16,

    /// Pool address the expansion service writes into the environments it
    /// creates: where runners will call StartWorker. Defaults to
    /// localhost:<--port>.
    #[arg(long, env = "BEAM_RUST_WORKER_ADVERTISE")]
    advertise: Option<String>,

    /// Refuse StartWorker once this many workers are running.
    #[arg(long, default_value_t = 64)]
    max_workers: usize,

    /// Send output once this many bytes of whole elements are pending per data
    /// stream. A runner's `--experiments=data_buffer_size_limit=N` overrides it.
    #[arg(long, default_value_t = 1_000_000)]
    flush_bytes: usize,

    /// Also send pending output after this many milliseconds; 0 = only on size
    /// and at bundle end. `--experiments=data_buffer_time_limit_ms=N` overrides it.
    #[arg(long, default_value_t = 0)]
    flush_millis: u64,

    /// Bytes of input held per data stream for bundles whose ProcessBundle has
    /// not arrived yet (the Python runner sends a bundle's data first). A
    /// bundle whose early input exceeds it fails with an error saying so.
    #[arg(long, default_value_t = 1 << 30)]
    max_pending_bytes: usize,

    /// Seconds a finished bundle's finalization callbacks (Kafka offset
    /// commits) wait for the runner's FinalizeBundle before they are dropped
    /// (logged). Flink finalizes only after completed checkpoints, and never
    /// without checkpointing; dropped commits mean the next job with the same
    /// group reads those records again (at-least-once holds).
    #[arg(long, default_value_t = 600)]
    finalization_expiry_secs: u64,

    /// Milliseconds one call of the streaming Kafka read reads a partition
    /// before handing the rest back to the runner (a residual). Records are
    /// sent on as they arrive whatever this is; it sets how often the runner
    /// reschedules the read. Beam 2.62's Flink job server keeps keyed state for
    /// every residual for good (apache/beam#27648): longer windows make the
    /// job's checkpoints grow more slowly, but a checkpoint waits for the
    /// running window to end.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    process_window_ms: u64,

    /// On SIGTERM/Ctrl-C, seconds running bundles get to finish before exit.
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,

    /// Python that runs the workers of environments this pool did not create
    /// (pickled Python DoFns: Create, Map, assert_that, ...), as
    /// `PYTHON -m apache_beam.runners.worker.sdk_worker_main`. It must be able
    /// to import apache_beam (e.g. a venv's bin/python). Default: the first
    /// python3 on PATH that can.
    #[arg(long, env = "BEAM_RUST_WORKER_PYTHON", value_name = "PATH")]
    python: Option<std::path::PathBuf>,

    /// Working directory of the Python workers. Default: the pool's, so
    /// modules beside the pipeline (`import worker`) import there too.
    #[arg(long, value_name = "DIR")]
    python_workdir: Option<std::path::PathBuf>,

    /// Seconds a Python worker gets to exit after SIGTERM (on StopWorker or
    /// shutdown) before it and its process group are sent SIGKILL.
    #[arg(long, default_value_t = 10)]
    python_stop_grace_secs: u64,

    /// StartWorker for a Python worker is answered once the worker connects
    /// to its runner, or after this many milliseconds; a worker that exits
    /// before that fails its StartWorker with its exit status and output.
    /// Later crashes are logged here and to the runner's log.
    #[arg(long, default_value_t = 1500)]
    python_startup_window_ms: u64,

    /// Log filter for stderr and the runners' logging endpoints
    /// (error, warn, info, debug, trace, or a tracing filter such as
    /// `beam_rust_worker=debug`). RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log_level: String,

    /// Format of the log on stderr. `text`: one readable line per event.
    /// `json`: one JSON object per line with timestamp, level, target,
    /// message, the event's fields and its spans' fields (worker_id,
    /// instruction_id, ...) at the top level, for log shippers. What goes to
    /// the runners' logging endpoints is the same either way.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "BEAM_RUST_WORKER_LOG_FORMAT")]
    log_format: LogFormat,

    /// Serve Prometheus metrics (/metrics) and Kubernetes probes (/healthz:
    /// the process is alive; /readyz: the pool takes workers, 503 once
    /// shutdown began) over HTTP on this port of --bind. Off unless given;
    /// 0 lets the system pick a port (it is logged).
    #[arg(long, env = "BEAM_RUST_WORKER_METRICS_PORT", value_name = "PORT")]
    metrics_port: Option<u16>,

    /// Address of the metrics endpoint; default: --bind. In a Kubernetes pod
    /// the kubelet's probes and Prometheus come from outside the pod, so the
    /// endpoint needs 0.0.0.0 there while the pool itself stays on loopback
    /// (the endpoint only reports; it starts nothing).
    #[arg(long, env = "BEAM_RUST_WORKER_METRICS_BIND", value_name = "IP")]
    metrics_bind: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    beam_rust_worker::trim::keep_freed_heap();
    init_tracing(&cli.log_level, cli.log_format)?;

    let pool_addr = SocketAddr::new(cli.bind, cli.port);
    let listener = bind(pool_addr, "the worker pool", "--port").await?;
    // With --port 0 the kernel picks the port; advertise the real one.
    let pool_port = listener.local_addr()?.port();
    let shutdown = CancellationToken::new();
    let readiness = admin::Readiness::default();
    // Bound before the pool serves, so a taken port fails the start.
    let ops_server = match cli.metrics_port {
        Some(port) => {
            let addr = SocketAddr::new(cli.metrics_bind.unwrap_or(cli.bind), port);
            let listener = bind(addr, "the metrics endpoint", "--metrics-port").await?;
            info!(addr = %listener.local_addr()?, "metrics endpoint listening (/metrics, /healthz, /readyz)");
            // Stopped only after the pool: /readyz must answer 503, not
            // refuse connections, while running bundles drain.
            let stop = CancellationToken::new();
            let task = tokio::spawn(admin::serve(
                listener,
                readiness.clone(),
                stop.clone().cancelled_owned(),
            ));
            Some((stop, task))
        }
        None => None,
    };

    let expansion = if cli.expansion_port != 0 {
        let addr = SocketAddr::new(cli.bind, cli.expansion_port);
        let listener = bind(addr, "the expansion service", "--expansion-port").await?;
        let advertise = cli
            .advertise
            .clone()
            .unwrap_or_else(|| format!("localhost:{pool_port}"));
        info!(%addr, pool = %advertise, "expansion service listening");
        // Same grace as the pool: an idle peer must not keep the process alive.
        Some(tokio::spawn(expansion::serve_with(
            listener,
            advertise,
            ConnectionLimits::default(),
            Duration::from_secs(cli.grace_secs),
            shutdown.clone().cancelled_owned(),
        )))
    } else {
        None
    };

    info!(addr = %SocketAddr::new(cli.bind, pool_port), "worker pool listening");
    let config = PoolConfig {
        max_workers: cli.max_workers,
        grace_period: Duration::from_secs(cli.grace_secs),
        harness: HarnessConfig {
            flush_bytes: cli.flush_bytes,
            flush_interval: (cli.flush_millis > 0).then(|| Duration::from_millis(cli.flush_millis)),
            max_pending_bytes: cli.max_pending_bytes,
            finalization_ttl: Duration::from_secs(cli.finalization_expiry_secs),
            process_window: Duration::from_millis(cli.process_window_ms),
            ..HarnessConfig::default()
        },
        delegate: DelegateConfig {
            python: cli.python.clone(),
            workdir: cli.python_workdir.clone(),
            stop_grace: Duration::from_secs(cli.python_stop_grace_secs),
            startup_window: Duration::from_millis(cli.python_startup_window_ms),
            ..DelegateConfig::default()
        },
        connections: ConnectionLimits::default(),
    };
    tokio::spawn(stop_on_signal(shutdown.clone()));
    pool::serve_with_readiness(
        listener,
        config,
        shutdown.clone().cancelled_owned(),
        readiness,
    )
    .await?;
    if let Some(expansion) = expansion {
        expansion.await??;
    }
    if let Some((stop, task)) = ops_server {
        stop.cancel();
        let _ = task.await;
    }
    Ok(())
}

/// Binds a listener; a taken port gets an error naming the flag that moves it.
async fn bind(addr: SocketAddr, what: &str, flag: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "; another process already listens there: stop it or pick another port with {flag}"
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("cannot listen on {addr} for {what}: {e}{hint}")
    })
}

fn init_tracing(level: &str, format: LogFormat) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(level),
    }
    .with_context(|| format!("invalid --log-level {level:?}"))?;
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only where a person reads them, not in log files.
                    .with_ansi(
                        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                    ),
            ),
            None,
        ),
        LogFormat::Json => (None, Some(log_format::layer())),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(logging::RunnerLogLayer)
        .init();
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("Ctrl-C received"),
        _ = term => info!("SIGTERM received"),
    }
    shutdown.cancel();
}
