//! Runs one `ProcessBundle`: reads the stage's inputs from the data channels,
//! pushes them through the plan, batches output on whole-element boundaries, and
//! ends every sink with `is_last` before the response is sent.

use std::collections::HashMap;
use std::sync::Arc;

use beam_proto::fn_execution::{Elements, ProcessBundleResponse, elements};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_stream::StreamExt;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug};

use crate::coders::CoderError;
use crate::config::HarnessConfig;
use crate::data::{DataChannel, DataChannels, DataError, Inbound};
use crate::kafka::{self, KafkaError, PendingCommit, Producers, ReadOutcome, Writer};
use crate::metrics;
use crate::plan::{Route, StagePlan, Stream};
use crate::transforms::{self, ElementError, Pieces};

/// Input chunks queued per bundle before the channel's reader waits.
const INBOUND_QUEUE: usize = 16;
/// Chunks a Kafka read may have ready before it waits for the bundle.
const READ_QUEUE: usize = 4;
/// Chunks above this size are processed on the blocking pool so a 100 MB chunk
/// does not stall the async workers that serve other bundles.
const BLOCKING_CHUNK_BYTES: usize = 4 << 20;

/// Why a bundle failed; the text goes to the runner in `InstructionResponse.error`.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("input '{transform_id}': element #{index} of the bundle is malformed: {source}")]
    Element {
        transform_id: String,
        index: u64,
        #[source]
        source: CoderError,
    },
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
    Kafka {
        transform_id: String,
        #[source]
        source: KafkaError,
    },
}

/// The per-worker resources bundles share.
pub struct WorkerResources {
    pub channels: DataChannels,
    pub producers: Producers,
}

/// A finished bundle: its response, and offsets to commit once the runner
/// finalizes it (the response then asks for finalization).
pub struct BundleOutcome {
    pub response: ProcessBundleResponse,
    pub commits: Vec<PendingCommit>,
}

/// Where a chunk entered the stage.
#[derive(Debug, Clone, Copy)]
enum StreamId {
    Input(usize),
    Read(usize),
}

impl StagePlan {
    fn stream(&self, id: StreamId) -> &Stream {
        match id {
            StreamId::Input(i) => &self.inputs[i].stream,
            StreamId::Read(r) => &self.reads[r].stream,
        }
    }
}

/// Runs `plan` for `instruction_id`; `embedded` is input carried in the request itself.
pub async fn run(
    instruction_id: &str,
    plan: Arc<StagePlan>,
    resources: &WorkerResources,
    config: &HarnessConfig,
    embedded: Option<Elements>,
) -> Result<BundleOutcome, BundleError> {
    let channels = &resources.channels;
    let mut bundle = Bundle::new(instruction_id, plan.clone(), resources, config)?;
    let (tx, mut rx) = mpsc::channel(INBOUND_QUEUE);
    let _registration = bundle.register_inputs(channels, tx)?;

    for data in embedded.into_iter().flat_map(|e| e.data) {
        bundle.on_data(data).await?;
    }
    let mut ticker = config.flush_interval.map(|period| {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    while !bundle.input_complete() || !bundle.reads_done() {
        tokio::select! {
            item = rx.recv(), if !bundle.input_complete() => match item.ok_or(BundleError::InputClosed)? {
                Inbound::Data(data) => bundle.on_data(data).await?,
                Inbound::Timers { transform_id, family } => {
                    return Err(BundleError::Timers { transform_id, family })
                }
                Inbound::Failed(e) => return Err(e.into()),
            },
            // `None` (the last read's chunks are drained) must end this select too,
            // so the loop re-checks whether the bundle is complete.
            item = bundle.read_chunks.next(), if !bundle.read_chunks.is_empty() => {
                if let Some((task, chunk)) = item {
                    let read = bundle.read_of_task[task];
                    bundle.on_chunk(StreamId::Read(read), chunk).await?;
                }
            }
            Some(done) = bundle.reads.join_next(), if !bundle.reads.is_empty() => {
                let (read, result) = done.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
                bundle.on_read_done(read, result)?;
            }
            _ = tick(&mut ticker) => bundle.flush_all().await?,
        }
    }
    bundle.finish().await
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
    channels: Vec<Arc<DataChannel>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        for c in &self.channels {
            c.finish(&self.instruction_id);
        }
    }
}

/// Output waiting to be sent on one data channel: several `Data` entries per
/// message, so small chunks are batched without being copied together.
struct Outbox {
    channel: Arc<DataChannel>,
    entries: Vec<elements::Data>,
    bytes: usize,
}

struct Bundle<'a> {
    instruction_id: &'a str,
    plan: Arc<StagePlan>,
    flush_bytes: usize,
    /// Elements read so far, per runner input.
    counts: Vec<u64>,
    /// Records read so far, per Kafka read.
    read_counts: Vec<u64>,
    /// Runner inputs still waiting for `is_last`.
    open: Vec<bool>,
    input_by_transform: HashMap<String, usize>,
    /// One outbox per sink data URL; `sink_outbox[i]` indexes it for sink i.
    outboxes: Vec<Outbox>,
    sink_outbox: Vec<usize>,
    producers: &'a Producers,
    /// Kafka writers, opened on their first element.
    writers: Vec<Option<Writer>>,
    /// Running Kafka reads, each reporting its read index when done.
    reads: JoinSet<(usize, Result<ReadOutcome, KafkaError>)>,
    /// Chunks the running reads produced, keyed by read task.
    read_chunks: StreamMap<usize, ReceiverStream<Bytes>>,
    /// Which read each task runs.
    read_of_task: Vec<usize>,
    commits: Vec<PendingCommit>,
}

