//! Runs one `ProcessBundle` over a [`StageGraph`]: creates the bundle's
//! operators, feeds them the runner's input and their tasks' output a chunk at
//! a time, and once the input is complete and every task has ended, finishes
//! them upstream first (sinks send `is_last` and wait for the transport)
//! before the response is built.
//!
//! The engine knows instructions, chunks and operators, not transforms: what
//! a transform does, including which residuals it hands back and what must
//! happen on finalization, is its operator's business.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use beam_proto::fn_execution::{Elements, ProcessBundleResponse, elements};
use beam_proto::pipeline::MonitoringInfo;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tracing::{Instrument, debug};

use crate::config::HarnessConfig;
use crate::data::{DataChannels, DataError, Inbound};
use crate::graph::StageGraph;
use crate::metrics;
use crate::ops::{
    Chunk, Context, Finalizer, OpError, Operator, Setup, Shared, TaskFuture, TaskOutcome,
};

/// Input chunks queued per bundle before the channel's reader waits.
const INBOUND_QUEUE: usize = 16;
/// Chunks running tasks may have queued before they wait for the bundle.
const TASK_QUEUE: usize = 8;

/// Why a bundle failed; the text goes to the runner in `InstructionResponse.error`.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("the runner sent data for transform '{0}', which is not a data source of this stage")]
    UnknownTransform(String),
    #[error("the runner sent data for '{0}' after its is_last")]
    DataAfterLast(String),
    #[error(
        "the runner sent timers (family '{family}') for '{transform_id}'; this worker runs no timers"
    )]
    Timers {
        transform_id: String,
        family: String,
    },
    #[error("data stream ended before the bundle's input was complete")]
    InputClosed,
    #[error("transform '{transform_id}': {source}")]
    Operator {
        transform_id: String,
        #[source]
        source: OpError,
    },
}

/// The per-worker resources bundles share.
pub struct WorkerResources {
    pub channels: DataChannels,
    pub shared: Arc<Shared>,
}

/// A finished bundle: its response (with residuals), and what to run when the
/// runner finalizes it (the response then asks for finalization).
pub struct BundleOutcome {
    pub response: ProcessBundleResponse,
    pub finalizers: Vec<Finalizer>,
}

