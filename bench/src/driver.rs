//! The load driver: plays the runner for a pool (or the echo server), streams
//! the workload through it with a bound on bundles in flight, verifies every
//! output byte, and measures.
//!
//! The runner side of the Beam targets is `beam-integration`'s [`TestRunner`]:
//! payloads stay `Bytes` from the workload to the socket and back (no copy, no
//! per-element work), outputs are kept as the received slices until compared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use beam_integration::{
    BundleSpec, DataOrder, EchoDescriptor, PortCoder, RunnerError, RunnerOptions, TestRunner,
    WorkerHandle,
};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::ceiling::{EchoError, EchoLane, EchoRunner};
use crate::procfs::ProcError;
use crate::python_stage::{self, StageError};
use crate::report::{RunReport, UsageStart};
use crate::stats::Latencies;
use crate::workload::{Workload, WorkloadError, WorkloadSpec, same_bytes};

/// Error messages kept per run.
const ERROR_SAMPLES: usize = 5;
/// Elements in each lane's warm-up bundle.
const WARMUP_ELEMENTS: u64 = 100;

/// What the driver talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// A worker pool running this project's `beam:transform:rust_worker:kv_echo:v1`.
    KvEcho,
    /// A worker pool running a pickled Python `Map(identity)` (Beam's Python
    /// worker pool), from the descriptor file given with `--python-descriptor`.
    PythonMap,
    /// The bare gRPC echo (`grpc-echo`): the transport reference, a relay
    /// process with no Beam logic.
    Echo,
    /// No pool: the driver reads its own data stream back over one loopback
    /// connection. The bound: every other target does this work and more.
    Loopback,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::KvEcho => "kv-echo",
            TargetKind::PythonMap => "python-map",
            TargetKind::Echo => "echo",
            TargetKind::Loopback => "loopback",
        }
    }
}

/// Where and how to reach the target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub kind: TargetKind,
    pub pool: SocketAddr,
    pub python_descriptor: Option<PathBuf>,
    pub workers: usize,
    pub order: DataOrder,
    /// KafkaIO's nullable KV coder on the data ports (kv-echo; the Python
    /// descriptor file decides for python-map).
    pub nullable: bool,
    /// The nullable KV coder on the sink port only (kv-echo): a stage whose
    /// input and output coders differ, so the worker re-encodes every element.
    pub output_nullable: bool,
    /// Limit for each bundle and for starting workers.
    pub timeout: Duration,
    /// How long to wait for the pool's port to accept connections.
    pub pool_wait: Duration,
}

/// Why a run could not be carried out (a failed or wrong bundle is not an
/// error here: it is counted in the report).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error(transparent)]
    Echo(#[from] EchoError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("pool process: {0}")]
    Proc(#[from] ProcError),
    #[error("nothing accepted connections on {addr} within {waited:?}; is the pool running?")]
    PoolUnreachable { addr: SocketAddr, waited: Duration },
    #[error(
        "--target python-map needs --python-descriptor (written by bench/python/make_python_stage.py)"
    )]
    MissingDescriptor,
    #[error("warm-up bundle on worker {lane} failed: {why}")]
    Warmup { lane: usize, why: String },
}

/// Ids a Beam lane needs to address a bundle.
#[derive(Debug)]
struct Stage {
    descriptor_id: String,
    source_id: String,
    sink_id: String,
    order: DataOrder,
    timeout: Duration,
}

enum Lane {
    Beam {
        worker: WorkerHandle,
        stage: Arc<Stage>,
    },
    Echo {
        lane: EchoLane,
        timeout: Duration,
    },
}

/// How one bundle ended.
#[derive(Debug)]
pub enum BundleOutcome {
    /// Output chunks in arrival order.
    Output(Vec<Bytes>),
    /// The worker answered with an error or broke the protocol; the run goes on.
    Failed(String),
}

/// Started workers (or echo streams), one lane each.
pub struct Harness {
    runner: Option<TestRunner>,
    echo_runner: Option<EchoRunner>,
    lanes: Vec<Lane>,
    /// StartWorker → control connected (echo: connect + open), per lane.
    pub connect: Vec<Duration>,
}