impl<'a> Bundle<'a> {
    fn new(
        instruction_id: &'a str,
        plan: Arc<StagePlan>,
        resources: &'a WorkerResources,
        config: &HarnessConfig,
    ) -> Result<Self, BundleError> {
        let mut outboxes: Vec<Outbox> = Vec::new();
        let mut sink_outbox = Vec::with_capacity(plan.sinks.len());
        for sink in &plan.sinks {
            let index = match outboxes
                .iter()
                .position(|o| o.channel.url() == sink.data_url)
            {
                Some(i) => i,
                None => {
                    outboxes.push(Outbox {
                        channel: resources.channels.get(&sink.data_url)?,
                        entries: Vec::new(),
                        bytes: 0,
                    });
                    outboxes.len() - 1
                }
            };
            sink_outbox.push(index);
        }
        Ok(Self {
            instruction_id,
            counts: vec![0; plan.inputs.len()],
            read_counts: vec![0; plan.reads.len()],
            open: vec![true; plan.inputs.len()],
            input_by_transform: plan
                .inputs
                .iter()
                .enumerate()
                .map(|(i, input)| (input.port.transform_id.clone(), i))
                .collect(),
            flush_bytes: config.flush_bytes.max(1),
            outboxes,
            sink_outbox,
            producers: &resources.producers,
            writers: plan.writes.iter().map(|_| None).collect(),
            reads: JoinSet::new(),
            read_chunks: StreamMap::new(),
            read_of_task: Vec::new(),
            commits: Vec::new(),
            plan,
        })
    }

    fn register_inputs(
        &self,
        channels: &DataChannels,
        tx: mpsc::Sender<Inbound>,
    ) -> Result<Registration, BundleError> {
        let mut registration = Registration {
            instruction_id: self.instruction_id.to_owned(),
            channels: Vec::new(),
        };
        for url in self.plan.input_urls() {
            let channel = channels.get(url)?;
            channel.register(self.instruction_id, tx.clone())?;
            registration.channels.push(channel);
        }
        Ok(registration)
    }

    fn input_complete(&self) -> bool {
        !self.open.contains(&true)
    }

    fn reads_done(&self) -> bool {
        self.reads.is_empty() && self.read_chunks.is_empty()
    }

    async fn on_data(&mut self, data: elements::Data) -> Result<(), BundleError> {
        let input = *self
            .input_by_transform
            .get(&data.transform_id)
            .ok_or_else(|| BundleError::UnknownTransform(data.transform_id.clone()))?;
        if !self.open[input] {
            return Err(BundleError::DataAfterLast(data.transform_id));
        }
        if !data.data.is_empty() {
            self.on_chunk(StreamId::Input(input), data.data).await?;
        }
        if data.is_last {
            self.open[input] = false;
        }
        Ok(())
    }

