//! One SDK harness per `StartWorker`: the control stream, the descriptor cache,
//! and concurrent dispatch of the runner's instructions.
//!
//! The harness lives exactly as long as its control stream: when the runner
//! ends it (the Python runner never calls `StopWorker`), every task, data stream
//! and buffer of the worker is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beam_proto::fn_execution::beam_fn_control_client::BeamFnControlClient;
use beam_proto::fn_execution::provision_service_client::ProvisionServiceClient;
use beam_proto::fn_execution::{
    FinalizeBundleResponse, GetProcessBundleDescriptorRequest, GetProvisionInfoRequest,
    HarnessMonitoringInfosResponse, InstructionRequest, InstructionResponse,
    MonitoringInfosMetadataResponse, ProcessBundleDescriptor, ProcessBundleProgressResponse,
    ProcessBundleRequest, ProcessBundleSplitResponse, RegisterResponse, SampleDataResponse,
    instruction_request::Request, instruction_response::Response,
};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::HarnessConfig;
use crate::data::DataChannels;
use crate::engine::{self, Progress, WorkerResources};
use crate::graph::{self, StageGraph};
use crate::grpc::{EndpointError, WorkerChannel, worker_channel, worker_channel_with};
use crate::logging;
use crate::ops::{Finalizer, Shared};
use crate::pool::Lifecycle;
use crate::registry::{self, PlanError};

/// Responses queued for the control stream before instruction tasks wait.
const RESPONSE_QUEUE: usize = 256;
const PROVISION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopped worker waits for the runner to close the control stream
/// after its own side has closed cleanly.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What `StartWorker` asked for.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub worker_id: String,
    /// Pool-assigned number that tells apart workers sharing a `worker_id`.
    pub serial: u64,
    pub control_url: String,
    pub logging_url: Option<String>,
    pub provision_url: Option<String>,
}

/// Why a harness ended other than by its runner closing the control stream.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("control stream failed: {0}")]
    Control(#[from] tonic::Status),
    #[error("could not open the control stream to {url}: {why}")]
    ControlConnect { url: String, why: String },
}

/// A descriptor, fetched once and planned once, shared by every bundle that uses it.
type CachedPlan = Arc<Result<Arc<StageGraph>, PlanError>>;

/// Callbacks of finished bundles, waiting for the runner's `FinalizeBundle`.
struct AwaitingFinalization {
    since: std::time::Instant,
    finalizers: Vec<Finalizer>,
}

struct Harness {
    spec: WorkerSpec,
    config: HarnessConfig,
    control: BeamFnControlClient<WorkerChannel>,
    plans: Mutex<HashMap<String, Arc<OnceCell<CachedPlan>>>>,
    resources: WorkerResources,
    /// Finalization callbacks of finished bundles (a source committing what it read, say),
    /// run when the runner finalizes them. Never finalized (a failed job, or
    /// Flink without checkpoints) means never run: they expire after
    /// `finalization_ttl`, and what they would have committed is read again.
    awaiting_finalization: Mutex<HashMap<String, AwaitingFinalization>>,
    /// Bundles being processed, for progress requests.
    running: Mutex<HashMap<String, Arc<Progress>>>,
    lifecycle: Arc<Lifecycle>,
}

