//! What an operator is: the unit the bundle engine ([`crate::engine`]) runs
//! for one transform of a stage, and what it may do while running.
//!
//! Operators work a **chunk at a time**: a chunk is a run of whole elements,
//! all encoded with the coder of the edge (PCollection) they travel on. An
//! operator that leaves elements untouched forwards the chunk's `Bytes` (a
//! reference count, not a copy), which keeps the echo's pass-through the fast
//! path. Data flows one way: an operator emits to its output ports, and the
//! engine hands each emitted chunk to every consumer of that port.
//!
//! Work that produces output on its own schedule (a read from an outside system, a
//! splittable DoFn's restriction) runs as a *task* the operator spawns; the
//! task sends chunks through an [`Emitter`] and ends with a [`TaskOutcome`]
//! (residuals to hand back to the runner, callbacks to run when the runner
//! finalizes the bundle).

pub mod echo;
pub mod runner;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use beam_proto::fn_execution::DelayedBundleApplication;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::coders::{CoderError, ComponentCoder, ElementCoder, WireCoder};
use crate::config::HarnessConfig;
use crate::data::{DataChannels, DataError};
use crate::value_coder::{ValueCoder, WindowedCoder};

/// Whole elements in the coder of the edge they travel on.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub bytes: Bytes,
    pub elements: u64,
}

/// How the elements on one edge are encoded. `Wire` is the compact form the
/// hot path scans and forwards; `Full` covers every other standard coder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeCoder {
    Wire(WireCoder),
    Full(WindowedCoder),
}

impl EdgeCoder {
    /// The general form, for operators that decode whole values.
    pub fn full(&self) -> WindowedCoder {
        match self {
            EdgeCoder::Full(c) => c.clone(),
            EdgeCoder::Wire(w) => {
                let component = |c: ComponentCoder| match c {
                    ComponentCoder::Bytes => ValueCoder::Bytes,
                    ComponentCoder::NullableBytes => {
                        ValueCoder::Nullable(Box::new(ValueCoder::Bytes))
                    }
                };
                WindowedCoder {
                    framing: w.framing.clone(),
                    window: w.window,
                    value: match w.element {
                        ElementCoder::Kv { key, value } => {
                            ValueCoder::Kv(Box::new(component(key)), Box::new(component(value)))
                        }
                        ElementCoder::Bytes => ValueCoder::Bytes,
                    },
                }
            }
        }
    }

    /// The compact form, when the edge has one.
    pub fn wire(&self) -> Option<&WireCoder> {
        match self {
            EdgeCoder::Wire(w) => Some(w),
            EdgeCoder::Full(_) => None,
        }
    }

    /// True when both produce the same bytes for every element.
    pub fn same_encoding(&self, other: &EdgeCoder) -> bool {
        self == other || self.full() == other.full()
    }
}

impl std::fmt::Display for EdgeCoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeCoder::Wire(w) => write!(f, "{w}"),
            EdgeCoder::Full(c) => write!(f, "{c:?}"),
        }
    }
}

/// Why an operator failed; the bundle fails with this text, attributed to the
/// transform by the engine.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("element #{index} is malformed: {source}")]
    Element {
        /// Index within the operator's input during this bundle.
        index: u64,
        #[source]
        source: CoderError,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Failed(String),
}

impl OpError {
    pub fn failed(why: impl std::fmt::Display) -> Self {
        OpError::Failed(why.to_string())
    }
}

/// Runs once the runner has durably taken a bundle's output
/// (`FinalizeBundle`); a source committing what it read is such a callback.
pub type Finalizer =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send>;

/// What a finished task leaves for the bundle's response.
#[derive(Default)]
pub struct TaskOutcome {
    pub residuals: Vec<DelayedBundleApplication>,
    pub finalizers: Vec<Finalizer>,
}

/// A running task's way to send chunks into the graph, as if its operator
/// had emitted them on `port`.
#[derive(Clone)]
pub struct Emitter {
    node: usize,
    port: usize,
    tx: mpsc::Sender<(usize, usize, Chunk)>,
}

impl Emitter {
    /// Sends a chunk; `false` when the bundle is gone (nothing to deliver to).
    pub async fn send(&self, chunk: Chunk) -> bool {
        self.tx.send((self.node, self.port, chunk)).await.is_ok()
    }
}

pub type TaskFuture = Pin<Box<dyn Future<Output = Result<TaskOutcome, OpError>> + Send>>;