    /// Runs one chunk of a stream to everywhere it goes.
    async fn on_chunk(&mut self, id: StreamId, chunk: Bytes) -> Result<(), BundleError> {
        let plan = self.plan.clone();
        let max_piece = self.flush_bytes;
        let result = if chunk.len() > BLOCKING_CHUNK_BYTES {
            let (plan, work) = (plan.clone(), chunk.clone());
            tokio::task::spawn_blocking(move || run_chunk(plan.stream(id), &plan, &work, max_piece))
                .await
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
        } else {
            run_chunk(plan.stream(id), &plan, &chunk, max_piece)
        };
        let (elements, outputs) = result.map_err(|e| self.element_error(id, e))?;
        match id {
            StreamId::Input(i) => self.counts[i] += elements,
            StreamId::Read(r) => self.read_counts[r] += elements,
        }
        for (sink, pieces) in outputs {
            self.push(sink, pieces).await?;
        }
        let stream = plan.stream(id);
        for route in &stream.routes {
            match *route {
                Route::Sink { .. } => {}
                Route::Write(w) => self.write(w, &stream.wire, &chunk).await?,
                Route::Read(r) => {
                    for _ in 0..elements {
                        self.start_read(r);
                    }
                }
            }
        }
        Ok(())
    }

    fn element_error(&self, id: StreamId, e: ElementError) -> BundleError {
        let (transform_id, before) = match id {
            StreamId::Input(i) => (&self.plan.inputs[i].port.transform_id, self.counts[i]),
            StreamId::Read(r) => (&self.plan.reads[r].transform_id, self.read_counts[r]),
        };
        BundleError::Element {
            transform_id: transform_id.clone(),
            index: before + e.index,
            source: e.source,
        }
    }

    async fn write(
        &mut self,
        w: usize,
        wire: &crate::coders::WireCoder,
        chunk: &[u8],
    ) -> Result<(), BundleError> {
        let plan = &self.plan.writes[w];
        let kafka_error = kafka_error(&plan.transform_id);
        if self.writers[w].is_none() {
            let producer = self
                .producers
                .get(&plan.config)
                .await
                .map_err(&kafka_error)?;
            self.writers[w] = Some(Writer::new(producer, &plan.config.topic));
        }
        if let Some(writer) = self.writers[w].as_mut() {
            writer.write_chunk(wire, chunk).await.map_err(kafka_error)?;
        }
        Ok(())
    }

    /// Starts read `r` in its own task; its records come back as chunks.
    fn start_read(&mut self, r: usize) {
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        let task = self.read_of_task.len();
        self.read_of_task.push(r);
        self.read_chunks.insert(task, ReceiverStream::new(rx));
        let plan = self.plan.clone();
        let chunk_bytes = self.flush_bytes;
        self.reads.spawn(
            async move {
                let read = &plan.reads[r];
                (
                    r,
                    kafka::read(&read.config, &read.stream.wire, &tx, chunk_bytes).await,
                )
            }
            .in_current_span(),
        );
    }

    fn on_read_done(
        &mut self,
        r: usize,
        result: Result<ReadOutcome, KafkaError>,
    ) -> Result<(), BundleError> {
        let outcome = result.map_err(kafka_error(&self.plan.reads[r].transform_id))?;
        debug!(records = outcome.records, "Kafka read done");
        self.commits.extend(outcome.commits);
        Ok(())
    }

