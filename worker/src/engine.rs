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
    BundleLimits, Chunk, Context, Finalizer, OpError, Operator, Setup, Shared, TaskFuture,
    TaskOutcome,
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
    let engine = Engine::new(instruction_id, graph, resources, config, progress)?;
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let _registration = register_inputs(instruction_id, &engine.graph, &resources.channels, tx)?;
    drive(engine, rx, config.flush_interval, embedded).await
}

/// Runs a bundle whose runner input arrives on `rx`, to its response.
async fn drive(
    mut engine: Engine<'_>,
    mut rx: mpsc::Receiver<Inbound>,
    flush_interval: Option<Duration>,
    embedded: Option<Elements>,
) -> Result<BundleOutcome, BundleError> {
    for data in embedded.into_iter().flat_map(|e| e.data) {
        engine.on_data(data).await?;
    }
    let mut ticker = flush_interval.map(interval);
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
    limits: BundleLimits,
    /// Elements emitted per node and output port.
    counts: Vec<Vec<u64>>,
    /// Elements and bytes taken in, and bytes emitted, per node (for the pool's metrics).
    taken: Vec<(u64, u64)>,
    emitted_bytes: Vec<u64>,
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
            taken: vec![(0, 0); graph.nodes.len()],
            emitted_bytes: vec![0; graph.nodes.len()],
            limits: BundleLimits::from(config),
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
    fn route(
        &mut self,
        node: usize,
        port: usize,
        chunk: Chunk,
        queue: &mut VecDeque<(usize, Chunk)>,
    ) {
        if let Some(c) = self.counts[node].get_mut(port) {
            *c += chunk.elements;
        }
        self.emitted_bytes[node] += chunk.bytes.len() as u64;
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
            let taken = &mut self.taken[node];
            taken.0 += chunk.elements;
            taken.1 += chunk.bytes.len() as u64;
            let emitted = self.call(node, Call::Process(chunk)).await?;
            for (port, chunk) in emitted {
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
            limits: self.limits,
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
        self.report_elements();
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

    /// Adds this bundle's elements and bytes, per transform kind, to the pool's metrics.
    fn report_elements(&self) {
        for (node, (into, out_of)) in self.graph.element_counters().iter().enumerate() {
            let (elements, bytes) = self.taken[node];
            if elements > 0 || bytes > 0 {
                into.add(elements, bytes);
            }
            let out: u64 = self.counts[node].iter().sum();
            if out > 0 || self.emitted_bytes[node] > 0 {
                out_of.add(out, self.emitted_bytes[node]);
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::graph::{Node, OutputPort};
    use crate::ops::{EdgeCoder, OperatorFactory};

    /// What the test operators saw, in order.
    #[derive(Default, Debug)]
    struct Seen {
        events: Mutex<Vec<String>>,
        chunks: Mutex<Vec<Bytes>>,
        flushes: Mutex<u32>,
    }

    impl Seen {
        fn log(&self, e: impl Into<String>) {
            self.events.lock().unwrap().push(e.into());
        }
        fn events(&self) -> Vec<String> {
            self.events.lock().unwrap().clone()
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        /// A runner source: forwards what arrives.
        Source,
        /// Records chunks; finishing logs.
        Collect,
        /// Spawns a task per chunk that emits three chunks with a pause,
        /// then returns a residual and a finalizer.
        Spawner,
        /// Emits one chunk when finishing.
        EmitOnFinish,
        /// Fails on its first chunk.
        Fail,
    }

    #[derive(Debug)]
    struct TestFactory {
        name: &'static str,
        kind: Kind,
        seen: Arc<Seen>,
    }

    impl OperatorFactory for TestFactory {
        fn kind(&self) -> &'static str {
            "test"
        }

        fn create(&self, _: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
            Ok(Box::new(TestOp {
                name: self.name,
                kind: self.kind,
                seen: self.seen.clone(),
            }))
        }

        fn data_source(&self) -> Option<(&str, &str)> {
            matches!(self.kind, Kind::Source).then_some(("unused", self.name))
        }
    }

    struct TestOp {
        name: &'static str,
        kind: Kind,
        seen: Arc<Seen>,
    }

    #[async_trait]
    impl Operator for TestOp {
        async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
            match self.kind {
                Kind::Source => cx.emit(
                    0,
                    Chunk {
                        elements: input.bytes.len() as u64,
                        ..input
                    },
                ),
                Kind::Collect | Kind::EmitOnFinish => {
                    self.seen
                        .log(format!("{} got {:?}", self.name, input.bytes));
                    self.seen.chunks.lock().unwrap().push(input.bytes);
                }
                Kind::Spawner => {
                    let out = cx.emitter(0);
                    cx.spawn(async move {
                        for part in [&b"t1"[..], b"t2", b"t3"] {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            out.send(Chunk {
                                bytes: Bytes::from_static(part),
                                elements: 1,
                            })
                            .await;
                        }
                        let finalized: Finalizer = Box::new(|| Box::pin(async { Ok(()) }));
                        Ok(TaskOutcome {
                            residuals: vec![Default::default()],
                            finalizers: vec![finalized],
                        })
                    });
                }
                Kind::Fail => return Err(OpError::failed("refused")),
            }
            Ok(())
        }

        async fn finish(&mut self, cx: &mut Context<'_>) -> Result<(), OpError> {
            self.seen.log(format!("{} finish", self.name));
            if let Kind::EmitOnFinish = self.kind {
                cx.emit(
                    0,
                    Chunk {
                        bytes: Bytes::from_static(b"last"),
                        elements: 1,
                    },
                );
            }
            Ok(())
        }

        async fn flush(&mut self) -> Result<(), OpError> {
            *self.seen.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn wire() -> EdgeCoder {
        EdgeCoder::Wire(crate::coders::WireCoder {
            framing: crate::coders::Framing::Windowed,
            window: crate::coders::WindowCoder::Global,
            element: crate::coders::ElementCoder::Bytes,
        })
    }

    /// Nodes in order, each (name, kind, consumers of its one output).
    fn graph(seen: &Arc<Seen>, nodes: &[(&'static str, Kind, &[usize])]) -> Arc<StageGraph> {
        Arc::new(StageGraph {
            descriptor_id: "d".into(),
            nodes: nodes
                .iter()
                .map(|(name, kind, consumers)| Node {
                    transform_id: name.to_string(),
                    factory: Arc::new(TestFactory {
                        name,
                        kind: *kind,
                        seen: seen.clone(),
                    }),
                    outputs: vec![OutputPort {
                        pcollection: format!("{name}.out"),
                        coder: wire(),
                        consumers: consumers.to_vec(),
                    }],
                })
                .collect(),
            element_counters: Default::default(),
        })
    }

    fn data(transform: &str, bytes: &'static [u8], is_last: bool) -> Inbound {
        Inbound::Data(elements::Data {
            instruction_id: "i".into(),
            transform_id: transform.into(),
            data: Bytes::from_static(bytes),
            is_last,
        })
    }

    async fn run_graph(
        graph: Arc<StageGraph>,
        input: Vec<Inbound>,
        flush_interval: Option<Duration>,
    ) -> Result<BundleOutcome, BundleError> {
        let config = HarnessConfig::default();
        let resources = WorkerResources {
            channels: DataChannels::new("w", &config, CancellationToken::new()),
            shared: Arc::new(Shared::default()),
        };
        let progress = Progress::default();
        let engine = Engine::new("i", graph, &resources, &config, &progress)?;
        let (tx, rx) = mpsc::channel(16);
        for item in input {
            tx.send(item).await.unwrap();
        }
        drive(engine, rx, flush_interval, None).await
    }

    fn count_of(outcome: &BundleOutcome, pcollection: &str) -> Option<Vec<u8>> {
        outcome
            .response
            .monitoring_infos
            .iter()
            .find(|m| m.labels.get("PCOLLECTION").map(String::as_str) == Some(pcollection))
            .map(|m| m.payload.to_vec())
    }

    #[tokio::test]
    async fn fan_out_hands_every_consumer_the_same_bytes() {
        let seen = Arc::new(Seen::default());
        let g = graph(
            &seen,
            &[
                ("src", Kind::Source, &[1, 2]),
                ("a", Kind::Collect, &[]),
                ("b", Kind::Collect, &[]),
            ],
        );
        let outcome = run_graph(
            g,
            vec![data("src", b"abc", false), data("src", b"", true)],
            None,
        )
        .await
        .unwrap();
        let chunks = seen.chunks.lock().unwrap().clone();
        assert_eq!(chunks.len(), 2);
        // Zero-copy: both consumers hold the same buffer.
        assert_eq!(chunks[0].as_ptr(), chunks[1].as_ptr());
        assert_eq!(
            seen.events(),
            [
                "a got b\"abc\"",
                "b got b\"abc\"",
                "src finish",
                "a finish",
                "b finish"
            ]
        );
        assert_eq!(count_of(&outcome, "src.out"), Some(vec![3]));
        assert!(outcome.response.residual_roots.is_empty());
        assert!(!outcome.response.requires_finalization);
    }

    #[tokio::test]
    async fn tasks_output_residuals_and_finalizers_reach_the_response() {
        let seen = Arc::new(Seen::default());
        let g = graph(
            &seen,
            &[
                ("src", Kind::Source, &[1]),
                ("spawn", Kind::Spawner, &[2]),
                ("sink", Kind::Collect, &[]),
            ],
        );
        // The input ends at once; the bundle still waits for the task.
        let outcome = run_graph(g, vec![data("src", b"x", true)], None)
            .await
            .unwrap();
        assert_eq!(
            seen.events(),
            [
                "sink got b\"t1\"",
                "sink got b\"t2\"",
                "sink got b\"t3\"",
                "src finish",
                "spawn finish",
                "sink finish"
            ]
        );
        assert_eq!(outcome.response.residual_roots.len(), 1);
        assert!(outcome.response.requires_finalization);
        assert_eq!(outcome.finalizers.len(), 1);
        assert_eq!(count_of(&outcome, "spawn.out"), Some(vec![3]));
    }

    #[tokio::test]
    async fn what_a_finish_emits_reaches_downstream_before_it_finishes() {
        let seen = Arc::new(Seen::default());
        let g = graph(
            &seen,
            &[
                ("src", Kind::Source, &[1]),
                ("up", Kind::EmitOnFinish, &[2]),
                ("down", Kind::Collect, &[]),
            ],
        );
        run_graph(g, vec![data("src", b"", true)], None)
            .await
            .unwrap();
        assert_eq!(
            seen.events(),
            [
                "src finish",
                "up finish",
                "down got b\"last\"",
                "down finish"
            ]
        );
    }

    #[tokio::test]
    async fn the_time_based_flush_runs_while_tasks_produce() {
        let seen = Arc::new(Seen::default());
        let g = graph(
            &seen,
            &[
                ("src", Kind::Source, &[1]),
                ("spawn", Kind::Spawner, &[2]),
                ("sink", Kind::Collect, &[]),
            ],
        );
        run_graph(
            g,
            vec![data("src", b"x", true)],
            Some(Duration::from_millis(5)),
        )
        .await
        .unwrap();
        // The task takes about 60 ms; every operator is flushed on each tick.
        assert!(*seen.flushes.lock().unwrap() >= 3, "{:?}", seen.flushes);

        let seen = Arc::new(Seen::default());
        let g = graph(
            &seen,
            &[("src", Kind::Source, &[1]), ("spawn", Kind::Spawner, &[])],
        );
        run_graph(g, vec![data("src", b"x", true)], None)
            .await
            .unwrap();
        assert_eq!(
            *seen.flushes.lock().unwrap(),
            0,
            "no interval, no timed flush"
        );
    }

    #[tokio::test]
    async fn an_operator_failure_names_its_transform() {
        let seen = Arc::new(Seen::default());
        let g = graph(
            &seen,
            &[("src", Kind::Source, &[1]), ("bad", Kind::Fail, &[])],
        );
        let e = run_graph(g, vec![data("src", b"x", true)], None)
            .await
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "transform 'bad': refused");
    }

    #[tokio::test]
    async fn data_for_an_unknown_port_or_after_is_last_fails_the_bundle() {
        let seen = Arc::new(Seen::default());
        let nodes: &[(&'static str, Kind, &[usize])] = &[("src", Kind::Source, &[])];
        let e = run_graph(graph(&seen, nodes), vec![data("other", b"x", true)], None)
            .await
            .err()
            .unwrap();
        assert!(matches!(&e, BundleError::UnknownTransform(t) if t == "other"));
        let two = vec![data("src", b"", true), data("src", b"x", false)];
        let g = graph(
            &seen,
            &[("src", Kind::Source, &[]), ("src2", Kind::Source, &[])],
        );
        let e = run_graph(g, two, None).await.err().unwrap();
        assert!(
            matches!(&e, BundleError::DataAfterLast(t) if t == "src"),
            "{e}"
        );
    }
}