/// Worker-wide state operators share across bundles (clients of outside systems, cached
/// consumers), keyed by type so the harness need not know what it holds.
#[derive(Default)]
pub struct Shared {
    items: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Shared {
    /// The worker's one `T`, created on first use.
    pub fn get<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let item = items
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        match item.clone().downcast::<T>() {
            Ok(t) => t,
            // The map is keyed by the type's id, so the downcast cannot miss.
            Err(_) => unreachable!(
                "Shared holds a value of another type under {TypeId:?}",
                TypeId = TypeId::of::<T>()
            ),
        }
    }
}

/// What an operator is given when a bundle creates it.
pub struct Setup<'a> {
    pub instruction_id: &'a str,
    pub config: &'a HarnessConfig,
    pub channels: &'a DataChannels,
    pub shared: &'a Arc<Shared>,
}

/// What an operator may do while processing.
pub struct Context<'a> {
    pub(crate) node: usize,
    pub(crate) emitted: Vec<(usize, Chunk)>,
    pub(crate) tasks: &'a mut Vec<TaskFuture>,
    pub(crate) task_tx: &'a mpsc::Sender<(usize, usize, Chunk)>,
    pub(crate) outcome: &'a mut TaskOutcome,
    pub limits: BundleLimits,
}

/// The harness settings that shape how much an operator does at a time,
/// taken from the worker's [`HarnessConfig`] once per bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleLimits {
    /// Bytes of whole elements gathered before output is sent (at least 1).
    pub flush_bytes: usize,
    /// The runner's bundle size in elements, if it gave one
    /// ([`HarnessConfig::max_bundle_elements`]).
    pub max_bundle_elements: Option<u64>,
    /// [`HarnessConfig::process_window`].
    pub process_window: std::time::Duration,
}

impl From<&HarnessConfig> for BundleLimits {
    fn from(config: &HarnessConfig) -> Self {
        Self {
            flush_bytes: config.flush_bytes.max(1),
            max_bundle_elements: config.max_bundle_elements,
            process_window: config.process_window,
        }
    }
}

impl Context<'_> {
    /// Sends `chunk` to every consumer of output `port`.
    pub fn emit(&mut self, port: usize, chunk: Chunk) {
        if chunk.elements > 0 || !chunk.bytes.is_empty() {
            self.emitted.push((port, chunk));
        }
    }

    /// An emitter for a task of this operator.
    pub fn emitter(&self, port: usize) -> Emitter {
        Emitter {
            node: self.node,
            port,
            tx: self.task_tx.clone(),
        }
    }

    /// Runs `task` concurrently with the rest of the bundle, which ends only
    /// after it does.
    pub fn spawn(
        &mut self,
        task: impl Future<Output = Result<TaskOutcome, OpError>> + Send + 'static,
    ) {
        self.tasks.push(Box::pin(task));
    }

    /// Hands an element back to the runner to process later.
    pub fn residual(&mut self, residual: DelayedBundleApplication) {
        self.outcome.residuals.push(residual);
    }

    /// Runs `finalizer` once the runner finalizes this bundle.
    pub fn on_finalize(&mut self, finalizer: Finalizer) {
        self.outcome.finalizers.push(finalizer);
    }
}

/// One transform's work within one bundle.
#[async_trait]
pub trait Operator: Send {
    /// Takes a chunk that arrived on the operator's input.
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError>;

    /// The input is complete and every task of the bundle has ended: emit or
    /// send what is left. Called upstream first.
    async fn finish(&mut self, _cx: &mut Context<'_>) -> Result<(), OpError> {
        Ok(())
    }

    /// The time-based flush: pending output older than the flush interval goes out.
    async fn flush(&mut self) -> Result<(), OpError> {
        Ok(())
    }
}

/// Makes an operator per bundle; built once per descriptor by planning.
pub trait OperatorFactory: Send + Sync + std::fmt::Debug {
    fn create(&self, setup: &Setup<'_>) -> Result<Box<dyn Operator>, OpError>;

    /// What kind of transform this is, for the pool's metrics (`elements_total{transform=...}`).
    fn kind(&self) -> &'static str;

    /// For a runner data source: the data URL and transform id its input comes from.
    fn data_source(&self) -> Option<(&str, &str)> {
        None
    }
}

/// Chunks above this size are worked on the blocking pool, so a 100 MB chunk
/// does not stall the async threads that serve other bundles.
pub const BLOCKING_CHUNK_BYTES: usize = 4 << 20;

/// Runs `work` inline for small inputs and on the blocking pool for large ones.
pub async fn maybe_blocking<T: Send + 'static>(
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if len <= BLOCKING_CHUNK_BYTES {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => v,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}
