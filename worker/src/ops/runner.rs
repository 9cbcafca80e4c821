//! The runner's data ports (`beam:runner:source:v1`, `beam:runner:sink:v1`)
//! as operators: where a stage's input enters and its output leaves.

use std::sync::Arc;

use async_trait::async_trait;
use beam_proto::fn_execution::{Elements, RemoteGrpcPort, elements};
use bytes::{Bytes, BytesMut};
use prost::Message;

use super::{Chunk, Context, EdgeCoder, OpError, Operator, OperatorFactory, Setup, maybe_blocking};
use crate::data::DataChannel;
use crate::registry::{PlanContext, PlanError, Planned};
use crate::transforms::{self, ElementError};

pub const SOURCE_URN: &str = "beam:runner:source:v1";
pub const SINK_URN: &str = "beam:runner:sink:v1";

/// A port's data endpoint and coder, from its `RemoteGrpcPort` payload.
fn port(cx: &PlanContext<'_>) -> Result<(String, EdgeCoder), PlanError> {
    let port = RemoteGrpcPort::decode(cx.payload.clone())
        .map_err(|e| cx.malformed(format!("its RemoteGrpcPort payload does not decode: {e}")))?;
    let url = port
        .api_service_descriptor
        .map(|a| a.url)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| cx.malformed("its RemoteGrpcPort has no data endpoint url"))?;
    Ok((url, cx.port_coder(&port.coder_id)?))
}

// ---- source ----

pub fn plan_source(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    let (url, coder) = port(cx)?;
    let output = cx.single_output()?;
    Ok(Planned {
        factory: Arc::new(SourceFactory {
            url,
            transform_id: cx.id.to_owned(),
            coder: coder.clone(),
        }),
        outputs: vec![(output, coder)],
    })
}

#[derive(Debug)]
struct SourceFactory {
    url: String,
    transform_id: String,
    coder: EdgeCoder,
}

impl OperatorFactory for SourceFactory {
    fn kind(&self) -> &'static str {
        "runner_source"
    }

    fn create(&self, _: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(Source {
            coder: self.coder.clone(),
            elements: 0,
        }))
    }

    fn data_source(&self) -> Option<(&str, &str)> {
        Some((&self.url, &self.transform_id))
    }
}

/// Finds element boundaries (validating and counting) and cuts the runner's
/// data into pieces of whole elements, forwarded without copying.
struct Source {
    coder: EdgeCoder,
    elements: u64,
}

#[async_trait]
impl Operator for Source {
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
        let (coder, max_piece, bytes) = (self.coder.clone(), cx.limits.flush_bytes, input.bytes);
        let pieces = maybe_blocking(bytes.len(), move || split(&coder, &bytes, max_piece)).await;
        let pieces = pieces.map_err(|e| OpError::Element {
            index: self.elements + e.index,
            source: e.source,
        })?;
        for piece in pieces {
            self.elements += piece.elements;
            cx.emit(0, piece);
        }
        Ok(())
    }
}

fn split(coder: &EdgeCoder, bytes: &Bytes, max_piece: usize) -> Result<Vec<Chunk>, ElementError> {
    match coder {
        EdgeCoder::Wire(wire) => {
            let split = transforms::split_whole_elements(wire, bytes, max_piece)?;
            // Elements per piece are not tracked by the scan; one piece is the
            // common case, and counts only need to add up per chunk.
            let total = split.elements;
            let n = split.pieces.len();
            Ok(split
                .pieces
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| Chunk {
                    bytes,
                    elements: if i + 1 == n { total } else { 0 },
                })
                .collect())
        }
        EdgeCoder::Full(full) => {
            let elements = full
                .decode_all(bytes)
                .map_err(|source| ElementError { index: 0, source })?
                .len() as u64;
            Ok(vec![Chunk {
                bytes: bytes.clone(),
                elements,
            }])
        }
    }
}

// ---- sink ----

pub fn plan_sink(cx: &PlanContext<'_>) -> Result<Planned, PlanError> {
    let (url, coder) = port(cx)?;
    let input = cx.single_input()?;
    let recode = if input.same_encoding(&coder) {
        None
    } else {
        Some(recoding(cx, input, &coder)?)
    };
    Ok(Planned {
        factory: Arc::new(SinkFactory {
            url,
            transform_id: cx.id.to_owned(),
            recode,
        }),
        outputs: Vec::new(),
    })
}

/// How a sink re-encodes elements whose edge coder differs from its port's.
#[derive(Debug, Clone)]
enum Recode {
    Wire(crate::coders::WireCoder, crate::coders::WireCoder),
    Full(
        crate::value_coder::WindowedCoder,
        crate::value_coder::WindowedCoder,
    ),
}

