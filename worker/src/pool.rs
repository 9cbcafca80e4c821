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
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::config::PoolConfig;
use crate::control::{self, WorkerSpec};
use crate::grpc;

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
}

impl WorkerPool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(PoolState {
                config,
                workers: Mutex::new(HashMap::new()),
                lifecycle: Arc::default(),
                shutdown: CancellationToken::new(),
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

    fn start(&self, request: StartWorkerRequest) -> Result<u64, String> {
        let state = &self.inner;
        if state.lifecycle.is_draining() {
            return Err("the worker pool is shutting down".into());
        }
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
        workers.insert(
            serial,
            WorkerEntry {
                worker_id: worker_id.clone(),
                cancel: cancel.clone(),
            },
        );
        drop(workers);

        let spec = WorkerSpec {
            worker_id,
            serial,
            control_url,
            logging_url,
            provision_url,
        };
        let pool = self.clone();
        let lifecycle = state.lifecycle.clone();
        let config = state.config.harness.clone();
        tokio::spawn(async move {
            let worker_id = spec.worker_id.clone();
            if let Err(e) = control::run(spec, config, lifecycle, cancel).await {
                error!(worker_id, error = %e, "worker ended with an error");
            }
            pool.workers().remove(&serial);
            info!(worker_id, serial, "worker released");
        });
        Ok(serial)
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
        let lifecycle = &self.inner.lifecycle;
        lifecycle.drain();
        if tokio::time::timeout(grace, lifecycle.wait_idle())
            .await
            .is_err()
        {
            warn!(
                instructions = lifecycle.in_flight.load(Ordering::Acquire),
                grace_secs = grace.as_secs_f64(),
                "grace period over; abandoning running bundles"
            );
        }
        self.inner.shutdown.cancel();
        // Harness tasks deregister themselves once cancelled; give them a moment.
        for _ in 0..50 {
            if self.worker_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
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
        let worker_id = request.worker_id.clone();
        let error = match self.start(request) {
            Ok(serial) => {
                info!(worker_id, serial, "starting worker");
                String::new()
            }
            Err(error) => {
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
    let grace = config.grace_period;
    let pool = WorkerPool::new(config);
    let service = BeamFnExternalWorkerPoolServer::new(pool.clone());
    let stopped = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            nodelay_incoming(listener),
            stopped.clone().cancelled_owned(),
        );
    let server = tokio::spawn(server);
    shutdown.await;
    info!("shutting down: refusing new workers and bundles");
    stopped.cancel();
    pool.shut_down(grace).await;
    match server.await {
        Ok(result) => result?,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
    info!("worker pool stopped");
    Ok(())
}

/// Accepted connections with Nagle's algorithm off. tonic's own `tcp_nodelay`
/// setting does not apply to a listener passed in, and small gRPC messages
/// (StartWorker, control answers) would otherwise wait for delayed ACKs.
pub fn nodelay_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
