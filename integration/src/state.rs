//! Per-runner and per-worker bookkeeping shared by the gRPC services and the
//! handles tests hold. Locks are std mutexes held for short, non-async
//! sections only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use beam_proto::fn_execution::elements::Data;
use beam_proto::fn_execution::{
    Elements, InstructionRequest, InstructionResponse, LogEntry, ProcessBundleDescriptor,
};
use beam_proto::pipeline::ApiServiceDescriptor;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::Status;

/// How many finished instruction ids are remembered, so that late data or a
/// late response for them is not reported as a protocol violation. Python's
/// data plane keeps the same number.
const RECENT_IDS: usize = 10_000;

/// Log entries kept per worker; older ones are dropped but still counted.
const LOG_CAPACITY: usize = 10_000;

/// Capacity of each control stream's outbound queue (requests not yet written).
pub(crate) const CONTROL_QUEUE: usize = 1024;

/// Locks, ignoring poisoning: a panicking test thread must not hide the state
/// from the assertions that follow.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lifecycle of a worker's control or (primary) data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamState {
    /// Not connected yet.
    Waiting,
    /// Connected at this instant.
    Open(Instant),
    /// Was open and has ended (either side).
    Closed,
}

/// Runner-to-worker data waiting for the worker's Data stream.
pub(crate) struct Outbound {
    pub(crate) elements: Elements,
    /// Fired once the message is handed to the stream, so "data first" can
    /// wait until the data is really on its way before sending the request.
    pub(crate) sent: Option<oneshot::Sender<()>>,
}

/// The runner-to-worker data queue, held by whichever Data stream carries it.
pub(crate) struct DataQueue {
    pub(crate) rx: mpsc::UnboundedReceiver<Outbound>,
    /// A message already taken from `rx` (with the acks of everything merged
    /// into it) whose Data stream ended before accepting it; the next stream
    /// sends it first.
    pub(crate) unsent: Option<(Elements, Vec<oneshot::Sender<()>>)>,
}

/// State of one runner, shared with its services.
pub(crate) struct Shared {
    /// `host:port` every endpoint of this runner is served on.
    pub(crate) url: String,
    /// Default for every wait, so a broken worker fails a test instead of hanging it.
    pub(crate) default_timeout: Duration,
    /// Most `Data` entries merged into one outbound `Elements` message.
    pub(crate) coalesce_data: usize,
    /// Served by `GetProcessBundleDescriptor`.
    pub(crate) descriptors: Mutex<HashMap<String, ProcessBundleDescriptor>>,
    /// Returned as `ProvisionInfo.pipeline_options` (where experiments live).
    pub(crate) pipeline_options: Option<prost_types::Struct>,
    /// Every worker id seen by this runner, current incarnation only.
    pub(crate) workers: Mutex<HashMap<String, Arc<WorkerState>>>,
    /// Calls refused for lacking `worker_id` metadata.
    pub(crate) rejected_calls: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(
        url: String,
        default_timeout: Duration,
        coalesce_data: usize,
        pipeline_options: Option<prost_types::Struct>,
    ) -> Self {
        Shared {
            url,
            default_timeout,
            coalesce_data,
            descriptors: Mutex::default(),
            pipeline_options,
            workers: Mutex::default(),
            rejected_calls: AtomicUsize::new(0),
        }
    }

    /// The state of `worker_id`, created on first sight: a harness may reach us
    /// before `StartWorker` returns, or be started by someone else.
    pub(crate) fn worker(&self, worker_id: &str) -> Arc<WorkerState> {
        lock(&self.workers)
            .entry(worker_id.to_string())
            .or_insert_with(|| Arc::new(WorkerState::new(worker_id)))
            .clone()
    }

    /// A new incarnation of `worker_id`, unless one with a live control stream exists.
    pub(crate) fn fresh_worker(&self, worker_id: &str) -> Option<Arc<WorkerState>> {
        let mut workers = lock(&self.workers);
        if workers
            .get(worker_id)
            .is_some_and(|w| w.control_state().is_open())
        {
            return None;
        }
        let worker = Arc::new(WorkerState::new(worker_id));
        workers.insert(worker_id.to_string(), worker.clone());
        Some(worker)
    }

    /// This runner's address as an endpoint (every service is served on it).
    pub(crate) fn endpoint(&self) -> Option<ApiServiceDescriptor> {
        Some(ApiServiceDescriptor {
            url: self.url.clone(),
            authentication: None,
        })
    }