fn kv_coder(nullable: bool) -> PortCoder {
    if nullable {
        PortCoder::kv_nullable_bytes()
    } else {
        PortCoder::kv_bytes()
    }
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) -> Result<(), DriverError> {
    let deadline = Instant::now() + limit;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DriverError::PoolUnreachable {
                addr,
                waited: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Harness {
    /// Starts `config.workers` workers on the pool (or opens as many echo streams).
    pub async fn start(config: &TargetConfig) -> Result<Harness, DriverError> {
        let workers = config.workers.max(1);
        if config.kind != TargetKind::Loopback {
            wait_for_port(config.pool, config.pool_wait).await?;
        }
        if matches!(config.kind, TargetKind::Echo | TargetKind::Loopback) {
            let echo_runner = EchoRunner::start().await?;
            let mut lanes = Vec::new();
            let mut connect = Vec::new();
            for i in 0..workers {
                let name = format!("bench_worker_{i}");
                let lane = if config.kind == TargetKind::Loopback {
                    echo_runner
                        .start_loopback_lane(&name, config.timeout)
                        .await?
                } else {
                    echo_runner
                        .start_lane(config.pool, &name, config.timeout)
                        .await?
                };
                connect.push(lane.connect_latency);
                lanes.push(Lane::Echo {
                    lane,
                    timeout: config.timeout,
                });
            }
            return Ok(Harness {
                runner: None,
                echo_runner: Some(echo_runner),
                lanes,
                connect,
            });
        }
        let runner = TestRunner::start_with(RunnerOptions {
            timeout: config.timeout,
            ..Default::default()
        })
        .await?;
        let (descriptor, source_id, sink_id) = match config.kind {
            TargetKind::PythonMap => {
                let path = config
                    .python_descriptor
                    .as_ref()
                    .ok_or(DriverError::MissingDescriptor)?;
                let s = python_stage::load(path, "bench-python-map", runner.url())?;
                (s.descriptor, s.source_id, s.sink_id)
            }
            _ => {
                let e = EchoDescriptor::builder("bench-kv-echo", runner.url())
                    .input_coder(kv_coder(config.nullable))
                    .output_coder(kv_coder(config.output_nullable))
                    .build();
                (e.descriptor, e.source_id, e.sink_id)
            }
        };
        let stage = Arc::new(Stage {
            descriptor_id: descriptor.id.clone(),
            source_id,
            sink_id,
            order: config.order,
            timeout: config.timeout,
        });
        runner.add_descriptor(descriptor);
        let mut lanes = Vec::new();
        let mut connect = Vec::new();
        for i in 0..workers {
            let worker = runner
                .start_worker(config.pool, &format!("bench_worker_{i}"))
                .await?;
            connect.push(worker.connect_latency());
            lanes.push(Lane::Beam {
                worker,
                stage: stage.clone(),
            });
        }
        Ok(Harness {
            runner: Some(runner),
            echo_runner: None,
            lanes,
            connect,
        })
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// [`Harness::connect`] in milliseconds, as the reports show it.
    pub fn connect_ms(&self) -> Vec<f64> {
        self.connect.iter().map(|d| d.as_secs_f64() * 1e3).collect()
    }

    /// Runs one bundle on lane `lane`. `Err` only for transport failures and
    /// timeouts, after which the run should stop.
    pub async fn run_bundle(
        &self,
        lane: usize,
        chunks: &[Bytes],
    ) -> Result<BundleOutcome, DriverError> {
        match &self.lanes[lane % self.lanes.len()] {
            Lane::Echo { lane, timeout } => Ok(BundleOutcome::Output(
                lane.run_bundle(chunks, *timeout).await?,
            )),
            Lane::Beam { worker, stage } => {
                let spec = BundleSpec::new(stage.descriptor_id.clone())
                    .input(stage.source_id.clone(), chunks.iter().cloned())
                    .sink(stage.sink_id.clone())
                    .order(stage.order)
                    .timeout(stage.timeout);
                let mut result = worker.process_bundle(spec).await?;
                if let Some(error) = result.error() {
                    return Ok(BundleOutcome::Failed(format!(
                        "the worker failed the bundle: {error}"
                    )));
                }
                if !result.violations.is_empty() {
                    return Ok(BundleOutcome::Failed(format!(
                        "protocol violations: {:?}",
                        result.violations
                    )));
                }
                let chunks = result
                    .outputs
                    .remove(&stage.sink_id)
                    .map(|o| o.chunks)
                    .unwrap_or_default();
                Ok(BundleOutcome::Output(chunks))
            }
        }
    }

    /// Ends every control stream (workers go away) and stops the runner.
    pub async fn shutdown(self) {
        drop(self.lanes);
        drop(self.echo_runner);
        if let Some(runner) = self.runner {
            runner.shutdown().await;
        }
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub label: String,
    pub target: TargetConfig,
    pub workload: WorkloadSpec,
    /// Bundles in flight across all workers.
    pub in_flight: usize,
    pub pool_pid: Option<u32>,
    /// Stop issuing bundles after this long.
    pub max_duration: Option<Duration>,
    /// Print a progress line this often (stderr).
    pub progress_every: Option<Duration>,
}

/// Per-bundle result, folded into the report.
pub(crate) struct BundleStat {
    pub(crate) latency: Duration,
    pub(crate) elements: u64,
    pub(crate) bytes: u64,
    pub(crate) error: Option<String>,
}

/// Verified bundles and the first few errors of a run.
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) latencies: Latencies,
    pub(crate) elements: u64,
    pub(crate) bundles: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: u64,
    pub(crate) samples: Vec<String>,
}

impl Totals {
    pub(crate) fn add(&mut self, stat: BundleStat) {
        match stat.error {
            None => {
                self.latencies.record(stat.latency);
                self.elements += stat.elements;
                self.bundles += 1;
                self.bytes += stat.bytes;
            }
            Some(e) => {
                self.errors += 1;
                if self.samples.len() < ERROR_SAMPLES {
                    self.samples.push(e);
                }
            }
        }
    }
}

/// Compares a bundle's output with its input: the output chunks if they are
/// the same bytes, else why not.
pub(crate) fn verify(
    expected: &Bytes,
    outcome: Result<BundleOutcome, DriverError>,
) -> Result<Vec<Bytes>, String> {
    match outcome {
        Ok(BundleOutcome::Output(chunks)) if same_bytes(expected, &chunks) => Ok(chunks),
        Ok(BundleOutcome::Output(chunks)) => Err(format!(
            "output differs from input: sent {} bytes, received {} bytes in {} chunks",
            expected.len(),
            chunks.iter().map(Bytes::len).sum::<usize>(),
            chunks.len()
        )),
        Ok(BundleOutcome::Failed(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the workload against the target and measures it.
pub async fn run(config: RunConfig) -> Result<RunReport, DriverError> {
    let workload = Arc::new(Workload::build(config.workload.clone())?);
    let harness = Arc::new(Harness::start(&config.target).await?);

    // One small bundle per lane first: descriptor fetch, data stream dialing and
    // the Python worker's first-bundle setup are not what is measured.
    let first = workload.bundle(0);
    let warm_elements = first.elements.min(WARMUP_ELEMENTS) as usize;
    let warm = first.data.slice(..warm_elements * workload.element_len);
    let warm_expected = first.expected.slice(..warm_elements * workload.output_len);
    for lane in 0..harness.lanes() {
        let outcome = harness.run_bundle(lane, std::slice::from_ref(&warm)).await;
        if let Err(why) = verify(&warm_expected, outcome) {
            return Err(DriverError::Warmup { lane, why });
        }
    }

    let usage = UsageStart::begin(config.pool_pid)?;
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let progress = config.progress_every.map(|every| {
        let done = done.clone();
        let label = config.label.clone();
        let total = workload.spec.elements;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "[{label}] {secs:.1} s: {n}/{total} elements ({:.1}%), {:.0} elements/s",
                    n as f64 * 100.0 / total as f64,
                    n as f64 / secs
                );
            }
        })
    });

    let permits = Arc::new(Semaphore::new(config.in_flight.max(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    let mut totals = Totals::default();
    let mut truncated = false;
    for index in 0..workload.bundle_count() {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        while let Some(stat) = tasks.try_join_next() {
            totals.add(stat.expect("bundle tasks do not panic"));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if config
            .max_duration
            .is_some_and(|max| started.elapsed() >= max)
        {
            truncated = true;
            break;
        }
        let (harness, workload, done, stop) = (
            harness.clone(),
            workload.clone(),
            done.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let bundle = workload.bundle(index);
            let sent = Instant::now();
            let outcome = harness.run_bundle(index as usize, &bundle.chunks).await;
            let latency = sent.elapsed();
            drop(permit);
            let error = verify(&bundle.expected, outcome).err();
            if error.is_some() {
                // A wrong or failed bundle invalidates the run: stop early.
                stop.store(true, Ordering::Relaxed);
            } else {
                done.fetch_add(bundle.elements, Ordering::Relaxed);
            }
            BundleStat {
                latency,
                elements: bundle.elements,
                bytes: bundle.data.len() as u64,
                error,
            }
        });
    }
    while let Some(stat) = tasks.join_next().await {
        totals.add(stat.expect("bundle tasks do not panic"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let (pool, driver_cpu_seconds) = usage.finish(totals.elements)?;
    if let Some(p) = progress {
        p.abort();
    }
    let connect_ms = harness.connect_ms();
    let lanes = harness.lanes();
    if let Ok(harness) = Arc::try_unwrap(harness) {
        harness.shutdown().await;
    }
    Ok(RunReport {
        label: config.label,
        target: config.target.kind.name().to_owned(),
        pool: config.target.pool.to_string(),
        element_bytes: workload.element_len,
        workload: config.workload,
        workers: lanes,
        in_flight: config.in_flight.max(1),
        elements: totals.elements,
        bundles: totals.bundles,
        bytes: totals.bytes,
        seconds,
        elements_per_sec: totals.elements as f64 / seconds,
        mb_per_sec: totals.bytes as f64 / seconds / 1e6,
        bundle_latency: totals.latencies.summary(),
        connect_ms,
        pool_usage: pool,
        driver_cpu_seconds,
        truncated,
        errors: totals.errors,
        error_samples: totals.samples,
    })
}
