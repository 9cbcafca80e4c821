//! The `BeamFnExternalWorkerPool` service: starts an in-process harness per
//! `StartWorker` (a task, not a process) and shuts all of them down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beam_proto::fn_execution::beam_fn_external_worker_pool_server::{
    BeamFnExternalWorkerPool, BeamFnExternalWorkerPoolServer,
};
use beam_proto::fn_execution::{
    StartWorkerRequest, StartWorkerResponse, StopWorkerRequest, StopWorkerResponse,
};
use beam_proto::pipeline::ApiServiceDescriptor;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::admin::Readiness;
use crate::config::PoolConfig;
use crate::control::{self, WorkerSpec};
use crate::delegate::{self, Delegates, Route};
use crate::grpc;
use crate::net;
use crate::telemetry;

/// Longest worker id accepted. Runners use short ids ("worker_0", "1-2"); the id
/// is sent as a header on every call and written into every log line, so a huge
/// one would be copied everywhere.
pub const MAX_WORKER_ID_BYTES: usize = 256;
/// Most entries accepted in `StartWorkerRequest.params`.
pub const MAX_PARAMS: usize = 64;
/// Most bytes (keys plus values) accepted in `StartWorkerRequest.params`.
pub const MAX_PARAMS_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("worker pool server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Pool-wide shutdown state shared with every harness.
#[derive(Default)]
pub struct Lifecycle {
    /// Set on shutdown: no new workers or bundles.
    draining: AtomicBool,
    /// Instructions whose response is not yet on its way to the runner.
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Counts an instruction as running until dropped, which happens only once
/// its response is queued for the runner: a shutdown's grace period then
/// covers delivering the answer, not just computing it.
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once shutdown began: new bundles are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Serials are unique in the process, not just the pool: the log router that
/// sends each worker's events to its runner is process-wide (tests and the
/// load driver run several pools in one process).
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

struct WorkerEntry {
    worker_id: String,
    cancel: CancellationToken,
    /// [`telemetry::NATIVE`] or [`telemetry::DELEGATED`], for the active-worker gauge.
    kind: &'static str,
}

/// The pool service. Cheap to clone; all clones share one set of workers.
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<PoolState>,
}

struct PoolState {
    config: PoolConfig,
    /// Keyed by serial: runners reuse worker ids (two Python runners both send `worker_0`).
    workers: Mutex<HashMap<u64, WorkerEntry>>,
    lifecycle: Arc<Lifecycle>,
    /// Parent of every worker's cancellation.
    shutdown: CancellationToken,
    /// Every harness task, so shutdown can wait for them to flush and close.
    tasks: TaskTracker,
    /// Python SDK worker processes for environments that are not ours.
    delegates: Delegates,
}

/// What `start` began.
enum Started {
    /// An in-process harness, already running.
    Native(u64),
    /// A slot for a Python worker, which [`WorkerPool::launch`] starts.
    Delegated(WorkerSpec, CancellationToken),
}

impl WorkerPool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(PoolState {
                delegates: Delegates::new(config.delegate.clone()),
                config,
                workers: Mutex::new(HashMap::new()),
                lifecycle: Arc::default(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Number of live workers.
    pub fn worker_count(&self) -> usize {
        self.workers().len()
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, WorkerEntry>> {
        self.inner.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frees a worker's slot. Every path that ends a worker calls this, some
    /// twice (a Python worker that fails to start); only the first counts,
    /// so `workers_active` always equals the slots held.
    fn release(&self, serial: u64) {
        if let Some(entry) = self.workers().remove(&serial) {
            telemetry::global().workers_active(entry.kind, -1);
            crate::trim::after_release();
        }
    }

    fn start(&self, request: StartWorkerRequest) -> Result<Started, String> {
        let state = &self.inner;
        if state.lifecycle.is_draining() {
            return Err("the worker pool is shutting down".into());
        }
        check_request(&request)?;
        let route = delegate::route(&request.params).map_err(|e| e.to_string())?;
        let worker_id = request.worker_id;
        let control_url = url_of(request.control_endpoint).ok_or(
            "StartWorkerRequest has no control_endpoint; the worker has nothing to connect to",
        )?;
        grpc::endpoint(&control_url).map_err(|e| format!("control {e}"))?;
        let logging_url = checked_optional("logging", request.logging_endpoint)?;
        let provision_url = checked_optional("provision", request.provision_endpoint)?;

        let mut workers = self.workers();
        if workers.len() >= state.config.max_workers {
            return Err(format!(
                "refusing worker '{worker_id}': this pool already runs {} workers, the limit set \
                 by --max-workers",
                workers.len()
            ));
        }
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let cancel = state.shutdown.child_token();
        let kind = match route {
            Route::Delegated => telemetry::DELEGATED,
            Route::Native => telemetry::NATIVE,
        };
        workers.insert(
            serial,
            WorkerEntry {
                worker_id: worker_id.clone(),
                cancel: cancel.clone(),
                kind,
            },
        );
        drop(workers);
        telemetry::global().workers_active(kind, 1);

        let spec = WorkerSpec {
            worker_id,
            serial,
            control_url,
            logging_url,
            provision_url,
        };
        if route == Route::Delegated {
            // Counted against --max-workers like any other, from here on.
            return Ok(Started::Delegated(spec, cancel));
        }
        let pool = self.clone();
        let lifecycle = state.lifecycle.clone();
        let config = state.config.harness.clone();
        telemetry::global().worker_started(telemetry::NATIVE);
        state.tasks.spawn(async move {
            let worker_id = spec.worker_id.clone();
            if let Err(e) = control::run(spec, config, lifecycle, cancel).await {
                telemetry::global().worker_failed(telemetry::NATIVE);
                error!(worker_id, error = %e, "worker ended with an error");
            }
            pool.release(serial);
            info!(worker_id, serial, "worker released");
        });
        Ok(Started::Native(serial))
    }

    /// Starts the Python worker for a slot `start` reserved; the slot is
    /// released when the process is gone, or at once if it never started.
    async fn launch(&self, spec: WorkerSpec, cancel: CancellationToken) -> Result<u64, String> {
        let serial = spec.serial;
        let worker_id = spec.worker_id.clone();
        let pool = self.clone();
        let released_id = worker_id.clone();
        // Not "worker released": that line means a native harness ended.
        let release = move || {
            pool.release(serial);
            info!(worker_id = released_id, serial, "Python worker slot freed");
        };
        match self.inner.delegates.launch(spec, cancel, release).await {
            Ok(pid) => {
                telemetry::global().worker_started(telemetry::DELEGATED);
                info!(worker_id, serial, pid, "Python SDK worker running");
                Ok(serial)
            }
            Err(e) => {
                // Crashes after a successful start are counted by `delegate`.
                telemetry::global().worker_failed(telemetry::DELEGATED);
                self.release(serial);
                Err(e.to_string())
            }
        }
    }

    fn stop(&self, worker_id: &str) {
        let workers = self.workers();
        let matching: Vec<_> = workers
            .values()
            .filter(|w| w.worker_id == worker_id)
            .collect();
        match matching.as_slice() {
            [] => info!(
                worker_id,
                "StopWorker for an unknown or already released worker"
            ),
            [only] => only.cancel.cancel(),
            // Stopping the wrong runner's worker would fail its job; each worker
            // still ends when its own runner closes its control stream.
            many => warn!(
                worker_id,
                count = many.len(),
                "StopWorker names an id several runners use; leaving those workers to end with \
                 their control streams"
            ),
        }
    }

    /// Stops new work, waits up to `grace` for running bundles, then ends every worker.
    pub async fn shut_down(&self, grace: Duration) {
        self.shut_down_by(Instant::now() + grace).await;
    }

    /// Stops new work and waits until `deadline` at the latest for running
    /// bundles, then ends every worker and waits (again until `deadline`) for
    /// the harnesses to send what they queued and close their streams.
    pub async fn shut_down_by(&self, deadline: Instant) {
        let lifecycle = &self.inner.lifecycle;
        lifecycle.drain();
        if tokio::time::timeout_at(deadline, lifecycle.wait_idle())
            .await
            .is_err()
        {
            warn!(
                instructions = lifecycle.in_flight.load(Ordering::Acquire),
                "grace period over; abandoning running bundles"
            );
        }
        self.inner.shutdown.cancel();
        let tasks = &self.inner.tasks;
        tasks.close();
        if tokio::time::timeout_at(deadline, tasks.wait())
            .await
            .is_err()
        {
            warn!(
                workers = self.worker_count(),
                "grace period over; abandoning workers still closing their streams"
            );
        }
        // Not bound by `deadline`: each Python worker gets its own SIGTERM
        // grace and is then killed, and none may outlive the pool unreaped.
        self.inner.delegates.wait_stopped().await;
    }
}

/// What must hold before anything of a request is used: the worker id goes
/// into a gRPC header on every call (a runner waits forever for a worker whose
/// calls cannot be sent) and into every log line.
fn check_request(request: &StartWorkerRequest) -> Result<(), String> {
    let id = &request.worker_id;
    if id.len() > MAX_WORKER_ID_BYTES {
        return Err(format!(
            "worker_id is {} bytes long; at most {MAX_WORKER_ID_BYTES} are accepted (it is sent \
             as a header on every call)",
            id.len()
        ));
    }
    // HTTP allows some non-ASCII header bytes, but runners read the id as an
    // ASCII string (Python's and our stand-in's metadata reads fail otherwise).
    let printable = id.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !printable || grpc::WorkerIdInterceptor::new(id).is_err() {
        return Err(format!(
            "worker_id {id:?} cannot be sent as a gRPC header (it must be printable ASCII, no \
             control characters); runners identify every stream by it"
        ));
    }
    let params = &request.params;
    let params_bytes: usize = params.iter().map(|(k, v)| k.len() + v.len()).sum();
    if params.len() > MAX_PARAMS || params_bytes > MAX_PARAMS_BYTES {
        return Err(format!(
            "params has {} entries of {params_bytes} bytes; at most {MAX_PARAMS} entries and \
             {MAX_PARAMS_BYTES} bytes are accepted",
            params.len()
        ));
    }
    Ok(())
}

fn url_of(endpoint: Option<ApiServiceDescriptor>) -> Option<String> {
    endpoint.map(|e| e.url).filter(|u| !u.is_empty())
}

/// Optional endpoints are checked too: a garbled one means a garbled request.
fn checked_optional(
    what: &str,
    endpoint: Option<ApiServiceDescriptor>,
) -> Result<Option<String>, String> {
    match url_of(endpoint) {
        Some(url) => grpc::endpoint(&url)
            .map(|_| Some(url))
            .map_err(|e| format!("{what} {e}")),
        None => Ok(None),
    }
}

#[tonic::async_trait]
impl BeamFnExternalWorkerPool for WorkerPool {
    async fn start_worker(
        &self,
        request: Request<StartWorkerRequest>,
    ) -> Result<Response<StartWorkerResponse>, Status> {
        let request = request.into_inner();
        // Logged shortened: a refused id may be megabytes long or hold newlines.
        let worker_id: String = request
            .worker_id
            .escape_debug()
            .take(MAX_WORKER_ID_BYTES)
            .collect();
        let started = self.start(request);
        let delegated = matches!(started, Ok(Started::Delegated(..)));
        let started = match started {
            // `launch` logs the Python worker's start itself.
            Ok(Started::Delegated(spec, cancel)) => self.launch(spec, cancel).await.map(|_| None),
            Ok(Started::Native(serial)) => Ok(Some(serial)),
            Err(error) => Err(error),
        };
        let error = match started {
            Ok(None) => String::new(),
            Ok(Some(serial)) => {
                info!(worker_id, serial, "starting worker");
                String::new()
            }
            Err(error) => {
                // A delegated worker that failed to start is a failed worker,
                // not a refusal; `launch` counted it.
                if !delegated {
                    telemetry::global().start_worker_refused();
                }
                warn!(worker_id, %error, "StartWorker refused");
                error
            }
        };
        Ok(Response::new(StartWorkerResponse { error }))
    }

    async fn stop_worker(
        &self,
        request: Request<StopWorkerRequest>,
    ) -> Result<Response<StopWorkerResponse>, Status> {
        self.stop(&request.into_inner().worker_id);
        Ok(Response::new(StopWorkerResponse::default()))
    }
}

/// Serves the pool on `listener` until `shutdown` resolves, then drains: no new
/// workers or bundles, running bundles get `config.grace_period` to finish.
pub async fn serve(
    listener: TcpListener,
    config: PoolConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), PoolError> {
    serve_with_readiness(listener, config, shutdown, Readiness::default()).await
}

/// [`serve`], reporting through `readiness` whether the pool takes new
/// workers (for `/readyz`): ready once it serves, not ready from the moment
/// shutdown begins. The pool port also serves `grpc.health.v1.Health`, which
/// says the same: SERVING, then NOT_SERVING while draining.
pub async fn serve_with_readiness(
    listener: TcpListener,
    config: PoolConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    readiness: Readiness,
) -> Result<(), PoolError> {
    let grace = config.grace_period;
    let kill = CancellationToken::new();
    let incoming = net::incoming(
        listener,
        config.connections.clone(),
        kill.clone(),
        "worker pool",
    );
    let pool = WorkerPool::new(config);
    // Checked now so a pool without a usable Python says so before a pipeline needs it.
    let checker = pool.clone();
    tokio::spawn(async move { checker.inner.delegates.report_python().await });
    let service = BeamFnExternalWorkerPoolServer::new(pool.clone());
    let (mut health, health_service) = tonic_health::server::health_reporter();
    // The overall status ("") starts SERVING; the pool's own name says it too,
    // for probes that ask for the service by name.
    health.set_serving::<PoolServer>().await;
    let stopped = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stopped.clone().cancelled_owned());
    let server = tokio::spawn(server);
    readiness.set(true);
    shutdown.await;
    info!("shutting down: refusing new workers and bundles");
    readiness.set(false);
    health.set_not_serving::<PoolServer>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    // Health `Watch` streams never end by themselves and would hold the
    // server open for the whole grace period; without their statuses they
    // end (after delivering NOT_SERVING).
    health.clear_service_status(POOL_SERVICE).await;
    health.clear_service_status("").await;
    let deadline = Instant::now() + grace;
    stopped.cancel();
    pool.shut_down_by(deadline).await;
    finish_server(server, deadline, &kill, "worker pool").await?;
    info!("worker pool stopped");
    Ok(())
}

/// Waits for a server that was told to stop until `deadline`, then closes the
/// connections it still serves: an idle or half-open peer must not keep the
/// process alive past its grace period.
pub(crate) async fn finish_server<E>(
    mut server: tokio::task::JoinHandle<Result<(), E>>,
    deadline: Instant,
    kill: &CancellationToken,
    what: &'static str,
) -> Result<(), E> {
    let joined = match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(joined) => joined,
        Err(_) => {
            warn!(
                server = what,
                "grace period over; closing connections peers still hold open"
            );
            kill.cancel();
            match tokio::time::timeout(KILL_WAIT, &mut server).await {
                Ok(joined) => joined,
                Err(_) => {
                    server.abort();
                    return Ok(());
                }
            }
        }
    };
    match joined {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Ok(()),
    }
}

type PoolServer = BeamFnExternalWorkerPoolServer<WorkerPool>;
/// The pool's gRPC service name, as health checks name it.
pub const POOL_SERVICE: &str = <PoolServer as tonic::server::NamedService>::NAME;

/// How long closed connections get to wind down after the grace period.
const KILL_WAIT: Duration = Duration::from_millis(500);

/// Accepted connections with Nagle's algorithm off. tonic's own `tcp_nodelay`
/// setting does not apply to a listener passed in, and small gRPC messages
/// (StartWorker, control answers) would otherwise wait for delayed ACKs.
pub fn nodelay_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
