//! Runs one `ProcessBundle`: reads the stage's inputs from the data channels,
//! pushes them through the plan, batches output on whole-element boundaries, and
//! ends every sink with `is_last` before the response is sent.

use std::collections::HashMap;
use std::sync::Arc;

use beam_proto::fn_execution::{Elements, ProcessBundleResponse, elements};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::debug;

use crate::coders::CoderError;
use crate::config::HarnessConfig;
use crate::data::{DataChannel, DataChannels, DataError, Inbound};
use crate::metrics;
use crate::plan::StagePlan;
use crate::transforms::{self, ElementError, Pieces};

/// Input chunks queued per bundle before the channel's reader waits.
const INBOUND_QUEUE: usize = 16;
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
}

/// Runs `plan` for `instruction_id`; `embedded` is input carried in the request itself.
pub async fn run(
    instruction_id: &str,
    plan: Arc<StagePlan>,
    channels: &DataChannels,
    config: &HarnessConfig,
    embedded: Option<Elements>,
) -> Result<ProcessBundleResponse, BundleError> {
    let mut bundle = Bundle::new(instruction_id, plan.clone(), channels, config)?;
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
    while !bundle.input_complete() {
        tokio::select! {
            item = rx.recv() => match item.ok_or(BundleError::InputClosed)? {
                Inbound::Data(data) => bundle.on_data(data).await?,
                Inbound::Timers { transform_id, family } => {
                    return Err(BundleError::Timers { transform_id, family })
                }
                Inbound::Failed(e) => return Err(e.into()),
            },
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
    /// Elements read so far, per input.
    counts: Vec<u64>,
    /// Inputs still waiting for `is_last`.
    open: Vec<bool>,
    input_by_transform: HashMap<String, usize>,
    /// One outbox per sink data URL; `sink_outbox[i]` indexes it for sink i.
    outboxes: Vec<Outbox>,
    sink_outbox: Vec<usize>,
}

impl<'a> Bundle<'a> {
    fn new(
        instruction_id: &'a str,
        plan: Arc<StagePlan>,
        channels: &DataChannels,
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
                        channel: channels.get(&sink.data_url)?,
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
            open: vec![true; plan.inputs.len()],
            input_by_transform: plan
                .inputs
                .iter()
                .enumerate()
                .map(|(i, input)| (input.port.transform_id.clone(), i))
                .collect(),
            flush_bytes: config.flush_bytes.max(1),
            plan,
            outboxes,
            sink_outbox,
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
        let mut urls: Vec<&str> = self
            .plan
            .inputs
            .iter()
            .map(|i| i.port.data_url.as_str())
            .collect();
        urls.sort_unstable();
        urls.dedup();
        for url in urls {
            let channel = channels.get(url)?;
            channel.register(self.instruction_id, tx.clone())?;
            registration.channels.push(channel);
        }
        Ok(registration)
    }

    fn input_complete(&self) -> bool {
        !self.open.contains(&true)
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
            let outputs = self.process_chunk(input, data.data).await?;
            for (sink, pieces) in outputs {
                self.push(sink, pieces).await?;
            }
        }
        if data.is_last {
            self.open[input] = false;
        }
        Ok(())
    }

    /// Runs the stage over one chunk; returns the pieces for each reached sink.
    async fn process_chunk(
        &mut self,
        input: usize,
        chunk: Bytes,
    ) -> Result<Vec<SinkPieces>, BundleError> {
        let plan = self.plan.clone();
        let max_piece = self.flush_bytes;
        let result = if chunk.len() > BLOCKING_CHUNK_BYTES {
            tokio::task::spawn_blocking(move || run_chunk(&plan, input, &chunk, max_piece))
                .await
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
        } else {
            run_chunk(&plan, input, &chunk, max_piece)
        };
        let (elements, outputs) = result.map_err(|e| BundleError::Element {
            transform_id: self.plan.inputs[input].port.transform_id.clone(),
            index: self.counts[input] + e.index,
            source: e.source,
        })?;
        self.counts[input] += elements;
        Ok(outputs)
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

    /// Sends what is left plus `is_last` for every sink, then builds the response.
    async fn finish(mut self) -> Result<ProcessBundleResponse, BundleError> {
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
        self.flush_all().await?;
        debug!(elements = ?self.counts, "bundle finished");
        Ok(ProcessBundleResponse {
            monitoring_infos: self.monitoring_infos(),
            ..Default::default()
        })
    }

    fn monitoring_infos(&self) -> Vec<beam_proto::pipeline::MonitoringInfo> {
        let mut per_pcollection: HashMap<&str, u64> = HashMap::new();
        let mut infos = Vec::new();
        for (input, count) in self.plan.inputs.iter().zip(&self.counts) {
            for pcoll in &input.pcollections {
                *per_pcollection.entry(pcoll).or_default() += count;
            }
            infos.push(metrics::read_index(&input.port.transform_id, *count));
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

async fn flush(outbox: &mut Outbox) -> Result<(), BundleError> {
    if outbox.entries.is_empty() {
        return Ok(());
    }
    let data = std::mem::take(&mut outbox.entries);
    outbox.bytes = 0;
    outbox
        .channel
        .send(Elements {
            data,
            timers: vec![],
        })
        .await?;
    Ok(())
}

/// Pieces bound for one sink, by index into [`StagePlan::sinks`].
type SinkPieces = (usize, Vec<Bytes>);

/// The stage over one chunk: element count and, per reached sink, its pieces.
fn run_chunk(
    plan: &StagePlan,
    input: usize,
    chunk: &Bytes,
    max_piece: usize,
) -> Result<(u64, Vec<SinkPieces>), ElementError> {
    let input = &plan.inputs[input];
    let mut outputs = Vec::with_capacity(input.routes.len());
    // The boundary scan validates and counts even when nothing is forwarded untouched.
    let split: Pieces = transforms::split_whole_elements(&input.port.wire, chunk, max_piece)?;
    for route in &input.routes {
        let pieces = if route.pass_through {
            split.pieces.clone()
        } else {
            let sink = &plan.sinks[route.sink].wire;
            transforms::recode(&input.port.wire, sink, chunk, max_piece)?.pieces
        };
        outputs.push((route.sink, pieces));
    }
    Ok((split.elements, outputs))
}
