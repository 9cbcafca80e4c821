//! [`TestRunner`]: the runner side of the Fn API on one local port, and the
//! gRPC services behind it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use beam_proto::fn_execution::beam_fn_control_server::{BeamFnControl, BeamFnControlServer};
use beam_proto::fn_execution::beam_fn_data_server::{BeamFnData, BeamFnDataServer};
use beam_proto::fn_execution::beam_fn_external_worker_pool_client::BeamFnExternalWorkerPoolClient;
use beam_proto::fn_execution::beam_fn_logging_server::{BeamFnLogging, BeamFnLoggingServer};
use beam_proto::fn_execution::provision_service_server::{
    ProvisionService, ProvisionServiceServer,
};
use beam_proto::fn_execution::{
    Elements, GetProcessBundleDescriptorRequest, GetProvisionInfoRequest, GetProvisionInfoResponse,
    InstructionRequest, InstructionResponse, LogControl, LogEntry, ProcessBundleDescriptor,
    ProvisionInfo, StartWorkerRequest, StartWorkerResponse, StopWorkerRequest, StopWorkerResponse,
    log_entry,
};
use beam_proto::job_management::artifact_retrieval_service_server::{
    ArtifactRetrievalService, ArtifactRetrievalServiceServer,
};
use beam_proto::job_management::{GetArtifactRequest, GetArtifactResponse};
use beam_proto::pipeline::{ArtifactInformation, ArtifactStagingToRolePayload};
use bytes::Bytes;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Result, RunnerError};
use crate::handle::WorkerHandle;
use crate::state::{CONTROL_QUEUE, DataQueue, Outbound, Shared, StreamState, WorkerState, lock};

/// Outbound messages buffered per Data stream between the queue and the
/// transport; HTTP/2 flow control does the rest.
const DATA_STREAM_QUEUE: usize = 16;
/// HTTP/2 windows. The defaults (64 KiB–1 MiB) throttle 100 MB bundles; these
/// bound what one connection can have in flight.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// The `ExternalPayload.params` entry the pool's expansion service puts in
/// its environments (`beam_rust_worker::delegate::NATIVE_PARAM` = `NATIVE_VALUE`),
/// which runners copy into `StartWorkerRequest.params`. Without it the pool
/// starts a Python SDK worker instead of its in-process harness.
pub const NATIVE_PARAMS: (&str, &str) = ("beam-rust-worker", "native");

/// Settings for [`TestRunner::start_with`].
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Returned as `ProvisionInfo.pipeline_options`; see [`experiments_options`].
    pub pipeline_options: Option<Struct>,
    /// Default limit for every wait (worker start, bundles, instructions).
    pub timeout: Duration,
    /// Most `Data` entries per runner-to-worker `Elements` message. 1 sends
    /// each chunk alone; larger values merge whatever is queued, across
    /// bundles, as the Python runner's sender does (it allows ~100), so the
    /// worker must demultiplex one message into several bundles.
    pub coalesce_data: usize,
    /// A slow runner: waits this long before reading each worker-to-runner
    /// `Elements` message from a Data stream, so the worker's output backs
    /// up behind HTTP/2 flow control.
    pub data_read_delay: Option<Duration>,
    /// Files the pipeline "staged", as `(staged name, content)`: listed in
    /// `ProvisionInfo.dependencies` (role `staging_to`) and served by
    /// `ArtifactRetrievalService/GetArtifact` in chunks, as Flink's job
    /// server serves a pipeline's pickled main session.
    pub artifacts: Vec<(String, Bytes)>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            pipeline_options: None,
            timeout: Duration::from_secs(60),
            coalesce_data: 1,
            data_read_delay: None,
            artifacts: Vec::new(),
        }
    }
}

/// `pipeline_options` with `experiments` listed under `key`. Java runners use
/// [`crate::urns::EXPERIMENTS_OPTION`] (`beam:option:experiments:v1`); Python
/// option dicts use `experiments`.
pub fn experiments_options(key: &str, experiments: &[&str]) -> Struct {
    let values = experiments
        .iter()
        .map(|e| Value {
            kind: Some(Kind::StringValue((*e).to_string())),
        })
        .collect();
    Struct {
        fields: BTreeMap::from([(
            key.to_string(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values })),
            },
        )]),
    }
}

