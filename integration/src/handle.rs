//! [`WorkerHandle`]: drives one connected worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use beam_proto::fn_execution::elements::Data;
use beam_proto::fn_execution::{
    Elements, InstructionRequest, InstructionResponse, LogEntry, ProcessBundleDescriptor,
    ProcessBundleRequest, RegisterRequest, instruction_request,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout_at};
use tonic::Status;

use crate::bundle::{BundleResult, BundleSpec, Collector, DataOrder};
use crate::error::{Result, RunnerError};
use crate::state::{Shared, StreamState, WorkerState};

/// One worker (harness) connected to a [`crate::TestRunner`]. Cheap to clone;
/// every method may be used concurrently.
#[derive(Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
    worker: Arc<WorkerState>,
    connect_latency: Duration,
}

/// Forgets an in-flight instruction however its caller leaves (done, error,
/// timeout, or the future being dropped).
struct InFlight<'a> {
    worker: &'a WorkerState,
    instruction_id: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.worker.unregister(self.instruction_id);
    }
}

impl WorkerHandle {
    pub(crate) fn new(
        shared: Arc<Shared>,
        worker: Arc<WorkerState>,
        connect_latency: Duration,
    ) -> Self {
        WorkerHandle {
            shared,
            worker,
            connect_latency,
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker.id
    }

    /// Time from sending `StartWorker` to the worker's control stream
    /// connecting.
    pub fn connect_latency(&self) -> Duration {
        self.connect_latency
    }

    /// Runs one bundle: sends the request and the input in `spec.order`,
    /// then collects output until the response has arrived and, unless it is
    /// an error, `is_last` was seen on every sink in `spec.sinks`. A response
    /// with an error returns at once. Errors only for transport problems and
    /// timeouts; a failed bundle is `Ok` with [`BundleResult::error`] set.
    pub async fn process_bundle(&self, spec: BundleSpec) -> Result<BundleResult> {
        let timeout = spec.timeout.unwrap_or(self.shared.default_timeout);
        let deadline = Instant::now() + timeout;
        let instruction_id = spec
            .instruction_id
            .clone()
            .unwrap_or_else(|| self.shared.next_id("bundle"));
        let (outputs_tx, mut outputs) = mpsc::unbounded_channel();
        let (response_tx, mut response_rx) = oneshot::channel();
        let _in_flight = self.track(&instruction_id, response_tx, Some(outputs_tx))?;
        let request = InstructionRequest {
            instruction_id: instruction_id.clone(),
            request: Some(instruction_request::Request::ProcessBundle(
                ProcessBundleRequest {
                    process_bundle_descriptor_id: spec.descriptor_id.clone(),
                    elements: None,
                },
            )),
        };
        let messages = spec.data_messages(&instruction_id);
        match spec.order {
            DataOrder::RequestFirst => {
                self.send_request(request, deadline, timeout).await?;
                self.worker.enqueue_data(messages);
            }
            DataOrder::DataFirst => {
                let sent = self.worker.enqueue_data(messages);
                // Only a connected stream can take the data; otherwise it waits
                // in the queue and the request goes now, as in Python.
                if self.worker.data.borrow().is_open()
                    && let Some(sent) = sent
                {
                    let _ = timeout_at(deadline, sent).await;
                }
                if let Some(delay) = spec.request_delay {
                    tokio::time::sleep(delay).await;
                }
                self.send_request(request, deadline, timeout).await?;
            }
        }

        let mut collector = Collector::new(spec.sinks);
        let mut response: Option<InstructionResponse> = None;
        loop {
            if let Some(r) = &response
                && (!r.error.is_empty() || collector.sinks_done())
            {
                break;
            }
            tokio::select! {
                r = &mut response_rx, if response.is_none() => match r {
                    Ok(r) => response = Some(r),
                    Err(_) => return Err(self.closed_error()),
                },
                Some(data) = outputs.recv() => collector.push(data),
                _ = sleep_until(deadline) => {
                    return Err(RunnerError::Timeout {
                        what: collector.describe(&instruction_id, response.as_ref()),
                        after: timeout,
                    });
                }
            }
        }
        while let Ok(data) = outputs.try_recv() {
            collector.push(data);
        }
        for violation in &collector.violations {
            self.worker
                .violation(format!("bundle '{instruction_id}': {violation}"));
        }
        let response = response.unwrap_or_default();
        Ok(BundleResult {
            instruction_id: instruction_id.clone(),
            response,
            outputs: collector.outputs,
            violations: collector.violations,
        })
    }

    /// Sends an instruction under a fresh id and waits for its response.
    /// `None` sends a request with no oneof set.
    pub async fn instruction(
        &self,
        request: Option<instruction_request::Request>,
    ) -> Result<InstructionResponse> {
        self.instruction_with_id(self.shared.next_id("instruction"), request)
            .await
    }

    /// [`WorkerHandle::instruction`] under a caller-chosen id. Responses are
    /// matched by id, so getting one back proves the worker echoed the id.
    pub async fn instruction_with_id(
        &self,
        instruction_id: String,
        request: Option<instruction_request::Request>,
    ) -> Result<InstructionResponse> {
        let timeout = self.shared.default_timeout;
        let deadline = Instant::now() + timeout;
        let (response_tx, response_rx) = oneshot::channel();
        let _in_flight = self.track(&instruction_id, response_tx, None)?;
        let request = InstructionRequest {
            instruction_id: instruction_id.clone(),
            request,
        };
        self.send_request(request, deadline, timeout).await?;
        match timeout_at(deadline, response_rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(RunnerError::Timeout {
                what: format!("the response to instruction '{instruction_id}'"),
                after: timeout,
            }),
        }
    }

    /// The legacy push of descriptors (`register`, used by old Python runners).
    pub async fn register(
        &self,
        descriptors: Vec<ProcessBundleDescriptor>,
    ) -> Result<InstructionResponse> {
        self.instruction(Some(instruction_request::Request::Register(
            RegisterRequest {
                process_bundle_descriptor: descriptors,
            },
        )))
        .await
    }

    /// Queues raw data entries for the worker (no bookkeeping; for tests that
    /// need traffic no bundle would send).
    pub fn send_data(&self, data: Vec<Data>) {
        self.worker.enqueue_data(vec![Elements {
            data,
            timers: vec![],
        }]);
    }

    /// Ends the control stream abruptly with CANCELLED, as the Java runner
    /// does with requests outstanding. In-flight calls fail with
    /// [`RunnerError::ControlClosed`]. Returns whether a stream was open.
    pub fn drop_control(&self) -> bool {
        self.worker.end_control(Some(Status::cancelled(
            "the runner dropped the control stream",
        )))
    }

    /// Ends the control stream cleanly (status OK), as the Python runner does
    /// at job end. Returns whether a stream was open.
    pub fn close_control(&self) -> bool {
        self.worker.end_control(None)
    }

    /// Resolves once the control stream has ended (either side ended it).
    pub async fn control_closed(&self) {
        let mut state = self.worker.control.subscribe();
        let _ = state.wait_for(|s| *s == StreamState::Closed).await;
    }

    /// Resolves once the worker's Data stream is connected.
    pub async fn data_stream_connected(&self) {
        let mut state = self.worker.data.subscribe();
        let _ = state.wait_for(|s| s.is_open()).await;
    }

    /// Resolves once the worker's Data stream (the one carrying this runner's
    /// data) has connected and then ended: the worker released it. Never
    /// resolves if the worker never opened one.
    pub async fn data_stream_closed(&self) {
        let mut state = self.worker.data.subscribe();
        let _ = state.wait_for(|s| *s == StreamState::Closed).await;
    }

    /// Data streams this worker has opened to this runner (one is expected).
    pub fn data_streams_opened(&self) -> usize {
        self.worker.data_streams.load(Ordering::Relaxed)
    }

    /// Log entries received so far (the most recent, up to the runner's capacity).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.worker.logs()
    }