fn recoding(cx: &PlanContext<'_>, from: &EdgeCoder, to: &EdgeCoder) -> Result<Recode, PlanError> {
    if let (Some(f), Some(t)) = (from.wire(), to.wire()) {
        if f.window != t.window {
            return Err(cx.malformed(format!(
                "its port uses a {:?} window coder but its input arrives with {:?}; \
                 this stage cannot change windows",
                t.window, f.window
            )));
        }
        if f.kv().is_some() != t.kv().is_some() {
            return Err(cx.malformed(format!("it expects {t} but receives {f}")));
        }
        return Ok(Recode::Wire(f.clone(), t.clone()));
    }
    let (f, t) = (from.full(), to.full());
    if f.window != t.window {
        return Err(cx.malformed(format!(
            "its port uses a {:?} window coder but its input arrives with {:?}",
            t.window, f.window
        )));
    }
    Ok(Recode::Full(f, t))
}

#[derive(Debug)]
struct SinkFactory {
    url: String,
    transform_id: String,
    recode: Option<Recode>,
}

impl OperatorFactory for SinkFactory {
    fn kind(&self) -> &'static str {
        "runner_sink"
    }

    fn create(&self, setup: &Setup<'_>) -> Result<Box<dyn Operator>, OpError> {
        Ok(Box::new(Sink {
            channel: setup.channels.get(&self.url)?,
            instruction_id: setup.instruction_id.to_owned(),
            transform_id: self.transform_id.clone(),
            recode: self.recode.clone(),
            entries: Vec::new(),
            bytes: 0,
            elements: 0,
        }))
    }
}

/// Batches output into `Elements` messages of several `Data` entries, so
/// small chunks travel together without being copied together.
struct Sink {
    channel: Arc<DataChannel>,
    instruction_id: String,
    transform_id: String,
    recode: Option<Recode>,
    entries: Vec<elements::Data>,
    bytes: usize,
    elements: u64,
}

impl Sink {
    fn take(&mut self) -> Elements {
        self.bytes = 0;
        Elements {
            data: std::mem::take(&mut self.entries),
            timers: vec![],
        }
    }

    fn push(&mut self, data: Bytes, is_last: bool) {
        self.bytes += data.len();
        self.entries.push(elements::Data {
            instruction_id: self.instruction_id.clone(),
            transform_id: self.transform_id.clone(),
            data,
            is_last,
        });
    }
}

#[async_trait]
impl Operator for Sink {
    async fn process(&mut self, input: Chunk, cx: &mut Context<'_>) -> Result<(), OpError> {
        let pieces = match self.recode.clone() {
            None => vec![input.bytes],
            Some(recode) => {
                let (max_piece, bytes) = (cx.limits.flush_bytes, input.bytes);
                let result = maybe_blocking(bytes.len(), move || {
                    recode_chunk(&recode, &bytes, max_piece)
                })
                .await;
                result.map_err(|e| OpError::Element {
                    index: self.elements + e.index,
                    source: e.source,
                })?
            }
        };
        self.elements += input.elements;
        for piece in pieces {
            self.push(piece, false);
            if self.bytes >= cx.limits.flush_bytes {
                let batch = self.take();
                self.channel.send(batch).await?;
            }
        }
        Ok(())
    }

    /// Sends what is left and `is_last`, and waits until the transport has
    /// taken them: the runner may act on the bundle's response (and the pool
    /// may shut down) as soon as it is sent.
    async fn finish(&mut self, _cx: &mut Context<'_>) -> Result<(), OpError> {
        self.push(Bytes::new(), true);
        let batch = self.take();
        self.channel.send_confirmed(batch).await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), OpError> {
        if !self.entries.is_empty() {
            let batch = self.take();
            self.channel.send(batch).await?;
        }
        Ok(())
    }
}

fn recode_chunk(
    recode: &Recode,
    bytes: &Bytes,
    max_piece: usize,
) -> Result<Vec<Bytes>, ElementError> {
    match recode {
        Recode::Wire(from, to) => Ok(transforms::recode(from, to, bytes, max_piece)?.pieces),
        Recode::Full(from, to) => {
            let mut out = BytesMut::new();
            for (index, v) in from
                .decode_all(bytes)
                .map_err(|source| ElementError { index: 0, source })?
                .iter()
                .enumerate()
            {
                to.encode(&v.metadata, &v.value, &mut out)
                    .map_err(|source| ElementError {
                        index: index as u64,
                        source,
                    })?;
            }
            Ok(vec![out.freeze()])
        }
    }
}