    async fn push(&mut self, sink: usize, pieces: Vec<Bytes>) -> Result<(), BundleError> {
        let index = self.sink_outbox[sink];
        let transform_id = &self.plan.sinks[sink].transform_id;
        for piece in pieces {
            let outbox = &mut self.outboxes[index];
            outbox.bytes += piece.len();
            outbox.entries.push(elements::Data {
                instruction_id: self.instruction_id.to_owned(),
                transform_id: transform_id.clone(),
                data: piece,
                is_last: false,
            });
            if outbox.bytes >= self.flush_bytes {
                flush(outbox).await?;
            }
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), BundleError> {
        for outbox in &mut self.outboxes {
            flush(outbox).await?;
        }
        Ok(())
    }

    /// Waits for Kafka acknowledgements, sends what is left plus `is_last` for
    /// every sink, then builds the response.
    async fn finish(mut self) -> Result<BundleOutcome, BundleError> {
        for (w, writer) in std::mem::take(&mut self.writers).into_iter().enumerate() {
            if let Some(writer) = writer {
                let written = writer
                    .finish()
                    .await
                    .map_err(kafka_error(&self.plan.writes[w].transform_id))?;
                debug!(written, "Kafka write acknowledged");
            }
        }
        for (sink, port) in self.plan.sinks.iter().enumerate() {
            self.outboxes[self.sink_outbox[sink]]
                .entries
                .push(elements::Data {
                    instruction_id: self.instruction_id.to_owned(),
                    transform_id: port.transform_id.clone(),
                    data: Bytes::new(),
                    is_last: true,
                });
        }
        // The runner may act on the response (and the pool may shut down)
        // as soon as it is sent, so every entry and is_last must be taken by
        // the transport first, not merely queued.
        for outbox in &mut self.outboxes {
            flush_confirmed(outbox).await?;
        }
        debug!(elements = ?self.counts, records = ?self.read_counts, "bundle finished");
        let commits = std::mem::take(&mut self.commits);
        Ok(BundleOutcome {
            response: ProcessBundleResponse {
                monitoring_infos: self.monitoring_infos(),
                requires_finalization: !commits.is_empty(),
                ..Default::default()
            },
            commits,
        })
    }

    fn monitoring_infos(&self) -> Vec<beam_proto::pipeline::MonitoringInfo> {
        let mut per_pcollection: HashMap<&str, u64> = HashMap::new();
        let mut infos = Vec::new();
        for (input, count) in self.plan.inputs.iter().zip(&self.counts) {
            infos.push(metrics::read_index(&input.port.transform_id, *count));
        }
        let streams = self
            .plan
            .inputs
            .iter()
            .map(|i| &i.stream)
            .zip(&self.counts)
            .chain(
                self.plan
                    .reads
                    .iter()
                    .map(|r| &r.stream)
                    .zip(&self.read_counts),
            );
        for (stream, count) in streams {
            for pcoll in &stream.pcollections {
                *per_pcollection.entry(pcoll).or_default() += count;
            }
        }
        let mut pcolls: Vec<_> = per_pcollection.into_iter().collect();
        pcolls.sort_unstable();
        infos.extend(
            pcolls
                .into_iter()
                .map(|(p, c)| metrics::element_count(p, c)),
        );
        infos
    }
}

/// Attributes a Kafka failure to the transform it happened in.
fn kafka_error(transform_id: &str) -> impl Fn(KafkaError) -> BundleError + '_ {
    move |source| BundleError::Kafka {
        transform_id: transform_id.to_owned(),
        source,
    }
}

async fn flush(outbox: &mut Outbox) -> Result<(), BundleError> {
    if outbox.entries.is_empty() {
        return Ok(());
    }
    let elements = take_elements(outbox);
    outbox.channel.send(elements).await?;
    Ok(())
}

/// Sends what `outbox` holds and waits until the transport has taken it.
async fn flush_confirmed(outbox: &mut Outbox) -> Result<(), BundleError> {
    let elements = take_elements(outbox);
    outbox.channel.send_confirmed(elements).await?;
    Ok(())
}

/// Empties `outbox` into one `Elements` message.
fn take_elements(outbox: &mut Outbox) -> Elements {
    outbox.bytes = 0;
    Elements {
        data: std::mem::take(&mut outbox.entries),
        timers: vec![],
    }
}

/// Pieces bound for one sink, by index into [`StagePlan::sinks`].
type SinkPieces = (usize, Vec<Bytes>);

/// One chunk through a stream: its element count and, per reached sink, the
/// pieces to send (the same zero-copy slices for every pass-through sink).
fn run_chunk(
    stream: &Stream,
    plan: &StagePlan,
    chunk: &Bytes,
    max_piece: usize,
) -> Result<(u64, Vec<SinkPieces>), ElementError> {
    let mut outputs = Vec::new();
    // The boundary scan validates and counts even when nothing is forwarded untouched.
    let split: Pieces = transforms::split_whole_elements(&stream.wire, chunk, max_piece)?;
    for route in &stream.routes {
        if let Route::Sink { sink, pass_through } = *route {
            let pieces = if pass_through {
                split.pieces.clone()
            } else {
                transforms::recode(&stream.wire, &plan.sinks[sink].wire, chunk, max_piece)?.pieces
            };
            outputs.push((sink, pieces));
        }
    }
    Ok((split.elements, outputs))
}