    /// Waits until at least `count` log entries have arrived in total.
    pub async fn wait_for_logs(&self, count: usize, timeout: Duration) -> Result<Vec<LogEntry>> {
        let mut seen = self.worker.log_count.subscribe();
        timeout_at(Instant::now() + timeout, seen.wait_for(|n| *n >= count))
            .await
            .map_err(|_| RunnerError::Timeout {
                what: format!("{count} log entries from worker '{}'", self.worker.id),
                after: timeout,
            })?
            .map_err(|_| self.closed_error())?;
        Ok(self.logs())
    }

    /// Protocol problems seen from this worker: responses or data for unknown
    /// instructions, data after `is_last`, extra streams, timers. A correct
    /// worker leaves this empty.
    pub fn protocol_violations(&self) -> Vec<String> {
        self.worker.violations()
    }

    /// Runner-to-worker messages that mixed entries of several bundles
    /// (only with [`crate::RunnerOptions::coalesce_data`] above 1).
    pub fn mixed_messages_sent(&self) -> usize {
        self.worker.mixed_messages.load(Ordering::Relaxed)
    }

    /// `GetProvisionInfo` calls made by this worker.
    pub fn provision_calls(&self) -> usize {
        self.worker.provision_calls.load(Ordering::Relaxed)
    }

    /// `GetProcessBundleDescriptor` calls made by this worker (a caching worker
    /// fetches each descriptor once).
    pub fn descriptor_fetches(&self) -> usize {
        self.worker.descriptor_fetches.load(Ordering::Relaxed)
    }

    /// Registers `instruction_id` with the worker state; the returned guard
    /// forgets it again however the caller leaves.
    fn track<'a>(
        &'a self,
        instruction_id: &'a str,
        response: oneshot::Sender<InstructionResponse>,
        outputs: Option<mpsc::UnboundedSender<Data>>,
    ) -> Result<InFlight<'a>> {
        if !self.worker.register(instruction_id, response, outputs) {
            return Err(RunnerError::DuplicateInstruction(
                instruction_id.to_string(),
            ));
        }
        Ok(InFlight {
            worker: &self.worker,
            instruction_id,
        })
    }

    async fn send_request(
        &self,
        request: InstructionRequest,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let sender = self
            .worker
            .control_sender()
            .ok_or_else(|| self.closed_error())?;
        match timeout_at(deadline, sender.send(Ok(request))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(RunnerError::Timeout {
                what: "room on the control stream (the worker is not reading requests)".into(),
                after: timeout,
            }),
        }
    }

    fn closed_error(&self) -> RunnerError {
        RunnerError::ControlClosed {
            worker_id: self.worker.id.clone(),
        }
    }
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("worker_id", &self.worker.id)
            .field("connect_latency", &self.connect_latency)
            .finish()
    }
}