/// What a running bundle shows to progress requests: elements taken from each
/// runner source so far.
#[derive(Debug, Default)]
pub struct Progress {
    sources: std::sync::Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl Progress {
    pub fn monitoring_infos(&self) -> Vec<MonitoringInfo> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .iter()
            .map(|(id, n)| metrics::read_index(id, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Runs `graph` for `instruction_id`; `embedded` is input carried in the request itself.
pub async fn run(
    instruction_id: &str,
    graph: Arc<StageGraph>,
    resources: &WorkerResources,
    config: &HarnessConfig,
    embedded: Option<Elements>,
    progress: &Progress,
) -> Result<BundleOutcome, BundleError> {
    let mut engine = Engine::new(instruction_id, graph, resources, config, progress)?;
    let (tx, mut rx) = mpsc::channel(INBOUND_QUEUE);
    let _registration = register_inputs(instruction_id, &engine.graph, &resources.channels, tx)?;
    for data in embedded.into_iter().flat_map(|e| e.data) {
        engine.on_data(data).await?;
    }
    let mut ticker = config.flush_interval.map(interval);
    let mut task_rx = engine.task_rx.take().ok_or(BundleError::InputClosed)?;
    while !engine.input_complete() || !engine.tasks.is_empty() {
        tokio::select! {
            item = rx.recv(), if !engine.input_complete() => match item.ok_or(BundleError::InputClosed)? {
                Inbound::Data(data) => engine.on_data(data).await?,
                Inbound::Timers { transform_id, family } => {
                    return Err(BundleError::Timers { transform_id, family })
                }
                Inbound::Failed(e) => return Err(e.into()),
            },
            Some((node, port, chunk)) = task_rx.recv() => engine.emit_from(node, port, chunk).await?,
            Some(done) = engine.tasks.join_next(), if !engine.tasks.is_empty() => {
                let (node, result) = done.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
                engine.on_task_done(node, result)?;
            }
            _ = tick(&mut ticker) => engine.flush_all().await?,
        }
    }
    // Every task has ended, so whatever they sent is already queued.
    while let Ok((node, port, chunk)) = task_rx.try_recv() {
        engine.emit_from(node, port, chunk).await?;
    }
    engine.finish().await
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Unregisters the bundle from its input channels however it ends.
struct Registration {
    instruction_id: String,
    channels: Vec<Arc<crate::data::DataChannel>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        for c in &self.channels {
            c.finish(&self.instruction_id);
        }
    }
}

fn register_inputs(
    instruction_id: &str,
    graph: &StageGraph,
    channels: &DataChannels,
    tx: mpsc::Sender<Inbound>,
) -> Result<Registration, BundleError> {
    let mut registration = Registration {
        instruction_id: instruction_id.to_owned(),
        channels: Vec::new(),
    };
    for url in graph.input_urls() {
        let channel = channels.get(url)?;
        channel.register(instruction_id, tx.clone())?;
        registration.channels.push(channel);
    }
    Ok(registration)
}

struct Engine<'a> {
    instruction_id: &'a str,
    graph: Arc<StageGraph>,
    ops: Vec<Box<dyn Operator>>,
    flush_bytes: usize,
    /// Elements emitted per node and output port.
    counts: Vec<Vec<u64>>,
    /// Runner source transform id → (node, still open).
    sources: HashMap<String, (usize, bool)>,
    source_counts: HashMap<usize, Arc<AtomicU64>>,
    tasks: JoinSet<(usize, Result<TaskOutcome, OpError>)>,
    task_tx: mpsc::Sender<(usize, usize, Chunk)>,
    task_rx: Option<mpsc::Receiver<(usize, usize, Chunk)>>,
    /// Residuals and finalizers gathered from operators and their tasks.
    outcome: TaskOutcome,
}

impl<'a> Engine<'a> {
    fn new(
        instruction_id: &'a str,
        graph: Arc<StageGraph>,
        resources: &WorkerResources,
        config: &HarnessConfig,
        progress: &Progress,
    ) -> Result<Self, BundleError> {
        let setup = Setup {
            instruction_id,
            config,
            channels: &resources.channels,
            shared: &resources.shared,
        };
        let ops = graph
            .nodes
            .iter()
            .map(|n| {
                n.factory
                    .create(&setup)
                    .map_err(|source| BundleError::Operator {
                        transform_id: n.transform_id.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut sources = HashMap::new();
        let mut source_counts = HashMap::new();
        let mut shown = Vec::new();
        for (_, id, node) in graph.sources() {
            sources.insert(id.to_owned(), (node, true));
            let count = Arc::new(AtomicU64::new(0));
            shown.push((id.to_owned(), count.clone()));
            source_counts.insert(node, count);
        }
        *progress.sources.lock().unwrap_or_else(|p| p.into_inner()) = shown;
        let (task_tx, task_rx) = mpsc::channel(TASK_QUEUE);
        Ok(Self {
            instruction_id,
            counts: graph
                .nodes
                .iter()
                .map(|n| vec![0; n.outputs.len()])
                .collect(),
            flush_bytes: config.flush_bytes.max(1),
            ops,
            graph,
            sources,
            source_counts,
            tasks: JoinSet::new(),
            task_tx,
            task_rx: Some(task_rx),
            outcome: TaskOutcome::default(),
        })
    }

    fn input_complete(&self) -> bool {
        self.sources.values().all(|(_, open)| !open)
    }

    async fn on_data(&mut self, data: elements::Data) -> Result<(), BundleError> {
        let Some(&(node, open)) = self.sources.get(&data.transform_id) else {
            return Err(BundleError::UnknownTransform(data.transform_id));
        };
        if !open {
            return Err(BundleError::DataAfterLast(data.transform_id));
        }
        if !data.data.is_empty() {
            let chunk = Chunk {
                bytes: data.data,
                elements: 0,
            };
            self.deliver(VecDeque::from([(node, chunk)])).await?;
        }
        if data.is_last {
            self.sources.insert(data.transform_id, (node, false));
        }
        Ok(())
    }

    /// A task of `node` sent a chunk on `port`.
    async fn emit_from(
        &mut self,
        node: usize,
        port: usize,
        chunk: Chunk,
    ) -> Result<(), BundleError> {
        let mut queue = VecDeque::new();
        self.route(node, port, chunk, &mut queue);
        self.deliver(queue).await
    }

    /// Counts a chunk on its edge and queues it for every consumer.
    fn route(&self, node: usize, port: usize, chunk: Chunk, queue: &mut VecDeque<(usize, Chunk)>) {
        if let Some(count) = self.source_counts.get(&node) {
            count.fetch_add(chunk.elements, Ordering::Relaxed);
        }
        let Some(out) = self.graph.nodes[node].outputs.get(port) else {
            return;
        };
        for &consumer in &out.consumers {
            queue.push_back((consumer, chunk.clone()));
        }
    }

    /// Runs queued chunks through their operators until nothing is left
    /// (breadth-first; every edge keeps its order).
    async fn deliver(&mut self, mut queue: VecDeque<(usize, Chunk)>) -> Result<(), BundleError> {
        while let Some((node, chunk)) = queue.pop_front() {
            let emitted = self.call(node, Call::Process(chunk)).await?;
            for (port, chunk) in emitted {
                self.counts[node][port] += chunk.elements;
                self.route(node, port, chunk, &mut queue);
            }
        }
        Ok(())
    }

    /// Calls one operator with a context; returns what it emitted and spawns its tasks.
    async fn call(&mut self, node: usize, call: Call) -> Result<Vec<(usize, Chunk)>, BundleError> {
        let mut spawned: Vec<TaskFuture> = Vec::new();
        let mut cx = Context {
            node,
            emitted: Vec::new(),
            tasks: &mut spawned,
            task_tx: &self.task_tx,
            outcome: &mut self.outcome,
            flush_bytes: self.flush_bytes,
        };
        let op = &mut self.ops[node];
        let result = match call {
            Call::Process(chunk) => op.process(chunk, &mut cx).await,
            Call::Finish => op.finish(&mut cx).await,
        };
        let emitted = std::mem::take(&mut cx.emitted);
        result.map_err(|source| self.op_error(node, source))?;
        for task in spawned {
            self.tasks
                .spawn(async move { (node, task.await) }.in_current_span());
        }
        Ok(emitted)
    }

    fn op_error(&self, node: usize, source: OpError) -> BundleError {
        BundleError::Operator {
            transform_id: self.graph.nodes[node].transform_id.clone(),
            source,
        }
    }

    fn on_task_done(
        &mut self,
        node: usize,
        result: Result<TaskOutcome, OpError>,
    ) -> Result<(), BundleError> {
        let outcome = result.map_err(|e| self.op_error(node, e))?;
        self.outcome.residuals.extend(outcome.residuals);
        self.outcome.finalizers.extend(outcome.finalizers);
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), BundleError> {
        for node in 0..self.ops.len() {
            self.ops[node]
                .flush()
                .await
                .map_err(|e| self.op_error(node, e))?;
        }
        Ok(())
    }

    /// Finishes operators upstream first, so what a finish emits still
    /// reaches the operators after it before they finish.
    async fn finish(mut self) -> Result<BundleOutcome, BundleError> {
        for node in 0..self.ops.len() {
            let emitted = self.call(node, Call::Finish).await?;
            let mut queue = VecDeque::new();
            for (port, chunk) in emitted {
                self.counts[node][port] += chunk.elements;
                self.route(node, port, chunk, &mut queue);
            }
            self.deliver(queue).await?;
        }
        if !self.tasks.is_empty() {
            return Err(BundleError::Operator {
                transform_id: String::new(),
                source: OpError::failed("an operator started work while finishing"),
            });
        }
        debug!(instruction = self.instruction_id, counts = ?self.counts, "bundle finished");
        let TaskOutcome {
            residuals,
            finalizers,
        } = std::mem::take(&mut self.outcome);
        Ok(BundleOutcome {
            response: ProcessBundleResponse {
                residual_roots: residuals,
                monitoring_infos: self.monitoring_infos(),
                requires_finalization: !finalizers.is_empty(),
                ..Default::default()
            },
            finalizers,
        })
    }

    fn monitoring_infos(&self) -> Vec<MonitoringInfo> {
        let mut infos = Vec::new();
        let mut ids: Vec<(&String, &(usize, bool))> = self.sources.iter().collect();
        ids.sort();
        for (id, (node, _)) in ids {
            infos.push(metrics::read_index(id, self.counts[*node].iter().sum()));
        }
        let mut per_pcollection: Vec<(&str, u64)> = Vec::new();
        for (node, counts) in self.graph.nodes.iter().zip(&self.counts) {
            for (port, count) in node.outputs.iter().zip(counts) {
                per_pcollection.push((&port.pcollection, *count));
            }
        }
        per_pcollection.sort_unstable();
        infos.extend(
            per_pcollection
                .into_iter()
                .map(|(p, c)| metrics::element_count(p, c)),
        );
        infos
    }
}

enum Call {
    Process(Chunk),
    Finish,
}