/// An in-process Beam runner: serves BeamFnControl, BeamFnData, BeamFnLogging
/// and ProvisionService on one `127.0.0.1` port (the Python runner also puts
/// control and provision on one address), starts workers through a pool's
/// `StartWorker`, and drives bundles through [`WorkerHandle`].
///
/// Every call from a worker must carry the `worker_id` metadata; state is kept
/// per worker id, per runner, so two runners may both use `worker_0`.
/// Dropping the runner ends every control stream (as a job end does) and stops
/// the server.
pub struct TestRunner {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
}

impl TestRunner {
    /// Starts a runner on `127.0.0.1:0` with default options.
    pub async fn start() -> Result<TestRunner> {
        Self::start_with(RunnerOptions::default()).await
    }

    pub async fn start_with(options: RunnerOptions) -> Result<TestRunner> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(RunnerError::Bind)?;
        let addr = listener.local_addr().map_err(RunnerError::Bind)?;
        let shared = Arc::new(Shared::new(
            addr.to_string(),
            options.timeout,
            options.coalesce_data,
            options.pipeline_options,
        ));
        let services = Services {
            shared: shared.clone(),
            data_read_delay: options.data_read_delay,
            artifacts: Arc::new(options.artifacts),
        };
        let router = Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .add_service(
                BeamFnControlServer::new(services.clone())
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                BeamFnDataServer::new(services.clone())
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                BeamFnLoggingServer::new(services.clone())
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                ProvisionServiceServer::new(services.clone())
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(ArtifactRetrievalServiceServer::new(services));
        let (stop, stopped) = oneshot::channel::<()>();
        // `Server::tcp_nodelay` is ignored for a caller-made listener; without
        // TCP_NODELAY on the accepted sockets, Nagle's algorithm and the
        // worker's delayed ACKs stall small messages (a ProcessBundle request
        // followed by its data) for ~40 ms.
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(TestRunner {
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// `127.0.0.1:PORT`: the control, data, logging and provision endpoint.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Makes `descriptor` available to `GetProcessBundleDescriptor` under its id.
    pub fn add_descriptor(&self, descriptor: ProcessBundleDescriptor) {
        lock(&self.shared.descriptors).insert(descriptor.id.clone(), descriptor);
    }

    /// Calls refused because they lacked `worker_id` metadata.
    pub fn rejected_calls(&self) -> usize {
        self.shared.rejected_calls.load(Ordering::Relaxed)
    }

    /// The `StartWorkerRequest` [`TestRunner::start_worker`] sends: control,
    /// logging, artifact and provision endpoints all set to [`TestRunner::url`],
    /// and [`NATIVE_PARAMS`] (an environment made by the pool's expansion
    /// service), so the pool runs the worker in-process. Tests may alter it
    /// and pass it to [`TestRunner::start_worker_with`].
    pub fn start_worker_request(&self, worker_id: &str) -> StartWorkerRequest {
        StartWorkerRequest {
            worker_id: worker_id.to_string(),
            control_endpoint: self.shared.endpoint(),
            logging_endpoint: self.shared.endpoint(),
            artifact_endpoint: self.shared.endpoint(),
            provision_endpoint: self.shared.endpoint(),
            params: [NATIVE_PARAMS]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Log entries this runner received from `worker_id` (on any logging
    /// stream carrying that id), also for workers whose control stream never
    /// connected.
    pub fn logs_of(&self, worker_id: &str) -> Vec<LogEntry> {
        self.shared.worker(worker_id).logs()
    }

    /// Asks the pool at `pool_addr` to start `worker_id` against this runner
    /// and waits until its control stream connects.
    pub async fn start_worker(
        &self,
        pool_addr: SocketAddr,
        worker_id: &str,
    ) -> Result<WorkerHandle> {
        self.start_worker_with(pool_addr, self.start_worker_request(worker_id))
            .await
    }

    /// [`TestRunner::start_worker`] with a caller-made request. Fails with
    /// [`RunnerError::StartWorkerRefused`] when the pool answers with an error,
    /// and with a timeout when no control stream with that id connects.
    pub async fn start_worker_with(
        &self,
        pool_addr: SocketAddr,
        request: StartWorkerRequest,
    ) -> Result<WorkerHandle> {
        let deadline = Instant::now() + self.shared.default_timeout;
        let worker_id = request.worker_id.clone();
        // Created before the call: the harness may connect before StartWorker returns.
        let worker = self
            .shared
            .fresh_worker(&worker_id)
            .ok_or_else(|| RunnerError::WorkerIdInUse(worker_id.clone()))?;
        let mut client = pool_client(pool_addr, self.shared.default_timeout).await?;
        let started = Instant::now();
        let response = pool_rpc(
            "StartWorker",
            || format!("the StartWorker response for '{worker_id}'"),
            deadline,
            self.shared.default_timeout,
            client.start_worker(request),
        )
        .await?;
        if !response.error.is_empty() {
            return Err(RunnerError::StartWorkerRefused {
                worker_id,
                error: response.error,
            });
        }
        let connected = wait_for_control(&worker, deadline, self.shared.default_timeout).await?;
        Ok(WorkerHandle::new(
            self.shared.clone(),
            worker,
            connected.saturating_duration_since(started),
        ))
    }

    /// The raw `StartWorker` call, returning the pool's answer as is (no waiting
    /// for a control stream): for requests that should be refused.
    pub async fn call_start_worker(
        pool_addr: SocketAddr,
        request: StartWorkerRequest,
        timeout: Duration,
    ) -> Result<StartWorkerResponse> {
        let mut client = pool_client(pool_addr, timeout).await?;
        pool_rpc(
            "StartWorker",
            || "the StartWorker response".into(),
            Instant::now() + timeout,
            timeout,
            client.start_worker(request),
        )
        .await
    }

    /// `StopWorker(worker_id)` on the pool, as the Java runner sends when an
    /// environment closes.
    pub async fn stop_worker(
        pool_addr: SocketAddr,
        worker_id: &str,
        timeout: Duration,
    ) -> Result<StopWorkerResponse> {
        let mut client = pool_client(pool_addr, timeout).await?;
        let request = StopWorkerRequest {
            worker_id: worker_id.to_string(),
        };
        pool_rpc(
            "StopWorker",
            || "the StopWorker response".into(),
            Instant::now() + timeout,
            timeout,
            client.stop_worker(request),
        )
        .await
    }

    /// Ends all control streams, stops the server and waits (up to the default
    /// timeout) for it to finish.
    pub async fn shutdown(mut self) {
        self.shared.close_all_controls();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take()
            && timeout_at(Instant::now() + self.shared.default_timeout, &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

impl Drop for TestRunner {
    fn drop(&mut self) {
        self.shared.close_all_controls();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for TestRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRunner")
            .field("url", &self.shared.url)
            .finish()
    }
}

async fn pool_client(
    pool_addr: SocketAddr,
    timeout: Duration,
) -> Result<BeamFnExternalWorkerPoolClient<Channel>> {
    let connect = |source| RunnerError::PoolConnect {
        addr: pool_addr,
        source,
    };
    let channel = Endpoint::from_shared(format!("http://{pool_addr}"))
        .map_err(connect)?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(connect)?;
    Ok(BeamFnExternalWorkerPoolClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Awaits one pool RPC until `deadline`; `what` names the awaited response in
/// the timeout error.
async fn pool_rpc<T>(
    rpc: &'static str,
    what: impl FnOnce() -> String,
    deadline: Instant,
    timeout: Duration,
    call: impl Future<Output = std::result::Result<Response<T>, Status>>,
) -> Result<T> {
    timeout_at(deadline, call)
        .await
        .map_err(|_| RunnerError::Timeout {
            what: what(),
            after: timeout,
        })?
        .map(Response::into_inner)
        .map_err(|status| RunnerError::rpc(rpc, status))
}

/// Waits until `worker`'s control stream is open; returns when it connected.
async fn wait_for_control(
    worker: &WorkerState,
    deadline: Instant,
    timeout: Duration,
) -> Result<Instant> {
    let mut state = worker.control.subscribe();
    let seen = timeout_at(deadline, state.wait_for(|s| *s != StreamState::Waiting))
        .await
        .map_err(|_| RunnerError::Timeout {
            what: format!("a Control stream with worker_id '{}'", worker.id),
            after: timeout,
        })?
        .map(|s| *s);
    match seen {
        Ok(StreamState::Open(at)) => Ok(at),
        _ => Err(RunnerError::ControlClosed {
            worker_id: worker.id.clone(),
        }),
    }
}

/// The gRPC services; all state lives in [`Shared`].
#[derive(Clone)]
struct Services {
    shared: Arc<Shared>,
    /// See [`RunnerOptions::data_read_delay`].
    data_read_delay: Option<Duration>,
    /// See [`RunnerOptions::artifacts`].
    artifacts: Arc<Vec<(String, Bytes)>>,
}

impl Services {
    /// The worker a call comes from, named by its `worker_id` metadata. Real
    /// runners fail such calls (Python raises, Java files them under "" and
    /// hangs), so a missing header is refused loudly here.
    fn worker_for<T>(
        &self,
        request: &Request<T>,
        call: &str,
    ) -> std::result::Result<Arc<WorkerState>, Status> {
        let id = match request.metadata().get("worker_id").map(|v| v.to_str()) {
            Some(Ok(id)) if !id.is_empty() => id,
            Some(_) => {
                self.shared.rejected_calls.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument(format!(
                    "{call}: gRPC metadata 'worker_id' must be a non-empty ASCII string"
                )));
            }
            None => {
                self.shared.rejected_calls.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument(format!(
                    "{call}: missing gRPC metadata 'worker_id'; every Fn API call from an SDK \
                     harness must carry the worker_id it was started with \
                     (StartWorkerRequest.worker_id)"
                )));
            }
        };
        Ok(self.shared.worker(id))
    }
}

#[tonic::async_trait]
impl BeamFnControl for Services {
    type ControlStream = ReceiverStream<std::result::Result<InstructionRequest, Status>>;

    async fn control(
        &self,
        request: Request<Streaming<InstructionResponse>>,
    ) -> std::result::Result<Response<Self::ControlStream>, Status> {
        let worker = self.worker_for(&request, "Control")?;
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        if !worker.open_control(tx) {
            worker.violation("a second Control stream was opened while one is open".into());
            return Err(Status::already_exists(format!(
                "worker '{}' already has an open Control stream; a harness opens exactly one",
                worker.id
            )));
        }
        tokio::spawn(read_control(worker, request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_process_bundle_descriptor(
        &self,
        request: Request<GetProcessBundleDescriptorRequest>,
    ) -> std::result::Result<Response<ProcessBundleDescriptor>, Status> {
        let worker = self.worker_for(&request, "GetProcessBundleDescriptor")?;
        worker.descriptor_fetches.fetch_add(1, Ordering::Relaxed);
        let id = &request.get_ref().process_bundle_descriptor_id;
        lock(&self.shared.descriptors)
            .get(id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no ProcessBundleDescriptor with id '{id}' was registered with this runner"
                ))
            })
    }
}

/// Reads a worker's responses until its control stream ends (or we end it).
async fn read_control(worker: Arc<WorkerState>, mut inbound: Streaming<InstructionResponse>) {
    let mut state = worker.control.subscribe();
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(response)) => worker.deliver_response(response),
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(worker_id = %worker.id, %status, "control stream ended with an error");
                    break;
                }
            },
            _ = state.wait_for(|s| *s == StreamState::Closed) => break,
        }
    }
    worker.end_control(None);
}

#[tonic::async_trait]
impl BeamFnData for Services {
    type DataStream = ReceiverStream<std::result::Result<Elements, Status>>;

    async fn data(
        &self,
        request: Request<Streaming<Elements>>,
    ) -> std::result::Result<Response<Self::DataStream>, Status> {
        let worker = self.worker_for(&request, "Data")?;
        worker.data_streams.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(DATA_STREAM_QUEUE);
        let (inbound_done, done) = oneshot::channel();
        let queue = lock(&worker.data_rx).take();
        let primary = queue.is_some();
        let keep_open = match queue {
            Some(queue) => {
                worker.data.send_replace(StreamState::Open(Instant::now()));
                tokio::spawn(forward_data(
                    worker.clone(),
                    queue,
                    tx,
                    done,
                    self.shared.coalesce_data.max(1),
                ));
                None
            }
            None => {
                worker.violation(
                    "a second Data stream was opened while one is open; a harness should \
                     keep one per (worker, data url) (Java sends only on the first)"
                        .into(),
                );
                Some(tx)
            }
        };
        let read_delay = self.data_read_delay;
        tokio::spawn(async move {
            let mut inbound = request.into_inner();
            loop {
                if let Some(delay) = read_delay {
                    tokio::time::sleep(delay).await;
                }
                match inbound.message().await {
                    Ok(Some(elements)) => worker.route_outputs(elements),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(worker_id = %worker.id, %status, "data stream ended with an error");
                        break;
                    }
                }
            }
            let _ = inbound_done.send(());
            drop(keep_open);
            if primary {
                worker.data.send_replace(StreamState::Closed);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Moves queued runner-to-worker data onto one Data stream until the worker
/// closes it, then puts the queue back for a later stream. A message already
/// taken from the queue when the stream ends goes back with it, so the next
/// stream sends it first.
async fn forward_data(
    worker: Arc<WorkerState>,
    mut queue: DataQueue,
    stream: mpsc::Sender<std::result::Result<Elements, Status>>,
    mut inbound_done: oneshot::Receiver<()>,
    max_entries: usize,
) {
    let mut acks = Vec::new();
    loop {
        let mut elements = match queue.unsent.take() {
            Some((elements, unsent_acks)) => {
                acks = unsent_acks;
                elements
            }
            None => {
                let next = tokio::select! {
                    biased;
                    _ = &mut inbound_done => break,
                    next = queue.rx.recv() => next,
                };
                let Some(Outbound { elements, sent }) = next else {
                    break;
                };
                acks.extend(sent);
                elements
            }
        };
        // Like Python's sender: whatever else is already queued, from any
        // bundle, rides in the same message.
        while elements.data.len() < max_entries {
            let Ok(more) = queue.rx.try_recv() else { break };
            elements.data.extend(more.elements.data);
            acks.extend(more.sent);
        }
        // Reserve room first: a dropped `send` future would lose the message.
        let permit = tokio::select! {
            biased;
            _ = &mut inbound_done => None,
            permit = stream.reserve() => permit.ok(),
        };
        let Some(permit) = permit else {
            queue.unsent = Some((elements, std::mem::take(&mut acks)));
            break;
        };
        if max_entries > 1
            && let Some(first) = elements.data.first()
            && elements
                .data
                .iter()
                .any(|d| d.instruction_id != first.instruction_id)
        {
            worker.mixed_messages.fetch_add(1, Ordering::Relaxed);
        }
        permit.send(Ok(elements));
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
    *lock(&worker.data_rx) = Some(queue);
}

#[tonic::async_trait]
impl BeamFnLogging for Services {
    type LoggingStream = ReceiverStream<std::result::Result<LogControl, Status>>;

    async fn logging(
        &self,
        request: Request<Streaming<log_entry::List>>,
    ) -> std::result::Result<Response<Self::LoggingStream>, Status> {
        let worker = self.worker_for(&request, "Logging")?;
        let (tx, rx) = mpsc::channel(1);
        // The Python runner sends one LogControl first; a worker must not depend on it either way.
        let _ = tx.try_send(Ok(LogControl {}));
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(list)) = inbound.message().await {
                worker.push_logs(list.log_entries);
            }
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl ProvisionService for Services {
    async fn get_provision_info(
        &self,
        request: Request<GetProvisionInfoRequest>,
    ) -> std::result::Result<Response<GetProvisionInfoResponse>, Status> {
        let worker = self.worker_for(&request, "GetProvisionInfo")?;
        worker.provision_calls.fetch_add(1, Ordering::Relaxed);
        let info = ProvisionInfo {
            pipeline_options: self.shared.pipeline_options.clone(),
            dependencies: self
                .artifacts
                .iter()
                .map(|(name, _)| staged(name))
                .collect(),
            logging_endpoint: self.shared.endpoint(),
            artifact_endpoint: self.shared.endpoint(),
            control_endpoint: self.shared.endpoint(),
            ..Default::default()
        };
        Ok(Response::new(GetProvisionInfoResponse { info: Some(info) }))
    }
}

/// Chunk size of served artifacts: small, so a test file spans several.
const ARTIFACT_CHUNK: usize = 64 * 1024;

/// How the runner describes a staged file in `ProvisionInfo.dependencies`.
fn staged(name: &str) -> ArtifactInformation {
    ArtifactInformation {
        type_urn: "beam:artifact:type:file:v1".into(),
        type_payload: Bytes::new(),
        role_urn: "beam:artifact:role:staging_to:v1".into(),
        role_payload: ArtifactStagingToRolePayload {
            staged_name: name.to_string(),
        }
        .encode_to_vec()
        .into(),
    }
}

#[tonic::async_trait]
impl ArtifactRetrievalService for Services {
    type GetArtifactStream = ReceiverStream<std::result::Result<GetArtifactResponse, Status>>;

    async fn get_artifact(
        &self,
        request: Request<GetArtifactRequest>,
    ) -> std::result::Result<Response<Self::GetArtifactStream>, Status> {
        let wanted = request.into_inner().artifact.unwrap_or_default();
        let content = self
            .artifacts
            .iter()
            .find(|(name, _)| staged(name) == wanted)
            .map(|(_, content)| content.clone())
            .ok_or_else(|| Status::not_found("no such artifact"))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut rest = content;
            while !rest.is_empty() {
                let data = rest.split_to(rest.len().min(ARTIFACT_CHUNK));
                if tx.send(Ok(GetArtifactResponse { data })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