    /// A fresh instruction id, unique in the process (not just this runner),
    /// so that logs or data that reach the wrong runner cannot match by accident.
    pub(crate) fn next_id(&self, prefix: &str) -> String {
        static NEXT_INSTRUCTION: AtomicU64 = AtomicU64::new(1);
        format!(
            "{prefix}-{}",
            NEXT_INSTRUCTION.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Ends every control stream cleanly, as a runner does at job end.
    pub(crate) fn close_all_controls(&self) {
        let workers: Vec<_> = lock(&self.workers).values().cloned().collect();
        for worker in workers {
            worker.end_control(None);
        }
    }
}

impl StreamState {
    pub(crate) fn is_open(&self) -> bool {
        matches!(self, StreamState::Open(_))
    }
}

/// Bounded set of recently finished instruction ids.
#[derive(Default)]
struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Recent {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// Everything the runner knows about one worker id.
pub(crate) struct WorkerState {
    pub(crate) id: String,
    /// Sender of the open control stream's outbound requests; `None` when closed.
    control_tx: Mutex<Option<mpsc::Sender<Result<InstructionRequest, Status>>>>,
    pub(crate) control: watch::Sender<StreamState>,
    /// Callers waiting for the response to an instruction id.
    pending: Mutex<HashMap<String, oneshot::Sender<InstructionResponse>>>,
    /// Runner-to-worker data. Queued here until the worker's Data stream
    /// connects, as the Python runner does; payloads are `Bytes` shared with
    /// the caller, so a queued chunk costs a small struct, not a copy.
    data_tx: mpsc::UnboundedSender<Outbound>,
    /// The queue's receiving end while no Data stream holds it.
    pub(crate) data_rx: Mutex<Option<DataQueue>>,
    /// State of the Data stream that carries the queue.
    pub(crate) data: watch::Sender<StreamState>,
    /// Data streams this worker has opened, to catch one-stream-per-bundle harnesses.
    pub(crate) data_streams: AtomicUsize,
    /// Where worker-to-runner data for each running bundle goes.
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<Data>>>,
    /// Ids of instructions that are over, so late traffic for them is expected.
    recent: Mutex<Recent>,
    logs: Mutex<VecDeque<LogEntry>>,
    /// Total log entries received (also those dropped from `logs`).
    pub(crate) log_count: watch::Sender<usize>,
    /// Things a real runner would choke on, in arrival order.
    violations: Mutex<Vec<String>>,
    pub(crate) provision_calls: AtomicUsize,
    pub(crate) descriptor_fetches: AtomicUsize,
    /// Outbound messages that carried entries of more than one bundle.
    pub(crate) mixed_messages: AtomicUsize,
}

impl WorkerState {
    fn new(id: &str) -> Self {
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        WorkerState {
            id: id.to_string(),
            control_tx: Mutex::new(None),
            control: watch::Sender::new(StreamState::Waiting),
            pending: Mutex::default(),
            data_tx,
            data_rx: Mutex::new(Some(DataQueue {
                rx: data_rx,
                unsent: None,
            })),
            data: watch::Sender::new(StreamState::Waiting),
            data_streams: AtomicUsize::new(0),
            routes: Mutex::default(),
            recent: Mutex::default(),
            logs: Mutex::default(),
            log_count: watch::Sender::new(0),
            violations: Mutex::default(),
            provision_calls: AtomicUsize::new(0),
            descriptor_fetches: AtomicUsize::new(0),
            mixed_messages: AtomicUsize::new(0),
        }
    }

    pub(crate) fn control_state(&self) -> StreamState {
        *self.control.borrow()
    }

    /// Installs a newly connected control stream; `false` if one is already open
    /// (a harness must open exactly one).
    pub(crate) fn open_control(
        &self,
        tx: mpsc::Sender<Result<InstructionRequest, Status>>,
    ) -> bool {
        let mut slot = lock(&self.control_tx);
        if self.control_state().is_open() {
            return false;
        }
        *slot = Some(tx);
        self.control.send_replace(StreamState::Open(Instant::now()));
        true
    }

    /// Ends the control stream: with `status` as its trailer, or cleanly if
    /// `None`. Callers waiting for responses get `ControlClosed`.
    /// Returns whether a stream was open.
    pub(crate) fn end_control(&self, status: Option<Status>) -> bool {
        let tx = lock(&self.control_tx).take();
        let was_open = tx.is_some();
        if let (Some(tx), Some(status)) = (&tx, status) {
            // A full queue means the worker is not reading; ending cleanly is then as good.
            let _ = tx.try_send(Err(status));
        }
        drop(tx);
        if was_open {
            self.control.send_replace(StreamState::Closed);
        }
        lock(&self.pending).clear();
        was_open
    }

    pub(crate) fn control_sender(
        &self,
    ) -> Option<mpsc::Sender<Result<InstructionRequest, Status>>> {
        lock(&self.control_tx).clone()
    }

    /// Registers a caller for `instruction_id` (and, for bundles, an output
    /// route). `false` if the id is already in flight.
    pub(crate) fn register(
        &self,
        instruction_id: &str,
        response: oneshot::Sender<InstructionResponse>,
        outputs: Option<mpsc::UnboundedSender<Data>>,
    ) -> bool {
        let mut pending = lock(&self.pending);
        if pending.contains_key(instruction_id) {
            return false;
        }
        pending.insert(instruction_id.to_string(), response);
        if let Some(outputs) = outputs {
            lock(&self.routes).insert(instruction_id.to_string(), outputs);
        }
        true
    }

    /// Forgets an instruction (finished, failed, timed out or abandoned).
    pub(crate) fn unregister(&self, instruction_id: &str) {
        lock(&self.pending).remove(instruction_id);
        lock(&self.routes).remove(instruction_id);
        lock(&self.recent).insert(instruction_id.to_string());
    }

    /// Hands a response from the control stream to whoever waits for it.
    pub(crate) fn deliver_response(&self, response: InstructionResponse) {
        let waiter = lock(&self.pending).remove(&response.instruction_id);
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(response);
            }
            None if lock(&self.recent).set.contains(&response.instruction_id) => {
                tracing::debug!(worker_id = %self.id, instruction_id = %response.instruction_id,
                    "late response for an instruction the caller gave up on");
            }
            None => self.violation(format!(
                "response for unknown or already answered instruction '{}' (a Python runner's \
                 control reader dies on this)",
                response.instruction_id
            )),
        }
    }

    /// Routes worker-to-runner data to the bundles it belongs to.
    pub(crate) fn route_outputs(&self, elements: Elements) {
        if !elements.timers.is_empty() {
            self.violation(format!(
                "{} timers entries received; no descriptor here declares timers",
                elements.timers.len()
            ));
        }
        let mut unknown = Vec::new();
        {
            let routes = lock(&self.routes);
            for data in elements.data {
                match routes.get(&data.instruction_id) {
                    Some(route) => {
                        let _ = route.send(data);
                    }
                    None => unknown.push(data.instruction_id),
                }
            }
        }
        for id in unknown {
            if !lock(&self.recent).set.contains(&id) {
                self.violation(format!("data for unknown instruction '{id}'"));
            }
        }
    }

    /// Queues runner-to-worker data; returns a receiver fired when the last
    /// message has been handed to the Data stream.
    pub(crate) fn enqueue_data(&self, messages: Vec<Elements>) -> Option<oneshot::Receiver<()>> {
        let count = messages.len();
        let mut last_sent = None;
        for (i, elements) in messages.into_iter().enumerate() {
            let sent = if i + 1 == count {
                let (tx, rx) = oneshot::channel();
                last_sent = Some(rx);
                Some(tx)
            } else {
                None
            };
            // The receiver lives in this state (or in a forwarder that returns it), so this cannot fail.
            let _ = self.data_tx.send(Outbound { elements, sent });
        }
        last_sent
    }

    pub(crate) fn push_logs(&self, entries: Vec<LogEntry>) {
        let added = entries.len();
        {
            let mut logs = lock(&self.logs);
            logs.extend(entries);
            while logs.len() > LOG_CAPACITY {
                logs.pop_front();
            }
        }
        self.log_count.send_modify(|n| *n += added);
    }

    pub(crate) fn logs(&self) -> Vec<LogEntry> {
        lock(&self.logs).iter().cloned().collect()
    }

    pub(crate) fn violation(&self, what: String) {
        tracing::warn!(worker_id = %self.id, "protocol violation: {what}");
        lock(&self.violations).push(what);
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }
}