/// Runs the worker until its control stream ends or `cancel` fires.
pub async fn run(
    spec: WorkerSpec,
    config: HarnessConfig,
    lifecycle: Arc<Lifecycle>,
    cancel: CancellationToken,
) -> Result<(), HarnessError> {
    let span = info_span!("worker", worker_id = %spec.worker_id, worker_serial = spec.serial);
    async move {
        let logs = match &spec.logging_url {
            Some(url) => Some(logging::forward_to_runner(
                spec.serial,
                url,
                &spec.worker_id,
                cancel.child_token(),
            )?),
            None => None,
        };
        let config = match &spec.provision_url {
            Some(url) => with_provisioned_options(config, url, &spec.worker_id).await,
            None => config,
        };
        let control = BeamFnControlClient::new(worker_channel_with(
            &spec.control_url,
            &spec.worker_id,
            config.connect_timeout,
        )?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
        let channels = DataChannels::new(&spec.worker_id, &config, cancel.child_token());
        let data_tasks = channels.tasks();
        let harness = Arc::new(Harness {
            resources: WorkerResources {
                channels,
                shared: Arc::new(Shared::default()),
            },
            awaiting_finalization: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            spec,
            config,
            control,
            plans: Mutex::new(HashMap::new()),
            lifecycle,
        });
        let result = harness.clone().serve_control(&cancel).await;
        // Dropping the harness and the log guard half-closes the worker's data and
        // logging streams; cancelling then bounds how long they may take to end.
        drop(harness);
        drop(logs);
        cancel.cancel();
        // Each data stream sends what is queued and closes (bounded by its own
        // close grace); the pool's shutdown waits for this.
        data_tasks.close();
        data_tasks.wait().await;
        result
    }
    .instrument(span)
    .await
}

impl Harness {
    async fn serve_control(
        self: Arc<Self>,
        cancel: &CancellationToken,
    ) -> Result<(), HarnessError> {
        let (responses, rx) = mpsc::channel(RESPONSE_QUEUE);
        let mut client = self.control.clone();
        let mut requests = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            call = client.control(ReceiverStream::new(rx)) => match call {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    // The reason (an endpoint that never spoke HTTP/2, a refused
                    // connection) is in the source chain, not the status text.
                    return Err(HarnessError::ControlConnect {
                        url: self.spec.control_url.clone(),
                        why: crate::net::error_chain(&status),
                    });
                }
            },
        };
        info!(control = %self.spec.control_url, "control stream connected");
        let mut tasks = JoinSet::new();
        let ended = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                message = requests.message() => match message {
                    Ok(Some(request)) => {
                        let harness = self.clone();
                        let responses = responses.clone();
                        let in_flight = self.lifecycle.track();
                        tasks.spawn(async move {
                            let response = harness.handle(request).await;
                            // A closed stream means the worker is going away anyway.
                            let _ = responses.send(response).await;
                            drop(in_flight);
                        }.in_current_span());
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        match &ended {
            Ok(()) if cancel.is_cancelled() => info!("worker stopped by the pool"),
            Ok(()) => info!("runner closed the control stream; releasing the worker"),
            Err(status) => warn!(%status, "control stream failed; releasing the worker"),
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        // With every sender gone our side half-closes after the queued responses,
        // so answers already given reach the runner instead of being reset away.
        drop(responses);
        if ended.is_ok() {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Ok(Some(_)) = requests.message().await {}
            })
            .await;
        }
        ended.map_err(Into::into)
    }

    async fn handle(&self, request: InstructionRequest) -> InstructionResponse {
        let id = request.instruction_id;
        let result = match request.request {
            Some(Request::ProcessBundle(pb)) => {
                let span = info_span!("bundle", instruction_id = %id);
                self.process_bundle_or_discard(&id, pb)
                    .instrument(span)
                    .await
                    .map(Response::ProcessBundle)
            }
            Some(Request::Register(r)) => {
                for d in r.process_bundle_descriptor {
                    self.cache_descriptor(d).await;
                }
                Ok(Response::Register(RegisterResponse {}))
            }
            // Progress and split must always succeed: Prism stops watching a
            // bundle after an error answer. Bundles are never split here (no
            // operator offers split points); the empty answer means "no
            // split" to every runner.
            Some(Request::ProcessBundleProgress(p)) => Ok(Response::ProcessBundleProgress(
                ProcessBundleProgressResponse {
                    monitoring_infos: self.progress(&p.instruction_id),
                    ..Default::default()
                },
            )),
            Some(Request::ProcessBundleSplit(_)) => Ok(Response::ProcessBundleSplit(
                ProcessBundleSplitResponse::default(),
            )),
            Some(Request::FinalizeBundle(f)) => self
                .finalize(&f.instruction_id)
                .await
                .map(|()| Response::FinalizeBundle(FinalizeBundleResponse {})),
            Some(Request::MonitoringInfos(_)) => Ok(Response::MonitoringInfos(
                MonitoringInfosMetadataResponse::default(),
            )),
            Some(Request::HarnessMonitoringInfos(_)) => Ok(Response::HarnessMonitoringInfos(
                HarnessMonitoringInfosResponse::default(),
            )),
            Some(Request::SampleData(_)) => Ok(Response::SampleData(SampleDataResponse {})),
            None => Err(
                "unsupported instruction: the request carries no instruction type this \
                         worker knows (it handles process_bundle, register, progress, split, \
                         finalize, monitoring_infos, harness_monitoring_infos, sample_data)"
                    .to_owned(),
            ),
        };
        match result {
            Ok(response) => InstructionResponse {
                instruction_id: id,
                error: String::new(),
                response: Some(response),
            },
            Err(error) => InstructionResponse {
                instruction_id: id,
                error,
                response: None,
            },
        }
    }

    async fn process_bundle(
        &self,
        instruction_id: &str,
        request: ProcessBundleRequest,
    ) -> Result<beam_proto::fn_execution::ProcessBundleResponse, String> {
        if self.lifecycle.is_draining() {
            return Err("the worker pool is shutting down and accepts no new bundles".into());
        }
        let plan = self.plan(&request.process_bundle_descriptor_id).await?;
        let telemetry = crate::telemetry::global();
        telemetry.bundle_started();
        let started = std::time::Instant::now();
        let progress = Arc::new(Progress::default());
        self.running_bundles()
            .insert(instruction_id.to_owned(), progress.clone());
        let result = engine::run(
            instruction_id,
            plan,
            &self.resources,
            &self.config,
            request.elements,
            &progress,
        )
        .await;
        self.running_bundles().remove(instruction_id);
        telemetry.bundle_finished(result.is_ok(), started.elapsed());
        match result {
            Ok(outcome) => {
                if !outcome.finalizers.is_empty() {
                    self.await_finalization(instruction_id, outcome.finalizers);
                }
                Ok(outcome.response)
            }
            Err(e) => {
                warn!(error = %e, "bundle failed");
                Err(format!("bundle {instruction_id} failed: {e}"))
            }
        }
    }

    /// A bundle that failed before taking its input (descriptor not
    /// fetchable or not runnable, pool draining): its early input, held in
    /// the data channels, is dropped at once instead of filling the bound.
    async fn process_bundle_or_discard(
        &self,
        instruction_id: &str,
        request: ProcessBundleRequest,
    ) -> Result<beam_proto::fn_execution::ProcessBundleResponse, String> {
        let result = self.process_bundle(instruction_id, request).await;
        if result.is_err() {
            self.resources.channels.discard(instruction_id);
        }
        result
    }

    /// The runner has durably taken the bundle's output: run its callbacks.
    /// An unknown (or expired) instruction is not an error: Prism finalizes
    /// every bundle of a stage, and a finalization may come after expiry.
    async fn finalize(&self, instruction_id: &str) -> Result<(), String> {
        let awaiting = self
            .awaiting()
            .remove(instruction_id)
            .map(|a| a.finalizers)
            .unwrap_or_default();
        for finalizer in awaiting {
            finalizer()
                .await
                .map_err(|e| format!("finalizing bundle {instruction_id}: {e}"))?;
        }
        Ok(())
    }

    /// Keeps `finalizers` until the runner finalizes the bundle, dropping
    /// those that waited longer than the configured expiry.
    fn await_finalization(&self, instruction_id: &str, finalizers: Vec<Finalizer>) {
        let now = std::time::Instant::now();
        let ttl = self.config.finalization_ttl;
        let mut awaiting = self.awaiting();
        let before = awaiting.len();
        awaiting.retain(|_, a| now.duration_since(a.since) < ttl);
        let expired = before - awaiting.len();
        if expired > 0 {
            warn!(
                expired,
                ttl_secs = ttl.as_secs(),
                "bundles were never finalized by the runner (no checkpoints?); their \
                 finalization callbacks (offset commits) are dropped and that input will be \
                 read again by the next job"
            );
        }
        awaiting.insert(
            instruction_id.to_owned(),
            AwaitingFinalization {
                since: now,
                finalizers,
            },
        );
    }

    fn awaiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, AwaitingFinalization>> {
        self.awaiting_finalization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn running_bundles(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Progress>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Progress of a running bundle; nothing for one that is not running.
    fn progress(&self, instruction_id: &str) -> Vec<beam_proto::pipeline::MonitoringInfo> {
        self.running_bundles()
            .get(instruction_id)
            .map(|p| p.monitoring_infos())
            .unwrap_or_default()
    }

    /// The plan for `descriptor_id`, fetching the descriptor once per worker.
    async fn plan(&self, descriptor_id: &str) -> Result<Arc<StageGraph>, String> {
        let cell = self.cell(descriptor_id);
        let cached = cell
            .get_or_try_init(|| async {
                let descriptor = self
                    .control
                    .clone()
                    .get_process_bundle_descriptor(GetProcessBundleDescriptorRequest {
                        process_bundle_descriptor_id: descriptor_id.to_owned(),
                    })
                    .await
                    .map_err(|s| {
                        format!(
                            "could not fetch process bundle descriptor '{descriptor_id}': {}",
                            s.message()
                        )
                    })?
                    .into_inner();
                // Planning decodes transform configuration: kept off the
                // threads that move bundle data.
                // In the bundle's span, so what planning logs reaches the runner
                // tagged with the instruction.
                let span = tracing::Span::current();
                tokio::task::spawn_blocking(move || span.in_scope(|| plan_descriptor(&descriptor)))
                    .await
                    .map_err(|e| format!("planning descriptor '{descriptor_id}' failed: {e}"))
            })
            .await?;
        match cached.as_ref() {
            Ok(plan) => Ok(plan.clone()),
            Err(e) => Err(format!("descriptor '{descriptor_id}': {e}")),
        }
    }

    fn cell(&self, descriptor_id: &str) -> Arc<OnceCell<CachedPlan>> {
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(descriptor_id.to_owned())
            .or_default()
            .clone()
    }

    /// Plans on the blocking pool: planning decodes transform configuration,
    /// which must not hold up the threads that move bundle data.
    async fn cache_descriptor(&self, descriptor: ProcessBundleDescriptor) {
        let id = descriptor.id.clone();
        let span = tracing::Span::current();
        let planned =
            tokio::task::spawn_blocking(move || span.in_scope(|| plan_descriptor(&descriptor)));
        match planned.await {
            Ok(plan) => {
                let _ = self.cell(&id).set(plan);
            }
            Err(e) => {
                warn!(descriptor = %id, error = %e, "planning a registered descriptor failed")
            }
        }
    }
}

fn plan_descriptor(descriptor: &ProcessBundleDescriptor) -> CachedPlan {
    let plan = graph::build(descriptor).map(Arc::new);
    match &plan {
        Ok(p) => {
            // Which transforms were fused into this stage is what a user (or a
            // test) needs to see to know records never left the worker between them.
            let mut urns: Vec<String> = descriptor
                .transforms
                .values()
                .filter(|t| t.subtransforms.is_empty())
                .map(registry::runs)
                .collect();
            urns.sort_unstable();
            info!(descriptor = %p.descriptor_id, transforms = %urns.join(","), "stage planned");
            debug!(plan = ?p, "stage plan");
        }
        Err(e) => warn!(descriptor = %descriptor.id, error = %e, "stage cannot run here"),
    }
    Arc::new(plan)
}

/// Applies the runner's `data_buffer_size_limit` / `data_buffer_time_limit_ms`
/// experiments and its `max_bundle_size` option. Provision is optional: if it
/// fails, the pool's flags stand.
async fn with_provisioned_options(
    mut config: HarnessConfig,
    url: &str,
    worker_id: &str,
) -> HarnessConfig {
    let fetch = async {
        let channel = worker_channel(url, worker_id).map_err(|e| e.to_string())?;
        let response = ProvisionServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .get_provision_info(GetProvisionInfoRequest {})
            .await
            .map_err(|s| s.to_string())?;
        Ok::<_, String>(response.into_inner())
    };
    let info = match tokio::time::timeout(PROVISION_TIMEOUT, fetch).await {
        Ok(Ok(response)) => response.info,
        Ok(Err(e)) => {
            debug!(error = %e, "no provision info; using the pool's settings");
            None
        }
        Err(_) => {
            warn!("provision service did not answer in time; using the pool's settings");
            None
        }
    };
    let options = info.and_then(|i| i.pipeline_options);
    for experiment in experiments(options.as_ref()) {
        let Some((name, value)) = experiment.split_once('=') else {
            continue;
        };
        match (name, value.trim().parse::<u64>()) {
            ("data_buffer_size_limit", Ok(bytes)) if bytes > 0 => {
                config.flush_bytes = bytes as usize;
                info!(
                    bytes,
                    "flush size set by the runner's data_buffer_size_limit"
                );
            }
            ("data_buffer_time_limit_ms", Ok(ms)) => {
                config.flush_interval = (ms > 0).then(|| Duration::from_millis(ms));
                info!(
                    ms,
                    "flush interval set by the runner's data_buffer_time_limit_ms"
                );
            }
            ("data_buffer_size_limit" | "data_buffer_time_limit_ms", _) => {
                warn!(
                    experiment,
                    "ignoring an experiment whose value is not a whole number"
                )
            }
            _ => {}
        }
    }
    if let Some(elements) = max_bundle_size(options.as_ref()) {
        config.max_bundle_elements = Some(elements);
        info!(
            elements,
            "reads per bundle capped by the runner's max_bundle_size"
        );
    }
    config
}

/// The runner's `max_bundle_size` option (Flink's bundle size in elements),
/// under either key form, as a number or a string; absent, zero or not a
/// whole number means "no cap".
fn max_bundle_size(options: Option<&prost_types::Struct>) -> Option<u64> {
    use prost_types::value::Kind;
    let options = options?;
    let value = ["beam:option:max_bundle_size:v1", "max_bundle_size"]
        .iter()
        .find_map(|k| options.fields.get(*k))?;
    let elements = match &value.kind {
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && *n >= 1.0 && *n < 9.0e18 => *n as u64,
        Some(Kind::StringValue(s)) => s.trim().parse::<u64>().ok()?,
        _ => None?,
    };
    (elements > 0).then_some(elements)
}

/// The `experiments` list of pipeline options, under either key form runners use.
fn experiments(options: Option<&prost_types::Struct>) -> Vec<String> {
    use prost_types::value::Kind;
    let Some(options) = options else {
        return Vec::new();
    };
    ["beam:option:experiments:v1", "experiments"]
        .iter()
        .filter_map(|k| options.fields.get(*k))
        .filter_map(|v| match &v.kind {
            Some(Kind::ListValue(list)) => Some(list.values.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{ListValue, Struct, Value, value::Kind};

    #[test]
    fn experiments_are_read_from_both_key_forms() {
        let list = |items: &[&str]| Value {
            kind: Some(Kind::ListValue(ListValue {
                values: items
                    .iter()
                    .map(|s| Value {
                        kind: Some(Kind::StringValue(s.to_string())),
                    })
                    .collect(),
            })),
        };
        let options = Struct {
            fields: [
                ("beam:option:experiments:v1".to_string(), list(&["a=1"])),
                ("experiments".to_string(), list(&["b"])),
            ]
            .into(),
        };
        assert_eq!(experiments(Some(&options)), ["a=1", "b"]);
        assert!(experiments(None).is_empty());
    }

    #[test]
    fn max_bundle_size_is_read_as_a_number_or_a_string() {
        let options = |key: &str, kind: Kind| Struct {
            fields: [(key.to_string(), Value { kind: Some(kind) })].into(),
        };
        let number = options("beam:option:max_bundle_size:v1", Kind::NumberValue(1000.0));
        assert_eq!(max_bundle_size(Some(&number)), Some(1000));
        let string = options("max_bundle_size", Kind::StringValue(" 250 ".into()));
        assert_eq!(max_bundle_size(Some(&string)), Some(250));
        for bad in [
            Kind::NumberValue(0.0),
            Kind::NumberValue(-5.0),
            Kind::NumberValue(2.5),
            Kind::NumberValue(f64::NAN),
            Kind::StringValue("many".into()),
            Kind::BoolValue(true),
        ] {
            let o = options("max_bundle_size", bad.clone());
            assert_eq!(max_bundle_size(Some(&o)), None, "{bad:?}");
        }
        assert_eq!(max_bundle_size(None), None);
    }
}
